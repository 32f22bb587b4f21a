// The C API through the shared library: sidecar queries, status codes and last-error messages.
#include <filesystem>
#include <memory>
#include <string>

#include "check.hpp"
#include "pid_trt.h"

namespace {

using SidecarPtr = std::unique_ptr<pidtrt_sidecar, void (*)(pidtrt_sidecar*)>;

SidecarPtr open_fixture() {
    pidtrt_sidecar* sidecar = nullptr;
    CHECK_EQ(pidtrt_sidecar_open(PIDTRT_FIXTURE, &sidecar), PIDTRT_STATUS_OK);
    return SidecarPtr(sidecar, pidtrt_sidecar_close);
}

std::string last_error() { return pidtrt_last_error(); }

}  // namespace

TEST(version_and_build) {
    CHECK_EQ(std::string(pidtrt_version()), std::string("0.1.0"));
    CHECK_EQ(pidtrt_has_tensorrt(), PIDTRT_EXPECT_TENSORRT);
    CHECK_EQ(std::string(pidtrt_status_name(PIDTRT_STATUS_NOT_FOUND)), std::string("PIDTRT_STATUS_NOT_FOUND"));
    CHECK_EQ(std::string(pidtrt_status_name(static_cast<pidtrt_status>(15))), std::string("PIDTRT_STATUS_UNKNOWN"));
}

TEST(sidecar_queries) {
    const SidecarPtr sc = open_fixture();
    const char* name = nullptr;
    CHECK_EQ(pidtrt_sidecar_name(sc.get(), &name), PIDTRT_STATUS_OK);
    CHECK_EQ(std::string(name), std::string("pid_tiny_fixture"));
    pidtrt_latent_info latent{};
    CHECK_EQ(pidtrt_sidecar_latent(sc.get(), &latent), PIDTRT_STATUS_OK);
    CHECK(latent.channels == 16 && latent.down_factor == 8 && latent.sr_scale == 4);
    int32_t length = 0, dim = 0, steps = 0;
    CHECK_EQ(pidtrt_sidecar_text(sc.get(), &length, &dim), PIDTRT_STATUS_OK);
    CHECK(length == 300 && dim == 2304);
    CHECK_EQ(pidtrt_sidecar_default_steps(sc.get(), &steps), PIDTRT_STATUS_OK);
    CHECK_EQ(steps, 4);
    float timescale = 0;
    CHECK_EQ(pidtrt_sidecar_timescale(sc.get(), &timescale), PIDTRT_STATUS_OK);
    CHECK_EQ(timescale, 1000.0f);

    int32_t counts[16], count = 0;
    CHECK_EQ(pidtrt_sidecar_step_counts(sc.get(), counts, 16, &count), PIDTRT_STATUS_OK);
    CHECK_EQ(count, 8);
    for (int i = 0; i < 8; ++i) CHECK_EQ(counts[i], i + 1);

    float t[8] = {};
    CHECK_EQ(pidtrt_sidecar_t_list(sc.get(), 4, t, 8, &count), PIDTRT_STATUS_OK);
    CHECK_EQ(count, 5);
    CHECK(t[0] == 0.999f && t[1] == 0.866f && t[2] == 0.634f && t[3] == 0.342f && t[4] == 0.0f);
    CHECK_EQ(pidtrt_sidecar_t_list(sc.get(), 8, nullptr, 0, &count), PIDTRT_STATUS_OK);  // size query
    CHECK_EQ(count, 9);
    float partial[2] = {};
    CHECK_EQ(pidtrt_sidecar_t_list(sc.get(), 8, partial, 2, &count), PIDTRT_STATUS_OK);
    CHECK(count == 9 && partial[0] == 0.999f && partial[1] == 0.999f);
    CHECK_EQ(pidtrt_sidecar_net_timesteps(sc.get(), 4, t, 8, &count), PIDTRT_STATUS_OK);
    CHECK(count == 4 && t[0] == 999.0f && t[1] == 866.0f && t[2] == 634.0f && t[3] == 342.0f);
    int32_t draws = 0;
    CHECK_EQ(pidtrt_sidecar_noise_draws(sc.get(), 8, &draws), PIDTRT_STATUS_OK);
    CHECK_EQ(draws, 7);
}

TEST(profiles) {
    const SidecarPtr sc = open_fixture();
    int32_t count = 0, index = -1;
    CHECK_EQ(pidtrt_sidecar_profile_count(sc.get(), &count), PIDTRT_STATUS_OK);
    CHECK_EQ(count, 3);
    pidtrt_profile_info info{};
    CHECK_EQ(pidtrt_sidecar_profile(sc.get(), 2, &info), PIDTRT_STATUS_OK);
    CHECK(std::string(info.name) == "dynamic" && !info.is_static && info.width[2] == 1024 && info.batch[2] == 2);
    CHECK_EQ(pidtrt_sidecar_profile(sc.get(), 3, &info), PIDTRT_STATUS_NOT_FOUND);
    CHECK_EQ(pidtrt_sidecar_select_profile(sc.get(), 512, 512, 1, &index), PIDTRT_STATUS_OK);
    CHECK_EQ(index, 0);
    CHECK_EQ(pidtrt_sidecar_select_profile(sc.get(), 640, 384, 1, &index), PIDTRT_STATUS_OK);
    CHECK_EQ(index, 2);
    CHECK_EQ(pidtrt_sidecar_select_profile(sc.get(), 4096, 4096, 1, &index), PIDTRT_STATUS_NOT_FOUND);
    CHECK(check::contains(last_error(), "4096x4096") && check::contains(last_error(), "available profiles"));
}

TEST(errors_are_status_codes_with_messages) {
    pidtrt_sidecar* sidecar = reinterpret_cast<pidtrt_sidecar*>(0x1);
    CHECK_EQ(pidtrt_sidecar_open(PIDTRT_TEST_TMP "/absent.json", &sidecar), PIDTRT_STATUS_IO_ERROR);
    CHECK(sidecar == nullptr);
    CHECK(check::contains(last_error(), "absent.json"));
    CHECK_EQ(pidtrt_sidecar_open(nullptr, &sidecar), PIDTRT_STATUS_INVALID_ARGUMENT);
    CHECK_EQ(pidtrt_sidecar_t_list(nullptr, 4, nullptr, 0, nullptr), PIDTRT_STATUS_INVALID_ARGUMENT);
    const SidecarPtr sc = open_fixture();
    int32_t count = 0;
    CHECK_EQ(pidtrt_sidecar_t_list(sc.get(), 4, nullptr, 3, &count), PIDTRT_STATUS_INVALID_ARGUMENT);
    CHECK_EQ(pidtrt_sidecar_t_list(sc.get(), 12, nullptr, 0, &count), PIDTRT_STATUS_NOT_FOUND);
    CHECK(check::contains(last_error(), "no t-list for 12 steps"));
    pidtrt_sidecar_close(nullptr);
    pidtrt_decoder_destroy(nullptr);
}

TEST(decoder_without_engines) {
    pidtrt_decoder* decoder = reinterpret_cast<pidtrt_decoder*>(0x1);
    const pidtrt_status status = pidtrt_decoder_create(PIDTRT_FIXTURE, nullptr, &decoder);
    CHECK(decoder == nullptr);
    CHECK(!last_error().empty());
    if (pidtrt_has_tensorrt()) {
        CHECK(status != PIDTRT_STATUS_OK && status != PIDTRT_STATUS_UNSUPPORTED);  // no engine files next to it
    } else {
        CHECK_EQ(status, PIDTRT_STATUS_UNSUPPORTED);
        CHECK(check::contains(last_error(), "built without TensorRT"));
    }
    CHECK(pidtrt_decoder_sidecar(nullptr) == nullptr);
    CHECK_EQ(pidtrt_decoder_decode(nullptr, nullptr), PIDTRT_STATUS_INVALID_ARGUMENT);
}

TEST(param_defaults) {
    pidtrt_decode_params params;
    pidtrt_decode_params_init(&params);
    CHECK(params.batch == 1 && params.steps == 0 && params.seed == 0 && params.noise == nullptr &&
          params.latent_rounding == PIDTRT_LATENT_ROUND_BF16 && params.output_format == PIDTRT_OUTPUT_F32_NCHW);
    pidtrt_decoder_options options;
    pidtrt_decoder_options_init(&options);
    CHECK(options.device == 0 && options.use_cuda_graph == 1 && options.max_cached_shapes == 4);
}

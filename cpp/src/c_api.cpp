// The C boundary: every entry point catches everything, stores the message per thread and
// returns a status code.
#include <cstring>
#include <string>

#include "decoder.hpp"
#include "error.hpp"
#include "pid_trt.h"
#include "sidecar.hpp"

struct pidtrt_sidecar {
    pidtrt::Sidecar sidecar;
};

struct pidtrt_decoder {
    std::unique_ptr<pidtrt::Decoder> decoder;
    pidtrt_sidecar sidecar;  // a copy, so pidtrt_decoder_sidecar can hand out the C handle
};

namespace {

#define PIDTRT_STRINGIFY2(x) #x
#define PIDTRT_STRINGIFY(x) PIDTRT_STRINGIFY2(x)
constexpr const char* kVersion = PIDTRT_STRINGIFY(PIDTRT_VERSION_MAJOR) "." PIDTRT_STRINGIFY(
    PIDTRT_VERSION_MINOR) "." PIDTRT_STRINGIFY(PIDTRT_VERSION_PATCH);

thread_local std::string last_error;

pidtrt_status fail(pidtrt_status status, const std::string& message) {
    last_error = message;
    return status;
}

// Runs `body`, turning exceptions into a status + last_error.
template <typename Body>
pidtrt_status guarded(Body&& body) noexcept {
    try {
        body();
        return PIDTRT_STATUS_OK;
    } catch (const pidtrt::Error& e) {
        return fail(e.status(), e.what());
    } catch (const std::bad_alloc&) {
        return fail(PIDTRT_STATUS_INTERNAL_ERROR, "out of host memory");
    } catch (const std::exception& e) {
        return fail(PIDTRT_STATUS_INTERNAL_ERROR, std::string("internal error: ") + e.what());
    } catch (...) {
        return fail(PIDTRT_STATUS_INTERNAL_ERROR, "internal error: unknown exception");
    }
}

void require(bool condition, const char* message) {
    if (!condition) throw pidtrt::Error(PIDTRT_STATUS_INVALID_ARGUMENT, message);
}

// Copies min(capacity, values.size()) values; the full count goes to *count.
void copy_out(const std::vector<float>& values, float* out, int32_t capacity, int32_t* count) {
    require(count != nullptr, "count must be non-NULL");
    require(capacity >= 0 && (out != nullptr || capacity == 0), "out must be non-NULL when capacity > 0");
    const size_t n = std::min(values.size(), static_cast<size_t>(capacity));
    if (n) std::memcpy(out, values.data(), n * sizeof(float));
    *count = static_cast<int32_t>(values.size());
}

}  // namespace

extern "C" {

const char* pidtrt_status_name(pidtrt_status status) {
    switch (status) {
        case PIDTRT_STATUS_OK: return "PIDTRT_STATUS_OK";
        case PIDTRT_STATUS_INVALID_ARGUMENT: return "PIDTRT_STATUS_INVALID_ARGUMENT";
        case PIDTRT_STATUS_IO_ERROR: return "PIDTRT_STATUS_IO_ERROR";
        case PIDTRT_STATUS_FORMAT_ERROR: return "PIDTRT_STATUS_FORMAT_ERROR";
        case PIDTRT_STATUS_NOT_FOUND: return "PIDTRT_STATUS_NOT_FOUND";
        case PIDTRT_STATUS_UNSUPPORTED: return "PIDTRT_STATUS_UNSUPPORTED";
        case PIDTRT_STATUS_CUDA_ERROR: return "PIDTRT_STATUS_CUDA_ERROR";
        case PIDTRT_STATUS_TENSORRT_ERROR: return "PIDTRT_STATUS_TENSORRT_ERROR";
        case PIDTRT_STATUS_INTERNAL_ERROR: return "PIDTRT_STATUS_INTERNAL_ERROR";
    }
    return "PIDTRT_STATUS_UNKNOWN";
}

const char* pidtrt_last_error(void) { return last_error.c_str(); }

const char* pidtrt_version(void) { return kVersion; }

int pidtrt_has_tensorrt(void) { return pidtrt::built_with_tensorrt() ? 1 : 0; }

pidtrt_status pidtrt_sidecar_open(const char* path, pidtrt_sidecar** out) {
    return guarded([&] {
        if (out) *out = nullptr;
        require(path && out, "path and out must be non-NULL");
        *out = new pidtrt_sidecar{pidtrt::load_sidecar(path)};
    });
}

void pidtrt_sidecar_close(pidtrt_sidecar* sidecar) { delete sidecar; }

pidtrt_status pidtrt_sidecar_name(const pidtrt_sidecar* s, const char** name) {
    return guarded([&] {
        require(s && name, "sidecar and name must be non-NULL");
        *name = s->sidecar.name.c_str();
    });
}

pidtrt_status pidtrt_sidecar_latent(const pidtrt_sidecar* s, pidtrt_latent_info* out) {
    return guarded([&] {
        require(s && out, "sidecar and out must be non-NULL");
        *out = {s->sidecar.latent.channels, s->sidecar.latent.down_factor, s->sidecar.latent.sr_scale};
    });
}

pidtrt_status pidtrt_sidecar_text(const pidtrt_sidecar* s, int32_t* max_length, int32_t* embed_dim) {
    return guarded([&] {
        require(s && max_length && embed_dim, "sidecar, max_length and embed_dim must be non-NULL");
        *max_length = s->sidecar.text_max_length;
        *embed_dim = s->sidecar.text_embed_dim;
    });
}

pidtrt_status pidtrt_sidecar_default_steps(const pidtrt_sidecar* s, int32_t* steps) {
    return guarded([&] {
        require(s && steps, "sidecar and steps must be non-NULL");
        *steps = s->sidecar.default_steps;
    });
}

pidtrt_status pidtrt_sidecar_timescale(const pidtrt_sidecar* s, float* timescale) {
    return guarded([&] {
        require(s && timescale, "sidecar and timescale must be non-NULL");
        *timescale = s->sidecar.timescale;
    });
}

pidtrt_status pidtrt_sidecar_step_counts(const pidtrt_sidecar* s, int32_t* out, int32_t capacity, int32_t* count) {
    return guarded([&] {
        require(s && count, "sidecar and count must be non-NULL");
        require(capacity >= 0 && (out != nullptr || capacity == 0), "out must be non-NULL when capacity > 0");
        int32_t n = 0;
        for (const auto& entry : s->sidecar.t_lists) {
            if (n < capacity) out[n] = entry.first;
            ++n;
        }
        *count = n;
    });
}

pidtrt_status pidtrt_sidecar_t_list(const pidtrt_sidecar* s, int32_t steps, float* out, int32_t capacity,
                                    int32_t* count) {
    return guarded([&] {
        require(s != nullptr, "sidecar must be non-NULL");
        copy_out(s->sidecar.t_list(steps), out, capacity, count);
    });
}

pidtrt_status pidtrt_sidecar_net_timesteps(const pidtrt_sidecar* s, int32_t steps, float* out, int32_t capacity,
                                           int32_t* count) {
    return guarded([&] {
        require(s != nullptr, "sidecar must be non-NULL");
        copy_out(s->sidecar.net_timesteps(steps), out, capacity, count);
    });
}

pidtrt_status pidtrt_sidecar_noise_draws(const pidtrt_sidecar* s, int32_t steps, int32_t* draws) {
    return guarded([&] {
        require(s && draws, "sidecar and draws must be non-NULL");
        *draws = s->sidecar.noise_draws(steps);
    });
}

pidtrt_status pidtrt_sidecar_profile_count(const pidtrt_sidecar* s, int32_t* count) {
    return guarded([&] {
        require(s && count, "sidecar and count must be non-NULL");
        *count = static_cast<int32_t>(s->sidecar.profiles.size());
    });
}

pidtrt_status pidtrt_sidecar_profile(const pidtrt_sidecar* s, int32_t index, pidtrt_profile_info* out) {
    return guarded([&] {
        require(s && out, "sidecar and out must be non-NULL");
        if (index < 0 || index >= static_cast<int32_t>(s->sidecar.profiles.size()))
            throw pidtrt::Error(PIDTRT_STATUS_NOT_FOUND, "profile index " + std::to_string(index) + " out of range (" +
                                                             std::to_string(s->sidecar.profiles.size()) + " profiles)");
        const pidtrt::Profile& p = s->sidecar.profiles[index];
        *out = {p.name.c_str(), p.is_static ? 1 : 0, {p.batch.min, p.batch.opt, p.batch.max},
                {p.width.min, p.width.opt, p.width.max}, {p.height.min, p.height.opt, p.height.max}};
    });
}

pidtrt_status pidtrt_sidecar_select_profile(const pidtrt_sidecar* s, int32_t width, int32_t height, int32_t batch,
                                            int32_t* index) {
    return guarded([&] {
        require(s && index, "sidecar and index must be non-NULL");
        *index = s->sidecar.select_profile(width, height, batch);
    });
}

void pidtrt_decoder_options_init(pidtrt_decoder_options* options) {
    if (options) *options = {0, 1, 4};
}

pidtrt_status pidtrt_decoder_create(const char* engine_dir, const pidtrt_decoder_options* options,
                                    pidtrt_decoder** out) {
    return guarded([&] {
        if (out) *out = nullptr;
        require(engine_dir && out, "engine_dir and out must be non-NULL");
        pidtrt_decoder_options defaults;
        pidtrt_decoder_options_init(&defaults);
        auto decoder = pidtrt::create_decoder(engine_dir, options ? *options : defaults);
        const pidtrt::Sidecar sidecar = decoder->sidecar();
        *out = new pidtrt_decoder{std::move(decoder), pidtrt_sidecar{sidecar}};
    });
}

void pidtrt_decoder_destroy(pidtrt_decoder* decoder) { delete decoder; }

const pidtrt_sidecar* pidtrt_decoder_sidecar(const pidtrt_decoder* decoder) {
    return decoder ? &decoder->sidecar : nullptr;
}

pidtrt_status pidtrt_decoder_set_caption_embedding(pidtrt_decoder* decoder, const float* y, int32_t batch,
                                                   void* stream) {
    return guarded([&] {
        require(decoder != nullptr, "decoder must be non-NULL");
        decoder->decoder->set_caption_embedding(y, batch, static_cast<cudaStream_t>(stream));
    });
}

void pidtrt_decode_params_init(pidtrt_decode_params* params) {
    if (!params) return;
    std::memset(params, 0, sizeof *params);
    params->batch = 1;
    params->latent_rounding = PIDTRT_LATENT_ROUND_BF16;
    params->output_format = PIDTRT_OUTPUT_F32_NCHW;
}

pidtrt_status pidtrt_decoder_decode(pidtrt_decoder* decoder, const pidtrt_decode_params* params) {
    return guarded([&] {
        require(decoder && params, "decoder and params must be non-NULL");
        decoder->decoder->decode(*params);
    });
}

}  // extern "C"

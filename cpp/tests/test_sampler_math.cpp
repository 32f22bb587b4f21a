// Host reference of the sampler update math (docs/formats.md): the element operations the CUDA
// kernels use, checked against the formulas written out here, and the whole loop on a dummy net.
#include <cmath>
#include <limits>
#include <vector>

#include "check.hpp"
#include "error.hpp"
#include "philox.hpp"
#include "plan.hpp"
#include "sampler_math.hpp"
#include "sidecar.hpp"

namespace {

const pidtrt::Sidecar& sidecar() {
    static const pidtrt::Sidecar sc = pidtrt::load_sidecar(PIDTRT_FIXTURE);
    return sc;
}

std::vector<float> normals(uint64_t seed, int draw, size_t n) {
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = pidtrt::philox_normal4(seed, draw, i / 4).v[i % 4];
    return out;
}

}  // namespace

TEST(x0_is_accumulated_in_double) {
    int differs_from_float = 0;
    const std::vector<float> x = normals(1, 0, 4096), v = normals(1, 1, 4096);
    for (size_t i = 0; i < x.size(); ++i) {
        const float t_c = 0.999f;
        const float expected = static_cast<float>(double(x[i]) - double(t_c) * double(v[i]));
        CHECK_EQ(pidtrt::predict_x0(x[i], v[i], t_c), expected);
        const float product = t_c * v[i];
        differs_from_float += (x[i] - product) != expected;
    }
    CHECK(differs_from_float > 0);  // the inputs do exercise the difference
}

TEST(renoise_rounds_each_float32_op) {
    int differs_from_fma = 0;
    const std::vector<float> x0 = normals(2, 0, 4096), eps = normals(2, 1, 4096);
    const float t_n = 0.866f, one_minus = 1.0f - t_n;
    CHECK_EQ(static_cast<double>(one_minus), 0.1340000033378601);
    for (size_t i = 0; i < x0.size(); ++i) {
        const float a = one_minus * x0[i];
        const float b = t_n * eps[i];
        CHECK_EQ(pidtrt::renoise(x0[i], eps[i], one_minus, t_n), a + b);
        differs_from_fma += std::fma(one_minus, x0[i], b) != a + b;
    }
    CHECK(differs_from_fma > 0);
}

TEST(clamp_and_u8_truncation) {
    CHECK_EQ(pidtrt::clamp_unit(2.0f), 1.0f);
    CHECK_EQ(pidtrt::clamp_unit(-3.0f), -1.0f);
    CHECK_EQ(pidtrt::clamp_unit(0.25f), 0.25f);
    CHECK(std::isnan(pidtrt::clamp_unit(std::numeric_limits<float>::quiet_NaN())));
    CHECK_EQ(int(pidtrt::to_u8(-1.0f)), 0);
    CHECK_EQ(int(pidtrt::to_u8(1.0f)), 255);
    CHECK_EQ(int(pidtrt::to_u8(0.0f)), 127);         // 127.5 truncates, it does not round
    CHECK_EQ(int(pidtrt::to_u8(0.99f)), 253);        // 253.72...
    CHECK_EQ(int(pidtrt::to_u8(-0.999f)), 0);        // 0.1275
    CHECK_EQ(int(pidtrt::to_u8(std::numeric_limits<float>::quiet_NaN())), 0);
    for (int k = 0; k <= 255; ++k) {  // every level is reachable and truncation is floor on [0, 255]
        const float x = static_cast<float>(k) / 127.5f - 1.0f;
        const float scaled = (x + 1.0f) * 127.5f;
        CHECK_EQ(int(pidtrt::to_u8(x)), int(std::floor(scaled)));
    }
}

TEST(bf16_rounding_ties_to_even) {
    CHECK_EQ(pidtrt::round_bf16(1.0f), 1.0f);
    CHECK_EQ(pidtrt::round_bf16(1.0f + 0x1p-8f), 1.0f);                   // tie, even stays
    CHECK_EQ(pidtrt::round_bf16(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f);      // tie, odd rounds up
    CHECK_EQ(pidtrt::round_bf16(1.0f + 0x1p-8f + 0x1p-20f), 1.0f + 0x1p-7f);  // above the tie
    CHECK_EQ(pidtrt::round_bf16(-2.5f), -2.5f);
    CHECK(std::isinf(pidtrt::round_bf16(std::numeric_limits<float>::infinity())));
    CHECK(std::isnan(pidtrt::round_bf16(std::numeric_limits<float>::quiet_NaN())));
}

TEST(reference_loop_matches_the_written_out_spec) {
    // docs/formats.md's loop for N = 4, spelled out step by step with a dummy net v = 0.5 x - 0.25.
    const size_t n = 257;  // not a multiple of 4
    const std::vector<std::vector<float>> noise = {normals(7, 0, n), normals(7, 1, n), normals(7, 2, n),
                                                   normals(7, 3, n)};
    std::vector<float> seen_t;
    const pidtrt::Denoiser net = [&](const std::vector<float>& x, float t, std::vector<float>& v) {
        seen_t.push_back(t);
        for (size_t i = 0; i < x.size(); ++i) v[i] = 0.5f * x[i] - 0.25f;
    };
    const std::vector<float> out = pidtrt::reference_sample(pidtrt::make_plan(sidecar(), 4), noise, net);
    CHECK(seen_t == (std::vector<float>{999.0f, 866.0f, 634.0f, 342.0f}));

    const float T[] = {0.999f, 0.866f, 0.634f, 0.342f, 0.0f};
    std::vector<float> x = noise[0];
    int k = 1;
    for (int i = 0; i < 4; ++i) {
        for (size_t j = 0; j < n; ++j) {
            const float v = 0.5f * x[j] - 0.25f;
            const float x0 = float(double(x[j]) - double(T[i]) * double(v));
            if (T[i + 1] > 0) {
                const float a = (1.0f - T[i + 1]) * x0;
                const float b = T[i + 1] * noise[k][j];
                x[j] = a + b;
            } else {
                x[j] = x0;
            }
        }
        k += T[i + 1] > 0;
    }
    for (size_t j = 0; j < n; ++j) CHECK_EQ(out[j], std::fmin(std::fmax(x[j], -1.0f), 1.0f));
}

TEST(reference_loop_recovers_x0_for_every_step_count) {
    // A net that predicts the exact velocity towards `target` makes every x0 equal target.
    const size_t n = 64;
    std::vector<float> target(n);
    for (size_t i = 0; i < n; ++i) target[i] = -1.2f + 2.4f * float(i) / float(n - 1);
    for (int steps = 1; steps <= 8; ++steps) {
        const pidtrt::SamplerPlan plan = pidtrt::make_plan(sidecar(), steps);
        std::vector<std::vector<float>> noise;
        for (int d = 0; d < plan.noise_draws; ++d) noise.push_back(normals(11, d, n));
        size_t step = 0;
        const pidtrt::Denoiser net = [&](const std::vector<float>& x, float, std::vector<float>& v) {
            const double t_c = plan.steps[step++].t_c;
            for (size_t i = 0; i < n; ++i) v[i] = t_c > 0 ? float((x[i] - target[i]) / t_c) : 0.0f;
        };
        const std::vector<float> out = pidtrt::reference_sample(plan, noise, net);
        CHECK_EQ(step, size_t(steps));
        for (size_t i = 0; i < n; ++i) CHECK(std::fabs(out[i] - std::fmin(std::fmax(target[i], -1.0f), 1.0f)) < 1e-5f);
    }
}

TEST(reference_loop_needs_every_draw) {
    const pidtrt::SamplerPlan plan = pidtrt::make_plan(sidecar(), 4);
    const pidtrt::Denoiser net = [](const std::vector<float>&, float, std::vector<float>&) {};
    CHECK_THROWS(pidtrt::reference_sample(plan, {{0.0f}}, net), pidtrt::Error,
                 check::contains(e.what(), "needs 4 noise draws, got 1"));
}

// The unrolled sampler loop for one step count, derived only from the sidecar's t-list. The CUDA
// graph and the host reference both walk this list.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "sidecar.hpp"

namespace pidtrt {

struct SamplerStep {
    float t_c = 0, t_n = 0;
    float net_t = 0;          // float32(t_c * timescale), the denoise input t
    float one_minus_t_n = 0;  // float32(1 - t_n)
    int noise_draw = -1;      // re-noise draw index, -1 when t_n == 0 (x = x0)
};

struct SamplerPlan {
    std::vector<SamplerStep> steps;
    int noise_draws = 1;  // draw 0 is the initial sample
};

SamplerPlan make_plan(const Sidecar& sidecar, int steps);

// Host reference of the whole decode for testing the formulas: `noise` holds the draws (each of
// the sample size), `denoise(x, net_t, v)` stands in for the network. Returns the clamped output.
using Denoiser = std::function<void(const std::vector<float>& x, float net_t, std::vector<float>& v)>;
std::vector<float> reference_sample(const SamplerPlan& plan, const std::vector<std::vector<float>>& noise,
                                    const Denoiser& denoise);

}  // namespace pidtrt

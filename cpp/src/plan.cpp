#include "plan.hpp"

#include <string>

#include "error.hpp"
#include "sampler_math.hpp"

namespace pidtrt {

SamplerPlan make_plan(const Sidecar& sidecar, int steps) {
    const std::vector<float>& t = sidecar.t_list(steps);
    const std::vector<float> net_t = sidecar.net_timesteps(steps);
    SamplerPlan plan;
    for (int i = 0; i < steps; ++i) {
        SamplerStep step;
        step.t_c = t[i];
        step.t_n = t[i + 1];
        step.net_t = net_t[i];
        step.one_minus_t_n = 1.0f - step.t_n;
        step.noise_draw = step.t_n > 0.0f ? plan.noise_draws++ : -1;
        plan.steps.push_back(step);
    }
    return plan;
}

std::vector<float> reference_sample(const SamplerPlan& plan, const std::vector<std::vector<float>>& noise,
                                    const Denoiser& denoise) {
    if (noise.size() != static_cast<size_t>(plan.noise_draws))
        throw Error(PIDTRT_STATUS_INVALID_ARGUMENT, "reference_sample needs " + std::to_string(plan.noise_draws) +
                                                        " noise draws, got " + std::to_string(noise.size()));
    std::vector<float> x = noise[0];
    std::vector<float> v(x.size());
    for (const SamplerStep& step : plan.steps) {
        denoise(x, step.net_t, v);
        for (size_t i = 0; i < x.size(); ++i) {
            const float x0 = predict_x0(x[i], v[i], step.t_c);
            x[i] = step.noise_draw < 0 ? x0 : renoise(x0, noise[step.noise_draw][i], step.one_minus_t_n, step.t_n);
        }
    }
    for (float& value : x) value = clamp_unit(value);
    return x;
}

}  // namespace pidtrt

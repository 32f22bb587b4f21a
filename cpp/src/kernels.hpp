// Launchers of the sampler's CUDA kernels (kernels.cu). Every launcher only enqueues work on
// `stream` (so it can be captured into a CUDA graph) and returns the launch status.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace pidtrt::kernels {

// Where the sampler's Gaussian draws come from: `injected` [draws][n] when not null, else
// Philox4x32-10 keyed by the seed stored at the device address `seed` (read at run time, so a
// replayed graph picks up a new seed).
struct NoiseSource {
    const float* injected = nullptr;
    const uint64_t* seed = nullptr;
};

cudaError_t round_to_bf16(float* data, size_t n, cudaStream_t stream);
cudaError_t fill(float* data, size_t n, float value, cudaStream_t stream);
// x = draw 0
cudaError_t initial_sample(float* x, size_t n, NoiseSource noise, cudaStream_t stream);
// x = x0 = float32(double(x) - double(t_c) * double(v))
cudaError_t predict_x0(float* x, const float* v, size_t n, float t_c, cudaStream_t stream);
// x = float32(1 - t_n) * x0 + t_n * draw[noise_draw]
cudaError_t predict_x0_and_renoise(float* x, const float* v, size_t n, float t_c, float t_n, float one_minus_t_n,
                                   NoiseSource noise, int noise_draw, cudaStream_t stream);
// Clamp x [B, 3, H, W] to [-1, 1] and write it as `format` (a pidtrt_output_format).
cudaError_t write_output(const float* x, void* out, int format, int batch, int height, int width,
                         cudaStream_t stream);

}  // namespace pidtrt::kernels

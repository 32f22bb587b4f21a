#include "kernels.hpp"

#include "philox.hpp"
#include "pid_trt.h"
#include "sampler_math.hpp"

namespace pidtrt::kernels {
namespace {

constexpr int kThreads = 256;

// Grid for a grid-stride loop over `items` work items.
unsigned blocks_for(size_t items) {
    const size_t blocks = (items + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

// Each thread handles one Philox block of 4 consecutive elements (the tail block may be partial).
__device__ __forceinline__ Normal4 draw4(NoiseSource noise, int draw, size_t n, size_t group) {
    if (noise.injected == nullptr) return philox_normal4(*noise.seed, static_cast<uint32_t>(draw), group);
    Normal4 out{};
    const float* src = noise.injected + static_cast<size_t>(draw) * n;
    for (int lane = 0; lane < 4; ++lane)
        if (group * 4 + lane < n) out.v[lane] = src[group * 4 + lane];
    return out;
}

__global__ void round_to_bf16_kernel(float* data, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        data[i] = round_bf16(data[i]);
}

__global__ void fill_kernel(float* data, size_t n, float value) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        data[i] = value;
}

__global__ void initial_sample_kernel(float* x, size_t n, NoiseSource noise) {
    const size_t groups = (n + 3) / 4;
    for (size_t g = blockIdx.x * size_t(blockDim.x) + threadIdx.x; g < groups; g += size_t(gridDim.x) * blockDim.x) {
        const Normal4 eps = draw4(noise, 0, n, g);
        for (int lane = 0; lane < 4; ++lane)
            if (g * 4 + lane < n) x[g * 4 + lane] = eps.v[lane];
    }
}

__global__ void predict_x0_kernel(float* x, const float* v, size_t n, float t_c) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        x[i] = pidtrt::predict_x0(x[i], v[i], t_c);
}

__global__ void predict_x0_and_renoise_kernel(float* x, const float* v, size_t n, float t_c, float t_n,
                                              float one_minus_t_n, NoiseSource noise, int noise_draw) {
    const size_t groups = (n + 3) / 4;
    for (size_t g = blockIdx.x * size_t(blockDim.x) + threadIdx.x; g < groups; g += size_t(gridDim.x) * blockDim.x) {
        const Normal4 eps = draw4(noise, noise_draw, n, g);
        for (int lane = 0; lane < 4; ++lane) {
            const size_t i = g * 4 + lane;
            if (i < n) x[i] = pidtrt::renoise(pidtrt::predict_x0(x[i], v[i], t_c), eps.v[lane], one_minus_t_n, t_n);
        }
    }
}

__global__ void write_f32_kernel(const float* x, float* out, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        out[i] = clamp_unit(x[i]);
}

__global__ void write_u8_nchw_kernel(const float* x, uint8_t* out, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        out[i] = to_u8(clamp_unit(x[i]));
}

// One thread per pixel: gathers the 3 planes into interleaved RGB.
__global__ void write_u8_nhwc_kernel(const float* x, uint8_t* out, int batch, size_t plane) {
    const size_t pixels = size_t(batch) * plane;
    for (size_t p = blockIdx.x * size_t(blockDim.x) + threadIdx.x; p < pixels; p += size_t(gridDim.x) * blockDim.x) {
        const size_t b = p / plane, offset = p % plane;
        for (int c = 0; c < 3; ++c) out[p * 3 + c] = to_u8(clamp_unit(x[(b * 3 + c) * plane + offset]));
    }
}

}  // namespace

cudaError_t round_to_bf16(float* data, size_t n, cudaStream_t stream) {
    round_to_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(data, n);
    return cudaGetLastError();
}

cudaError_t fill(float* data, size_t n, float value, cudaStream_t stream) {
    fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(data, n, value);
    return cudaGetLastError();
}

cudaError_t initial_sample(float* x, size_t n, NoiseSource noise, cudaStream_t stream) {
    initial_sample_kernel<<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(x, n, noise);
    return cudaGetLastError();
}

cudaError_t predict_x0(float* x, const float* v, size_t n, float t_c, cudaStream_t stream) {
    predict_x0_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, v, n, t_c);
    return cudaGetLastError();
}

cudaError_t predict_x0_and_renoise(float* x, const float* v, size_t n, float t_c, float t_n, float one_minus_t_n,
                                   NoiseSource noise, int noise_draw, cudaStream_t stream) {
    predict_x0_and_renoise_kernel<<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(x, v, n, t_c, t_n, one_minus_t_n,
                                                                                   noise, noise_draw);
    return cudaGetLastError();
}

cudaError_t write_output(const float* x, void* out, int format, int batch, int height, int width,
                         cudaStream_t stream) {
    const size_t plane = size_t(height) * width, n = size_t(batch) * 3 * plane;
    switch (format) {
        case PIDTRT_OUTPUT_F32_NCHW:
            write_f32_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, static_cast<float*>(out), n);
            break;
        case PIDTRT_OUTPUT_U8_NCHW:
            write_u8_nchw_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, static_cast<uint8_t*>(out), n);
            break;
        case PIDTRT_OUTPUT_U8_NHWC:
            write_u8_nhwc_kernel<<<blocks_for(size_t(batch) * plane), kThreads, 0, stream>>>(
                x, static_cast<uint8_t*>(out), batch, plane);
            break;
        default:
            return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

}  // namespace pidtrt::kernels

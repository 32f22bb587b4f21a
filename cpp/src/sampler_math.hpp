// Element-wise sampler arithmetic (docs/formats.md, "Sampler block"), shared by the CUDA kernels
// and the host reference. Each operation is rounded on its own, as in upstream's separate torch
// ops: the *_rn helpers keep nvcc from fusing them into FMAs.
#pragma once

#include <cstdint>
#include <cstring>

#include "hd.hpp"

namespace pidtrt {

#if defined(__CUDA_ARCH__)
PIDTRT_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
PIDTRT_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
PIDTRT_HD double dmul_rn(double a, double b) { return __dmul_rn(a, b); }
PIDTRT_HD double dsub_rn(double a, double b) { return __dsub_rn(a, b); }
#else
PIDTRT_HD float mul_rn(float a, float b) { return a * b; }
PIDTRT_HD float add_rn(float a, float b) { return a + b; }
PIDTRT_HD double dmul_rn(double a, double b) { return a * b; }
PIDTRT_HD double dsub_rn(double a, double b) { return a - b; }
#endif

// x0 = float32(double(x) - double(t_c) * double(v))
PIDTRT_HD float predict_x0(float x, float v, float t_c) {
    return static_cast<float>(dsub_rn(static_cast<double>(x), dmul_rn(static_cast<double>(t_c), static_cast<double>(v))));
}

// x = float32(1 - t_n) * x0 + t_n * eps, all float32; one_minus_t_n is computed once as 1.0f - t_n.
PIDTRT_HD float renoise(float x0, float eps, float one_minus_t_n, float t_n) {
    return add_rn(mul_rn(one_minus_t_n, x0), mul_rn(t_n, eps));
}

// clamp to [-1, 1]; NaN passes through like torch.clamp.
PIDTRT_HD float clamp_unit(float x) {
    return x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x);
}

// uint8(trunc((x + 1) * 127.5)) in float32 for x already in [-1, 1]; NaN maps to 0.
PIDTRT_HD uint8_t to_u8(float x) {
    const float scaled = mul_rn(add_rn(x, 1.0f), 127.5f);
    return scaled >= 0.0f ? static_cast<uint8_t>(scaled) : static_cast<uint8_t>(0);
}

// Round to the nearest bfloat16 (ties to even) and back, like tensor.to(torch.bfloat16).float().
PIDTRT_HD float round_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0u) return x;  // NaN stays NaN
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    bits &= 0xFFFF0000u;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

}  // namespace pidtrt

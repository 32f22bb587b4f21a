// Philox4x32-10 counter-based generator (Salmon et al., SC'11; Random123's constants) and the
// Box-Muller normals the sampler draws from it. Same code on host and device.
//
// Stream layout: draw d, element i of a [B, 3, H, W] tensor takes lane i % 4 of the block
// philox(counter = {lo(i / 4), hi(i / 4), d, 0}, key = {lo(seed), hi(seed)}).
// This is NOT torch's CUDA Philox stream; parity runs inject torch's noise instead.
#pragma once

#include <math.h>
#include <cstdint>

#include "hd.hpp"

namespace pidtrt {

struct Philox4x32 {
    uint32_t v[4];
};

PIDTRT_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
    const uint64_t product = static_cast<uint64_t>(a) * b;
    hi = static_cast<uint32_t>(product >> 32);
    lo = static_cast<uint32_t>(product);
}

PIDTRT_HD Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
    constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
    constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key0 += kWeyl0;
            key1 += kWeyl1;
        }
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo32(kMul0, ctr.v[0], hi0, lo0);
        mulhilo32(kMul1, ctr.v[2], hi1, lo1);
        ctr = Philox4x32{{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
    }
    return ctr;
}

// Uniform in (0, 1), never 0 (log stays finite) nor 1: the top 23 bits plus half a step, all exact
// in float32 (24 bits would round the largest value up to 1).
PIDTRT_HD float uniform_open(uint32_t bits) {
    return (static_cast<float>(bits >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

struct Normal4 {
    float v[4];
};

// Four standard normals for block `group` of draw `draw`.
PIDTRT_HD Normal4 philox_normal4(uint64_t seed, uint32_t draw, uint64_t group) {
    const Philox4x32 ctr{{static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32), draw, 0u}};
    const Philox4x32 bits = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    constexpr float kTwoPi = 6.283185307179586f;
    Normal4 out;
    for (int pair = 0; pair < 2; ++pair) {
        const float radius = sqrtf(-2.0f * logf(uniform_open(bits.v[2 * pair])));
        const float angle = kTwoPi * uniform_open(bits.v[2 * pair + 1]);
        out.v[2 * pair] = radius * cosf(angle);
        out.v[2 * pair + 1] = radius * sinf(angle);
    }
    return out;
}

}  // namespace pidtrt

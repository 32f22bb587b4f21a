// Philox4x32-10 against Random123's published known-answer vectors (kat_vectors), and sanity of
// the Box-Muller normals built on it. The same __host__ __device__ code runs in the kernels.
#include <cmath>
#include <set>

#include "check.hpp"
#include "philox.hpp"

namespace {

struct Kat {
    uint32_t ctr[4];
    uint32_t key[2];
    uint32_t expected[4];
};

// Random123 tests/kat_vectors, "philox4x32 10" lines: counter, key, result.
const Kat kKats[] = {
    {{0x00000000, 0x00000000, 0x00000000, 0x00000000}, {0x00000000, 0x00000000},
     {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

}  // namespace

TEST(random123_known_answers) {
    for (const Kat& kat : kKats) {
        const pidtrt::Philox4x32 out =
            pidtrt::philox4x32_10({{kat.ctr[0], kat.ctr[1], kat.ctr[2], kat.ctr[3]}}, kat.key[0], kat.key[1]);
        for (int i = 0; i < 4; ++i) CHECK_EQ(out.v[i], kat.expected[i]);
    }
}

TEST(uniform_is_open_interval) {
    CHECK(pidtrt::uniform_open(0u) > 0.0f);
    CHECK(pidtrt::uniform_open(0xffffffffu) < 1.0f);
    CHECK_EQ(pidtrt::uniform_open(0x80000000u), 0.5f + 0x1p-24f);
    CHECK_EQ(pidtrt::uniform_open(0u), 0x1p-24f);
    CHECK_EQ(pidtrt::uniform_open(0xffffffffu), 1.0f - 0x1p-24f);
}

TEST(normals_depend_on_seed_draw_and_position) {
    const pidtrt::Normal4 a = pidtrt::philox_normal4(42, 0, 0);
    const pidtrt::Normal4 again = pidtrt::philox_normal4(42, 0, 0);
    std::set<float> seen;
    for (int i = 0; i < 4; ++i) {
        CHECK_EQ(a.v[i], again.v[i]);
        seen.insert(a.v[i]);
        seen.insert(pidtrt::philox_normal4(43, 0, 0).v[i]);
        seen.insert(pidtrt::philox_normal4(42, 1, 0).v[i]);
        seen.insert(pidtrt::philox_normal4(42, 0, 1).v[i]);
        seen.insert(pidtrt::philox_normal4(42, 0, uint64_t(1) << 32).v[i]);  // high word of the position
        seen.insert(pidtrt::philox_normal4(uint64_t(42) | (uint64_t(1) << 32), 0, 0).v[i]);  // high word of the seed
    }
    CHECK_EQ(seen.size(), size_t(24));
}

TEST(normals_are_standard) {
    double sum = 0, sum_sq = 0, sum_4 = 0;
    const int groups = 1 << 16;
    for (int g = 0; g < groups; ++g) {
        const pidtrt::Normal4 z = pidtrt::philox_normal4(1234, 3, g);
        for (float v : z.v) {
            CHECK(std::isfinite(v));
            sum += v;
            sum_sq += double(v) * v;
            sum_4 += double(v) * v * v * v;
        }
    }
    const double n = 4.0 * groups, mean = sum / n, var = sum_sq / n - mean * mean, kurtosis = sum_4 / n / (var * var);
    CHECK(std::fabs(mean) < 0.01);      // 5 sigma of the mean estimate is ~0.01 at n = 2^18
    CHECK(std::fabs(var - 1.0) < 0.015);
    CHECK(std::fabs(kurtosis - 3.0) < 0.1);
}

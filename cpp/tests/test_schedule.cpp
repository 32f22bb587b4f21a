// The sampler schedule read from the fixture sidecar: t-lists, net timesteps, noise draws, the
// unrolled plan, and engine profile selection.
#include <cmath>
#include <vector>

#include "check.hpp"
#include "error.hpp"
#include "plan.hpp"
#include "sidecar.hpp"

using pidtrt::Error;

namespace {

const pidtrt::Sidecar& sidecar() {
    static const pidtrt::Sidecar sc = pidtrt::load_sidecar(PIDTRT_FIXTURE);
    return sc;
}

// docs/numerics.md §4: round(linspace(0, 4, N + 1)) picks from the 4-step list; N = 1 is t = 1.
const std::vector<std::vector<double>> kTLists = {
    {},
    {1.0, 0.0},
    {0.999, 0.634, 0.0},
    {0.999, 0.866, 0.342, 0.0},
    {0.999, 0.866, 0.634, 0.342, 0.0},
    {0.999, 0.866, 0.634, 0.634, 0.342, 0.0},
    {0.999, 0.866, 0.866, 0.634, 0.342, 0.342, 0.0},
    {0.999, 0.866, 0.866, 0.634, 0.634, 0.342, 0.342, 0.0},
    {0.999, 0.999, 0.866, 0.634, 0.634, 0.634, 0.342, 0.0, 0.0},
};

}  // namespace

TEST(t_lists_for_1_to_8_steps) {
    for (int n = 1; n <= 8; ++n) {
        const std::vector<float>& t = sidecar().t_list(n);
        CHECK_EQ(t.size(), size_t(n + 1));
        for (int i = 0; i <= n; ++i) CHECK_EQ(t[i], static_cast<float>(kTLists[n][i]));
    }
}

TEST(net_timesteps_are_float32_products) {
    const std::vector<std::vector<float>> expected = {
        {}, {1000}, {999, 634}, {999, 866, 342}, {999, 866, 634, 342}, {999, 866, 634, 634, 342},
        {999, 866, 866, 634, 342, 342}, {999, 866, 866, 634, 634, 342, 342}, {999, 999, 866, 634, 634, 634, 342, 0},
    };
    for (int n = 1; n <= 8; ++n) {
        const std::vector<float> t = sidecar().net_timesteps(n);
        CHECK_EQ(t.size(), size_t(n));
        for (int i = 0; i < n; ++i) {
            CHECK_EQ(t[i], expected[n][i]);
            CHECK_EQ(t[i], static_cast<float>(kTLists[n][i]) * 1000.0f);
        }
    }
}

TEST(noise_draws) {
    const int expected[] = {0, 1, 2, 3, 4, 5, 6, 7, 7};
    for (int n = 1; n <= 8; ++n) CHECK_EQ(sidecar().noise_draws(n), expected[n]);
}

TEST(unknown_step_count) {
    CHECK_THROWS(sidecar().t_list(9), Error,
                 e.status() == PIDTRT_STATUS_NOT_FOUND && check::contains(e.what(), "no t-list for 9 steps") &&
                     check::contains(e.what(), "1, 2, 3, 4, 5, 6, 7, 8"));
    CHECK_THROWS(sidecar().net_timesteps(0), Error, e.status() == PIDTRT_STATUS_NOT_FOUND);
}

TEST(plan_matches_the_upstream_table) {
    // docs/numerics.md §4, the 4-step table (fp32 values as doubles).
    const pidtrt::SamplerPlan plan = pidtrt::make_plan(sidecar(), 4);
    CHECK_EQ(plan.steps.size(), size_t(4));
    CHECK_EQ(plan.noise_draws, 4);
    CHECK_EQ(static_cast<double>(plan.steps[0].t_c), 0.9990000128746033);
    CHECK_EQ(static_cast<double>(plan.steps[1].t_c), 0.8659999966621399);
    CHECK_EQ(static_cast<double>(plan.steps[2].t_c), 0.6340000033378601);
    CHECK_EQ(static_cast<double>(plan.steps[3].t_c), 0.34200000762939453);
    CHECK_EQ(static_cast<double>(plan.steps[0].one_minus_t_n), 0.1340000033378601);
    CHECK_EQ(static_cast<double>(plan.steps[1].one_minus_t_n), 0.3659999966621399);
    CHECK_EQ(static_cast<double>(plan.steps[2].one_minus_t_n), 0.6579999923706055);
    for (int i = 0; i < 3; ++i) CHECK_EQ(plan.steps[i].noise_draw, i + 1);
    CHECK_EQ(plan.steps[3].noise_draw, -1);

    const pidtrt::SamplerPlan eight = pidtrt::make_plan(sidecar(), 8);
    CHECK_EQ(eight.noise_draws, 7);
    CHECK_EQ(eight.steps[7].t_c, 0.0f);  // the extra call at t = 0, then x0 = x
    CHECK_EQ(eight.steps[6].noise_draw, -1);
    CHECK_EQ(eight.steps[7].noise_draw, -1);
}

TEST(profile_selection) {
    const pidtrt::Sidecar& sc = sidecar();
    CHECK_EQ(sc.select_profile(512, 512, 1), 0);   // static exact match
    CHECK_EQ(sc.select_profile(256, 512, 2), 1);   // static, batch within its range
    CHECK_EQ(sc.select_profile(512, 256, 1), 2);   // W and H are not interchangeable
    CHECK_EQ(sc.select_profile(512, 512, 2), 2);   // static batch range excludes 2 -> dynamic
    CHECK_EQ(sc.select_profile(768, 1024, 1), 2);  // inside the dynamic range
    CHECK_THROWS(sc.select_profile(2048, 1024, 1), Error,
                 e.status() == PIDTRT_STATUS_NOT_FOUND && check::contains(e.what(), "covers 2048x1024 (WxH)") &&
                     check::contains(e.what(), "512x512 (static 512x512, batch 1)") &&
                     check::contains(e.what(), "dynamic (dynamic 256..1024x256..1024, batch 1..2)"));
    CHECK_THROWS(sc.select_profile(512, 512, 3), Error, check::contains(e.what(), "with batch 3"));
}

TEST(output_shape_checks) {
    const pidtrt::Sidecar& sc = sidecar();
    sc.check_output_shape(512, 256, 1);
    CHECK_THROWS(sc.check_output_shape(500, 512, 1), Error,
                 e.status() == PIDTRT_STATUS_INVALID_ARGUMENT && check::contains(e.what(), "output width 500"));
    CHECK_THROWS(sc.check_output_shape(512, 48, 1), Error, check::contains(e.what(), "latent scale 32"));
    CHECK_THROWS(sc.check_output_shape(512, 512, 0), Error, check::contains(e.what(), "batch must be >= 1"));
}

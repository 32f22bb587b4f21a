"""The undistilled teacher sampler (docs/numerics.md §5) against upstream's golden teacher runs."""
import json

import pytest
import torch

import pid_trt
from pid_trt import config, registry, teacher
from pid_trt.errors import PiDInputError
from tests.conftest import data_file
from tests.golden import golden_net, load_tensors

NET_CASE = "case_a_flux_v1pt5_square"  # the tiny net upstream's teacher goldens ran
CASES = ["teacher_1_n4_cfg5_128x128_dynshift", "teacher_2_n6_cfg1_128x128_dynshift", "teacher_4_n4_cfg5_128x128_shift3"]


def case_data(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads(data_file("teacher", f"{case}.json").read_text()), load_tensors("teacher", f"{case}.safetensors")


@pytest.fixture(scope="module")
def net():
    return golden_net(NET_CASE)


def assert_close_trajectory(got: torch.Tensor, want: torch.Tensor, median: float = 1e-4, q999: float = 5e-3):
    err = (got - want).abs().flatten()
    assert err.median() <= median and err.quantile(0.999) <= q999, (err.median().item(), err.quantile(0.999).item())


# -- time grid and shift -------------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, shift, grid4, ends25", [
    (2048, 2048, 6.0, [0.99983323, 0.94716883, 0.85689771, 0.66637021, 0],
     ([0.99983323, 0.99293208], [0.34261215, 0.19983342, 0])),
    (3072, 4096, 7.8964440777, [0.99987328, 0.95934111, 0.8873958, 0.72441465, 0],
     ([0.99987328, 0.99462038], [0.40684536, 0.24737106, 0])),
])
def test_time_grids_match_spec_table(height, width, shift, grid4, ends25):
    s = teacher.resolve_shift(height, width)
    assert s == pytest.approx(shift, abs=1e-9)
    g4 = teacher.time_grid(4, s)
    assert g4.dtype == torch.float32 and g4[-1] == 0
    assert g4.tolist() == pytest.approx(grid4, abs=1e-7)
    g25 = teacher.time_grid(25, s)
    assert len(g25) == 26
    assert g25[:2].tolist() == pytest.approx(ends25[0], abs=1e-7)
    assert g25[-3:].tolist() == pytest.approx(ends25[1], abs=1e-7)
    assert (g4 * 1000)[:-1].tolist() == pytest.approx([t * 1000 for t in grid4[:-1]], abs=1e-4)


def test_solver_orders():
    assert teacher.solver_orders(1) == [1]
    assert teacher.solver_orders(2) == [1, 1]
    assert teacher.solver_orders(4) == [1, 2, 2, 1]
    assert teacher.solver_orders(25) == [1] + [2] * 23 + [1]


def test_shift_precedence():
    assert teacher.dynamic_shift(128, 128) == 1.5
    assert teacher.dynamic_shift(128, 192) == 1.6600228795504823
    assert teacher.dynamic_shift(3072, 4096, 4.0, 1024) == pytest.approx(7.444838873)
    assert teacher.resolve_shift(128, 128, shift=3.0) == 3.0
    assert teacher.resolve_shift(128, 128) == 1.5
    assert teacher.resolve_shift(128, 128, dynamic=None) == teacher.STATIC_SHIFT
    with pytest.raises(PiDInputError, match="shift"):
        teacher.resolve_shift(128, 128, shift=0.0)


@pytest.mark.parametrize("case", CASES)
def test_golden_grid_and_shift(case):
    meta, d = case_data(case)
    h, w = meta["params"]["image_hw"]
    s = teacher.resolve_shift(h, w, meta["params"]["shift_arg"])
    assert s == meta["shift"]["used"]
    assert torch.equal(teacher.time_grid(meta["params"]["num_steps"], s), d["time_grid"])
    assert teacher.solver_orders(meta["params"]["num_steps"]) == meta["time_grid"]["solver_orders_per_update"]


# -- solver arithmetic on upstream's recorded values -----------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_solver_update_alone(case):
    _, d = case_data(case)
    xs, x0s, n = d["x_states"], d["x0_pred"], len(d["x_states"])
    x0s = torch.cat([x0s, xs[-1:]])  # the data prediction at t_{N-1} is the final state itself
    updates = teacher.solver_updates(d["time_grid"])
    for k, update in enumerate(updates):
        x = d["z"] if k == 0 else xs[k - 1]
        got = update.apply(x, x0s[k], x0s[k - 1] if k else None)
        assert (got - xs[k]).abs().max() <= 1e-6, k
    assert torch.equal(updates[-1].apply(xs[n - 2], xs[n - 1], x0s[n - 2]), xs[n - 1])


@pytest.mark.parametrize("case", CASES[:2])
def test_first_step_from_recorded_net_outputs(case):
    """Upstream's own first velocities through our loop: x̂0 exact, the state within 1e-6; calls are
    [uncond; cond] in one batch at t·1000."""
    meta, d = case_data(case)
    cfg = meta["params"]["cfg_scale"]
    first = torch.cat([d[k] for k in sorted(d) if k.startswith("net_out_eval")])  # eval0_uncond, eval1_cond
    calls = []

    def replay(x, t_net, y, sigma):
        calls.append((t_net.clone(), y.clone(), sigma.clone()))
        return first if len(calls) == 1 else torch.zeros_like(x)

    states = {}
    teacher.teacher_sample(replay, d["z"], d["time_grid"], d["y_cond"], d["degrade_sigma"], d["y_uncond"], cfg,
                           on_step=states.__setitem__)
    assert torch.equal(teacher.guided_x0(first, d["z"], d["time_grid"][0].item(), cfg), d["x0_pred"][0])
    assert (states[1] - d["x_states"][0]).abs().max() <= 1e-6
    passes = 2 if cfg != 1 else 1
    assert torch.equal(torch.cat([t for t, _, _ in calls]), d["net_timesteps"])
    t_net, y, sigma = calls[0]
    assert len(t_net) == passes and torch.equal(sigma, d["degrade_sigma"].repeat(passes))
    assert torch.equal(y, torch.cat([d["y_uncond"], d["y_cond"]]) if passes == 2 else d["y_cond"])


# -- whole decodes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_golden_teacher_decode(net, case):
    meta, d = case_data(case)
    p = meta["params"]
    states = {}
    out = pid_trt.sample(net, d["lq_latent"], d["y_cond"], d["degrade_sigma"], steps=p["num_steps"],
                         noise=[d["z"]], sampler="teacher", cfg=p["cfg_scale"], negative_y=d["y_uncond"],
                         shift=p["shift_arg"], on_step=states.__setitem__)
    assert sorted(states) == list(range(1, p["num_steps"] + 1))
    for k, x in states.items():
        assert_close_trajectory(x, d["x_states"][k - 1])
    assert (out - d["output"][:, :, 0]).abs().max() <= 2e-2
    diff = (pid_trt.to_uint8(out).int() - d["output_u8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.01
    assert torch.equal(pid_trt.to_uint8(d["output"][:, :, 0]), d["output_u8"])


def test_batched_cfg_equals_two_passes(net):
    _, d = case_data(CASES[0])
    ts = d["time_grid"]
    feats = net.condition(d["lq_latent"], 128, 128)
    feats2 = teacher.cfg_batch(*feats)

    def batched(x, t, y, sigma):
        return net.denoise(x, t, y, sigma, feats2)

    def two_passes(x, t, y, sigma):
        b = len(x) // 2
        return torch.cat([net.denoise(x[i:i + b], t[i:i + b], y[i:i + b], sigma[i:i + b], feats) for i in (0, b)])

    runs = []
    for fn in (batched, two_passes):
        states = {}
        teacher.teacher_sample(fn, d["z"], ts, d["y_cond"], d["degrade_sigma"], d["y_uncond"], 5.0,
                               on_step=states.__setitem__)
        runs.append(states)
    for k in runs[0]:
        assert_close_trajectory(runs[0][k], runs[1][k], median=1e-5, q999=1e-3)
        assert (runs[0][k] - runs[1][k]).abs().max() <= 1e-2


def test_batch_of_two_keeps_each_sample(net):
    """[uncond; cond] ordering for B = 2: each sample decodes as it does alone."""
    _, d = case_data(CASES[0])
    lq = torch.cat([d["lq_latent"], d["lq_latent"].flip(-1)])
    y = torch.cat([d["y_cond"], d["y_uncond"]])
    z = torch.cat([d["z"], d["z"].flip(-1)])
    sigma = torch.tensor([0.25, 0.0])
    kw = dict(steps=2, sampler="teacher", cfg=3.0, negative_y=d["y_uncond"], shift=2.0)
    both = pid_trt.sample(net, lq, y, sigma, noise=[z], **kw)
    for i in range(2):
        alone = pid_trt.sample(net, lq[i:i + 1], y[i:i + 1], sigma[i:i + 1], noise=[z[i:i + 1]], **kw)
        assert (both[i:i + 1] - alone).abs().max() <= 1e-2
        assert_close_trajectory(both[i:i + 1], alone, median=1e-5, q999=1e-3)


def test_bf16_autocast_runs_with_fp32_state(net):
    _, d = case_data(CASES[0])
    states = {}
    out = pid_trt.sample(net, d["lq_latent"], d["y_cond"], d["degrade_sigma"], steps=2, noise=[d["z"]],
                         sampler="teacher", negative_y=d["y_uncond"], precision="bf16", on_step=states.__setitem__)
    assert out.dtype == torch.float32 and states[2].dtype == torch.float32 and torch.isfinite(out).all()


# -- dispatch, defaults and errors (with a stub net that records its calls) ---------------------------------------

class StubNet:
    """Just enough of PiDNet for `sample`: zero velocity, calls recorded."""

    def __init__(self):
        self.config = registry.resolve("flux", "teacher").net.config
        self.calls = []

    def condition(self, lq_latent, height, width):
        return [torch.zeros(len(lq_latent), 1)]

    def denoise(self, x, t, y, sigma, feats):
        assert len(feats[0]) == len(x)
        self.calls.append((tuple(x.shape), t.clone()))
        return torch.zeros_like(x)


def stub_inputs(h=4, w=6):
    return torch.zeros(1, 16, h, w), torch.zeros(1, 8, 2304), torch.zeros(1, 8, 2304)


def test_teacher_defaults_25_steps_cfg5_dynamic_shift():
    stub = StubNet()
    lq, y, neg = stub_inputs()
    pid_trt.sample(stub, lq, y, 0.0, sampler="teacher", negative_y=neg)
    assert len(stub.calls) == config.TEACHER_STEPS
    assert all(shape == (2, 3, 128, 192) for shape, _ in stub.calls)  # one batched [uncond; cond] call per step
    grid = teacher.time_grid(25, teacher.dynamic_shift(128, 192))
    assert torch.equal(torch.stack([t[0] for _, t in stub.calls]), (grid * 1000)[:-1])


def test_teacher_cfg1_is_a_single_pass_and_needs_no_negative():
    stub = StubNet()
    lq, y, _ = stub_inputs()
    pid_trt.sample(stub, lq, y, 0.0, steps=3, sampler="teacher", cfg=1.0, shift=3.0)
    assert [shape for shape, _ in stub.calls] == [(1, 3, 128, 192)] * 3
    assert torch.equal(stub.calls[0][1], (teacher.time_grid(3, 3.0)[:1] * 1000))


def test_student_path_unchanged_by_default():
    stub = StubNet()
    lq, y, _ = stub_inputs()
    pid_trt.sample(stub, lq, y, 0.0)
    assert [t.item() for _, t in stub.calls] == [999.0, 866.0, 634.0, 342.0]


@pytest.mark.parametrize("kwargs, msg", [
    (dict(sampler="teacher"), "negative_y"),
    (dict(sampler="teacher", negative_y=torch.zeros(1, 7, 2304)), "negative_y must be"),
    (dict(sampler="teacher", negative_y=torch.full((1, 8, 2304), float("nan"))), "NaN"),
    (dict(sampler="teacher", cfg=float("inf"), negative_y=torch.zeros(1, 8, 2304)), "cfg"),
    (dict(sampler="teacher", steps=0, cfg=1.0), "steps"),
    (dict(sampler="teacher", cfg=1.0, shift=-1.0), "shift"),
    (dict(cfg=5.0), "sampler='teacher' only"),
    (dict(shift=3.0), "sampler='teacher' only"),
    (dict(sampler="dpm"), "sampler must be"),
])
def test_bad_teacher_arguments_raise_one_line(kwargs, msg):
    stub = StubNet()
    lq, y, _ = stub_inputs()
    with pytest.raises(PiDInputError, match=msg) as e:
        pid_trt.sample(stub, lq, y, 0.0, **kwargs)
    assert "\n" not in str(e.value) and not stub.calls


def test_bad_grid_raises():
    with pytest.raises(PiDInputError, match="time grid"):
        teacher.teacher_sample(lambda *a: None, torch.zeros(1, 3, 16, 16), [1.0, 0.5, 0.0], torch.zeros(1, 8, 32),
                               torch.zeros(1), cfg=1.0)


# -- registry ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, experiment, net_id", [
    ("flux", "PiD_v1pt5_res2kto4k_sr4x_official_flux_undistilled", "V15-16"),
    ("zimage", "PiD_v1pt5_res2kto4k_sr4x_official_flux_undistilled", "V15-16"),
    ("flux2", "PiD_v1pt5_res2kto4k_sr4x_official_flux2_undistilled", "V15-F2"),
    ("flux2-klein-4b", "PiD_v1pt5_res2kto4k_sr4x_official_flux2_undistilled", "V15-F2"),
    ("qwenimage", "PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_undistilled", "V15-16"),
    ("qwenimage-2512", "PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_undistilled", "V15-16"),
])
def test_teacher_registry_entries(backbone, experiment, net_id):
    for ckpt in ("2kto4k_v1pt5_teacher", "teacher", "undistilled"):
        e = registry.resolve(backbone, ckpt)
        assert (e.ckpt, e.experiment, e.net.id) == ("2kto4k_v1pt5_teacher", experiment, net_id)
        assert (e.sampler, e.default_steps, e.default_cfg, e.dynamic_shift) == ("teacher", 25, 5.0, (6.0, 2048))
        assert e.checkpoint_file == f"checkpoints/{experiment}/model_ema_bf16.pth"
    assert (backbone, "2kto4k_v1pt5_teacher") in registry.pairs()
    student = registry.resolve(backbone, "2kto4k_v1pt5")
    assert (student.sampler, student.default_steps, student.default_cfg) == ("student", 4, 1.0)
    net = pid_trt.PiDNet.for_checkpoint(backbone, "2kto4k_v1pt5_teacher", device="meta")
    assert sum(v.numel() for v in net.state_dict().values()) == registry.NET_DEFINITIONS[net_id].params


def test_no_teacher_for_other_backbones():
    with pytest.raises(pid_trt.ConfigError, match="valid pairs"):
        registry.resolve("sd3", "teacher")

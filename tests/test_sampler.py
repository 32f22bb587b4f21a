import json

import pytest
import torch

import pid_trt
from pid_trt.errors import PiDInputError
from pid_trt.sampler import noise_draws
from tests.conftest import data_file
from tests.golden import golden_net, load_tensors

DECODE_CASES = [c["case"] for c in json.loads(data_file("decode", "index.json").read_text())]


def test_t_lists_match_upstream_table():
    assert pid_trt.t_lists() == {
        1: [1.0, 0.0],
        2: [0.999, 0.634, 0.0],
        3: [0.999, 0.866, 0.342, 0.0],
        4: [0.999, 0.866, 0.634, 0.342, 0.0],
        5: [0.999, 0.866, 0.634, 0.634, 0.342, 0.0],
        6: [0.999, 0.866, 0.866, 0.634, 0.342, 0.342, 0.0],
        7: [0.999, 0.866, 0.866, 0.634, 0.634, 0.342, 0.342, 0.0],
        8: [0.999, 0.999, 0.866, 0.634, 0.634, 0.634, 0.342, 0.0, 0.0],
    }
    assert [noise_draws(n) for n in range(1, 9)] == [1, 2, 3, 4, 5, 6, 7, 7]


@pytest.mark.parametrize("case", DECODE_CASES)
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_golden_decode(case, steps):
    net = golden_net(case)
    d = load_tensors("decode", f"{case}_decode_N{steps}.safetensors")
    noise = [d["x_init"]] + [d[f"noise_{i}"] for i in range(1, steps)]
    xs = {}
    out = pid_trt.sample(net, d["lq_latent"], d["y"], d["degrade_sigma"], steps=steps, noise=noise,
                         on_step=lambda i, x: xs.__setitem__(i, x))
    assert torch.equal(torch.tensor(pid_trt.t_list(steps), dtype=torch.float32), d["t_list"])
    for i in range(1, steps + 1):
        assert (xs[i] - d[f"x_after_step_{i}"]).abs().max() <= 2e-3
    assert (out - d["output"]).abs().max() <= 2e-3
    diff = (pid_trt.to_uint8(out).int() - d["output_u8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3


def test_generator_noise_is_drawn_in_upstream_order():
    case = DECODE_CASES[0]
    net = golden_net(case)
    d = load_tensors("decode", f"{case}_decode_N4.safetensors")
    seed = json.loads(data_file("decode", f"{case}_decode.json").read_text())["seed"]
    noise = [d["x_init"]] + [d[f"noise_{i}"] for i in range(1, 4)]
    a = pid_trt.sample(net, d["lq_latent"], d["y"], d["degrade_sigma"], noise=noise)
    b = pid_trt.sample(net, d["lq_latent"], d["y"], d["degrade_sigma"], generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


def test_to_uint8_truncates():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0])
    assert pid_trt.to_uint8(x).tolist() == [0, 63, 127, 254, 255, 255]


@pytest.fixture(scope="module")
def tiny():
    case = "case_c_sdxl_v1_4ch"
    return golden_net(case), load_tensors("decode", f"{case}_decode_N1.safetensors")


@pytest.mark.parametrize("mutate, msg", [
    (lambda z, y, s: (z[:, :3], y, s), "channels"),
    (lambda z, y, s: (z.clone().fill_(float("nan")), y, s), "NaN"),
    (lambda z, y, s: (z, y.clone().fill_(float("inf")), s), "NaN or Inf"),
    (lambda z, y, s: (z, y, torch.tensor([1.5])), r"\[0, 1\]"),
    (lambda z, y, s: (z, y[..., :8], s), "width"),
    (lambda z, y, s: (z, torch.cat([y, y]), s), "batch mismatch"),
    (lambda z, y, s: (z, y, torch.tensor([0.1, 0.2])), "batch mismatch"),
])
def test_bad_inputs_raise_one_line(tiny, mutate, msg):
    net, d = tiny
    z, y, s = mutate(d["lq_latent"], d["y"], d["degrade_sigma"])
    with pytest.raises(PiDInputError, match=msg) as e:
        pid_trt.sample(net, z, y, s, steps=1)
    assert "\n" not in str(e.value)


def test_requested_size_must_match_latent(tiny):
    net, d = tiny
    with pytest.raises(PiDInputError, match="does not match the latent"):
        pid_trt.sample(net, d["lq_latent"], d["y"], d["degrade_sigma"], steps=1, size=(100, 100))
    out = pid_trt.sample(net, d["lq_latent"], d["y"], 0.4, steps=1, size=(96, 160))
    assert out.shape == (1, 3, 160, 96)


def test_more_than_four_steps_warn(tiny):
    net, d = tiny
    with pytest.warns(UserWarning, match="repeat timesteps"):
        pid_trt.sample(net, d["lq_latent"], d["y"], d["degrade_sigma"], steps=5)

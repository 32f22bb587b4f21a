import re

import pytest
import torch

import pid_trt
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError
from pid_trt.model import Tables
from tests.golden import NET_CASES, golden_net, load_tensors


@pytest.mark.parametrize("case", NET_CASES)
def test_golden_forward(case):
    net = golden_net(case)
    io = load_tensors("net", f"{case}_io.safetensors")
    with torch.no_grad():
        out = net(io["x"], io["t"], io["y"], lq_latent=io["lq_latent"], degrade_sigma=io["degrade_sigma"])
    ref = io["output"]
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_component_tables_exact():
    comp = load_tensors("net", "components.safetensors")
    tab = Tables()
    assert torch.equal(tab.timestep(comp["timestep_freq.dim256.t"]), comp["timestep_freq.dim256.emb"])
    for key in comp:
        m = re.fullmatch(r"rope2d_ntk\.hd(\d+)\.grid(\d+)x(\d+)\.ref(\d+)x(\d+)\.cos", key)
        if m:
            hd, gh, gw, rh, rw = map(int, m.groups())
            cos, sin = tab.rope_2d(gh, gw, hd, rh, rw, "cpu")
            assert torch.equal(cos, comp[key]) and torch.equal(sin, comp[key[:-3] + "sin"]), key
    cos, sin = tab.rope_1d(300, 64, 1e4, "cpu")
    assert torch.equal(cos, comp["rope1d_text.hd64.len300.cos"])
    assert torch.equal(sin, comp["rope1d_text.hd64.len300.sin"])
    pix = tab.pixel_sincos(48, 80, 16, "cpu").reshape(-1, 16)
    assert torch.equal(pix, comp["pixel_sincos.dim16.H48xW80.float32"])


def test_text_longer_than_limit_is_truncated():
    net = golden_net("case_a_flux_v1pt5_square")
    io = load_tensors("net", "case_a_flux_v1pt5_square_io.safetensors")
    y = io["y"]
    long_y = torch.cat([y, torch.randn(1, 9, y.shape[2])], 1)  # 14 tokens > txt_max_length 8
    with torch.no_grad():
        a = net(io["x"], io["t"], long_y, lq_latent=io["lq_latent"], degrade_sigma=io["degrade_sigma"])
        b = net(io["x"], io["t"], long_y[:, :8], lq_latent=io["lq_latent"], degrade_sigma=io["degrade_sigma"])
    assert torch.equal(a, b)


def test_batch_two_equals_two_single_calls():
    net = golden_net("case_c_sdxl_v1_4ch")
    io = load_tensors("net", "case_c_sdxl_v1_4ch_io.safetensors")
    g = torch.Generator().manual_seed(0)
    x2 = torch.cat([io["x"], torch.randn(io["x"].shape, generator=g)])
    y2 = torch.cat([io["y"], io["y"].flip(1)])
    z2 = torch.cat([io["lq_latent"], -io["lq_latent"]])
    t2, s2 = torch.tensor([634.0, 999.0]), torch.tensor([0.4, 0.0])
    with torch.no_grad():
        both = net(x2, t2, y2, lq_latent=z2, degrade_sigma=s2)
        for i in range(2):
            one = net(x2[i:i + 1], t2[i:i + 1], y2[i:i + 1], lq_latent=z2[i:i + 1], degrade_sigma=s2[i:i + 1])
            assert (both[i:i + 1] - one).abs().max() <= 1e-4 * one.abs().max()


@pytest.mark.parametrize("bad, msg", [
    ({"enable_ed": True}, "enable_ed"),
    ({"lq_in_channels": 3}, "lq_in_channels"),
    ({"not_a_key": 1}, "unknown PidNet config key"),
    ({"lq_gate_type": "plain"}, "lq_gate_type"),
])
def test_config_rejects_unofficial_paths(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        pid_trt.PiDNet.from_config(bad)


def test_config_defaults_are_official_v1():
    assert NetConfig.from_dict({})["hidden_size"] == 1536

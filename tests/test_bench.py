import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

import pid_trt.model
from pid_trt.bench import add_ratios, cond_flops, denoise_flops, percentile
from pid_trt.cli import _register, cli
from pid_trt.registry import resolve
from pid_trt.tiny import tiny_inputs, tiny_net

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _explicit_attention(q, k, v):
    # CPU SDPA is one fused op that the flop counter does not see; the same products spelled out are counted
    return ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1) @ v


@pytest.mark.parametrize("structure", ["V15-16", "V1-16", "V15-F2"])
def test_flop_model_matches_torch_flop_counter(structure, monkeypatch):
    monkeypatch.setattr(pid_trt.model, "attention", _explicit_attention)
    net = tiny_net(structure, patch_depth=3)  # odd depth: the last σ-gate covers one block
    inp = tiny_inputs(net, (2, 3), batch=2, text_len=5)
    h, w = 2 * net.pixels_per_latent, 3 * net.pixels_per_latent
    with torch.no_grad(), FlopCounterMode(display=False) as counted:
        feats = net.condition(inp["lq_latent"], h, w)
    assert cond_flops(net.config, h, w, batch=2) == counted.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counted:
        net.denoise(torch.randn(2, 3, h, w), torch.tensor([866.0, 342.0]), inp["y"], inp["degrade_sigma"], feats)
    assert denoise_flops(net.config, h, w, text_len=5, batch=2) == counted.get_total_flops()


def test_flop_model_hand_count_and_published_scale():
    # text longer than txt_max_length is truncated in the net, so it costs nothing more
    cfg = tiny_net(patch_depth=2).config
    assert denoise_flops(cfg, 64, 64, 8) == denoise_flops(cfg, 64, 64, 100)
    # one 2048² step of the official v1.5 net: ~43.1 TFLOP by an independent hand count (patch Linear 13.2,
    # patch attention 23.9, pixel Linear 3.5, pixel attention 2.5 TFLOP; 300 text tokens, batch 1)
    assert denoise_flops(resolve("flux", "2kto4k").net.config, 2048, 2048, 300) / 1e12 == pytest.approx(43.16, abs=0.01)


def test_percentile_and_ratios():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    rows = add_ratios([{"backend": "torch", "size": "64x64", "batch": 1, "p50_ms": 10.0},
                       {"backend": "onnxruntime", "size": "64x64", "batch": 1, "p50_ms": 5.0}])
    assert [r["speedup"] for r in rows] == [1.0, 2.0] and rows[1]["baseline"] == "torch"


def test_bench_torch_vs_onnxruntime_on_cpu(tmp_path):
    _register()
    res = CliRunner().invoke(cli, ["bench", "--backend", "torch", "--backend", "onnxruntime", "--tiny-override",
                                   "patch_depth=2", "--tiny-override", "pixel_depth=1", "--size", "64x96",
                                   "--warmup", "1", "--iters", "3", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"]
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] == pytest.approx(rows[0]["p50_ms"] / rows[1]["p50_ms"])
    assert all(r["p90_ms"] >= r["p50_ms"] > 0 and r["peak_mib"] > 0 and r["images_per_s"] > 0 for r in rows)
    table = res.output[res.output.index("backend"):]
    assert "torch" in table and "onnxruntime" in table and "speedup" in table and "1.00x" in table


def test_bench_missing_onnx_dir_exits_2(tmp_path):
    _register()
    res = CliRunner().invoke(cli, ["bench", "--onnx-dir", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "error:" in res.output


def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--smoke", "--warmup", "0", "--iters", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["passed"] and result["smoke"] and [r["size"] for r in result["sizes"]] == ["64x64", "64x96"]
    assert all(r["identical"] and r["eager"]["ms"] > 0 and r["graph"]["tflops"] > 0 for r in result["sizes"])
    assert result["tensorrt"] == {"status": "skipped", "reason": "--smoke runs on the CPU; TensorRT needs a GPU"}
    assert "PASS" in proc.stdout.splitlines()[-1]


def test_gpu_check_says_why_tensorrt_is_skipped():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    part = gpu_check.tensorrt_part(gpu_check.parse_args([]), 0.0)
    if importlib.util.find_spec("tensorrt") is None:
        assert part == {"status": "skipped", "reason": 'TensorRT is not importable here (pip install "pid-trt[tensorrt]")'}
    else:
        assert part["status"] in ("ran", "skipped")

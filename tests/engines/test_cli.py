"""`pid-trt build` and `pid-trt engines` through click (no TensorRT needed; none is faked)."""
from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from pid_trt.cli import _register, cli
from pid_trt.engines.build import make_sidecar
from pid_trt.engines.detect import GpuInfo
from pid_trt.engines.plan import make_plan
from pid_trt.engines.store import EngineStore
from tests.engines.manifest import flux2_manifest, write_onnx_dir

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def run(*args):
    _register()
    return CliRunner().invoke(cli, list(args))


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the message when it is missing")
def test_inspect_engine_without_tensorrt_is_one_line(tmp_path):
    (tmp_path / "pid_x.denoise.engine").write_bytes(b"plan")
    for target in (tmp_path / "pid_x.denoise.engine", tmp_path):  # a file, or a directory holding engines
        result = run("inspect", str(target))
        assert result.exit_code == 2 and result.output.startswith("error: TensorRT is not installed")
        assert len(result.output.strip().splitlines()) == 1
    result = run("inspect", str(tmp_path / "missing.engine"))
    assert result.exit_code == 2 and "is not a TensorRT engine" in result.output


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the message when it is missing")
def test_build_without_tensorrt_is_one_line(tmp_path):
    result = run("build", "--backbone", "flux2", "--ckpt", "2kto4k", "--random-weights", "--engine-dir", str(tmp_path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: TensorRT is not installed") and 'pip install "pid-trt[tensorrt]"' in lines[0]
    assert not any(tmp_path.iterdir())  # nothing exported or written


def test_dry_run_prints_the_plan(tmp_path):
    result = run("build", "--backbone", "flux2", "--ckpt", "2kto4k", "--random-weights", "--dry-run",
                 "--engine-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "to be exported" in out and "bf16" in out
    assert "checkpoint:   RANDOM" in out and "_bf16_wRANDOM_p" in out
    assert "4096x3072    static" in out  # a static profile for 4096×3072 …
    assert "dynamic      dynamic  1536..4096 x 1536..4096" in out  # … and the dynamic one covers it too
    assert "trt<unknown>_sm<unknown>" in out if not HAS_TENSORRT else "engine name:" in out
    assert "1,401,447,619 params × 2 B" in out and "GiB" in out
    assert not any(tmp_path.iterdir())


def test_dry_run_with_an_onnx_dir(tmp_path):
    onnx_dir = write_onnx_dir(tmp_path / "onnx", flux2_manifest(precision="fp8"))
    result = run("build", "--onnx-dir", str(onnx_dir), "--shape", "4096×3072", "--batch", "1:1:2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "existing: cond.onnx, denoise.onnx" in result.output and "precision:    fp8" in result.output
    assert "_flux2_2kto4k_v1pt5_fp8_wRANDOM_q<unknown>_p" in result.output and "batch 1..2" in result.output


@pytest.mark.parametrize("args, message", [
    (("--shape", "4096x"), "error: Invalid value for '--size' / '--shape': '4096x' is not a size"),
    (("--shape", "4100x3072"), "error: 4100x3072: width and height must be multiples of 64"),
    (("--batch", "4:1"), "error: bad batch range '4:1'"),
    (("--ckpt", "9k"), "error: no official PiD checkpoint for --backbone flux2 --ckpt 9k"),
])
def test_bad_input_is_one_line(args, message):
    result = run("build", "--backbone", "flux2", "--random-weights", "--dry-run", *args)
    assert result.exit_code == 2 and result.output.strip().startswith(message)
    assert len(result.output.strip().splitlines()) == 1


def test_flags_contradicting_the_manifest(tmp_path):
    onnx_dir = write_onnx_dir(tmp_path / "onnx", flux2_manifest())
    result = run("build", "--onnx-dir", str(onnx_dir), "--precision", "fp16", "--dry-run")
    assert result.exit_code == 2 and "contradicts the ONNX manifest (bf16)" in result.output
    result = run("build", "--onnx-dir", str(onnx_dir), "--backbone", "flux", "--dry-run")
    assert result.exit_code == 2 and "contradict the ONNX manifest" in result.output
    result = run("build", "--onnx-dir", str(tmp_path), "--dry-run")
    assert result.exit_code == 2 and "is not a pid-trt ONNX directory" in result.output


def test_engines_lists_finished_and_unfinished(tmp_path):
    manifest = flux2_manifest()
    plan = make_plan(backbone="flux2", ckpt="2kto4k", precision=None,
                     onnx_dir=write_onnx_dir(tmp_path / "onnx", manifest), engine_dir=tmp_path / "engines")
    gpu = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
    name = plan.name("10.13.0.35", gpu)
    EngineStore(plan.engine_dir).publish(name, {"cond": b"c", "denoise": b"d" * 1000},
                                         make_sidecar(plan, manifest, "10.13.0.35", gpu, None))
    (plan.engine_dir / "pid_flux_2k_bf16_wRANDOM_p00000000_trt10.13.0.35_sm90.denoise.engine").write_bytes(b"partial")

    result = run("engines", str(plan.engine_dir))
    assert result.exit_code == 0, result.output
    header, finished, unfinished = result.output.strip().splitlines()  # sorted by name
    assert header.split() == ["name", "backbone/ckpt", "precision", "weights", "profiles", "TRT", "SM", "size",
                              "status"]
    assert finished.split()[:9] == [name, "flux2/2kto4k_v1pt5", "bf16", "RANDOM", "12", "static", "+", "dynamic",
                                    "10.13.0.35"]
    assert finished.rstrip().endswith("ok") or HAS_TENSORRT
    assert unfinished.startswith("pid_flux_2k_bf16_") and unfinished.endswith("unfinished: engine file without sidecar")

    as_json = json.loads(run("engines", str(plan.engine_dir), "--json").output)
    assert [r["status"] for r in as_json][1] == "unfinished: engine file without sidecar"
    (tmp_path / "empty").mkdir()
    assert "no engines in" in run("engines", str(tmp_path / "empty")).output
    missing = run("engines", str(tmp_path / "missing"))
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ") and "does not exist" in missing.stderr


def test_dry_run_of_a_teacher_plans_the_guidance_batch(tmp_path):
    result = run("build", "--backbone", "flux", "--ckpt", "teacher", "--dry-run", "--random-weights",
                 "--engine-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "sampler:      teacher (guidance runs [uncond; cond] as one batch of 2B" in result.output
    assert "batch 1..2" in result.output and "batch 1..1" not in result.output


def test_fp8_memory_estimate(tmp_path):
    from pid_trt.export.fp8 import fp8_params
    from pid_trt.memory import activation_bytes

    plans = {p: make_plan(backbone="flux2", ckpt="2kto4k", precision=p, onnx_dir=None, engine_dir=tmp_path,
                          random_weights=True)
             for p in ("fp32", "bf16", "fp8")}
    profile = plans["fp8"].profiles[0]
    config = plans["fp8"].net_config

    def activations(precision):
        return activation_bytes(config, profile.width[2], profile.height[2], profile.batch[2], precision)

    # fp8 graphs keep activations in their 16-bit base between the Q/DQ pairs
    assert activations("fp8") == activations("bf16")
    assert activations("fp32") == 2 * activations("bf16")
    params = plans["fp8"].params
    quantized = fp8_params(config)
    assert 0.5 * params < quantized < params  # the big Linear layers; adaLN, embedders, heads stay 16-bit
    assert plans["fp8"].weight_bytes == quantized + 2 * (params - quantized)
    assert plans["bf16"].weight_bytes == 2 * params
    result = run("build", "--backbone", "flux2", "--ckpt", "2kto4k", "--precision", "fp8", "--dry-run",
                 "--random-weights", "--engine-dir", str(tmp_path))
    assert f"{quantized:,} in FP8 Linear layers × 1 B" in result.output

"""Real TensorRT builds (GPU machines with TensorRT only; skipped elsewhere — TensorRT is never faked)."""
from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                       reason='TensorRT is not installed (pip install "pid-trt[tensorrt]")'),
]


@pytest.fixture(scope="module")
def gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    from pid_trt.engines.detect import gpu_info

    return gpu_info()


def test_parser_errors_are_shown(tmp_path, gpu):
    from pid_trt import errors
    from pid_trt.engines import trt

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(errors.EngineBuildError, match="TensorRT's ONNX parser rejected .*bad.onnx: ") as e:
        trt.build_serialized_engine(bad, [], progress=False)
    assert "\n" not in str(e.value)


def test_build_tiny_engines_then_up_to_date(tmp_path, gpu, caplog):
    import tensorrt

    from pid_trt import export
    from pid_trt.engines.build import run_build
    from pid_trt.engines.plan import make_plan
    from pid_trt.engines.store import find_engine
    from pid_trt.tiny import tiny_net

    onnx_dir = export.export_onnx(tmp_path / "onnx", net=tiny_net("V15-16"), backbone="flux", ckpt="2kto4k_v1pt5",
                                  precision="fp32")
    plan = make_plan(backbone=None, ckpt=None, precision=None, onnx_dir=onnx_dir, shapes=[(256, 256), (512, 256)],
                     batch=(1, 1, 2), engine_dir=tmp_path / "engines", opt_level=0)
    path = run_build(plan, progress=False)
    sidecar = json.loads(path.read_text())
    assert sidecar["tensorrt_version"] == tensorrt.__version__
    assert sidecar["gpu"]["compute_capability"] == gpu.compute_capability
    runtime = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.WARNING))
    for graph in ("cond", "denoise"):
        engine = runtime.deserialize_cuda_engine((plan.engine_dir / sidecar["engines"][graph]["file"]).read_bytes())
        assert engine is not None and engine.num_optimization_profiles == 2
    assert plan.timing_cache_path(sidecar["tensorrt_version"], gpu).stat().st_size > 0

    caplog.clear()
    with caplog.at_level("INFO", logger="pid_trt"):
        assert run_build(plan, progress=False) == path
    assert caplog.messages == [f"up to date: {path}"]
    lookup = find_engine(plan.engine_dir, "flux", "2kto4k", "fp32", trt_version=tensorrt.__version__,
                         compute_capability=gpu.compute_capability, width=512, height=256, batch=2)
    assert lookup.require() == path
    # `pid-trt inspect` reads the same engines back: layers with their precisions, and both profiles
    from pid_trt.engines.inspect import inspect_engine

    info = inspect_engine(plan.engine_dir)
    denoise = info[sidecar["engines"]["denoise"]["file"]]
    assert len(denoise["profiles"]) == 2 and set(denoise["profiles"][0]) >= {"x", "t", "y", "degrade_sigma"}
    assert denoise["layers"] and denoise["layer_precisions"].get("fp32", 0) > 0

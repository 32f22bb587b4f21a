"""Every exported structure at every reduced precision is a graph TensorRT 10's ONNX parser takes and whose attention
it can fuse (the rules of tests/tensorrt_onnx.py, onnx-tensorrt's support matrix in tests/data/tensorrt).

The seven official structures, shrunk (the `shallow_exports` fixture of tests/conftest.py), at fp16 and fp8 here and
at bf16 in tests/test_export_tensorrt_bf16.py (a module of its own, so the two sweeps run on both pytest-xdist
workers); fp32 graphs are checked in tests/test_export.py on that module's exports. The fp8 graphs are the fp16
exports with the Q/DQ pass applied to a copy, which is what `export_onnx(precision="fp8")` does after the same trace
(tests/test_export_fp8.py runs that end to end). The V15-16 exports are labelled as the flux teacher checkpoint, so
their manifests and sidecars show the teacher.
"""
import json
import subprocess

import onnx
import pytest

from pid_trt.config import NET_DEFINITIONS
from pid_trt.engines.build import make_sidecar
from pid_trt.engines.detect import GpuInfo
from pid_trt.engines.plan import make_plan
from pid_trt.export import read_manifest
from tests.tensorrt_onnx import MATRIX, problems

STRUCTURES = sorted(NET_DEFINITIONS)
PRECISIONS = ("fp16", "fp8")


def test_support_matrix_is_tensorrt_10():
    assert MATRIX["source"]["branch"] == "10.1-GA" and MATRIX["opset"] == {"min": 9, "max": 20}
    assert MATRIX["operators"]["MatMul"] == ["BF16", "FP16", "FP32"] and MATRIX["operators"]["Col2Im"] is None


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_graphs_meet_tensorrt_import_and_fusion_rules(shallow_exports, structure, precision):
    _, out = shallow_exports(structure, precision)
    graphs = read_manifest(out)["graphs"]
    for graph in graphs.values():
        assert problems(out / graph["file"]) == [], (structure, precision, graph["file"])
    if precision == "fp8":  # the tiny nets' head dims (24, 16) get no FP8 attention, only FP8 Linear layers
        ops = {n.op_type for n in onnx.load(str(out / "denoise.onnx")).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.slow
def test_teacher_export_and_its_engines_say_teacher(shallow_exports, tmp_path):
    _, out = shallow_exports("V15-16", "fp16")
    manifest = read_manifest(out)
    sampler = manifest["sampler"]
    assert sampler["kind"] == "teacher" and "t_lists" not in sampler
    assert (sampler["default_steps"], sampler["default_cfg"]) == (25, 5.0)
    assert sampler["time_grid"]["shift"] == {"dynamic": {"base": 6.0, "size": 2048}, "static": 6.0}
    meta = {p.key: p.value for p in onnx.load(str(out / "denoise.onnx")).metadata_props}
    assert json.loads(meta["sampler"]) == sampler and "t_list" not in meta
    plan = make_plan(backbone=None, ckpt=None, precision=None, onnx_dir=out, engine_dir=tmp_path)
    assert plan.entry.sampler == "teacher" and all(p.batch == (1, 2, 2) for p in plan.profiles)  # guidance: 2B
    sidecar = make_sidecar(plan, manifest, "10.13.0", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), None)
    assert sidecar["sampler"] == sampler
    from tests.test_cpp_sidecar import _tool

    sidecar["name"] = "pid_teacher_from_export"
    (tmp_path / "teacher.json").write_text(json.dumps(sidecar))
    result = subprocess.run([str(_tool()), "--print-schedule", str(tmp_path / "teacher.json")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and "undistilled teacher checkpoint" in result.stderr  # refused, never misread

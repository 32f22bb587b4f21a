"""The bf16 part of the TensorRT import sweep of tests/test_export_tensorrt.py: every official structure, shrunk,
exported in bf16 meets the rules of tests/tensorrt_onnx.py (a module of its own, so that pytest-xdist can run it on
one worker while the fp16/fp8 part runs on the other)."""
import pytest

from pid_trt.config import NET_DEFINITIONS
from pid_trt.export import read_manifest
from tests.tensorrt_onnx import problems


@pytest.mark.slow
@pytest.mark.parametrize("structure", sorted(NET_DEFINITIONS))
def test_bf16_graphs_meet_tensorrt_import_and_fusion_rules(shallow_exports, structure):
    _, out = shallow_exports(structure, "bf16")
    for graph in read_manifest(out)["graphs"].values():
        assert problems(out / graph["file"]) == [], (structure, graph["file"])

"""ServeConfig: one source, validated fields, resource defaults; one-line errors."""
import pytest

pytest.importorskip("pydantic", reason="pid_trt.serve needs pydantic: pip install 'pid-trt[serve]'")

from pid_trt.errors import PiDInputError
from pid_trt.serve.config import ServeConfig


@pytest.mark.parametrize("args, message", [
    ({}, "exactly one of engine_dir, onnx_dir or checkpoint"),
    ({"onnx_dir": "a", "engine_dir": "b"}, "exactly one of"),
    ({"checkpoint": "m.pth"}, "needs backbone"),
    ({"onnx_dir": "a", "replicas": 2, "autoscaling": {"max_replicas": 4}}, "replicas or autoscaling"),
    ({"onnx_dir": "a", "max_batch_size": 0}, "max_batch_size: Input should be greater than or equal to 1"),
    ({"onnx_dir": "a", "max_size": "big"}, "'big' is not a size"),
    ({"onnx_dir": "a", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"onnx_dir": "a", "replicas": "many"}, "replicas"),
])
def test_refusals_are_one_line(args, message):
    with pytest.raises(PiDInputError) as e:
        ServeConfig.parse(args)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_defaults_and_resources():
    cpu = ServeConfig.parse({"onnx_dir": "onnx"}, max_batch_size=4)
    assert cpu.source.name == "onnx" and cpu.ongoing_requests() == 8
    assert cpu.gpus() == 0 and cpu.replica_device() == "cpu"  # this machine has no CUDA
    engines = ServeConfig.parse(engine_dir="engines")
    assert engines.gpus() == 1 and engines.replica_device() == "cuda"
    assert ServeConfig.parse(engines, gpus_per_replica=0.5).gpus() == 0.5
    assert ServeConfig.parse(onnx_dir="o", replicas="auto", autoscaling={"max_replicas": 2}).replicas == "auto"

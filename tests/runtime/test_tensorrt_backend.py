"""Engine selection of the TensorRT backend, tested up to the point where TensorRT itself is needed."""
import importlib.util
import json

import pytest

from pid_trt.engines.store import EngineStore
from pid_trt.errors import MissingDependencyError, PiDInputError
from pid_trt.runtime import PiDDecoder
from tests.conftest import data_file


@pytest.fixture()
def engine_dir(tmp_path):
    template = json.loads(data_file("sidecar", "pid_tiny_fixture.json").read_text())
    store = EngineStore(tmp_path)
    for precision in ("bf16", "fp16"):
        sidecar = {**template, "backbone": "flux", "ckpt": "2kto4k_v1pt5", "precision": precision}
        name = f"pid_flux_2kto4k_v1pt5_{precision}_p0000000_trt10.13.0_sm90"
        store.publish(name, {"cond": b"not an engine", "denoise": b"not an engine"}, sidecar)
    return tmp_path


def test_ambiguous_engine_dir_asks_to_choose(engine_dir):
    with pytest.raises(PiDInputError, match="2 matching engine sets"):
        PiDDecoder.load(engine_dir)


def test_unique_choice_needs_tensorrt(engine_dir):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; loading these placeholder engines would be meaningless")
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        PiDDecoder.load(engine_dir, backbone="flux", ckpt="2kto4k", precision="fp16")

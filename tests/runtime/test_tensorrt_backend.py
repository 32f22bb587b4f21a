"""Engine selection of the TensorRT backend, tested up to the point where TensorRT itself is needed."""
import importlib.util
import json

import pytest
import torch

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


def _backend(sidecar: dict):
    """The backend's selection logic without engines (what runs before TensorRT is called)."""
    from pid_trt.engines.profiles import Profile
    from pid_trt.runtime.tensorrt import TensorRTBackend

    be = TensorRTBackend.__new__(TensorRTBackend)
    be.sidecar, be.profiles = sidecar, [Profile.from_json(p) for p in sidecar["profiles"]]
    be.text_length = 300
    return be


def test_profile_errors_name_the_build_option_that_fixes_them():
    be = _backend(json.loads(data_file("sidecar", "pid_tiny_fixture.json").read_text()))
    assert be._profile(1, 512, 512) == 0 and be._profile(2, 768, 640) == 2
    with pytest.raises(PiDInputError, match=r"batch 3 lies outside .* --batch 1:3$"):
        be._profile(3, 512, 512)
    with pytest.raises(PiDInputError, match=r"2048x1024 lies outside .* --size 2048x1024$"):
        be._profile(1, 1024, 2048)
    teacher = _backend(json.loads(data_file("sidecar", "pid_tiny_teacher_fixture.json").read_text()))
    assert teacher._profile(2, 512, 512) == 0  # the guidance batch of one image
    with pytest.raises(PiDInputError, match=r"batch 6 \(a guided teacher decode runs batch 2B\)"):
        teacher._profile(6, 512, 512)


def test_caption_shorter_than_the_engines_text_length_is_one_line():
    be = _backend(json.loads(data_file("sidecar", "pid_tiny_fixture.json").read_text()))
    x = torch.zeros(1, 3, 512, 512)
    with pytest.raises(PiDInputError, match="has 77 tokens; these TensorRT engines take 300") as e:
        be.denoise(x, torch.zeros(1), torch.zeros(1, 77, 2304), torch.zeros(1), [])
    assert "\n" not in str(e.value)

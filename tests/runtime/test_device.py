"""Which device a decode runs on: `resolve_device` with CUDA's availability and device count patched, each rank
binding its GPU, ONNX Runtime never falling back to the CPU silently, and `--device cuda` here (no GPU)."""
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from pid_trt.cli import _register, cli
from pid_trt.errors import MissingDependencyError, PiDInputError
from pid_trt.integrity import sha256_file
from pid_trt.runtime import OnnxRuntimeBackend, resolve_device
from pid_trt.runtime import backends as backends_mod
from pid_trt.runtime import device as device_mod
from pid_trt.tiny import tiny_config


@pytest.fixture()
def gpus(monkeypatch):
    """gpus(n): pretend this machine has n CUDA devices (0: none), outside torchrun unless LOCAL_RANK is set."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


def test_without_a_gpu(gpus):
    gpus(0)
    assert resolve_device() == resolve_device("cpu") == torch.device("cpu")
    for missing in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(PiDInputError, match="no CUDA GPU"):
            resolve_device(missing)


@pytest.mark.parametrize("requested", ["tpu", "gpu", "cuda:x", "mps"])
def test_unknown_devices(gpus, requested):
    gpus(1)
    with pytest.raises(PiDInputError, match="unknown device"):
        resolve_device(requested)


def test_one_gpu_outside_torchrun(gpus):
    gpus(1)
    assert resolve_device() == resolve_device("cuda") == resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(PiDInputError, match="cuda:7 does not exist: this machine has 1 CUDA device"):
        resolve_device("cuda:7")


def test_torchrun_rank_gets_its_own_gpu(gpus, monkeypatch):
    gpus(4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device() == resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(PiDInputError, match="LOCAL_RANK=5 does not exist: this machine has 4"):
        resolve_device()


def test_resolve_binds_nothing_and_use_device_does(gpus, monkeypatch):
    gpus(4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    bound = []
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    device = resolve_device()
    assert bound == []
    assert device_mod.use_device(device) == device and bound == [torch.device("cuda", 2)]
    device_mod.use_device(torch.device("cpu"))
    assert bound == [torch.device("cuda", 2)]


def test_open_decoder_binds_the_decoders_gpu(monkeypatch):
    from pid_trt.workflows import sources

    bound = []

    class Backend:
        device = torch.device("cuda", 3)

    class Decoder:
        backend = Backend
        entry = None
        weights = {"source": "in-memory"}

    monkeypatch.setattr(sources.PiDDecoder, "from_net", lambda *a, **k: Decoder())
    monkeypatch.setattr(sources, "use_device", bound.append)
    sources.open_decoder(tiny=True, backbone="flux", ckpt="2kto4k")
    assert bound == [torch.device("cuda", 3)]


@pytest.fixture()
def identity_onnx_dir(tmp_path):
    """The smallest ONNX directory the backend opens: one Identity graph and a manifest."""
    graph = helper.make_graph([helper.make_node("Identity", ["lq_latent"], ["lq_feat_0"])], "g",
                              [helper.make_tensor_value_info("lq_latent", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("lq_feat_0", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "cond.onnx"))
    manifest = {"format": "pid-trt-onnx", "format_version": 1, "net_config": tiny_config().to_dict(),
                "precision": "fp32", "weights": {"sha256": "0" * 64}, "sampler": {"kind": "distilled",
                "t_lists": {str(n): [1.0, 0.0] for n in range(1, 9)}},
                "graphs": {"cond": {"file": "cond.onnx", "sha256": sha256_file(tmp_path / "cond.onnx"),
                                    "inputs": [], "outputs": []}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_onnxruntime_cuda_falling_back_to_cpu_is_an_error(identity_onnx_dir, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("ONNX Runtime really has CUDA here")
    monkeypatch.setattr(backends_mod, "resolve_device", lambda requested: torch.device("cuda", 0))
    with pytest.raises(MissingDependencyError, match="cannot run on cuda:0"):
        OnnxRuntimeBackend(identity_onnx_dir, "cuda")


def test_onnxruntime_default_is_the_cpu_without_its_cuda_provider(identity_onnx_dir):
    be = OnnxRuntimeBackend(identity_onnx_dir)
    assert be.device == torch.device("cpu") and be.providers == ["CPUExecutionProvider"]
    out = be.cond(torch.ones(1), 0, 0)
    np.testing.assert_array_equal(out[0].numpy(), [1.0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [["parity"], ["bench"],
                                     ["decode", "--tiny", "--backbone", "flux", "--latents", "L",
                                      "--caption-embedding", "E"]])
def test_cli_device_cuda_without_a_gpu_is_one_line(command, tmp_path):
    from safetensors.torch import save_file

    save_file({"lq_latent": torch.zeros(1, 16, 2, 3)}, str(tmp_path / "L"))
    save_file({"y": torch.zeros(1, 8, 32)}, str(tmp_path / "E"))
    _register()
    args = [str(tmp_path / a) if a in ("L", "E") else a for a in command]
    res = CliRunner().invoke(cli, [*args, "--device", "cuda"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: device cuda asked for, but PyTorch sees no CUDA GPU")
    assert res.output.count("\n") == 1 and "Traceback" not in res.output

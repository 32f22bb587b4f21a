"""Nothing the runtime captures in a CUDA graph syncs with the host, draws from the global RNG or copies host data in.

`PiDDecoder.capturable` is the function `decode` captures on CUDA. Here it runs on the meta device (values unknown,
as during stream capture) under the spy of tests/runtime/capture_spy.py, for every student step count, the teacher
with and without guidance, and each backend that claims `graph_safe`.
"""
import contextlib

import pytest
import torch

from pid_trt.config import MAX_STUDENT_STEPS
from pid_trt.registry import resolve
from pid_trt.runtime import OnnxRuntimeBackend, PiDDecoder, TorchBackend
from pid_trt.tiny import tiny_net
from tests.runtime.capture_spy import DEVICE, CaptureViolation, capture_spy, run_captured

BATCH, LATENT_HW, TEXT_LEN = 2, (2, 3), 8


@pytest.fixture(scope="module")
def graph_backend():
    """The torch backend as it runs on a GPU (graph_safe), with the device replaced by meta."""
    backend = TorchBackend(tiny_net("V15-16", patch_depth=2, pixel_depth=1), "cpu")
    backend.net.to(DEVICE)
    backend.device, backend.graph_safe = DEVICE, True
    return backend


def _captured_decode(backend, entry, steps=None, cfg=None):
    decoder = PiDDecoder(backend, entry=entry)
    options = decoder.options(steps, cfg)
    config = backend.net_config
    hh, ww = config.output_size(LATENT_HW)
    z = torch.empty(BATCH, config.lq_latent_channels, *LATENT_HW, device=DEVICE)
    y = torch.empty(BATCH, TEXT_LEN, config.txt_embed_dim, device=DEVICE)
    noise = [torch.empty(BATCH, 3, hh, ww, device=DEVICE) for _ in range(options.noise_draws)]
    negative = torch.empty_like(y) if options.guided else None
    image = run_captured(decoder.capturable(options, (hh, ww)), (z, y, torch.empty(BATCH, device=DEVICE), noise,
                                                                  negative))
    assert image.shape == (BATCH, 3, hh, ww) and image.device == DEVICE


@pytest.mark.parametrize("steps", range(1, MAX_STUDENT_STEPS + 1))
def test_student_decode_is_capture_safe(graph_backend, steps):
    with pytest.warns(UserWarning) if steps > 4 else contextlib.nullcontext():  # repeated timesteps
        _captured_decode(graph_backend, None, steps)


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_teacher_decode_is_capture_safe(graph_backend, cfg):
    # 4 steps hold every kind of update (first order first and last, second order between); 25 only repeat them
    _captured_decode(graph_backend, resolve("flux", "2kto4k_v1pt5_teacher"), steps=4, cfg=cfg)


def test_which_backends_are_captured():
    assert OnnxRuntimeBackend.graph_safe is False  # host round trips every call: never captured
    assert TorchBackend(tiny_net(patch_depth=1, pixel_depth=1), "cpu").graph_safe is False  # CUDA only


def test_tensorrt_backend_capture_needs_a_gpu():
    pytest.skip("the TensorRT backend (graph_safe) enqueues engines with execute_async_v3, which needs TensorRT and "
                "a GPU; scripts/gpu_check.sh decodes with it under CUDA graphs")


# -- the spy itself ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("what, body", [
    ("device→host read", lambda x: x.sum().item()),
    ("device→host read", lambda x: bool((x > 0).all())),
    ("device→host copy", lambda x: x.cpu()),
    ("device→host copy", lambda x: x.to("cpu")),
    ("device→host copy", lambda x: x.tolist()),
    ("host→device copy", lambda x: x + torch.arange(3.0).to(x.device)),
    ("host→device copy", lambda x: x + torch.tensor([1.0, 2.0, 3.0], device=x.device)),
    ("global RNG", lambda x: torch.randn(3, device=x.device)),
    ("global RNG", lambda x: x.normal_()),
])
def test_spy_catches(what, body):
    x = torch.empty(3, device=DEVICE)
    with pytest.raises(CaptureViolation, match=what), capture_spy():
        body(x)


def test_spy_allows_host_arithmetic_device_factories_and_generators():
    x = torch.empty(3, device=DEVICE)
    with capture_spy():
        grid = torch.linspace(1.0, 0.0, 5)  # host tensors and their values are fine
        scale = float(grid[1].item()) * 2
        y = x * scale + torch.full((3,), 0.5, device=x.device) + torch.tensor(2.0)  # a 0-dim host operand
        torch.randn(3, generator=torch.Generator(device="cpu").manual_seed(0))
    assert y.device == DEVICE
    with capture_spy(warm_up=True):  # the warm-up may fill a device cache from host data
        x + torch.arange(3.0).to(x.device)

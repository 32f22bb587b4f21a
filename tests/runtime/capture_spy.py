"""A CPU stand-in for CUDA stream capture: run a captured function on the meta device under a spy (torch modes).

During capture no kernel runs, so device values are unknown: the meta device models exactly that (shapes, no
values). The spy fails at the first operation a CUDA graph cannot hold:
* a device→host read: `aten._local_scalar_dense` of device data (`.item()`, `bool()`, `if tensor`), a copy to the
  host (`.cpu()`, `.tolist()`, `.to("cpu")`; `.numpy()` fails on meta as it does on CUDA);
* a host→device copy (`torch.tensor(..., device=d)`, `.to(d)` of host data) in the captured run: pageable copies
  synchronise, and data made inside the function would be baked into the graph (the warm-up run before the capture
  may fill device caches from host data, as `pid_trt.runtime.cuda_graphs.replay` allows);
* a random op without an explicit generator (the global RNG).
Host-side arithmetic on CPU tensors (the sampler's fp32 time grid) and 0-dim CPU operands are fine, as on CUDA.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
DEVICE = torch.device("meta")  # stands in for the GPU
RANDOM = {aten.randn, aten.rand, aten.randint, aten.randperm, aten.normal, aten.uniform, aten.bernoulli,
          aten.multinomial, aten.exponential, aten.geometric, aten.cauchy, aten.log_normal, aten.random,
          aten.randn_like, aten.rand_like, aten.randint_like, aten.native_dropout, aten.normal_, aten.uniform_,
          aten.bernoulli_, aten.exponential_, aten.random_}
COPIES = {aten._to_copy, aten.copy_, aten.copy, aten._copy_from}
# tensors made from Python data: invisible to a dispatch mode, so they are watched at the torch-function level
FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}


class CaptureViolation(AssertionError):
    """Something a CUDA graph cannot capture happened inside the captured function."""


class _FromDataSpy(TorchFunctionMode):
    """torch.tensor(data, device=d) and friends: host data copied to the device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FROM_DATA:
            data = args[1] if func is torch.Tensor.new_tensor else args[0]
            device = kwargs.get("device") or (args[0].device if func is torch.Tensor.new_tensor else None)
            if device is not None and torch.device(device) == DEVICE and not isinstance(data, torch.Tensor):
                raise CaptureViolation(f"host→device copy (torch.{func.__name__} of Python data onto the device: "
                                       "build it with a device factory or pass it in)")
        return func(*args, **kwargs)


class _DispatchSpy(TorchDispatchMode):
    def __init__(self, warm_up: bool):
        super().__init__()
        self.warm_up = warm_up

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = [t for t in tensors if t.device == DEVICE]
        if packet is aten._local_scalar_dense and on_device:
            raise CaptureViolation(f"device→host read ({func}: .item(), bool() or a Python branch on device data)")
        if packet in COPIES:
            source = args[1] if packet is aten.copy_ else args[0]
            target = args[0].device if packet is aten.copy_ else kwargs.get("device") or source.device
            if source.device == DEVICE and torch.device(target) != DEVICE:
                raise CaptureViolation(f"device→host copy ({func}: .cpu(), .tolist(), .numpy() or .to('cpu'))")
            if source.device != DEVICE and torch.device(target) == DEVICE and source.dim() > 0 and not self.warm_up:
                raise CaptureViolation(f"host→device copy ({func} of a {list(source.shape)} host tensor: "
                                       "build it on the device or pass it in)")
        if packet in RANDOM and kwargs.get("generator") is None:
            raise CaptureViolation(f"global RNG ({func} without a generator): draws must be passed in")
        return func(*args, **kwargs)


@contextlib.contextmanager
def capture_spy(warm_up: bool = False):
    """Raise CaptureViolation at the first device→host read, host→device copy (allowed in the `warm_up` run) or
    global-RNG draw inside the block."""
    with contextlib.ExitStack() as stack:
        if not warm_up:
            stack.enter_context(_FromDataSpy())
        stack.enter_context(_DispatchSpy(warm_up))
        yield


def run_captured(fn, args: tuple) -> torch.Tensor:
    """`fn(*args)` as `pid_trt.runtime.cuda_graphs.replay` runs it, under the spy: a warm-up (which may fill device
    caches), then the captured run."""
    with capture_spy(warm_up=True):
        fn(*args)
    with capture_spy():
        return fn(*args)

"""What this machine offers for TensorRT engines: the `tensorrt` module, its version and the GPU.

`load_tensorrt` is the one place pid-trt imports `tensorrt` (lazily): the builder (engines/trt.py) and the
runtime backend (runtime/tensorrt.py) both get the module from it, so everything else works without TensorRT.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from pid_trt.errors import EngineBuildError, MissingDependencyError, PiDError

INSTALL_HINT = ('install it with: pip install "pid-trt[tensorrt]" '
                "(or: pip install tensorrt-cu13 --extra-index-url https://pypi.nvidia.com)")


def load_tensorrt() -> ModuleType:
    """The `tensorrt` module; MissingDependencyError (one line, with the install command) when it is absent."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not loadable
        raise MissingDependencyError(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from None
    return tensorrt


def tensorrt_version() -> str:
    """The installed TensorRT version, e.g. '10.13.0.35'; MissingDependencyError when it is not installed."""
    return load_tensorrt().__version__


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"
    total_memory: int | None = None  # bytes; None where unknown


def gpu_info() -> GpuInfo:
    """The GPU engines are built for (device 0, as TensorRT uses it)."""
    import torch

    if not torch.cuda.is_available():
        raise EngineBuildError("no CUDA GPU is visible to PyTorch; TensorRT engines are built on the GPU "
                               "that will run them (check the driver, CUDA_VISIBLE_DEVICES and a CUDA PyTorch)")
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}", torch.cuda.get_device_properties(0).total_memory)


def detect_local() -> tuple[str | None, GpuInfo | None]:
    """This machine's TensorRT version and GPU, None where unavailable (dry runs and listings work without)."""
    try:
        version = tensorrt_version()
    except MissingDependencyError:
        return None, None
    try:
        return version, gpu_info()
    except PiDError:
        return version, None


def tensorrt_available() -> bool:
    """TensorRT importable and a CUDA GPU visible: engines can be built and run here."""
    return detect_local()[1] is not None

"""What this machine offers for TensorRT engines: the `tensorrt` module, its version and the GPU.

`load_tensorrt` is the one place pid-trt imports `tensorrt` (lazily): the builder (engines/trt.py) and the
runtime backend (runtime/tensorrt.py) both get the module from it, so everything else works without TensorRT.
Both also share `tensorrt_logger`, which hands TensorRT's messages to `logging`.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pid_trt.errors import EngineBuildError, MissingDependencyError, PiDError

INSTALL_HINT = ('install it with: pip install "pid-trt[tensorrt]" (CUDA 13, driver R580+) or '
                '"pid-trt[tensorrt-cu12]" (CUDA 12, driver R525+); see README.md, Install')


def load_tensorrt() -> ModuleType:
    """The `tensorrt` module; MissingDependencyError (one line, with the install command) when it is absent."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not loadable
        raise MissingDependencyError(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from None
    return tensorrt


# TensorRT's message severities (ILogger.Severity: 0 internal error, 1 error, 2 warning, 3 info, 4 verbose) as
# logging levels: its warnings show by default, its info with -v (debug), its verbose output only below that
_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.DEBUG, 4: logging.DEBUG - 5}
_TRT_LOG = logging.getLogger("pid_trt.tensorrt")


def logging_level(severity: Any) -> int:
    """The logging level a TensorRT message of this severity is logged at."""
    return _LEVELS[int(severity)]


@functools.cache
def tensorrt_logger() -> Any:
    """The process's one TensorRT logger (builder and runtime share it, as TensorRT expects): every message goes to
    the `pid_trt.tensorrt` logger, so it is prefixed like ours and follows -v / -q."""
    trt = load_tensorrt()

    class _ToLogging(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # TensorRT's documented way to subclass its logger

        def log(self, severity: Any, msg: str) -> None:
            level = logging_level(severity)
            if _TRT_LOG.isEnabledFor(level):
                _TRT_LOG.log(level, "TensorRT: %s", msg)

    return _ToLogging()


def tensorrt_version() -> str:
    """The installed TensorRT version, e.g. '10.13.0.35'; MissingDependencyError when it is not installed."""
    return load_tensorrt().__version__


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"
    total_memory: int | None = None  # bytes; None where unknown


def gpu_info(index: int | None = None) -> GpuInfo:
    """A CUDA GPU's model and compute capability (default: the current device, the one TensorRT uses)."""
    import torch

    if not torch.cuda.is_available():
        raise EngineBuildError("no CUDA GPU is visible to PyTorch; TensorRT engines are built on the GPU "
                               "that will run them (check the driver, CUDA_VISIBLE_DEVICES and a CUDA PyTorch)")
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(torch.cuda.get_device_name(index), f"{major}.{minor}",
                   torch.cuda.get_device_properties(index).total_memory)


def detect_local(index: int | None = None) -> tuple[str | None, GpuInfo | None]:
    """This machine's TensorRT version and GPU `index` (default: the current device), None where unavailable (dry
    runs and listings work without)."""
    try:
        version = tensorrt_version()
    except MissingDependencyError:
        return None, None
    try:
        return version, gpu_info(index)
    except PiDError:
        return version, None


def tensorrt_available() -> bool:
    """TensorRT importable and a CUDA GPU visible: engines can be built and run here."""
    return detect_local()[1] is not None

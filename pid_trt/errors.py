"""User-facing errors: each carries a one-line message that the CLI prints as is (exit 2)."""
from __future__ import annotations

import importlib
from types import ModuleType


class PiDError(Exception):
    """Base class for expected, user-facing errors (bad input, bad files, missing tools)."""


class PiDInputError(PiDError, ValueError):
    """An input tensor, size or value the decoder cannot use."""


class CheckpointError(PiDError):
    """A checkpoint file that is unreadable or does not match the requested net."""


class ConfigError(PiDError, ValueError):
    """An unknown backbone/ckpt pair or an invalid net configuration."""


class MissingDependencyError(PiDError, ImportError):
    """An optional dependency (TensorRT, diffusers, ...) that this operation needs is not installed."""


class EngineBuildError(PiDError):
    """TensorRT rejected the ONNX graph, failed to build an engine, or has no GPU to build on."""


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise MissingDependencyError naming the pid-trt extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f'{purpose} needs {module.split(".")[0]}, which is not installed: '
                                     f'pip install "pid-trt[{extra}]"') from None

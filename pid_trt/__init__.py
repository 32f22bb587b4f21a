"""pid-trt: export, build and run NVIDIA's PiD pixel diffusion decoder.

The heavy parts (torch and everything built on it) load on first use, so the command line starts and
`pid-trt --help` answers fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from pid_trt.config import VERSION as __version__
from pid_trt.errors import CheckpointError, ConfigError, PiDError, PiDInputError

_LAZY = {"PiDNet": "pid_trt.model", "PiDDecoder": "pid_trt.runtime", "SamplerOptions": "pid_trt.sampler",
         "sample": "pid_trt.sampler", "t_list": "pid_trt.sampler", "t_lists": "pid_trt.sampler",
         "to_uint8": "pid_trt.sampler"}

__all__ = ["PiDNet", "PiDDecoder", "SamplerOptions", "sample", "to_uint8", "t_list", "t_lists", "PiDError",
           "PiDInputError", "CheckpointError", "ConfigError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pid_trt' has no attribute {name!r}")

"""Serve PiD over HTTP on Ray Serve (`pip install "pid-trt[serve]"`): `app` (the Ray Serve application builder),
`run` (start it and block, what `pid-trt serve` calls), `Client`, `ServeConfig`.

Imports are lazy, so `import pid_trt.serve` works without Ray (the client needs only urllib3).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"app": "deployment", "run": "deployment", "Client": "client", "ServerError": "client", "ServeConfig": "config",
            "Decoded": "protocol"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pid_trt.serve' has no attribute {name!r}")
    module = _EXPORTS[name]
    try:
        return getattr(importlib.import_module(f"pid_trt.serve.{module}"), name)
    except ImportError as e:
        if e.name not in ("ray", "pydantic", "urllib3", "starlette"):
            raise
        from pid_trt.errors import MissingDependencyError

        raise MissingDependencyError(f"pid_trt.serve.{name} needs {e.name}: pip install \"pid-trt[serve]\"") \
            from None

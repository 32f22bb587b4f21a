"""Atomic file writes: a temporary file beside the target, then a rename, so readers never see half a file."""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def umask() -> int:
    """The process umask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | pathlib.Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; published files get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_json(path: str | pathlib.Path, obj: Any) -> None:
    """`obj` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())

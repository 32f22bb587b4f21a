"""Artifact files are what their manifest or sidecar says: inside their directory, unchanged, with finite weights.

* `contained`: a file named in a manifest or sidecar must lie inside that file's directory (no absolute paths, no
  `..`, no symlinks that lead out).
* `file_sha256` / `verify_file`: recorded sha256s are checked before a file is used. Hashes (and other facts learnt
  about a file, such as "its ONNX weights are finite") are cached by the file's identity (path, device, inode,
  size, mtime, ctime): in this process, and on disk under pid-trt's user cache for files of 64 MiB and more, so a
  multi-GB graph or engine is hashed once, not on every load.
* `check_onnx`: an ONNX file's external data must lie inside its directory (checked before ONNX Runtime or
  TensorRT open it) and its weights must be finite.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

from pid_trt.atomic import atomic_write_json
from pid_trt.config import cache_root
from pid_trt.errors import PiDInputError

log = logging.getLogger(__name__)

DISK_CACHE_MIN_BYTES = 64 * 2**20  # smaller files are hashed again rather than remembered on disk
_CACHE_ENTRIES = 256  # the disk cache keeps the most recent entries only
_memory: dict[str, dict[str, Any]] = {}  # file identity -> facts (sha256, checks passed)


# -- where a named file lies ---------------------------------------------------------------------------------

def contained(root: str | pathlib.Path, name: Any, what: str) -> pathlib.Path:
    """`root / name`, refusing names that leave `root`: absolute paths, `..`, and symlinks resolving outside it."""
    root = pathlib.Path(root)
    if not isinstance(name, str) or not name or "\0" in name:
        raise PiDInputError(f"{what}: {json.dumps(name)[:60]} is not a file name")
    if os.path.isabs(name) or ".." in pathlib.PurePath(name).parts:
        raise PiDInputError(f"{what}: {name!r} lies outside {root} (only files inside the directory are read)")
    path = root / name
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        raise PiDInputError(f"{what}: {path} is a link that leads out of {root} (to {real}); "
                            "only files inside the directory are read")
    return path


# -- facts about a file, cached by its identity ---------------------------------------------------------------

def _identity(path: pathlib.Path) -> tuple[str, int]:
    st = os.stat(path)
    key = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return key, st.st_size


def _disk_cache_path() -> pathlib.Path:
    return cache_root() / "file-facts.json"


def _read_disk_cache() -> dict[str, dict[str, Any]]:
    with contextlib.suppress(OSError, ValueError):
        entries = json.loads(_disk_cache_path().read_text(encoding="utf-8"))
        if isinstance(entries, dict):
            return {k: v for k, v in entries.items() if isinstance(v, dict)}
    return {}


def _facts(path: pathlib.Path) -> tuple[str, int, dict[str, Any]]:
    key, size = _identity(path)
    if key not in _memory and size >= DISK_CACHE_MIN_BYTES:
        _memory[key] = dict(_read_disk_cache().get(key, {}))
    return key, size, _memory.setdefault(key, {})


def _remember(path: pathlib.Path, fact: str, value: Any) -> None:
    key, size, facts = _facts(path)
    facts[fact] = value
    if size < DISK_CACHE_MIN_BYTES:
        return
    entries = _read_disk_cache()
    entries.pop(key, None)
    entries[key] = facts
    try:
        atomic_write_json(_disk_cache_path(), dict(list(entries.items())[-_CACHE_ENTRIES:]))
    except OSError as e:  # a cache that cannot be written only costs a rehash next time
        log.debug("cannot update the file cache %s: %s", _disk_cache_path(), e)


def remembered(path: str | pathlib.Path, fact: str, compute: Callable[[], Any]) -> Any:
    """A fact about the file (`compute()` once per file identity; an exception caches nothing)."""
    path = pathlib.Path(path)
    facts = _facts(path)[2]
    if fact in facts:
        return facts[fact]
    value = compute()
    _remember(path, fact, value)
    return value


def sha256_file(path: str | pathlib.Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file's bytes (computed now, never cached)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | pathlib.Path) -> str:
    """sha256 of a file, cached by the file's identity (path, inode, size, mtime, ctime)."""
    path = pathlib.Path(path)
    return remembered(path, "sha256", lambda: sha256_file(path))


def verify_file(root: str | pathlib.Path, name: Any, sha256: str, what: str, remedy: str) -> pathlib.Path:
    """`root / name` after checking it lies inside `root`, exists and still has the recorded sha256."""
    path = contained(root, name, what)
    if not path.is_file():
        raise PiDInputError(f"{what} {path} is missing; {remedy}")
    actual = file_sha256(path)
    if actual != sha256:
        raise PiDInputError(f"{what} {path} changed since it was written (sha256 {actual[:12]}…, recorded "
                            f"{sha256[:12]}…); {remedy}")
    return path


# -- ONNX files ----------------------------------------------------------------------------------------------

def _tensors(graph) -> Iterator[Any]:
    """Every tensor stored in a graph: initializers and constants, subgraphs included."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                yield from _tensors(sub)


def _nonfinite_mask(raw, data_type: int):
    """Where the raw bytes (uint8 array) of a float tensor hold NaN or Inf (None: not a float type)."""
    import numpy as np
    import onnx

    t = onnx.TensorProto
    if data_type in (t.FLOAT, t.DOUBLE, t.FLOAT16):
        kind = {t.FLOAT: np.float32, t.DOUBLE: np.float64, t.FLOAT16: np.float16}[data_type]
        return ~np.isfinite(raw.view(kind))
    if data_type == t.BFLOAT16:
        return (raw.view(np.uint16) & 0x7F80) == 0x7F80
    eight_bit = {t.FLOAT8E4M3FN: (0x7F, 0x7F), t.FLOAT8E5M2: (0x7C, 0x7C), t.FLOAT8E4M3FNUZ: (0xFF, 0x80),
                 t.FLOAT8E5M2FNUZ: (0xFF, 0x80)}
    if data_type in eight_bit:
        mask, bad = eight_bit[data_type]
        return (raw.view(np.uint8) & mask) == bad
    return None


def _raw_values(tensor, directory: pathlib.Path, what: str):
    """The tensor's stored bytes (a memory map for external data) as a uint8 array."""
    import numpy as np
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        path = contained(directory, info.get("location"), f"{what}: external data of {tensor.name}")
        offset, length = int(info.get("offset", 0)), info.get("length")
        size = path.stat().st_size
        length = size - offset if length is None else int(length)
        if offset < 0 or length < 0 or offset + length > size:
            raise PiDInputError(f"{what}: external data of {tensor.name} lies beyond the end of {path}; re-export")
        return np.memmap(path, np.uint8, "r", offset, (length,)) if length else np.zeros(0, np.uint8)
    if tensor.raw_data:
        return np.frombuffer(tensor.raw_data, np.uint8)
    for field, dtype in (("float_data", np.float32), ("double_data", np.float64)):
        if len(getattr(tensor, field)):
            return np.asarray(getattr(tensor, field), dtype).view(np.uint8)
    bits = np.asarray(tensor.int32_data, np.int64)  # fp16/bf16/fp8 values stored as integers
    return bits.astype(np.uint16 if tensor.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
                       else np.uint8).view(np.uint8)


def _check_onnx_now(path: pathlib.Path, root: pathlib.Path, what: str) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 -- protobuf raises its own types for a damaged file
        raise PiDInputError(f"{what} {path} is not a readable ONNX model: {str(e).splitlines()[0][:120]}") from None
    for tensor in _tensors(model.graph):
        raw = _raw_values(tensor, root, what)
        for start in range(0, len(raw), 1 << 28):  # chunks keep the mask of a multi-GB tensor small
            mask = _nonfinite_mask(raw[start:start + (1 << 28)], tensor.data_type)
            if mask is None:
                break
            if mask.any():
                raise PiDInputError(f"{what} {path}: weight {tensor.name} holds NaN or Inf values, so the graph "
                                    "cannot decode; export it again from a healthy checkpoint")
    return True


def check_onnx(path: str | pathlib.Path, root: str | pathlib.Path, what: str) -> None:
    """Refuse an ONNX file whose external data lies outside `root` or whose weights hold NaN/Inf (cached)."""
    path, root = pathlib.Path(path), pathlib.Path(root)
    data = sorted(p for p in root.iterdir() if p.is_file() and p.suffix == ".data")
    # the check covers the graph file and the data files beside it: any change to them checks again
    stamp = "|".join(_identity(p)[0] for p in data)
    if _facts(path)[2].get("onnx_checked") != stamp:
        _check_onnx_now(path, root, what)
        _remember(path, "onnx_checked", stamp)

"""Atomic writes: a temporary file or directory beside the target, then a rename, so readers never see half of
one; checks that an output location can be written, made before any work."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator
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


# -- directories -----------------------------------------------------------------------------------------------

_OWNER = ".pid-trt-writer.lock"  # inside a temporary directory: held (flock) by the live process that writes it
_STALE_AFTER_S = 10  # a marker younger than this may belong to a writer that is still taking its lock


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return pathlib.Path(".")


def check_writable(path: str | pathlib.Path, what: str = "--out", *, directory: bool = True) -> None:
    """PiDError now (before any work) unless `path` can be written: a directory (`directory=True`) or a file
    written through a sibling temporary file; neither may be the other kind, and the nearest existing folder must
    take new files."""
    from pid_trt.errors import PiDInputError

    path = pathlib.Path(path)
    if directory and path.exists() and not path.is_dir():
        raise PiDInputError(f"{what} {path} is a file, not a directory")
    if not directory and path.is_dir():
        raise PiDInputError(f"{what} {path} is a directory, not a file")
    probe = _nearest_existing(path if directory else path.parent)
    if not probe.is_dir():
        raise PiDInputError(f"{what} {path} cannot be created: {probe} is a file")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".pid-trt-probe.")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise PiDInputError(f"{what} {path} is not writable: {probe} refuses new files ({e.strerror or e})") from None


def check_directory_target(target: str | pathlib.Path, what: str = "output directory") -> None:
    """PiDError unless `target` can be written as a whole directory beside itself (see `atomic_directory`)."""
    target = pathlib.Path(target)
    if target.exists() and not target.is_dir():
        from pid_trt.errors import PiDInputError

        raise PiDInputError(f"{what} {target} is a file, not a directory")
    check_writable(target.parent, f"{what} {target}: its folder")


def remove_stale_temporaries(target: str | pathlib.Path) -> list[pathlib.Path]:
    """Remove the temporary siblings `.<name>.*` of `target` that writers killed mid-way left behind (their owner
    lock is free); live writers hold theirs, so concurrent writers are never disturbed. Returns what was removed."""
    from filelock import FileLock, Timeout

    target = pathlib.Path(target)
    removed = []
    for candidate in target.parent.glob(f".{target.name}.*"):
        marker = candidate / _OWNER
        try:
            if not marker.is_file() or time.time() - marker.stat().st_mtime < _STALE_AFTER_S:
                continue
        except OSError:
            continue
        lock = FileLock(marker)
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue  # its writer is alive
        try:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        finally:
            lock.release()
    return removed


@contextlib.contextmanager
def atomic_directory(target: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary sibling directory that replaces `target` when the block finishes, and is removed when it fails.

    It carries an owner lock while it is written, so the next writer of `target` removes those left by killed
    processes (`remove_stale_temporaries`) without touching live ones."""
    from filelock import FileLock

    target = pathlib.Path(target)
    check_directory_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    owner = FileLock(tmp / _OWNER)
    owner.acquire()
    try:
        yield tmp
        (tmp / _OWNER).unlink()
        if target.exists():
            shutil.rmtree(target)
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        owner.release()

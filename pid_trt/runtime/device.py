"""Which share of the work and which device this process has: torchrun's rank and world size (read from the
environment), gathering the ranks' results, and the CUDA device a decode runs on (`resolve_device`, pure;
`use_device`, which binds it)."""
from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from typing import Any

import torch

from pid_trt.errors import PiDInputError

_CUDA = re.compile(r"cuda(?::(\d+))?")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise PiDInputError(f"environment variable {name}={value!r} is not an integer; unset it or fix the "
                            "launcher (torchrun sets it)") from None


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK / LOCAL_RANK / WORLD_SIZE; (0, 1) outside torchrun."""
    size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    rank = _env_int("LOCAL_RANK") if rank is None else rank
    size, rank = (1 if size is None else size), (0 if rank is None else rank)
    if size < 1 or not 0 <= rank < size:
        raise PiDInputError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size} "
                            "(need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE)")
    return rank, size


def shard(count: int) -> list[int]:
    """The global indices of `count` items this rank handles: round-robin, so results never depend on the world
    size (item i always gets seed + i)."""
    rank, size = world()
    return list(range(rank, count, size))


def resolve_device(requested: str | None = None) -> torch.device:
    """The device a decode runs on; reads LOCAL_RANK and CUDA's availability and device count, binds nothing.

    None: cuda:$LOCAL_RANK when CUDA is available (LOCAL_RANK defaults to 0, so cuda:0 outside torchrun), else cpu.
    "cuda": the same GPU (each torchrun rank its own). "cuda:N" and "cpu" as given. A device that does not exist
    here (cuda without a GPU, cuda:7 on a 1-GPU machine, tpu) is a PiDInputError.
    """
    text = "" if requested is None else str(requested).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if text and match is None:
        raise PiDInputError(f"unknown device {requested!r}: use cpu, cuda or cuda:N")
    available = torch.cuda.is_available()
    if not text and not available:
        return torch.device("cpu")
    if not available:
        raise PiDInputError(f"device {requested} asked for, but PyTorch sees no CUDA GPU here (check the driver, "
                            "CUDA_VISIBLE_DEVICES and a CUDA build of torch), or use --device cpu")
    count = torch.cuda.device_count()
    if match is not None and match[1] is not None:
        index, why = int(match[1]), f"device {requested}"
    else:
        local = _env_int("LOCAL_RANK")
        index, why = (0, "device cuda:0") if local is None else (local, f"LOCAL_RANK={local}")
    if not 0 <= index < count:
        raise PiDInputError(f"{why} does not exist: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def use_device(device: torch.device) -> torch.device:
    """Make `device` this process's current CUDA device (what TensorRT and unqualified "cuda" tensors use); every
    torchrun rank calls it for its own GPU. No-op for the CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def can_gather() -> bool:
    """Several ranks that can reach each other: torchrun set the rendezvous address (MASTER_ADDR/MASTER_PORT)."""
    return world()[1] > 1 and bool(os.environ.get("MASTER_ADDR")) and bool(os.environ.get("MASTER_PORT"))


def gather(items: Sequence[Any]) -> list[Any]:
    """Every rank's `items`, concatenated in rank order, on every rank (picklable values). Under torchrun this is one
    all-gather over a gloo group on torchrun's rendezvous; one process, or ranks without a rendezvous, get their own
    items back. Ranks wait here for the slowest one, so the timeout is generous."""
    if not can_gather():
        return list(items)
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, list(items), group=group)
    finally:
        if owned:
            dist.destroy_process_group()
    return [item for part in parts for item in part]

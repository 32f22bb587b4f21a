"""Which share of the work this process has (torchrun's rank and world size, read from the environment), and
gathering the ranks' results."""
from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

from pid_trt.errors import PiDInputError


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

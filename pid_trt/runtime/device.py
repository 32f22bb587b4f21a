"""Which share of the work this process has: torchrun's rank and world size, read from the environment."""
from __future__ import annotations

import os

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

"""Capture a whole decode (cond, every denoise call, the sampler updates, the noise copies) in one CUDA graph
per input signature, then replay it: one launch per image instead of hundreds of kernels and host syncs."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch

MAX_GRAPHS = 4  # each graph pins its static buffers and activations; keep a few shapes warm


def _clone(obj):
    if torch.is_tensor(obj):
        return obj.clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(o) for o in obj)
    return obj


def _copy_into(static, new) -> None:
    if torch.is_tensor(static):
        static.copy_(new)
    elif isinstance(static, (list, tuple)):
        for s, n in zip(static, new):
            _copy_into(s, n)


def replay(cache: "OrderedDict[tuple, Any] | dict", key: tuple, fn: Callable[..., torch.Tensor],
           args: tuple, device: torch.device) -> torch.Tensor:
    """Run `fn(*args)` on `device` through a CUDA graph cached under `key` (captured on first use, after one
    warm-up); the streams and the capture belong to `device`, whatever the current device is."""
    with torch.cuda.device(device):
        return _replay(cache, key, fn, args)


def _replay(cache, key, fn, args) -> torch.Tensor:
    entry = cache.get(key)
    if entry is None:
        static = _clone(args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture: lazy init, allocator, kernel selection
            fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(*static)
        if len(cache) >= MAX_GRAPHS:
            cache.pop(next(iter(cache)))
        cache[key] = entry = (graph, static, out)
    graph, static, out = entry
    _copy_into(static, args)
    graph.replay()
    return out.clone()

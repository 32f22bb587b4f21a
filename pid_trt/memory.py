"""Memory a request needs, estimated before any work starts, and the refusal of what cannot fit or is absurd.

One estimate serves every layer: `pid-trt build` (per profile, against the GPU it builds on, or for a dry run
without a GPU against `LARGEST_TARGET_GPU`), `PiDDecoder.decode` and every command that decodes (against the
memory free on the device now), and `pid-trt embed` (the caption encoder at its text length). The estimates count
the dominant tensors and are meant to be right within about ±50 %; a request is refused only when even the
estimate does not fit, and the refusal names the largest size that does.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from pid_trt.errors import PiDInputError

WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 2}  # fp8 graphs keep activations in 16 bit between Q/DQ
# The largest GPU a build plan targets: a dry run on a machine without a GPU checks its profiles against this.
LARGEST_TARGET_GPU = ("NVIDIA B200", 192 * 10**9)
# Longer side over shorter side beyond which a request is refused as absurd (PiD trained 1:2 to 2:1; between the
# trained range and this bound a size only warns).
MAX_ASPECT_RATIO = 16


def gib(n: int | float) -> str:
    return f"{n / 2**30:.2f} GiB"


def amount(n: int | float) -> str:
    """Bytes for people: GiB, or MiB below one GiB."""
    return gib(n) if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


# -- the estimates -------------------------------------------------------------------------------------------

def weight_bytes(params: int, precision: str, fp8_params: int = 0) -> int:
    """Weights in `precision`; fp8 stores its `fp8_params` (the FP8 Linear layers) in 1 byte and the rest in 16 bits."""
    if precision != "fp8":
        return params * WEIGHT_BYTES[precision]
    return fp8_params * WEIGHT_BYTES["fp8"] + (params - fp8_params) * WEIGHT_BYTES["fp16"]


def activation_bytes(net_config: Mapping[str, Any], width: int, height: int, batch: int = 1,
                     precision: str = "fp32") -> int:
    """Rough activation memory of one denoise call at W×H and `batch`.

    The dominant tensors, with attention assumed fused (no L×L score matrix):
      pixel adaLN modulation  B·L·P²·6·pd   (per-pixel shift/scale/gate for attention and MLP)
      pixel MLP hidden        B·L·P²·4·pd
      patch stream            B·(L+Lt)·(3·D + 2·(8/3)·D)   (joint qkv, SwiGLU gate and up projections)
    with L = (H/P)·(W/P) patch tokens (P = 16), Lt text tokens, D / pd the patch / pixel widths; elements ×
    bytes per activation. TensorRT's real peak also depends on its fusions; treat this as ±50 %.
    """
    p, pd, d = net_config["patch_size"], net_config["pixel_hidden_size"], net_config["hidden_size"]
    tokens = (height // p) * (width // p)
    pixel = batch * tokens * p * p * (6 * pd + 4 * pd)
    patch = batch * (tokens + net_config["txt_max_length"]) * (3 * d + 2 * (8 * d // 3))
    return (pixel + patch) * ACTIVATION_BYTES[precision]


def decode_bytes(net_config: Mapping[str, Any], width: int, height: int, batch: int = 1, precision: str = "fp32",
                 draws: int = 4, text_len: int | None = None) -> int:
    """A whole decode: one denoise call's activations plus the sampler's state (the noise draws, x, the velocity,
    the image and x0 in float64, all [B, 3, H, W]) and the caption embedding as given (`text_len` tokens, default
    the net's limit; longer captions are truncated in the net but still held)."""
    state = batch * 3 * width * height * (4 * (draws + 3) + 8)
    caption = 3 * batch * (text_len or net_config["txt_max_length"]) * net_config["txt_embed_dim"] * 4
    return activation_bytes(net_config, width, height, batch, precision) + state + caption


def text_encoder_bytes(config: Mapping[str, Any], tokens: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """Rough activation memory of a decoder-only text encoder (Gemma-2's config.json keys) over `tokens` tokens:
    the widest per-layer tensors (hidden states, attention projections, the gated MLP) plus, conservatively, an
    unfused attention score matrix per head."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    return batch * (tokens * (6 * hidden + 3 * inter) + heads * tokens * tokens) * dtype_bytes


# -- what is free --------------------------------------------------------------------------------------------

def _cgroup_free() -> int | None:
    """Memory left under this process's cgroup v2 limit, when it has one."""
    with contextlib.suppress(OSError, ValueError):
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            return int(limit) - int(open("/sys/fs/cgroup/memory.current").read())
    return None


def available_bytes(device: Any = "cpu") -> int:
    """Memory a new allocation can use on `device` now: free CUDA memory, or the host's available memory."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        free = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_free()
    return free if cgroup is None else min(free, cgroup)


# -- refusing what cannot fit ----------------------------------------------------------------------------------

def largest(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in 1..upper with fits(n) (fits must be monotone), or 0 when not even 1 fits."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def check_aspect(width: int, height: int) -> None:
    """Refuse a W×H whose aspect ratio is beyond MAX_ASPECT_RATIO (a latent of one row, say)."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        raise PiDInputError(f"{width}x{height} has an aspect ratio of {ratio:.0f}:1; pid-trt decodes aspect ratios "
                            f"up to {MAX_ASPECT_RATIO}:1 (PiD was trained on 1:2 to 2:1)")


def largest_size(net_config: Mapping[str, Any], width: int, height: int, batch: int, precision: str,
                 budget: int, text_len: int | None = None) -> tuple[int, int] | None:
    """The largest W×H of the same aspect ratio (on the net's size grid) whose decode fits `budget`."""
    step = net_config["latent_spatial_down_factor"] * net_config["sr_scale"]

    def size(n: int) -> tuple[int, int]:
        return max(step, round(n * step * width / height / step) * step), n * step

    n = largest(lambda n: decode_bytes(net_config, *size(n), batch, precision, text_len=text_len) <= budget,
                max(1, height // step))
    return size(n) if n else None


def check_fits(net_config: Mapping[str, Any], width: int, height: int, batch: int, precision: str, budget: int,
               where: str, resident: int = 0, text_len: int | None = None) -> None:
    """PiDInputError unless a decode at W×H and `batch` fits `budget` bytes (`resident`: memory the weights will
    take first, when they are not loaded yet); the message names the largest size that fits."""
    check_aspect(width, height)
    need = decode_bytes(net_config, width, height, batch, precision, text_len=text_len)
    room = budget - resident
    if need <= room:
        return
    best = largest_size(net_config, width, height, batch, precision, room, text_len)
    fits = (f"the largest size of this aspect ratio that fits is {best[0]}x{best[1]} at batch {batch}" if best else
            "not even the smallest size fits at this batch and caption length; lower them or free memory")
    weights = f" after {amount(resident)} of weights" if resident else ""
    raise PiDInputError(f"{width}x{height} at batch {batch} needs about {amount(need)} ({precision} activations and "
                        f"sampler state), but {where} has {amount(max(room, 0))} free{weights}; {fits}")


def params_of(net_config: Mapping[str, Any]) -> int | None:
    """The parameter count of an official net definition (None for a custom net)."""
    from pid_trt.config import NET_DEFINITIONS, match_net_definition

    net_id = match_net_definition(net_config)
    return NET_DEFINITIONS[net_id].params if net_id else None

"""Latency of whole decodes per backend, size and batch, and the FLOP model that turns them into TFLOP/s.

Timing: warm-up decodes first (lazy init, CUDA-graph capture, kernel selection), then `iters` timed decodes with
CUDA events on GPU and perf_counter on CPU; p50/p90 over those. Peak memory: torch's max_memory_allocated on CUDA
(what ONNX Runtime allocates itself is not seen), the process's peak RSS on CPU (reset per run through
/proc/self/clear_refs where Linux allows it, else the lifetime peak).
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from pid_trt.config import NetConfig

# -- FLOP model ----------------------------------------------------------------------------------------------


def _linear(rows: int, d_in: int, d_out: int) -> int:
    return 2 * rows * d_in * d_out


def denoise_flops(net_config: dict[str, Any], height: int, width: int, text_len: int, batch: int = 1) -> int:
    """Multiply-add FLOPs (2 per MAC) of one denoiser evaluation: every Linear and both attention products.

    Norms, activations, RoPE and the sampler are left out (elementwise, well under 1 %). Counted the way
    torch.utils.flop_counter counts matmuls and SDPA, which the unit test checks it against.
    """
    c = NetConfig.from_dict(net_config)
    b, p = batch, c["patch_size"]
    d, pd, a, pp = c["hidden_size"], c["pixel_hidden_size"], c["pixel_attn_hidden_size"], p * p
    tokens = (height // p) * (width // p)
    lt = min(text_len, c["txt_max_length"])
    n = tokens + lt  # joint attention over [text ; image]
    pixels = height * width
    mlp = int(2 * 4 * d / 3)
    n_gates = -(-c["patch_depth"] // c["lq_interval"])
    gate_out = d if c["lq_gate_type"] == "sigma_aware_per_token_per_dim" else 1

    embed = (_linear(b, 256, d) + _linear(b, d, d) + _linear(b * lt, c["txt_embed_dim"], d)
             + _linear(b * tokens, c["in_channels"] * pp, d) + _linear(b * pixels, c["in_channels"], pd))
    patch_block = (2 * _linear(b, d, 6 * d) + _linear(b * n, d, 3 * d) + 4 * b * n * n * d + _linear(b * n, d, d)
                   + 3 * _linear(b * n, d, mlp))
    gates = n_gates * _linear(b * tokens, 2 * d, gate_out) + (_linear(b * tokens, 2 * d, 1) if c["pit_lq_inject"] else 0)
    pixel_block = (_linear(b * tokens, d, 6 * pd * pp) + 2 * _linear(b * tokens, pp * pd, a)
                   + _linear(b * tokens, a, 3 * a) + 4 * b * tokens * tokens * a + _linear(b * tokens, a, a)
                   + 2 * _linear(b * pixels, pd, 4 * pd))
    final = _linear(b * pixels, pd, c["in_channels"])
    return embed + c["patch_depth"] * patch_block + gates + c["pixel_depth"] * pixel_block + final


def cond_flops(net_config: dict[str, Any], height: int, width: int, batch: int = 1) -> int:
    """FLOPs of the per-decode latent projection (convolutions at patch-grid size and the feature heads)."""
    c = NetConfig.from_dict(net_config)
    grid = batch * (height // c["patch_size"]) * (width // c["patch_size"])
    hq, c_in = c["lq_hidden_dim"], c["lq_latent_channels"] // c["lq_latent_unpatchify_factor"] ** 2
    convs = 2 * grid * 9 * (c_in * hq + hq * hq * (1 + 2 * c["lq_num_res_blocks"]))
    heads = -(-c["patch_depth"] // c["lq_interval"]) + (1 if c["pit_lq_inject"] else 0)
    return convs + heads * _linear(grid, hq, c["hidden_size"])


def decode_flops(net_config: dict[str, Any], height: int, width: int, text_len: int, steps: int,
                 batch: int = 1) -> int:
    """One decode: the latent projection once, the denoiser once per step."""
    return cond_flops(net_config, height, width, batch) + steps * denoise_flops(net_config, height, width,
                                                                                 text_len, batch)


# -- timing and memory ---------------------------------------------------------------------------------------

def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds of `iters` calls of `fn` after `warmup` untimed ones (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def percentile(values: list[float], q: float) -> float:
    """Linearly interpolated percentile, q in [0, 100]."""
    return float(np.percentile(values, q))


def _rss_peak_mib() -> float:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Yields a dict that holds `peak_mib` and what it measured (`memory`) once the block is done."""
    out: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(peak_mib=torch.cuda.max_memory_allocated(device) / 2**20, memory="cuda max_memory_allocated")
        return
    try:  # "5" resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        kind = "peak RSS"
    except OSError:
        kind = "peak RSS (process lifetime)"
    yield out
    out.update(peak_mib=_rss_peak_mib(), memory=kind)


# -- one decoder ---------------------------------------------------------------------------------------------

def bench_inputs(net_config: dict[str, Any], size: tuple[int, int], batch: int, text_len: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random latent for output W×H, a caption embedding (default: the net's full text length) and σ."""
    from pid_trt.errors import PiDInputError

    net_config = NetConfig.from_dict(net_config)
    k = net_config.pixels_per_latent
    w, h = size
    if w % k or h % k:
        raise PiDInputError(f"size {w}x{h} is not a multiple of {k} (pixels per latent pixel of this net)")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, net_config.lq_latent_channels, h // k, w // k, generator=g)
    y = torch.randn(batch, text_len or net_config.text_limit, net_config.txt_embed_dim, generator=g)
    return z, y, torch.full((batch,), 0.25)


def bench_decoder(decoder, size: tuple[int, int], batch: int = 1, steps: int = 4, warmup: int = 2, iters: int = 10,
                  text_len: int | None = None) -> dict[str, Any]:
    """Latency of `decoder.decode` for W×H `size` and `batch`: p50/p90/mean ms, images/s, peak memory, TFLOP/s."""
    net_config = decoder.net_config
    z, y, sigma = bench_inputs(net_config, size, batch, text_len)
    device = decoder.backend.device
    z, y, sigma = z.to(device), y.to(device), sigma.to(device)
    with peak_memory(device) as mem:
        times = time_ms(lambda: decoder.decode(z, y, sigma, steps=steps), device, warmup, iters)
    p50 = percentile(times, 50)
    flops = decode_flops(net_config, size[1], size[0], y.shape[1], steps, batch)
    return {"backend": decoder.backend.name, "device": str(device), "size": f"{size[0]}x{size[1]}", "batch": batch,
            "steps": steps, "warmup": warmup, "iters": iters, "p50_ms": p50, "p90_ms": percentile(times, 90),
            "mean_ms": statistics.fmean(times), "images_per_s": 1e3 * batch / p50, "tflops": flops / p50 / 1e9,
            "decode_tflop": flops / 1e12, **mem}


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`speedup`: the p50 of the first row of each (size, batch), i.e. the first backend, over each row's p50."""
    base: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        first = base.setdefault((row["size"], row["batch"]), row)
        row["baseline"] = first["backend"]
        row["speedup"] = first["p50_ms"] / row["p50_ms"]
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A plain fixed-width table of bench rows."""
    head = ("backend", "device", "size", "batch", "p50 ms", "p90 ms", "img/s", "peak MiB", "TFLOP/s", "speedup")
    body = [(r["backend"], r["device"], r["size"], str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
             f"{r['images_per_s']:.2f}", f"{r['peak_mib']:.0f}", f"{r['tflops']:.3g}", f"{r['speedup']:.2f}x")
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in (head, *body))

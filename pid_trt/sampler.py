"""The distilled 4-step student sampler of PiD (shared pid-sampler.md §1.1), input checks and u8 output.

`sample(..., sampler="teacher")` hands undistilled teacher checkpoints to pid_trt.teacher (DPM-Solver++ with CFG).

`sample` is the reference loop that every backend is checked against: x0 in float64, fresh Gaussian
noise after every step but the last, in upstream's draw order.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from pid_trt import teacher
from pid_trt.errors import PiDInputError

STUDENT_T_LIST = (0.999, 0.866, 0.634, 0.342, 0.0)
STUDENT_TIMESTEP = 1.0  # the N = 1 branch evaluates once at t = 1.0, not 0.999
TIMESCALE = 1000.0
MAX_STEPS = 8
PRECISIONS = ("fp32", "bf16")
SAMPLERS = ("student", "teacher")


def t_list(steps: int = 4) -> list[float]:
    """The t-list for N steps: entries round(linspace(0, 4, N+1)) (half to even) of the 5-entry list."""
    if not 1 <= steps <= MAX_STEPS:
        raise PiDInputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if steps == 1:
        return [STUDENT_TIMESTEP, 0.0]
    last = len(STUDENT_T_LIST) - 1
    return [STUDENT_T_LIST[round(i * last / steps)] for i in range(steps + 1)]


def warn_repeated_timesteps(steps: int) -> None:
    """More than 4 student steps only repeat timesteps of the 4-step distilled schedule (upstream's own mapping)."""
    if steps > 4:
        warnings.warn(f"{steps} steps repeat timesteps of the 4-step distilled schedule ({t_list(steps)}); "
                      "quality does not improve over 4 steps", stacklevel=3)


def t_lists() -> dict[int, list[float]]:
    """t-lists for N = 1..8, as written into ONNX manifests and engine sidecars."""
    return {n: t_list(n) for n in range(1, MAX_STEPS + 1)}


def noise_draws(steps: int) -> int:
    """How many Gaussian draws a decode of N steps uses (initial + one per re-noise)."""
    ts = t_list(steps)
    return 1 + sum(1 for t in ts[1:] if t > 0)


def output_size(net_config: dict, latent_hw: Sequence[int]) -> tuple[int, int]:
    """Output (H, W) for a latent grid (h, w): latent size × down-factor × SR."""
    k = net_config["latent_spatial_down_factor"] * net_config["sr_scale"]
    return latent_hw[0] * k, latent_hw[1] * k


def check_inputs(net_config: dict, lq_latent: torch.Tensor, y: torch.Tensor, degrade_sigma,
                 size: tuple[int, int] | None = None, size_warning=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Validate decoder inputs; returns σ as a [B] fp32 tensor and the output (H, W).

    `size` is a requested output size as (width, height); `size_warning(w, h)` may return a message for sizes
    outside the trained range, which is only warned about.
    """
    if lq_latent.dim() != 4:
        raise PiDInputError(f"lq_latent must be [B, C, h, w], got shape {list(lq_latent.shape)}")
    b, c = lq_latent.shape[:2]
    want_c = net_config["lq_latent_channels"]
    if c != want_c:
        raise PiDInputError(f"lq_latent has {c} channels but this net takes {want_c}; "
                            "is it the latent of another backbone?")
    if y.dim() != 3:
        raise PiDInputError(f"caption embedding y must be [B, L, D], got shape {list(y.shape)}")
    if y.shape[2] != net_config["txt_embed_dim"]:
        raise PiDInputError(f"caption embedding width is {y.shape[2]} but this net takes "
                            f"{net_config['txt_embed_dim']} (Gemma-2-2B hidden size)")
    if y.shape[0] != b:
        raise PiDInputError(f"batch mismatch: lq_latent has batch {b}, caption embedding has {y.shape[0]}")
    for name, tensor in (("lq_latent", lq_latent), ("caption embedding", y)):
        if not torch.isfinite(tensor).all():
            raise PiDInputError(f"{name} contains NaN or Inf values")
    sigma = torch.as_tensor(degrade_sigma, dtype=torch.float32, device=lq_latent.device).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(b).clone()
    if sigma.numel() != b:
        raise PiDInputError(f"batch mismatch: degrade_sigma has {sigma.numel()} values for batch {b}")
    if not torch.isfinite(sigma).all() or (sigma < 0).any() or (sigma > 1).any():
        raise PiDInputError(f"degrade_sigma must lie in [0, 1], got {sigma.tolist()}")
    hh, ww = output_size(net_config, lq_latent.shape[2:])
    if size is not None and tuple(size) != (ww, hh):
        k = net_config["latent_spatial_down_factor"] * net_config["sr_scale"]
        raise PiDInputError(f"output size {size[0]}x{size[1]} does not match the latent: {lq_latent.shape[3]}x"
                            f"{lq_latent.shape[2]} latent × {k} gives {ww}x{hh}")
    p = net_config["patch_size"]
    if hh % p or ww % p:
        raise PiDInputError(f"output size {ww}x{hh} is not a multiple of {p}")
    if size_warning is not None and (msg := size_warning(ww, hh)):
        warnings.warn(msg, stacklevel=3)
    return sigma, (hh, ww)


def _draw(noise: Sequence[torch.Tensor] | None, k: int, shape, generator, device) -> torch.Tensor:
    if noise is not None:
        if k >= len(noise):
            raise PiDInputError(f"noise list has {len(noise)} tensors; this decode needs more (draw #{k})")
        n = noise[k]
        if tuple(n.shape) != tuple(shape):
            raise PiDInputError(f"noise #{k} has shape {list(n.shape)}, expected {list(shape)}")
        return n.to(device=device, dtype=torch.float32)
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device)


def autocast(precision: str, device: torch.device):
    """bf16 autocast like upstream's inference for precision "bf16", else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def sample(net, lq_latent: torch.Tensor, y: torch.Tensor, degrade_sigma, steps: int | None = None,
           noise: Sequence[torch.Tensor] | None = None, generator: torch.Generator | None = None,
           precision: str = "fp32", size: tuple[int, int] | None = None,
           on_step: Callable[[int, torch.Tensor], None] | None = None, *, sampler: str = "student",
           cfg: float | None = None, negative_y: torch.Tensor | None = None,
           shift: float | None = None) -> torch.Tensor:
    """Decode with the distilled student (default) or an undistilled teacher: image [B, 3, H, W] in [-1, 1].

    Inputs are used as given (the runtime, not this function, rounds latent and caption to bf16).
    `noise` lists the Gaussian tensors in draw order (initial, then each re-noise); otherwise they are drawn
    from `generator` (default: a fresh generator seeded 0 on the latent's device). `precision="bf16"` runs
    the net under bf16 autocast like upstream (the sampler state stays fp32, x0 in fp64).
    `on_step(i, x)` sees x after each step i = 1..N (the last one before the clamp).
    `steps` defaults to 4 for the student and 25 for the teacher.

    `sampler="teacher"` runs DPM-Solver++ (pid_trt.teacher) with text CFG: `cfg` (default 5; 1 = no guidance)
    mixes in `negative_y`, the embedding of pid_trt.text.NEGATIVE_PROMPT ([1 or B, L, D]); `shift` overrides
    the v1.5 teachers' dynamic shift 6·sqrt(sqrt(H·W)/2048). It draws only the initial noise.
    """
    if precision not in PRECISIONS:
        raise PiDInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if sampler not in SAMPLERS:
        raise PiDInputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    sigma, (hh, ww) = check_inputs(net.config, lq_latent, y, degrade_sigma, size)
    device = lq_latent.device
    if noise is None and generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    if sampler == "teacher":
        return _sample_teacher(net, lq_latent, y, sigma, (hh, ww), teacher.TEACHER_STEPS if steps is None else steps,
                               _draw(noise, 0, (lq_latent.shape[0], 3, hh, ww), generator, device), precision,
                               teacher.TEACHER_CFG if cfg is None else cfg, negative_y, shift, on_step)
    if cfg not in (None, 1.0) or negative_y is not None or shift is not None:
        raise PiDInputError("cfg, negative_y and shift apply to sampler='teacher' only; "
                            "the distilled student has no guidance and no shift")
    shape = (lq_latent.shape[0], 3, hh, ww)
    with autocast(precision, device):
        feats = net.condition(lq_latent, hh, ww)

    def denoise(x, t_net):
        with autocast(precision, device):
            return net.denoise(x, t_net, y, sigma, feats)

    steps = 4 if steps is None else steps
    warn_repeated_timesteps(steps)
    return student_loop(denoise, steps,
                        lambda k: _draw(noise, k, shape, generator, device), on_step)


def student_loop(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], steps: int,
                 draw: Callable[[int], torch.Tensor],
                 on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The distilled student's loop, shared by the reference and every runtime backend.

    `denoise(x, t_net)` returns the velocity for timesteps t_net = t·1000 ([B] fp32); `draw(k)` returns Gaussian
    draw #k (0: the initial sample). x0 = x − t·v in float64; re-noise x = (1 − t_n)·x0 + t_n·ε in fp32.
    The step structure is fixed per N (no host syncs), so the loop can be captured in a CUDA graph.
    """
    ts = [np.float32(t) for t in t_list(steps)]  # host fp32 values: no device tensors built inside the loop
    x = draw(0)
    k = 1
    for i in range(steps):
        t_c, t_n = ts[i], ts[i + 1]
        t_net = torch.full((x.shape[0],), float(t_c * np.float32(TIMESCALE)), dtype=torch.float32, device=x.device)
        v = denoise(x, t_net)
        x0 = (x.double() - float(t_c) * v.double()).float()
        if t_n > 0:
            x = float(np.float32(1) - t_n) * x0 + float(t_n) * draw(k)
            k += 1
        else:
            x = x0
        if on_step is not None:
            on_step(i + 1, x)
    return x.clamp(-1, 1)


def _sample_teacher(net, lq_latent: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, size_hw: tuple[int, int],
                    steps: int, x_init: torch.Tensor, precision: str, cfg: float, negative_y: torch.Tensor | None,
                    shift: float | None, on_step) -> torch.Tensor:
    """The reference teacher decode: PiDNet wrapped into a denoise_fn for pid_trt.teacher.teacher_sample."""
    ts = teacher.time_grid(steps, teacher.resolve_shift(*size_hw, shift))
    teacher.check_guidance(y, negative_y, cfg)  # fail before computing the latent features
    device = lq_latent.device
    with autocast(precision, device):
        feats = net.condition(lq_latent, *size_hw)
    if cfg != 1.0:
        feats = list(teacher.cfg_batch(*feats))  # one call covers [uncond; cond]

    def denoise(x, t_net, y_in, sigma_in):
        with autocast(precision, device):
            return net.denoise(x, t_net, y_in, sigma_in, feats)

    return teacher.teacher_sample(denoise, x_init, ts, y, sigma, negative_y, cfg, on_step)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float image → uint8 with upstream's truncation: uint8((clamp(x) + 1) · 127.5), fp32 arithmetic."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)

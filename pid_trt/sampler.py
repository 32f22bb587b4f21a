"""The one decode path: input checks, sampler options, the student loop, and the reference `sample`.

Every decode — the torch reference (`sample`) and every runtime backend (`PiDDecoder.decode`) — goes through
`SamplerOptions.resolve` (defaults filled in once) and `run_decode` (latent features once, then the distilled
student loop of docs/numerics.md §4 or the teacher's DPM-Solver++ of §5 in `pid_trt.teacher`). The loops read
no device values on the host, so a whole decode can be captured in a CUDA graph.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pid_trt import teacher
from pid_trt.config import (
    MAX_SEED,
    MAX_STUDENT_STEPS,
    MAX_TEACHER_STEPS,
    SAMPLERS,
    STUDENT_STEPS,
    TEACHER_CFG,
    TEACHER_STATIC_SHIFT,
    TEACHER_STEPS,
    TORCH_PRECISIONS,
    V15_DYNAMIC_SHIFT,
    NetConfig,
)
from pid_trt.errors import PiDInputError
from pid_trt.memory import check_aspect

STUDENT_T_LIST = (0.999, 0.866, 0.634, 0.342, 0.0)
STUDENT_TIMESTEP = 1.0  # the N = 1 branch evaluates once at t = 1.0, not 0.999
TIMESCALE = 1000.0
MAX_STEPS = MAX_STUDENT_STEPS

# cond(lq_latent, height, width) -> latent features; denoise(x, t_net, y, sigma, features) -> velocity
CondFn = Callable[[torch.Tensor, int, int], list[torch.Tensor]]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


# -- schedules -----------------------------------------------------------------------------------------------

def t_list(steps: int = STUDENT_STEPS) -> list[float]:
    """The t-list for N steps: entries round(linspace(0, 4, N+1)) (half to even) of the 5-entry list."""
    if not 1 <= steps <= MAX_STEPS:
        raise PiDInputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if steps == 1:
        return [STUDENT_TIMESTEP, 0.0]
    last = len(STUDENT_T_LIST) - 1
    return [STUDENT_T_LIST[round(i * last / steps)] for i in range(steps + 1)]


def t_lists() -> dict[int, list[float]]:
    """t-lists for N = 1..8, as written into ONNX manifests and engine sidecars."""
    return {n: t_list(n) for n in range(1, MAX_STEPS + 1)}


def noise_draws(steps: int) -> int:
    """How many Gaussian draws a student decode of N steps uses (initial + one per re-noise)."""
    ts = t_list(steps)
    return 1 + sum(1 for t in ts[1:] if t > 0)


# -- sampler options -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerOptions:
    """How a decode samples, with every default resolved: the sampler, its steps and (teacher only) the guidance
    scale `cfg` and the time shift (`shift` explicit, else the checkpoint's dynamic or static shift)."""

    sampler: str = "student"
    steps: int = STUDENT_STEPS
    cfg: float = 1.0
    shift: float | None = None
    dynamic_shift: tuple[float, int] | None = V15_DYNAMIC_SHIFT
    static_shift: float = TEACHER_STATIC_SHIFT

    @classmethod
    def resolve(cls, sampler: str = "student", steps: int | None = None, cfg: float | None = None,
                shift: float | None = None, *, entry: Any = None) -> SamplerOptions:
        """Validate the user's choices and fill in the defaults (a registry `entry` supplies the checkpoint's
        sampler, default steps, guidance and shift rule; without one, the v1.5 teachers' rules apply)."""
        if entry is not None:
            sampler = entry.sampler
        if sampler not in SAMPLERS:
            raise PiDInputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise PiDInputError(f"steps must be a positive integer, got {steps!r}")
        if sampler == "student":
            if cfg not in (None, 1.0) or shift is not None:
                raise PiDInputError("cfg, a negative embedding and shift apply to the undistilled teacher checkpoints "
                                    "(sampler='teacher' only); the distilled student has no guidance and no shift")
            steps = STUDENT_STEPS if steps is None else steps
            t_list(steps)  # range check
            if steps > STUDENT_STEPS:
                warnings.warn(f"{steps} steps repeat timesteps of the 4-step distilled schedule ({t_list(steps)}); "
                              "quality does not improve over 4 steps", stacklevel=3)
            return cls("student", steps)
        steps = (entry.default_steps if entry is not None else TEACHER_STEPS) if steps is None else steps
        if steps > MAX_TEACHER_STEPS:
            raise PiDInputError(f"teacher steps must be between 1 and {MAX_TEACHER_STEPS}, got {steps}")
        cfg = (entry.default_cfg if entry is not None else TEACHER_CFG) if cfg is None else float(cfg)
        if not math.isfinite(cfg):
            raise PiDInputError(f"cfg must be a finite number, got {cfg}")
        if shift is not None and (not math.isfinite(shift) or shift <= 0):
            raise PiDInputError(f"shift must be a positive number, got {shift}")
        rules = {"dynamic_shift": entry.dynamic_shift, "static_shift": entry.shift} if entry is not None else {}
        return cls("teacher", steps, cfg, None if shift is None else float(shift), **rules)

    @property
    def guided(self) -> bool:
        """Teacher with classifier-free guidance: both passes run as one batch-2B call per step."""
        return self.sampler == "teacher" and self.cfg != 1.0

    @property
    def noise_draws(self) -> int:
        """Gaussian draws per decode: the teacher draws only the initial sample."""
        return 1 if self.sampler == "teacher" else noise_draws(self.steps)

    def time_grid(self, height: int, width: int) -> torch.Tensor:
        """The teacher's N+1 fp32 times for an H×W output (host tensor)."""
        shift = teacher.resolve_shift(height, width, self.shift, self.dynamic_shift, self.static_shift)
        return teacher.time_grid(self.steps, shift)


# -- inputs --------------------------------------------------------------------------------------------------

def check_dtypes(**tensors: Any) -> None:
    """Refuse values that are not real floating-point tensors (integer, bool and complex tensors are never
    coerced); None stands for an absent optional input."""
    for name, value in tensors.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise PiDInputError(f"{name.replace('_', ' ')} must be a torch tensor, got {type(value).__name__}")
        if not value.is_floating_point() or value.is_complex():
            raise PiDInputError(f"{name.replace('_', ' ')} must be a floating-point tensor, got {value.dtype}")


def check_seed(seed: Any, indices: Sequence[int] | None, batch: int) -> None:
    """Per-sample seeds seed + index must be integers in 0..MAX_SEED (torch generators take 64-bit seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise PiDInputError(f"seed must be an integer, got {seed!r}")
    indices = range(batch) if indices is None else indices
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in indices):
        raise PiDInputError(f"sample indices must be non-negative integers, got {list(indices)[:8]}")
    if seed < 0 or seed + max(indices, default=0) > MAX_SEED:
        raise PiDInputError(f"seed {seed} (+ sample index up to {max(indices, default=0)}) must lie in 0..{MAX_SEED}")


def check_inputs(net_config: Mapping[str, Any], lq_latent: torch.Tensor, y: torch.Tensor, degrade_sigma,
                 size: tuple[int, int] | None = None,
                 size_warning: Callable[[int, int], str | None] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Validate decoder inputs; returns σ as a [B] fp32 tensor and the output (H, W).

    `size` is a requested output size as (width, height); `size_warning(w, h)` may return a message for sizes
    outside the trained range, which is only warned about.
    """
    config = NetConfig.from_dict(net_config)
    check_dtypes(lq_latent=lq_latent, caption_embedding=y)
    if isinstance(degrade_sigma, torch.Tensor):
        check_dtypes(degrade_sigma=degrade_sigma)
    elif isinstance(degrade_sigma, (bool, complex, str)):
        raise PiDInputError(f"degrade_sigma must be a number in [0, 1] or a tensor, got {degrade_sigma!r}")
    if lq_latent.dim() != 4:
        raise PiDInputError(f"lq_latent must be [B, C, h, w], got shape {list(lq_latent.shape)}")
    if lq_latent.numel() == 0:
        raise PiDInputError(f"lq_latent is empty (shape {list(lq_latent.shape)}): nothing to decode")
    b, c = lq_latent.shape[:2]
    if c != config.lq_latent_channels:
        raise PiDInputError(f"lq_latent has {c} channels but this net takes {config.lq_latent_channels}; "
                            "is it the latent of another backbone?")
    if y.dim() != 3:
        raise PiDInputError(f"caption embedding y must be [B, L, D], got shape {list(y.shape)}")
    if y.shape[2] != config.txt_embed_dim:
        raise PiDInputError(f"caption embedding width is {y.shape[2]} but this net takes "
                            f"{config.txt_embed_dim} (Gemma-2-2B hidden size)")
    if y.shape[0] != b:
        raise PiDInputError(f"batch mismatch: lq_latent has batch {b}, caption embedding has {y.shape[0]}")
    if y.shape[1] == 0:
        raise PiDInputError("the caption embedding is empty (0 tokens); encode the caption (an empty prompt "
                            "still gives L tokens) with pid-trt embed")
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
    hh, ww = config.output_size(lq_latent.shape[2:])
    if size is not None and tuple(size) != (ww, hh):
        raise PiDInputError(f"output size {size[0]}x{size[1]} does not match the latent: {lq_latent.shape[3]}x"
                            f"{lq_latent.shape[2]} latent × {config.pixels_per_latent} gives {ww}x{hh}")
    if hh % config.patch_size or ww % config.patch_size:
        raise PiDInputError(f"output size {ww}x{hh} is not a multiple of {config.patch_size}")
    check_aspect(ww, hh)
    if size_warning is not None and (msg := size_warning(ww, hh)):
        warnings.warn(msg, stacklevel=3)
    return sigma, (hh, ww)


def autocast(precision: str, device: torch.device):
    """bf16 autocast like upstream's inference for precision "bf16", else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- the decode ----------------------------------------------------------------------------------------------

def run_decode(cond: CondFn, denoise: DenoiseFn, lq_latent: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
               size_hw: tuple[int, int], draw: Callable[[int], torch.Tensor], options: SamplerOptions,
               negative_y: torch.Tensor | None = None, on_step: StepCallback | None = None) -> torch.Tensor:
    """One whole decode → image [B, 3, H, W] clamped to [-1, 1]: the latent features once, then the sampler.

    Inputs are already checked (`check_inputs`, and `teacher.check_guidance` for `negative_y`): this function
    runs inside CUDA-graph captures, so it reads no device value on the host. `draw(k)` returns Gaussian draw #k
    (0: the initial sample). With guidance, the features are repeated to batch 2B for the [uncond; cond] call.
    """
    feats = cond(lq_latent, *size_hw)
    if options.sampler == "teacher":
        if options.guided:
            feats = list(teacher.cfg_batch(*feats))

        def denoise_teacher(x, t_net, y_in, sigma_in):
            return denoise(x, t_net, y_in, sigma_in, feats)

        return teacher.teacher_sample(denoise_teacher, draw(0), options.time_grid(*size_hw), y, sigma,
                                      negative_y if options.guided else None, options.cfg, on_step)
    return student_loop(lambda x, t_net: denoise(x, t_net, y, sigma, feats), options.steps, draw, on_step)


def student_loop(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], steps: int,
                 draw: Callable[[int], torch.Tensor], on_step: StepCallback | None = None) -> torch.Tensor:
    """The distilled student's loop (docs/numerics.md §4).

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


def _draw_from(noise: Sequence[torch.Tensor] | None, shape: tuple[int, ...], generator: torch.Generator | None,
               device: torch.device) -> Callable[[int], torch.Tensor]:
    """Gaussian draw #k: the k-th injected tensor, or the next value of `generator` (upstream's draw order)."""
    def draw(k: int) -> torch.Tensor:
        if noise is None:
            return torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
        if k >= len(noise):
            raise PiDInputError(f"noise list has {len(noise)} tensors; this decode needs more (draw #{k})")
        if tuple(noise[k].shape) != tuple(shape):
            raise PiDInputError(f"noise #{k} has shape {list(noise[k].shape)}, expected {list(shape)}")
        return noise[k].to(device=device, dtype=torch.float32)
    return draw


@torch.no_grad()
def sample(net, lq_latent: torch.Tensor, y: torch.Tensor, degrade_sigma, steps: int | None = None,
           noise: Sequence[torch.Tensor] | None = None, generator: torch.Generator | None = None,
           precision: str = "fp32", size: tuple[int, int] | None = None, on_step: StepCallback | None = None, *,
           sampler: str = "student", cfg: float | None = None, negative_y: torch.Tensor | None = None,
           shift: float | None = None) -> torch.Tensor:
    """The reference decode with the distilled student (default) or an undistilled teacher: [B, 3, H, W] in [-1, 1].

    Inputs are used as given, in fp32 (the runtime, not this function, rounds latent and caption to bf16).
    `noise` lists the Gaussian tensors in draw order (initial, then each re-noise); otherwise they are drawn
    from `generator` (default: a fresh generator seeded 0 on the latent's device). `precision="bf16"` runs
    the net under bf16 autocast like upstream (the sampler state stays fp32, x0 in fp64).
    `on_step(i, x)` sees x after each step i = 1..N (the last one before the clamp).
    `steps` defaults to 4 for the student and 25 for the teacher.

    `sampler="teacher"` runs DPM-Solver++ (pid_trt.teacher) with text CFG: `cfg` (default 5; 1 = no guidance)
    mixes in `negative_y`, the caption embedding of pid_trt.text.NEGATIVE_PROMPT ([1 or B, L, D]); `shift`
    overrides the v1.5 teachers' dynamic shift 6·sqrt(sqrt(H·W)/2048). It draws only the initial noise.
    """
    if precision not in TORCH_PRECISIONS:
        raise PiDInputError(f"precision must be one of {', '.join(TORCH_PRECISIONS)}, got {precision!r}")
    options = SamplerOptions.resolve(sampler, steps, cfg, shift)
    if options.sampler == "student" and negative_y is not None:
        raise PiDInputError("negative_y applies to sampler='teacher' only")
    check_dtypes(lq_latent=lq_latent, caption_embedding=y, negative_y=negative_y)
    # like the runtime, compute in fp32 whatever precision the inputs come in (fp16/bf16 stay exact)
    lq_latent, y = lq_latent.float(), y.float()
    negative_y = None if negative_y is None else negative_y.float()
    sigma, (hh, ww) = check_inputs(net.config, lq_latent, y, degrade_sigma, size)
    negative_y = teacher.check_guidance(y, negative_y, options.cfg) if options.sampler == "teacher" else None
    device = lq_latent.device
    if noise is None and generator is None:
        generator = torch.Generator(device=device).manual_seed(0)

    def cond(z, height, width):
        with autocast(precision, device):
            return net.condition(z, height, width)

    def denoise(x, t_net, y_in, sigma_in, feats):
        with autocast(precision, device):
            return net.denoise(x, t_net, y_in, sigma_in, feats)

    draw = _draw_from(noise, (lq_latent.shape[0], 3, hh, ww), generator, device)
    return run_decode(cond, denoise, lq_latent, y, sigma, (hh, ww), draw, options, negative_y, on_step)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float image → uint8 with upstream's truncation: uint8((clamp(x) + 1) · 127.5), fp32 arithmetic."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)

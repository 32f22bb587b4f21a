"""The undistilled teacher sampler of PiD: DPM-Solver++ 2M with text CFG (docs/numerics.md §5).

The loop is written against a plain `denoise_fn(x, t_net, y, sigma) -> velocity`, so the reference net and a
runtime engine run the same arithmetic. It keeps upstream's fp32 op order on purpose: the net output goes to
noise first (ε = (1 − t)·v + x) and then to data (x0 = (x − t·ε)/(1 − t)); the algebraically equal x − t·v
departs from upstream by ~1e-2 by the last step, because 1/(1 − t) ≈ 1500 at t_0 amplifies the rounding.
All per-step scalars are computed once, in fp32 on the host, so the loop has no host syncs and a fixed shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from pid_trt.config import MAX_TEACHER_STEPS, TEACHER_CFG, TEACHER_STATIC_SHIFT, V15_DYNAMIC_SHIFT
from pid_trt.errors import PiDInputError

STATIC_SHIFT = TEACHER_STATIC_SHIFT
T_END = 0.001  # DPM-Solver's t_0 = 1 / 1000
TIMESCALE = 1000.0

# denoise_fn(x, t_net, y, sigma) -> velocity v = ε − x0; all inputs share the batch dimension
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def dynamic_shift(height: int, width: int, base: float = V15_DYNAMIC_SHIFT[0],
                  ref: int = V15_DYNAMIC_SHIFT[1]) -> float:
    """The teacher's size-dependent shift, base·sqrt(sqrt(H·W)/ref), in float64 like upstream."""
    return base * math.sqrt(math.sqrt(height * width) / ref)


def resolve_shift(height: int, width: int, shift: float | None = None,
                  dynamic: tuple[float, int] | None = V15_DYNAMIC_SHIFT, static: float = STATIC_SHIFT) -> float:
    """Upstream's precedence: an explicit shift, else the dynamic shift for H×W if configured, else the static one."""
    if shift is not None:
        if not math.isfinite(shift) or shift <= 0:
            raise PiDInputError(f"shift must be a positive number, got {shift}")
        return float(shift)
    if dynamic is not None:
        return dynamic_shift(height, width, *dynamic)
    return static


def time_grid(steps: int, shift: float) -> torch.Tensor:
    """The N+1 descending fp32 times t_0 = shift(0.999) … t_N = 0 ("time_uniform_flow"), computed on the CPU."""
    if not 1 <= steps <= MAX_TEACHER_STEPS:
        raise PiDInputError(f"teacher steps must be between 1 and {MAX_TEACHER_STEPS}, got {steps}")
    u = 1 - torch.linspace(1.0, T_END, steps + 1, dtype=torch.float32)
    return (shift * u / (1 + (shift - 1) * u)).flip(0)


def solver_orders(steps: int) -> list[int]:
    """Order of each update: first order first and last (lower_order_final), second order in between."""
    return [1 if k == 1 or k == steps else 2 for k in range(1, steps + 1)]


@dataclass(frozen=True)
class SolverUpdate:
    """Scalars of one DPM-Solver++ update x_k → x_{k+1}: fp32 values held as Python floats (exact round trip)."""

    order: int
    ratio: float  # σ_t / σ_s = t / s
    coef: float  # α̂_t · expm1(−h), with α̂_t = exp(log(1 − t)) as upstream (not 1 − t), h = λ_t − λ_s
    half_coef: float  # 0.5 · coef (second order)
    inv_r: float  # 1 / r with r = h_prev / h (second order)

    def apply(self, x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None) -> torch.Tensor:
        """The new state from x, the data prediction x0 at this step's start and (second order) the previous one."""
        if self.order == 1:
            return self.ratio * x - self.coef * x0
        d = self.inv_r * (x0 - x0_prev)
        return self.ratio * x - self.coef * x0 - self.half_coef * d


def solver_updates(ts: torch.Tensor) -> list[SolverUpdate]:
    """The N updates along a grid ts (N+1 times), each scalar computed in fp32 like upstream."""
    ts = ts.detach().to("cpu", torch.float32)
    lam = torch.log(1 - ts) - torch.log(ts)  # λ_t = log α_t − log σ_t; +inf at t = 0
    out = []
    for k, order in enumerate(solver_orders(len(ts) - 1)):
        s, t = ts[k], ts[k + 1]
        h = lam[k + 1] - lam[k]
        coef = torch.exp(torch.log(1 - t)) * torch.expm1(-h)
        inv_r = 1.0 / ((lam[k] - lam[k - 1]) / h) if order == 2 else torch.tensor(0.0)
        out.append(SolverUpdate(order, (t / s).item(), coef.item(), (0.5 * coef).item(), inv_r.item()))
    return out


def check_guidance(y: torch.Tensor, negative_y: torch.Tensor | None, cfg: float) -> torch.Tensor | None:
    """Validate cfg and the negative-prompt embedding; returns it expanded to y's batch (None when cfg == 1)."""
    if not math.isfinite(cfg):
        raise PiDInputError(f"cfg must be a finite number, got {cfg}")
    if cfg == 1.0:
        return None
    if negative_y is None:
        raise PiDInputError("cfg != 1 needs negative_y, the caption embedding of pid_trt.text.NEGATIVE_PROMPT "
                            "(encode it like any caption), or pass cfg=1")
    if negative_y.dim() != 3 or negative_y.shape[0] not in (1, y.shape[0]) or negative_y.shape[1:] != y.shape[1:]:
        raise PiDInputError(f"negative_y must be [1 or {y.shape[0]}, {y.shape[1]}, {y.shape[2]}] like the caption "
                            f"embedding, got shape {list(negative_y.shape)}")
    if not torch.isfinite(negative_y).all():
        raise PiDInputError("negative_y contains NaN or Inf values")
    return negative_y.to(device=y.device, dtype=y.dtype).expand_as(y)


def cfg_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each batch-B tensor repeated to batch 2B, e.g. the precomputed latent features of a batched-CFG denoiser."""
    return tuple(torch.cat([t, t]) for t in tensors)


def guided_x0(v: torch.Tensor, x: torch.Tensor, t: float, cfg: float) -> torch.Tensor:
    """The guided data prediction x0̂ at time t from the net's velocity ([uncond; cond] along the batch when
    cfg != 1), in upstream's fp32 op order: ε = (1 − t)·v + x per pass, ε_u + cfg·(ε_c − ε_u), (x − t·ε)/(1 − t)."""
    one_minus_t = (1 - torch.tensor(t, dtype=torch.float32)).item()
    v = v.float()  # a bf16 net output is promoted, as upstream's fp32 (1 − t) does
    if cfg == 1.0:
        eps = one_minus_t * v + x
    else:
        v_u, v_c = v.chunk(2)
        eps_u, eps_c = one_minus_t * v_u + x, one_minus_t * v_c + x
        eps = eps_u + cfg * (eps_c - eps_u)
    return (x - t * eps) / one_minus_t


@torch.no_grad()
def teacher_sample(denoise_fn: DenoiseFn, x_init: torch.Tensor, ts: torch.Tensor | Sequence[float],
                   y: torch.Tensor, sigma: torch.Tensor, negative_y: torch.Tensor | None = None,
                   cfg: float = TEACHER_CFG, on_step: Callable[[int, torch.Tensor], None] | None = None
                   ) -> torch.Tensor:
    """DPM-Solver++ 2M (data prediction, lower_order_final) from x_init along the grid ts; returns clamp(x, −1, 1).

    With cfg != 1 the unconditional and conditional passes share one call of batch 2B, ordered [uncond; cond]
    along the batch for x, t_net, y ([negative_y; y]) and sigma, so denoise_fn must close over latent features of
    batch 2B (see `cfg_batch`); with cfg == 1 it gets batch B and negative_y is unused.
    Guidance mixes the noise predictions: ε = ε_u + cfg·(ε_c − ε_u). `on_step(k, x)` sees the fp32 state after
    each update k = 1..N (the last one is the unclamped final sample).
    `negative_y` must have passed `check_guidance` already: this loop runs inside CUDA-graph captures, where a
    value check (a device-to-host read) is not allowed.
    """
    ts = torch.as_tensor(ts, dtype=torch.float32).cpu()  # a host tensor: checking it reads no device memory
    if ts.dim() != 1 or len(ts) < 2 or ts[-1] != 0 or not (ts[1:] < ts[:-1]).all() or ts[0] >= 1:
        raise PiDInputError("ts must be a descending time grid in (0, 1) ending at 0, e.g. time_grid(steps, shift)")
    if cfg == 1.0:
        negative_y = None
    elif negative_y is None:
        raise PiDInputError("cfg != 1 needs negative_y (checked with check_guidance first)")
    x = x_init.float()
    b, device = x.shape[0], x.device
    sigma = sigma.to(device=device, dtype=torch.float32).reshape(-1).expand(b)
    if negative_y is not None:
        y_in, sigma_in = torch.cat([negative_y.expand_as(y), y]), torch.cat([sigma, sigma])
    else:
        y_in, sigma_in = y, sigma
    t_net = (ts * TIMESCALE).tolist()  # fp32 t·1000, what upstream's net receives (host values: graph-safe)

    x0_prev = None
    for k, update in enumerate(solver_updates(ts)):
        t_in = torch.full((len(y_in),), t_net[k], dtype=torch.float32, device=device)
        v = denoise_fn(torch.cat([x, x]) if negative_y is not None else x, t_in, y_in, sigma_in)
        x0 = guided_x0(v, x, ts[k].item(), cfg)
        x, x0_prev = update.apply(x, x0, x0_prev), x0
        if on_step is not None:
            on_step(k + 1, x)
    return x.clamp(-1, 1)

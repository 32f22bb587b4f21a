"""Export-ready views of PiDNet: shape-generic tables, the cond / denoise split, and the precision policy.

Everything that upstream computes from Python ints or in float64 is rebuilt here from runtime shapes in fp32, so
the ONNX graphs stay dynamic in batch, height, width and text length (docs/numerics.md §2).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from pid_trt.model import PiDNet, Tables, timestep_freqs

# 2π split so that k·_TWO_PI_HI is exact in fp32 for |k| < 2^12 (Cody–Waite range reduction)
_TWO_PI_HI = 6.28125
_TWO_PI_MID = float(torch.tensor(2 * math.pi - 6.28125, dtype=torch.float32))
_TWO_PI_LO = float(torch.tensor(2 * math.pi - 6.28125 - _TWO_PI_MID, dtype=torch.float32))


def reduce_angle(a: torch.Tensor) -> torch.Tensor:
    """a − 2πk with k = round(a / 2π), in fp32 without fp64: cos/sin of the result are accurate in any runtime."""
    k = torch.round(a * (1.0 / (2 * math.pi)))
    return ((a - k * _TWO_PI_HI) - k * _TWO_PI_MID) - k * _TWO_PI_LO


def _count(n) -> torch.Tensor:
    """A runtime dimension as an fp32 scalar tensor (keeps shape arithmetic inside the graph)."""
    return torch.ones(n, dtype=torch.float32).sum()


class ExportTables(Tables):
    """Tables from runtime shapes, fp32 only: positions arange·16/(n−1) (≤ 1 ulp from linspace), NTK θ in-graph,
    separable pixel sin-cos, and range-reduced timestep arguments formed in fp32 exactly as upstream."""

    def timestep(self, t, dim=256, max_period=10.0):
        args = t.reshape(-1, 1).float() * timestep_freqs(dim, max_period, t.device)[None]
        args = reduce_angle(args)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def positions(self, n, device):
        idx = torch.arange(n, dtype=torch.float32, device=device)
        return idx * (16.0 / torch.clamp(_count(n) - 1.0, min=1.0))

    def rope_2d(self, gh, gw, head_dim, ref_h, ref_w, device):
        a = head_dim / 2
        p = a / (a - 2)
        exps = torch.arange(0, head_dim, 4, dtype=torch.float32, device=device)[: head_dim // 4] / head_dim
        # θ = 1e4·(n/ref)^p, so θ^(−e) = exp(−e·(ln 1e4 + p·ln(n/ref)))
        log_theta_h = math.log(10000.0) + p * torch.log(_count(gh) / ref_h)
        log_theta_w = math.log(10000.0) + p * torch.log(_count(gw) / ref_w)
        freq_h = torch.exp(-exps * log_theta_h)
        freq_w = torch.exp(-exps * log_theta_w)
        ang_x = self.positions(gw, device)[:, None] * freq_w[None]
        ang_y = self.positions(gh, device)[:, None] * freq_h[None]
        ang = torch.stack([ang_x[None].expand(gh, -1, -1), ang_y[:, None].expand(-1, gw, -1)], dim=-1)
        ang = ang.reshape(-1, head_dim // 2)
        return ang.cos(), ang.sin()

    def pixel_sincos(self, h, w, dim, device):
        q = dim // 4
        omega = (1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)).float().to(device)

        def axis(n):
            ang = reduce_angle(torch.arange(n, dtype=torch.float32, device=device)[:, None] * omega[None])
            return torch.cat([ang.sin(), ang.cos()], dim=-1)

        sx, sy = axis(w), axis(h)
        return torch.cat([sx[None].expand(h, -1, -1), sy[:, None].expand(-1, w, -1)], dim=-1)


def export_view(net: PiDNet) -> PiDNet:
    """The same module (shared weights) with shape-generic fp32 tables."""
    net.tables = ExportTables()
    return net


class CondGraph(nn.Module):
    """lq_latent [B,C,h,w] → latent features, each [B, gh, gw, D] (the grid kept explicit for dynamic shapes)."""

    def __init__(self, net: PiDNet):
        super().__init__()
        self.net = net
        self.grid_per_latent = net.config.patches_per_latent

    def forward(self, lq_latent: torch.Tensor):
        r = self.grid_per_latent
        gh, gw = lq_latent.shape[2] * r, lq_latent.shape[3] * r
        feats = self.net.lq_proj.features(lq_latent, gh, gw)
        return tuple(f.reshape(f.shape[0], gh, gw, f.shape[-1]) for f in feats)


class DenoiseGraph(nn.Module):
    """x, t, y, degrade_sigma, *features → velocity."""

    def __init__(self, net: PiDNet):
        super().__init__()
        self.net = net

    def forward(self, x, t, y, degrade_sigma, *feats):
        flat = [f.flatten(1, 2) for f in feats]
        return self.net.denoise(x, t, y, degrade_sigma, flat).float()


class SingleGraph(nn.Module):
    """The whole forward: x, t, y, lq_latent, degrade_sigma → velocity."""

    def __init__(self, net: PiDNet):
        super().__init__()
        self.net = net

    def forward(self, x, t, y, lq_latent, degrade_sigma):
        return self.net(x, t, y, lq_latent=lq_latent, degrade_sigma=degrade_sigma).float()


def feature_names(net: PiDNet) -> list[str]:
    names = [f"lq_feat_{k}" for k in range(net.n_gates)]
    return names + (["lq_feat_pit"] if net.pit_lq_gate is not None else [])


# ----------------------------------------------------------------------------------------------------------
# Reduced precision: weights in fp16/bf16, fp32 islands where upstream's autocast keeps fp32 or ranges demand it

HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def export_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention in the form TensorRT fuses: q is scaled by 1/√head_dim *before* the first MatMul (its fused-attention
    rule), and the score softmax runs in fp32 (half-precision graphs cast around it; fp32 graphs have no casts)."""
    scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-1, -2))
    return torch.matmul(scores.float().softmax(-1).to(v.dtype), v)


def _cast_inputs(dtype):
    def hook(module, args):
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    return hook


def _cast_to_weight(module, args):
    return tuple(a.to(module.weight.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


@contextlib.contextmanager
def precision_policy(net: PiDNet, precision: str):
    """Cast weights for `precision` in place and install `export_attention` (every precision) for the export.

    fp16/bf16: Linear layers run in half precision; RMSNorm statistics, the latent convs and GroupNorm, the σ-gates,
    tables and the attention softmax stay fp32 (the ONNX graph is strongly typed: every tensor carries its type)."""
    from pid_trt import model as model_mod

    if precision != "fp32":
        dtype = HALF_DTYPES[precision]
        net.to(dtype)
        for m in net.modules():
            # the latent convs run once per decode: fp32 costs little, and ONNX Conv has no bf16 before opset 22
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.Conv2d)) or type(m).__name__ == "SigmaGate":
                m.float()
                m.register_forward_pre_hook(_cast_inputs(torch.float32))
            elif isinstance(m, nn.Linear) and m.weight.dtype == dtype:
                m.register_forward_pre_hook(_cast_to_weight)
        net.y_pos_embedding.data = net.y_pos_embedding.data.float()
    saved = model_mod.attention
    model_mod.attention = export_attention  # the module-level function both attention classes call
    try:
        yield net
    finally:
        model_mod.attention = saved

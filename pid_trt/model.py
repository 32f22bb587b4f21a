"""PiDNet: PiD's pixel-space denoiser, written from its specification (docs/numerics.md §1–§2).

One self-contained file. Parameter names equal upstream's `PidNet`, so official `model_ema_bf16.pth`
files load after stripping the `net.` prefix. The forward reproduces upstream's fp32 numerics; the
position tables live in `Tables` so the ONNX exporter can swap in shape-generic versions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pid_trt.config import NetConfig

# ----------------------------------------------------------------------------------------------------------
# Position and timestep tables


def timestep_freqs(dim: int = 256, max_period: float = 10.0, device=None) -> torch.Tensor:
    """fp32 frequencies exp(-ln(max_period)·k/half), k = 0..half-1, as upstream's goldens hold them.

    torch.exp on fp32 goes through MKL, whose rounding depends on the CPU's code path (1 ulp at several k).
    We take the fp32 exponent as upstream forms it, evaluate exp in fp64 and round once, which is machine
    independent; upstream's golden tables differ from that correctly rounded value only at k = 48 of the
    official (256, 10) sinusoid, which we reproduce, because 1 ulp there moves outputs by ~1e-4.
    The official table is a constant computed at import (graph tracing sees a constant, never the ops), and
    copies are kept per device so a CUDA-graph capture never sees a host-to-device copy.
    """
    device = torch.device(device or "cpu")
    if (dim, max_period) != (256, 10.0):
        return _freqs(dim, max_period).to(device)
    if device.type == "cpu":
        return _OFFICIAL_FREQS
    if device not in _OFFICIAL_FREQS_ON:
        _OFFICIAL_FREQS_ON[device] = _OFFICIAL_FREQS.to(device)
    return _OFFICIAL_FREQS_ON[device]


def _freqs(dim: int, max_period: float) -> torch.Tensor:
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / half
    freqs = torch.exp(exponent.double()).float()
    if (dim, max_period) == (256, 10.0):
        freqs[48] = torch.nextafter(freqs[48], freqs.new_tensor(1.0))
    return freqs


_OFFICIAL_FREQS = _freqs(256, 10.0)
_OFFICIAL_FREQS_ON: dict[torch.device, torch.Tensor] = {}


class Tables:
    """Parameter-free tables, computed exactly as upstream does (fp64 pixel table, linspace positions)."""

    def timestep(self, t: torch.Tensor, dim: int = 256, max_period: float = 10.0) -> torch.Tensor:
        args = t.reshape(-1, 1).float() * timestep_freqs(dim, max_period, t.device)[None]  # fp32 product, as upstream
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def positions(self, n: int, device) -> torch.Tensor:
        return torch.linspace(0, 16, n, dtype=torch.float32, device=device)

    def rope_2d(self, gh: int, gw: int, head_dim: int, ref_h: int, ref_w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """NTK-aware 2D RoPE: [gh*gw, head_dim/2] cos and sin; columns 2j (x) and 2j+1 (y) interleave."""
        a = head_dim / 2
        theta_h = 10000.0 * (gh / ref_h) ** (a / (a - 2))
        theta_w = 10000.0 * (gw / ref_w) ** (a / (a - 2))
        exps = torch.arange(0, head_dim, 4, dtype=torch.float32, device=device)[: head_dim // 4] / head_dim
        freq_h = 1.0 / (theta_h ** exps)
        freq_w = 1.0 / (theta_w ** exps)
        ang_x = torch.outer(self.positions(gw, device), freq_w)  # [gw, hd/4]
        ang_y = torch.outer(self.positions(gh, device), freq_h)  # [gh, hd/4]
        ang = torch.stack([ang_x[None].expand(gh, -1, -1), ang_y[:, None].expand(-1, gw, -1)], dim=-1)
        ang = ang.reshape(gh * gw, head_dim // 2)
        return ang.cos(), ang.sin()

    def rope_1d(self, n: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)[: head_dim // 2] / head_dim))
        ang = torch.outer(torch.arange(n, dtype=torch.float32, device=device), freqs)
        return ang.cos(), ang.sin()

    def pixel_sincos(self, h: int, w: int, dim: int, device) -> torch.Tensor:
        """Full-image 2D sin-cos embedding [h, w, dim]: [S(column), S(row)], computed in fp64 as upstream."""
        q = dim // 4
        omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64, device=device) / q)

        def axis(n: int) -> torch.Tensor:
            a = torch.arange(n, dtype=torch.float64, device=device)[:, None] * omega[None]
            return torch.cat([a.sin(), a.cos()], dim=-1).float()

        sx, sy = axis(w), axis(h)
        return torch.cat([sx[None].expand(h, -1, -1), sy[:, None].expand(-1, w, -1)], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (2i, 2i+1) of the last axis of x [B, heads, N, hd] in fp32."""
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return normed * self.weight


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Embed(nn.Module):
    """A single Linear stored as `.proj` (the embedders' key layout)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TextEmbed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.norm = RMSNorm(dim_out)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(y))


class TimestepEmbed(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sinusoid: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid)


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, 3*D] laid out [3][heads][hd] → three [B, heads, N, hd]."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


class JointAttention(nn.Module):
    """MM-DiT joint attention over [text ; image] with per-stream q/k RMSNorm and RoPE."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        hd = dim // heads
        self.qkv_x = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv_y = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm_x, self.k_norm_x = RMSNorm(hd), RMSNorm(hd)
        self.q_norm_y, self.k_norm_y = RMSNorm(hd), RMSNorm(hd)
        self.proj_x = nn.Linear(dim, dim)
        self.proj_y = nn.Linear(dim, dim)

    def forward(self, s, u, rope_img, rope_txt):
        qx, kx, vx = _split_heads(self.qkv_x(s), self.heads)
        qy, ky, vy = _split_heads(self.qkv_y(u), self.heads)
        qx = apply_rope(self.q_norm_x(qx), *rope_img)
        kx = apply_rope(self.k_norm_x(kx), *rope_img)
        qy = apply_rope(self.q_norm_y(qy), *rope_txt)
        ky = apply_rope(self.k_norm_y(ky), *rope_txt)
        out = attention(torch.cat([qy, qx], 2), torch.cat([ky, kx], 2), torch.cat([vy, vx], 2))
        out = out.transpose(1, 2).flatten(2)  # [B, Lt + L, D]
        lt = u.shape[1]
        return self.proj_x(out[:, lt:]), self.proj_y(out[:, :lt])


class PatchBlock(nn.Module):
    """Dual-stream (image + text) MM-DiT block, both streams adaLN-modulated by the timestep."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_x1, self.norm_y1 = RMSNorm(dim), RMSNorm(dim)
        self.attn = JointAttention(dim, heads)
        self.norm_x2, self.norm_y2 = RMSNorm(dim), RMSNorm(dim)
        hidden = int(2 * 4 * dim / 3)
        self.mlp_x = SwiGLU(dim, hidden)
        self.mlp_y = SwiGLU(dim, hidden)
        self.adaLN_modulation_img = nn.Sequential(nn.Linear(dim, 6 * dim))
        self.adaLN_modulation_txt = nn.Sequential(nn.Linear(dim, 6 * dim))

    def forward(self, s, u, cond, rope_img, rope_txt):
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = self.adaLN_modulation_img(cond).chunk(6, dim=-1)
        th_a, tc_a, tg_a, th_m, tc_m, tg_m = self.adaLN_modulation_txt(cond).chunk(6, dim=-1)
        a_img, a_txt = self.attn(modulate(self.norm_x1(s), sh_a, sc_a), modulate(self.norm_y1(u), th_a, tc_a),
                                 rope_img, rope_txt)
        s = s + g_a * a_img
        u = u + tg_a * a_txt
        s = s + g_m * self.mlp_x(modulate(self.norm_x2(s), sh_m, sc_m))
        u = u + tg_m * self.mlp_y(modulate(self.norm_y2(u), th_m, tc_m))
        return s, u


class PixelAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope):
        q, k, v = _split_heads(self.qkv(x), self.heads)
        q = apply_rope(self.q_norm(q), *rope)
        k = apply_rope(self.k_norm(k), *rope)
        return self.proj(attention(q, k, v).transpose(1, 2).flatten(2))


class PixelBlock(nn.Module):
    """PiT block: per-pixel adaLN + MLP, and global attention over patch-compressed pixel features."""

    def __init__(self, dim: int, pd: int, attn_dim: int, heads: int, pixels_per_patch: int):
        super().__init__()
        self.pd, self.ppp = pd, pixels_per_patch
        self.compress_to_attn = nn.Linear(pixels_per_patch * pd, attn_dim)
        self.expand_from_attn = nn.Linear(attn_dim, pixels_per_patch * pd)
        self.norm1 = RMSNorm(pd)
        self.attn = PixelAttention(attn_dim, heads)
        self.norm2 = RMSNorm(pd)
        self.mlp = GeluMLP(pd, 4 * pd)
        self.adaLN_modulation = nn.Sequential(nn.Linear(dim, 6 * pd * pixels_per_patch))

    def forward(self, x, s_cond, batch: int, rope):
        # x [B*L, ppp, pd]; modulation is per pixel: feature index = p*6pd + chunk*pd + channel
        m = self.adaLN_modulation(s_cond).reshape(x.shape[0], self.ppp, 6 * self.pd)
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = m.chunk(6, dim=-1)
        h = modulate(self.norm1(x), sh_a, sc_a).reshape(batch, -1, self.ppp * self.pd)
        h = self.expand_from_attn(self.attn(self.compress_to_attn(h), rope))
        x = x + g_a * h.reshape(x.shape)
        return x + g_m * self.mlp(modulate(self.norm2(x), sh_m, sc_m))


class FinalLayer(nn.Module):
    def __init__(self, pd: int, out_channels: int):
        super().__init__()
        self.norm = RMSNorm(pd)
        self.linear = nn.Linear(pd, out_channels)

    def forward(self, x):
        return self.linear(self.norm(x))


class ResBlock(nn.Module):
    def __init__(self, ch: int, padding_mode: str):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(4, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1, padding_mode=padding_mode),
            nn.GroupNorm(4, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1, padding_mode=padding_mode),
        )

    def forward(self, x):
        return x + self.block(x)


class SigmaGate(nn.Module):
    """ControlNet-style injection: s + sigmoid(Linear([s ; F]) − exp(log_alpha)·σ) ⊙ F."""

    def __init__(self, dim: int, per_dim: bool):
        super().__init__()
        self.content_proj = nn.Linear(2 * dim, dim if per_dim else 1)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, s, feat, sigma):
        sigma = sigma.float().reshape(-1, 1, 1)
        g = torch.sigmoid(self.content_proj(torch.cat([s, feat], dim=-1)) - self.log_alpha.exp() * sigma)
        return s + g * feat


class LatentProjection(nn.Module):
    """Latent → patch-grid features: unpatchify, nearest upsample, conv stack, one head per gate (+ PiT head)."""

    def __init__(self, config: NetConfig):
        super().__init__()
        d, hq = config.hidden_size, config.lq_hidden_dim
        pad = config.lq_conv_padding_mode
        self.unpatchify = config.lq_latent_unpatchify_factor
        c_in = config.lq_latent_channels // self.unpatchify ** 2
        self.latent_proj = nn.Sequential(
            nn.Conv2d(c_in, hq, 3, padding=1, padding_mode=pad), nn.SiLU(),
            nn.Conv2d(hq, hq, 3, padding=1, padding_mode=pad),
            *[ResBlock(hq, pad) for _ in range(config.lq_num_res_blocks)],
        )
        self.output_heads = nn.ModuleList(nn.Linear(hq, d) for _ in range(config.n_gates))
        self.pit_head = nn.Linear(hq, d) if config.pit_lq_inject else None
        # training-only auxiliary RGB head: loaded from checkpoints, never used by the denoiser
        self.lq_aux_rgb_head = nn.Sequential(nn.LayerNorm(hq), nn.Linear(hq, hq), nn.SiLU(), nn.Linear(hq, 48)) \
            if config.lq_aux_rgb_head else None
        per_dim = config.lq_gate_type == "sigma_aware_per_token_per_dim"
        self.gate_modules = nn.ModuleList(SigmaGate(d, per_dim) for _ in range(config.n_gates))

    def features(self, z: torch.Tensor, gh: int, gw: int) -> list[torch.Tensor]:
        """[B, C, h, w] latent → per-gate features [B, L, D] (then the PiT feature, if any)."""
        z = z.float()
        f = self.unpatchify
        if f > 1:  # channel c*f*f + fy*f + fx → channel c at (f*h + fy, f*w + fx)
            b, c, h, w = z.shape
            z = z.reshape(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (f * f), h * f, w * f)
        z = F.interpolate(z, size=(gh, gw), mode="nearest")
        tokens = self.latent_proj(z).flatten(2).transpose(1, 2)
        feats = [head(tokens) for head in self.output_heads]
        if self.pit_head is not None:
            feats.append(self.pit_head(tokens))
        return feats


# ----------------------------------------------------------------------------------------------------------


class PiDNet(nn.Module):
    """PiD denoiser: net(x, t, y, lq_latent, degrade_sigma) → velocity v = ε − x0, [B, 3, H, W]."""

    tables = Tables()

    def __init__(self, config: NetConfig | Mapping[str, Any]):
        super().__init__()
        config = NetConfig.from_dict(config)
        self.config = config
        d, p, pd = config.hidden_size, config.patch_size, config.pixel_hidden_size
        self.patch_size, self.pd, self.heads = p, pd, config.num_groups
        self.txt_max_length = config.txt_max_length
        self.lq_interval = config.lq_interval
        self.n_gates = config.n_gates

        self.y_pos_embedding = nn.Parameter(torch.zeros(1, config.txt_max_length, d))
        self.pixel_embedder = Embed(config.in_channels, pd)
        self.s_embedder = Embed(config.in_channels * p * p, d)
        self.t_embedder = TimestepEmbed(d)
        self.y_embedder = TextEmbed(config.txt_embed_dim, d)
        self.patch_blocks = nn.ModuleList(PatchBlock(d, config.num_groups) for _ in range(config.patch_depth))
        self.pixel_blocks = nn.ModuleList(
            PixelBlock(d, pd, config.pixel_attn_hidden_size, config.pixel_num_groups, p * p)
            for _ in range(config.pixel_depth))
        self.final_layer = FinalLayer(pd, config.in_channels)
        self.lq_proj = LatentProjection(config)
        self.pit_lq_gate = SigmaGate(d, per_dim=False) if config.pit_lq_inject else None

    # -- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PiDNet":
        """Build from upstream's flat PidNet keyword arguments (missing keys: official V1-16 values; unknown keys
        and code paths no official net uses are a ConfigError)."""
        return cls(config)

    @classmethod
    def for_checkpoint(cls, backbone: str, ckpt: str, device: str | torch.device | None = None) -> "PiDNet":
        """The official net for (backbone, ckpt) at full size; works on device="meta"."""
        from pid_trt.registry import resolve

        with torch.device(device or "cpu"):
            return cls(resolve(backbone, ckpt).net.config)

    # -- geometry -----------------------------------------------------------------------------------------
    @property
    def pixels_per_latent(self) -> int:
        """Output pixels per latent pixel (latent down-factor × SR scale)."""
        return self.config.pixels_per_latent

    # -- forward ------------------------------------------------------------------------------------------
    def condition(self, lq_latent: torch.Tensor, height: int, width: int) -> list[torch.Tensor]:
        """Latent features (one per gate, then the PiT feature); independent of x and t."""
        p = self.patch_size
        return self.lq_proj.features(lq_latent, height // p, width // p)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, degrade_sigma: torch.Tensor | None,
                feats: list[torch.Tensor] | None) -> torch.Tensor:
        """One denoiser evaluation given precomputed latent features (None: no latent injection)."""
        b, c, hh, ww = x.shape
        p, pd = self.patch_size, self.pd
        gh, gw = hh // p, ww // p
        L = gh * gw
        hd, phd = self.config.head_dim, self.config.pixel_head_dim
        ref_h, ref_w = self.config.rope_ref_h // p, self.config.rope_ref_w // p
        tab = self.tables

        t_emb = self.t_embedder(tab.timestep(t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(-1)))
        cond = F.silu(t_emb)[:, None]
        y = y[:, : self.txt_max_length]
        u = self.y_embedder(y) + self.y_pos_embedding[:, : y.shape[1]]

        # patches in row-major order, each vector channel-major (c, py, px) like F.unfold
        patches = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, L, c * p * p)
        s = self.s_embedder(patches)

        rope_img = tab.rope_2d(gh, gw, hd, ref_h, ref_w, x.device)
        rope_txt = tab.rope_1d(y.shape[1], hd, self.config.text_rope_theta, x.device)
        for i, block in enumerate(self.patch_blocks):
            if feats is not None and i % self.lq_interval == 0:
                k = i // self.lq_interval
                s = self.lq_proj.gate_modules[k](s, feats[k], degrade_sigma)
            s, u = block(s, u, cond, rope_img, rope_txt)

        s_final = F.silu(t_emb[:, None] + s)
        if self.pit_lq_gate is not None and feats is not None:
            s_final = self.pit_lq_gate(s_final, feats[self.n_gates], degrade_sigma)
        s_cond = s_final.reshape(b * L, -1)

        # pixel pathway: [B*L, p*p, pd], patches row-major, pixels in a patch row-major (py, px)
        pix = self.pixel_embedder(x.permute(0, 2, 3, 1)) + tab.pixel_sincos(hh, ww, pd, x.device).to(x.dtype)
        pix = pix.reshape(b, gh, p, gw, p, pd).permute(0, 1, 3, 2, 4, 5).reshape(b * L, p * p, pd)
        rope_pix = tab.rope_2d(gh, gw, phd, ref_h, ref_w, x.device)
        for block in self.pixel_blocks:
            pix = block(pix, s_cond, b, rope_pix)
        out = self.final_layer(pix)  # [B*L, p*p, C]
        return out.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, lq_latent: torch.Tensor | None = None,
                degrade_sigma: torch.Tensor | None = None) -> torch.Tensor:
        feats = None
        if lq_latent is not None:
            if degrade_sigma is None:
                raise ValueError("degrade_sigma is required whenever lq_latent is given")
            feats = self.condition(lq_latent, x.shape[2], x.shape[3])
        return self.denoise(x, t, y, degrade_sigma, feats)

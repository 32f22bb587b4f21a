"""Tiny seeded PiD nets with the structure of each official net definition (tests, demo, benchmarks).

Shrunk like the golden cases: hidden 48, 2 heads, 4 patch blocks, pixel width 4, 8 text tokens of width 32.
Two initialisations: "tame" (PyTorch defaults, zero-initialised heads set to N(0, 0.02): well conditioned,
so reduced-precision errors are measurable) and "aggressive" (the goldens' rule: live but chaotic in bf16).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from pid_trt.config import NET_DEFINITIONS, TINY_STRUCTURE, NetConfig
from pid_trt.model import PiDNet

TINY = {"num_groups": 2, "hidden_size": 48, "pixel_hidden_size": 4, "pixel_attn_hidden_size": 32,
        "pixel_num_groups": 2, "patch_depth": 4, "txt_embed_dim": 32, "txt_max_length": 8, "lq_hidden_dim": 32}
DEFAULT_STRUCTURE = TINY_STRUCTURE


def tiny_config(structure: str = DEFAULT_STRUCTURE, **overrides: Any) -> NetConfig:
    """The official structure `structure` shrunk to the tiny sizes, with `overrides` (upstream key names)."""
    return NET_DEFINITIONS[structure].config.replace(**{**TINY, **overrides})


@torch.no_grad()
def tiny_net(structure: str = DEFAULT_STRUCTURE, seed: int = 0, init: str = "tame", **overrides: Any) -> PiDNet:
    """A tiny net; `overrides` change config keys (e.g. patch_depth=2 for faster export tests)."""
    torch.manual_seed(seed)
    net = PiDNet(tiny_config(structure, **overrides)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in net.named_parameters():
        if init == "tame":
            # upstream zero-initialises these; small values keep the latent path live
            if name.startswith(("final_layer.linear", "lq_proj.output_heads", "lq_proj.pit_head")):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
        elif init == "aggressive":
            if name.endswith("log_alpha"):
                p.fill_(math.log(5) + 0.1 * torch.randn((), generator=g).item())
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name or ".block.0." in name
                                                                   or ".block.3." in name else 0.0))
        else:
            raise ValueError(f"unknown init {init!r}")
    return net


def tiny_inputs(net: PiDNet, latent_hw: tuple[int, int] = (4, 6), batch: int = 1, text_len: int = 8,
                sigma: float = 0.25, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random latent, caption embedding and σ for a tiny net (values rounded to bf16 like upstream's callers)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, net.config.lq_latent_channels, *latent_hw, generator=g)
    y = torch.randn(batch, text_len, net.config.txt_embed_dim, generator=g)
    return {"lq_latent": z.bfloat16().float(), "y": y.bfloat16().float(),
            "degrade_sigma": torch.full((batch,), sigma)}

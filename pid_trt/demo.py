"""`pid-trt demo`: the built-in default job, no downloads: a tiny seeded flux-v1.5-structured net decodes a
latent; the image and a JSON report are written."""
from __future__ import annotations

import pathlib
import time
from typing import Any

import torch

from pid_trt import __version__
from pid_trt.images import atomic_write_json, save_image
from pid_trt.sampler import sample, to_uint8
from pid_trt.tiny import DEFAULT_STRUCTURE, tiny_inputs, tiny_net


def run_demo(out_dir: str | pathlib.Path, seed: int = 0, latent_hw: tuple[int, int] = (8, 12)) -> dict[str, Any]:
    out = pathlib.Path(out_dir)
    t0 = time.perf_counter()
    net = tiny_net(DEFAULT_STRUCTURE, seed=seed)
    inputs = tiny_inputs(net, latent_hw=latent_hw, seed=seed)
    image = sample(net, inputs["lq_latent"], inputs["y"], inputs["degrade_sigma"], steps=4,
                   generator=torch.Generator().manual_seed(seed))
    u8 = to_uint8(image)
    save_image(u8[0], out / "reference.png")
    report = {
        "pid_trt_version": __version__,
        "net": f"tiny {DEFAULT_STRUCTURE} (flux v1.5 structure), seed {seed}, "
               f"{sum(p.numel() for p in net.parameters()):,} parameters",
        "latent_shape": list(inputs["lq_latent"].shape),
        "image_size_wxh": [image.shape[3], image.shape[2]],
        "steps": 4,
        "images": {"reference": "reference.png"},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(out / "report.json", report)
    return report

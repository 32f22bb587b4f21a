"""An ONNX-directory manifest (docs/formats.md) for engine tests: plain JSON data, no ONNX or TensorRT."""
from __future__ import annotations

import json
import pathlib
from typing import Any

from pid_trt.registry import resolve
from pid_trt.sampler import t_lists


def flux2_manifest(precision: str = "bf16", text_dim: Any = "text_len") -> dict[str, Any]:
    """The manifest `pid-trt export --backbone flux2 --ckpt 2kto4k` writes (V15-F2: 128-ch latent, PiT injection),
    with the exporter's dims: x is [batch, 3, 64*lat_h, 64*lat_w], features [batch, 4*lat_h, 4*lat_w, D]."""
    entry = resolve("flux2", "2kto4k")
    net_config = entry.net.config
    feats = [{"name": n, "dtype": "float32", "shape": ["batch", "4*lat_h", "4*lat_w", net_config["hidden_size"]],
              "role": "latent injection feature"} for n in [f"lq_feat_{i}" for i in range(7)] + ["lq_feat_pit"]]
    pixels = ["batch", 3, "64*lat_h", "64*lat_w"]
    return {
        "format": "pid-trt-onnx", "format_version": 1, "pid_trt_version": "0.1.0",
        "backbone": "flux2", "ckpt": entry.ckpt, "net_definition": entry.net.id, "net_config": net_config.to_dict(),
        "precision": precision, "weights": {"source": "random", "sha256": "a" * 64},
        "latent": {"channels": 128, "down_factor": 16, "sr_scale": 4},
        "text": {"max_length": 300, "embed_dim": 2304},
        "sampler": {"kind": "distilled", "timescale": 1000.0, "default_steps": 4,
                    "t_lists": {str(n): t for n, t in t_lists().items()}},
        "opset": 20,
        "graphs": {
            "cond": {"file": "cond.onnx", "sha256": "c" * 64, "external_data": None,
                     "inputs": [{"name": "lq_latent", "dtype": "float32", "shape": ["batch", 128, "lat_h", "lat_w"],
                                 "role": "normalised LDM latent"}],
                     "outputs": feats},
            "denoise": {"file": "denoise.onnx", "sha256": "d" * 64, "external_data": None,
                        "inputs": [{"name": "x", "dtype": "float32", "shape": pixels, "role": "noisy pixels x_t"},
                                   {"name": "t", "dtype": "float32", "shape": ["batch"], "role": "flow time × 1000"},
                                   {"name": "y", "dtype": "float32", "shape": ["batch", text_dim, 2304],
                                    "role": "caption embedding"},
                                   {"name": "degrade_sigma", "dtype": "float32", "shape": ["batch"], "role": "sigma"},
                                   *feats],
                        "outputs": [{"name": "velocity", "dtype": "float32", "shape": pixels, "role": "velocity"}]},
        },
    }


def write_onnx_dir(root: pathlib.Path, manifest: dict[str, Any]) -> pathlib.Path:
    """A directory with the manifest and (empty) graph files: enough for planning, not for building."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    for graph in manifest["graphs"].values():
        (root / graph["file"]).write_bytes(b"")
    return root

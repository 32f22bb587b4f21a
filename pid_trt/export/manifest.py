"""The ONNX directory's `manifest.json`: written by the exporter, read (and checked) by everything after it.

Format: docs/formats.md ("ONNX directory").
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from pid_trt.errors import PiDInputError

FORMAT = "pid-trt-onnx"
FORMAT_VERSION = 1
SPLIT_GRAPHS = ("cond", "denoise")  # what engines are built from
_GRAPH_FIELDS = ("file", "sha256", "inputs", "outputs")
_FIELDS = (("net_config",), ("precision",), ("weights", "sha256"), ("sampler",), ("graphs",))


def read_manifest(onnx_dir: str | pathlib.Path, *, graphs: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest of an ONNX directory, with the fields readers rely on checked and its graph files present.

    `graphs`: graph names that must be in it (the engine builder needs the cond + denoise split).
    """
    onnx_dir = pathlib.Path(onnx_dir)
    path = onnx_dir / "manifest.json"
    if not path.is_file():
        raise PiDInputError(f"{onnx_dir} is not a pid-trt ONNX directory (no manifest.json); create one with "
                            "`pid-trt export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PiDInputError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PiDInputError(f"{path} is not a pid-trt ONNX manifest")
    for keys in _FIELDS + tuple(("graphs", g, f) for g in manifest.get("graphs") or {} for f in _GRAPH_FIELDS):
        node = manifest
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise PiDInputError(f"{path} lacks {'.'.join(keys)}; re-export with pid-trt export")
            node = node[key]
    sampler = manifest["sampler"]
    if sampler.get("kind") == "distilled" and sorted(sampler.get("t_lists") or {}, key=str) != [str(n) for n in range(1, 9)]:
        raise PiDInputError(f"{path} lacks the distilled sampler's t-lists for N = 1..8; re-export")
    missing = [g for g in graphs if g not in manifest["graphs"]]
    if missing:
        raise PiDInputError(f"{onnx_dir} has no {', '.join(missing)} graph (a --single export?); export the "
                            "cond + denoise split with pid-trt export")
    absent = [g["file"] for g in manifest["graphs"].values() if not (onnx_dir / g["file"]).is_file()]
    if absent:
        raise PiDInputError(f"{onnx_dir} lacks {', '.join(absent)}, named in its manifest; re-export")
    return manifest

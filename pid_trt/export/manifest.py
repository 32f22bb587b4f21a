"""The ONNX directory's `manifest.json`: written by the exporter, read (and checked) by everything after it.

Format: docs/formats.md ("ONNX directory").
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from pid_trt.errors import PiDInputError
from pid_trt.registry import Entry

FORMAT = "pid-trt-onnx"
FORMAT_VERSION = 1
SPLIT_GRAPHS = ("cond", "denoise")  # what engines are built from
_GRAPH_FIELDS = ("file", "sha256", "inputs", "outputs")
_FIELDS = (("net_config",), ("precision",), ("weights", "sha256"), ("sampler",), ("graphs",))
_TEACHER_FIELDS = ("timescale", "default_steps", "default_cfg", "time_grid")
SAMPLER_KINDS = ("distilled", "teacher")


def sampler_block(entry: Entry | None) -> dict[str, Any]:
    """The `sampler` block of manifests and sidecars (docs/formats.md): what a runtime needs to run the checkpoint's
    sampler. Teacher checkpoints (DPM-Solver++ with guidance) get kind "teacher" with their time-grid rule, default
    steps and guidance; everything else (and a net of unknown origin) is the distilled student with its t-lists."""
    from pid_trt.config import MAX_TEACHER_STEPS
    from pid_trt.sampler import STUDENT_STEPS, TIMESCALE, t_lists
    from pid_trt.teacher import T_END

    if entry is None or entry.sampler != "teacher":
        return {"kind": "distilled", "timescale": TIMESCALE, "default_steps": STUDENT_STEPS,
                "t_lists": {str(k): v for k, v in t_lists().items()}}
    base, size = entry.dynamic_shift or (None, None)
    return {"kind": "teacher", "timescale": TIMESCALE,
            "solver": {"name": "dpmsolver++", "order": 2, "prediction": "data", "lower_order_final": True},
            "default_steps": entry.default_steps, "max_steps": MAX_TEACHER_STEPS, "default_cfg": entry.default_cfg,
            "guidance": {"batch": "uncond_first", "negative": "caption embedding of the negative prompt"},
            "time_grid": {"rule": "time_uniform_flow", "t_end": T_END,
                          "shift": {"dynamic": None if base is None else {"base": base, "size": size},
                                    "static": entry.shift}}}


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
    if sampler.get("kind") not in SAMPLER_KINDS:
        raise PiDInputError(f"{path} has sampler kind {sampler.get('kind')!r}, this pid-trt knows "
                            f"{', '.join(SAMPLER_KINDS)}; re-export with pid-trt export")
    if sampler["kind"] == "distilled" and sorted(sampler.get("t_lists") or {}, key=str) != [str(n) for n in range(1, 9)]:
        raise PiDInputError(f"{path} lacks the distilled sampler's t-lists for N = 1..8; re-export")
    if sampler["kind"] == "teacher" and not all(k in sampler for k in _TEACHER_FIELDS):
        raise PiDInputError(f"{path} lacks the teacher sampler's {', '.join(_TEACHER_FIELDS)}; re-export")
    missing = [g for g in graphs if g not in manifest["graphs"]]
    if missing:
        raise PiDInputError(f"{onnx_dir} has no {', '.join(missing)} graph (a --single export?); export the "
                            "cond + denoise split with pid-trt export")
    absent = [g["file"] for g in manifest["graphs"].values() if not (onnx_dir / g["file"]).is_file()]
    if absent:
        raise PiDInputError(f"{onnx_dir} lacks {', '.join(absent)}, named in its manifest; re-export")
    return manifest

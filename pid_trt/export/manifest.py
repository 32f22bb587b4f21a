"""The ONNX directory's `manifest.json`: written by the exporter, read (and checked) by everything after it.

Format: docs/formats.md ("ONNX directory") and the JSON Schema pid_trt/schemas/manifest.schema.json. Also the
identities engine names carry: the weights (`weights_id`) and the FP8 calibration (`fp8_id`).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError, PiDInputError
from pid_trt.formats import read_json
from pid_trt.integrity import check_onnx, contained, file_sha256, verify_file
from pid_trt.registry import Entry

FORMAT = "pid-trt-onnx"
FORMAT_VERSION = 1
SPLIT_GRAPHS = ("cond", "denoise")  # what engines are built from
RANDOM = "RANDOM"  # the weights identity of random weights (engine names, plans, listings, summaries)
REEXPORT = "re-export with pid-trt export"
_VOLATILE = ("seconds",)  # keys of the fp8 block that change between identical exports (timings)


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


def io_blocks(config: NetConfig) -> dict[str, dict[str, int]]:
    """The `latent` and `text` blocks of manifests and sidecars: what a runtime feeds the net, without the net."""
    return {"latent": {"channels": config.lq_latent_channels, "down_factor": config.latent_spatial_down_factor,
                       "sr_scale": config.sr_scale},
            "text": {"max_length": config.txt_max_length, "embed_dim": config.txt_embed_dim}}


def read_manifest(onnx_dir: str | pathlib.Path, *, graphs: Sequence[str] = (), verify: bool = False) -> dict[str, Any]:
    """The manifest of an ONNX directory, validated against its JSON Schema, its graph files inside the directory
    and present.

    `graphs`: graph names that must be in it (the engine builder needs the cond + denoise split).
    `verify`: also check every graph file's sha256, its external data and its weights (`verify_graphs`), as
    readers that load the graphs do before using them.
    """
    onnx_dir = pathlib.Path(onnx_dir)
    path = onnx_dir / "manifest.json"
    if not onnx_dir.exists():
        raise PiDInputError(f"ONNX directory {onnx_dir} does not exist; create one with `pid-trt export`")
    if not path.is_file():
        raise PiDInputError(f"{onnx_dir} is not a pid-trt ONNX directory (no manifest.json); create one with "
                            "`pid-trt export`")
    manifest = read_json(path, "ONNX manifest", "manifest", REEXPORT)
    try:
        NetConfig.from_dict(manifest["net_config"])
    except ConfigError as e:
        raise PiDInputError(f"ONNX manifest {path}: {e}; {REEXPORT}") from None
    missing = [g for g in graphs if g not in manifest["graphs"]]
    if missing:
        raise PiDInputError(f"{onnx_dir} has no {', '.join(missing)} graph (a --single export?); export the "
                            "cond + denoise split with pid-trt export")
    for name, graph in manifest["graphs"].items():
        for key in ("file", "external_data"):
            if graph.get(key) is not None:
                what = f"ONNX manifest {path}: graphs.{name}.{key}"
                if not contained(onnx_dir, graph[key], what).is_file():
                    raise PiDInputError(f"{onnx_dir} lacks {graph[key]}, named in its manifest; {REEXPORT}")
    if verify:
        verify_graphs(onnx_dir, manifest)
    return manifest


def verify_graphs(onnx_dir: str | pathlib.Path, manifest: Mapping[str, Any]) -> None:
    """Every graph file (and recorded external data) still has the sha256 the manifest records, its external data
    lies inside the directory and its weights are finite; one PiDInputError line otherwise. Cached per file
    version, so a multi-GB export is hashed once."""
    onnx_dir = pathlib.Path(onnx_dir)
    for name, graph in manifest["graphs"].items():
        what = f"ONNX graph {name}"
        path = verify_file(onnx_dir, graph["file"], graph["sha256"], what, f"the file changed since export; {REEXPORT}")
        if graph.get("external_data") and graph.get("external_data_sha256"):
            verify_file(onnx_dir, graph["external_data"], graph["external_data_sha256"], f"{what} external data",
                        f"the file changed since export; {REEXPORT}")
        check_onnx(path, onnx_dir, what)


# -- identities ----------------------------------------------------------------------------------------------

def is_random(weights: Mapping[str, Any]) -> bool:
    """Whether a manifest's (or sidecar's) weights block records random weights."""
    return weights.get("source") == "random"


def checkpoint_weights(checkpoint: str | pathlib.Path) -> dict[str, Any]:
    """The weights block of an export from a checkpoint file: its absolute path (so parity finds it from any
    directory) and the sha256 of its bytes."""
    path = pathlib.Path(checkpoint).resolve()
    return {"source": str(path), "checkpoint": {"path": str(path), "sha256": file_sha256(path)}}


def weights_id(weights: Mapping[str, Any]) -> str:
    """What engine names call the weights: RANDOM for random weights, else the first 8 hex digits of the
    checkpoint file's sha256 (exports from a checkpoint) or of the weights' own sha256 (nets exported from
    memory)."""
    if is_random(weights):
        return RANDOM
    checkpoint = weights.get("checkpoint")
    return (checkpoint["sha256"] if checkpoint else weights["sha256"])[:8]


def _stable(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: _stable(v) for k, v in block.items() if k not in _VOLATILE}
    if isinstance(block, list):
        return [_stable(v) for v in block]
    return block


def fp8_id(manifest: Mapping[str, Any]) -> str | None:
    """8 hex digits identifying an fp8 export's quantization (every graph's `fp8` block: calibration, scales,
    keep-high layers; timings left out), or None for other precisions."""
    blocks = {name: _stable(g["fp8"]) for name, g in manifest["graphs"].items() if "fp8" in g}
    if manifest.get("precision") != "fp8" or not blocks:
        return None
    return hashlib.sha256(json.dumps(blocks, sort_keys=True).encode()).hexdigest()[:8]


def describe_weights(weights: Mapping[str, Any] | None) -> str:
    """One line for people: RANDOM weights, the checkpoint (path and sha256), or the weights' sha256."""
    if not weights:
        return "unknown"
    if is_random(weights):
        return f"{RANDOM} (seeded random weights of the net's shape: fine for engine and speed work, images are noise)"
    checkpoint = weights.get("checkpoint")
    if checkpoint:
        return f"checkpoint {checkpoint['path']} (sha256 {checkpoint['sha256'][:12]}…)"
    source = weights.get("source", "in-memory")
    return f"{source} (weights sha256 {weights['sha256'][:12]}…)" if weights.get("sha256") else source


def check_weights(weights: Mapping[str, Any], checkpoint: str | pathlib.Path, what: str,
                  net_config: Mapping[str, Any]) -> None:
    """PiDInputError unless the artifact whose weights block this is was made from `checkpoint`.

    Compares the checkpoint file's sha256 with the recorded one; for artifacts that record no checkpoint file
    (older exports, nets exported from memory) the checkpoint is loaded for `net_config` and its weights hashed."""
    checkpoint = pathlib.Path(checkpoint)
    if not checkpoint.is_file():
        raise PiDInputError(f"checkpoint {checkpoint} does not exist")
    if is_random(weights):
        raise PiDInputError(f"{what} holds {RANDOM} weights, not those of {checkpoint}; export (and build) from "
                            "the checkpoint with --checkpoint")
    recorded = weights.get("checkpoint")
    if recorded:
        if file_sha256(checkpoint) != recorded["sha256"]:
            raise PiDInputError(f"{what} was made from {recorded['path']} (sha256 {recorded['sha256'][:12]}…), "
                                f"not from {checkpoint} (sha256 {file_sha256(checkpoint)[:12]}…)")
        return
    from pid_trt.checkpoint import load_net, weights_digest

    if weights_digest(load_net(checkpoint, net_config)) != weights["sha256"]:
        raise PiDInputError(f"{what} holds other weights (sha256 {weights['sha256'][:12]}…) than {checkpoint}")

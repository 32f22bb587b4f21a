"""Planning `pid-trt build`: the net, the ONNX directory, profiles, engine names and memory estimates.

A plan needs neither TensorRT nor a GPU (it is what `--dry-run` prints); pid_trt.engines.build carries it out.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
from dataclasses import dataclass
from typing import Any, Iterable

from pid_trt.config import DEFAULT_ENGINE_DIR, ENGINE_PRECISIONS, NetConfig
from pid_trt.engines.detect import GpuInfo
from pid_trt.engines.profiles import Profile, Range, plan_profiles, profile_set_hash
from pid_trt.engines.store import GRAPHS, UNKNOWN, engine_name
from pid_trt.errors import ConfigError, PiDError
from pid_trt.export.fp8 import fp8_params
from pid_trt.export.manifest import (
    check_weights,
    checkpoint_weights,
    describe_weights,
    fp8_id,
    is_random,
    read_manifest,
    weights_id,
)
from pid_trt.memory import LARGEST_TARGET_GPU, WEIGHT_BYTES, activation_bytes, check_fits, gib, params_of, weight_bytes
from pid_trt.registry import Entry, resolve

PRECISIONS = ENGINE_PRECISIONS
NO_WEIGHTS = ("pass --checkpoint FILE (the weights to build engines from), or --random-weights for engine and "
              "performance work without weights, or --onnx-dir DIR of an export")


@dataclass
class BuildPlan:
    """Everything `pid-trt build` will do, decided before TensorRT or a GPU is touched."""

    entry: Entry
    precision: str
    net_config: NetConfig
    export_net_config: NetConfig | None  # --net-config, passed to the exporter
    onnx_dir: pathlib.Path
    manifest: dict[str, Any] | None  # None: the ONNX directory is still to be exported
    profiles: list[Profile]
    warnings: list[str]
    engine_dir: pathlib.Path
    timing_cache: pathlib.Path | None  # None: the per-GPU/TensorRT default under the engine dir
    opt_level: int
    workspace_bytes: int
    checkpoint: pathlib.Path | None = None  # the weights to export (None: the manifest's, or random weights)

    @property
    def weights(self) -> dict[str, Any]:
        """The weights block the engines will record: the manifest's, or what the export will write."""
        return planned_weights(self.manifest, self.checkpoint)

    @property
    def fp8_id(self) -> str | None:
        return fp8_id(self.manifest) if self.manifest is not None else None

    @property
    def backbone(self) -> str:
        """The base backbone engines are named after (aliases such as zimage share flux's engines)."""
        return self.entry.base_backbone

    @property
    def profile_hash(self) -> str:
        return profile_set_hash(self.profiles)

    def name(self, trt_version: str | None, gpu: GpuInfo | None) -> str:
        return engine_name(self.backbone, self.entry.ckpt, self.precision, self.profile_hash, trt_version,
                           gpu.compute_capability if gpu else None, weights=weights_id(self.weights),
                           fp8=self.fp8_id)

    def timing_cache_path(self, trt_version: str | None, gpu: GpuInfo | None) -> pathlib.Path:
        """Timing caches are only valid for one TensorRT version on one GPU model, so the key holds both."""
        if self.timing_cache is not None:
            return self.timing_cache
        gpu_key = (f"sm{gpu.compute_capability.replace('.', '')}_{re.sub(r'[^a-z0-9]+', '-', gpu.name.lower())}"
                   if gpu else f"sm{UNKNOWN}")
        return self.engine_dir / "timing-cache" / f"trt{trt_version or UNKNOWN}_{gpu_key}.cache"

    @property
    def params(self) -> int | None:
        return params_of(self.net_config)

    @property
    def weight_bytes(self) -> int | None:
        """Weight memory of both engines (fp8: its FP8 Linear layers in 1 byte, the rest in 16 bits)."""
        if not self.params:
            return None
        return weight_bytes(self.params, self.precision, fp8_params(self.net_config) if self.precision == "fp8" else 0)


def planned_weights(manifest: dict[str, Any] | None, checkpoint: pathlib.Path | None) -> dict[str, Any]:
    """An export's weights block, or the one an export of `checkpoint` (None: random weights) will write."""
    if manifest is not None:
        return manifest["weights"]
    if checkpoint is None:
        return {"source": "random"}
    return checkpoint_weights(checkpoint)


def _weights_choice(onnx_dir: pathlib.Path | None, checkpoint: pathlib.Path | None, random_weights: bool) -> None:
    if checkpoint is not None and random_weights:
        raise ConfigError("--checkpoint and --random-weights contradict each other; give one")
    if onnx_dir is None and checkpoint is None and not random_weights:
        raise ConfigError(f"no weights given: {NO_WEIGHTS}")
    if checkpoint is not None and not checkpoint.is_file():
        raise ConfigError(f"--checkpoint {checkpoint} does not exist")


def make_plan(*, backbone: str | None, ckpt: str | None, precision: str | None, onnx_dir: pathlib.Path | None,
              shapes: Iterable[tuple[int, int]] = (), dynamic: bool = False, batch: Range = (1, 1, 1),
              engine_dir: pathlib.Path = DEFAULT_ENGINE_DIR, timing_cache: pathlib.Path | None = None,
              opt_level: int = 3, workspace_bytes: int = 0, net_config: NetConfig | None = None,
              checkpoint: pathlib.Path | None = None, random_weights: bool = False) -> BuildPlan:
    """Resolve the weights, the net, the ONNX directory (given, already exported, or to export) and the profiles.

    Weights: an ONNX directory's (a `checkpoint` must then be the one it was exported from), `checkpoint`, or
    random weights when `random_weights` says so; without any of them the plan is refused.
    With an ONNX directory its manifest supplies backbone/ckpt/precision; flags that contradict it are errors.
    """
    if not 0 <= opt_level <= 5:
        raise ConfigError(f"--opt-level must be 0..5 (TensorRT's builder optimization level), got {opt_level}")
    manifest = read_manifest(onnx_dir, graphs=GRAPHS) if onnx_dir is not None else None
    in_manifest = (manifest.get("backbone"), manifest.get("ckpt")) if manifest is not None else (None, None)
    backbone = backbone or in_manifest[0]
    if backbone is None:
        raise ConfigError("pass --backbone (the ONNX manifest names none)")
    entry = resolve(backbone, ckpt or in_manifest[1] or "2k")
    _weights_choice(onnx_dir, checkpoint, random_weights)
    if in_manifest[0] is not None:
        built = resolve(in_manifest[0], in_manifest[1] or "2k")
        if (entry.base_backbone, entry.ckpt) != (built.base_backbone, built.ckpt):
            raise ConfigError(f"--backbone/--ckpt {entry.backbone} {entry.ckpt} contradict the ONNX manifest "
                              f"({built.backbone} {built.ckpt}); drop them or export again")
    if manifest is not None and precision not in (None, manifest["precision"]):
        raise ConfigError(f"--precision {precision} contradicts the ONNX manifest ({manifest['precision']}); "
                          "TensorRT builds strongly typed networks from the ONNX types, so export again")
    precision = precision or (manifest["precision"] if manifest is not None else "bf16")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not supported for engines (choose {', '.join(PRECISIONS)})")
    if manifest is not None and random_weights and not is_random(manifest["weights"]):
        raise ConfigError(f"--random-weights contradicts {onnx_dir}, exported from "
                          f"{describe_weights(manifest['weights'])}; drop one of them")
    if onnx_dir is None:
        # exports are kept beside the engines and reused by later builds of the same net and weights
        custom = f"_custom{hashlib.sha256(json.dumps(dict(net_config or {}), sort_keys=True).encode()).hexdigest()[:8]}"
        onnx_dir = engine_dir / "onnx" / (f"{entry.base_backbone}_{entry.ckpt}_{precision}"
                                          f"_w{weights_id(planned_weights(None, checkpoint))}"
                                          f"{custom if net_config else ''}")
        if (onnx_dir / "manifest.json").exists():
            manifest = read_manifest(onnx_dir, graphs=GRAPHS)
    if manifest is not None and checkpoint is not None:
        check_weights(manifest["weights"], checkpoint, f"ONNX export {onnx_dir}", manifest["net_config"])
    config = NetConfig.from_dict(manifest["net_config"]) if manifest is not None else net_config or entry.net.config
    profiles, warnings = plan_profiles(entry, config, shapes=shapes, dynamic=dynamic, batch=batch)
    return BuildPlan(entry, precision, config, net_config, onnx_dir, manifest, profiles, warnings, engine_dir,
                     timing_cache, opt_level, workspace_bytes, checkpoint)


def check_memory(plan: BuildPlan, gpu: GpuInfo | None) -> None:
    """Refuse a plan whose largest profile cannot fit the GPU it builds on (no GPU here: the largest GPU a plan
    targets, `pid_trt.memory.LARGEST_TARGET_GPU`), naming the largest size that fits; before any work."""
    if gpu is not None and gpu.total_memory:
        where, budget = f"the GPU here ({gpu.name})", gpu.total_memory
    else:
        where, budget = f"{LARGEST_TARGET_GPU[0]} (the largest GPU a plan targets; no GPU here)", LARGEST_TARGET_GPU[1]
    resident = plan.weight_bytes or 0
    for p in plan.profiles:
        try:
            check_fits(plan.net_config, p.width[2], p.height[2], p.batch[2], plan.precision, budget, where, resident)
        except PiDError as e:
            raise ConfigError(f"profile {p.name} ({p.describe()}): {e}") from None


def describe_plan(plan: BuildPlan, trt_version: str | None = None, gpu: GpuInfo | None = None) -> list[str]:
    """The plan as text lines (what --dry-run prints)."""
    e = plan.entry
    name = plan.name(trt_version, gpu)
    if plan.manifest is not None:
        onnx = f"{plan.onnx_dir} (existing: {', '.join(plan.manifest['graphs'][g]['file'] for g in GRAPHS)})"
    else:
        onnx = f"{plan.onnx_dir} (to be exported: cond.onnx, denoise.onnx, manifest.json)"
    params = plan.params
    if not params:
        weights = "unknown (custom net config)"
    elif plan.precision == "fp8":
        quantized = fp8_params(plan.net_config)
        weights = (f"{params:,} params: {quantized:,} in FP8 Linear layers × 1 B + {params - quantized:,} × 2 B = "
                   f"{gib(plan.weight_bytes)}")
    else:
        weights = (f"{params:,} params × {WEIGHT_BYTES[plan.precision]} B = "
                   f"{gib(plan.weight_bytes)}")
    lines = [
        f"net:          {plan.backbone} {e.ckpt} ({e.net.id}, {e.experiment})",
        *([f"note:         {e.note}"] if e.note else []),
        f"precision:    {plan.precision} (strongly typed: the ONNX graph carries the types)",
        f"sampler:      {e.sampler}" + (" (guidance runs [uncond; cond] as one batch of 2B: profile batches span "
                                        "B..2B)" if e.sampler == "teacher" else ""),
        f"ONNX:         {onnx}",
        f"checkpoint:   {describe_weights(plan.weights)}",
        f"TensorRT:     {trt_version or UNKNOWN + ' (not installed here)'}",
        f"GPU:          {f'{gpu.name} (SM {gpu.compute_capability})' if gpu else UNKNOWN}",
        f"engine dir:   {plan.engine_dir}",
        f"engine name:  {name}",
        "files:        <name>.cond.engine, <name>.denoise.engine, then the sidecar <name>.json",
        f"build:        opt level {plan.opt_level}, workspace "
        f"{gib(plan.workspace_bytes) if plan.workspace_bytes else 'TensorRT default (device memory)'}, "
        f"timing cache {plan.timing_cache_path(trt_version, gpu)}",
        f"weights:      {weights} (both engines together)",
        f"profiles:     {len(plan.profiles)} (hash {plan.profile_hash}); activations: rough peak per denoise call "
        "at the profile's max size and batch",
    ]
    for p in plan.profiles:
        lines.append(f"  {p.name:<12} {p.kind:<8} {p.describe():<52} ~{gib(_activations(plan, p))}")
    lines += [f"warning:      {w}" for w in plan.warnings]
    return lines


def _activations(plan: BuildPlan, profile: Profile) -> int:
    """Rough peak activations of one denoise call at the profile's largest size and batch."""
    return activation_bytes(plan.net_config, profile.width[2], profile.height[2], profile.batch[2], plan.precision)


def plan_json(plan: BuildPlan, trt_version: str | None = None, gpu: GpuInfo | None = None) -> dict[str, Any]:
    """The plan as a JSON-able dict (what `--dry-run --json` prints)."""
    e = plan.entry
    return {
        "backbone": plan.backbone, "ckpt": e.ckpt, "net_definition": e.net.id, "experiment": e.experiment,
        "note": e.note or None, "precision": plan.precision, "sampler": e.sampler, "onnx_dir": str(plan.onnx_dir),
        "onnx_exists": plan.manifest is not None, "tensorrt_version": trt_version,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability} if gpu else None,
        "weights": plan.weights, "weights_id": weights_id(plan.weights), "random_weights": is_random(plan.weights),
        "engine_dir": str(plan.engine_dir), "engine_name": plan.name(trt_version, gpu),
        "timing_cache": str(plan.timing_cache_path(trt_version, gpu)), "opt_level": plan.opt_level,
        "workspace_bytes": plan.workspace_bytes,
        "weight_bytes": plan.weight_bytes,
        "profile_hash": plan.profile_hash,
        "profiles": [{**p.to_json(), "activation_bytes": _activations(plan, p)} for p in plan.profiles],
        "warnings": plan.warnings,
    }

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

from pid_trt.config import DEFAULT_ENGINE_DIR, ENGINE_PRECISIONS, NET_DEFINITIONS, NetConfig, match_net_definition
from pid_trt.engines.detect import GpuInfo
from pid_trt.engines.profiles import Profile, Range, plan_profiles, profile_set_hash
from pid_trt.engines.store import GRAPHS, UNKNOWN, engine_name
from pid_trt.errors import ConfigError
from pid_trt.export.fp8 import BASE_PRECISIONS
from pid_trt.export.manifest import read_manifest
from pid_trt.registry import Entry, resolve

PRECISIONS = ENGINE_PRECISIONS
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}  # fp8: the FP8 Linear layers; the rest is 16-bit
# bytes per activation; an fp8 graph keeps its activations in its 16-bit base precision between the Q/DQ pairs
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 2}


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

    @property
    def backbone(self) -> str:
        """The base backbone engines are named after (aliases such as zimage share flux's engines)."""
        return self.entry.base_backbone

    @property
    def profile_hash(self) -> str:
        return profile_set_hash(self.profiles)

    def name(self, trt_version: str | None, gpu: GpuInfo | None) -> str:
        return engine_name(self.backbone, self.entry.ckpt, self.precision, self.profile_hash, trt_version,
                           gpu.compute_capability if gpu else None)

    def timing_cache_path(self, trt_version: str | None, gpu: GpuInfo | None) -> pathlib.Path:
        """Timing caches are only valid for one TensorRT version on one GPU model, so the key holds both."""
        if self.timing_cache is not None:
            return self.timing_cache
        gpu_key = (f"sm{gpu.compute_capability.replace('.', '')}_{re.sub(r'[^a-z0-9]+', '-', gpu.name.lower())}"
                   if gpu else f"sm{UNKNOWN}")
        return self.engine_dir / "timing-cache" / f"trt{trt_version or UNKNOWN}_{gpu_key}.cache"

    @property
    def params(self) -> int | None:
        net_id = match_net_definition(self.net_config)
        return NET_DEFINITIONS[net_id].params if net_id else None


def make_plan(*, backbone: str | None, ckpt: str | None, precision: str | None, onnx_dir: pathlib.Path | None,
              shapes: Iterable[tuple[int, int]] = (), dynamic: bool = False, batch: Range = (1, 1, 1),
              engine_dir: pathlib.Path = DEFAULT_ENGINE_DIR, timing_cache: pathlib.Path | None = None,
              opt_level: int = 3, workspace_bytes: int = 0,
              net_config: NetConfig | None = None) -> BuildPlan:
    """Resolve the net, the ONNX directory (given, already exported, or to export) and the profiles.

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
    if onnx_dir is None:
        # exports are kept beside the engines and reused by later builds of the same net
        custom = f"_custom{hashlib.sha256(json.dumps(dict(net_config or {}), sort_keys=True).encode()).hexdigest()[:8]}"
        onnx_dir = engine_dir / "onnx" / (f"{entry.base_backbone}_{entry.ckpt}_{precision}"
                                          f"{custom if net_config else ''}")
        if (onnx_dir / "manifest.json").exists():
            manifest = read_manifest(onnx_dir, graphs=GRAPHS)
    if manifest is not None:
        config = NetConfig.from_dict(manifest["net_config"])
    else:
        config = net_config or entry.net.config
    profiles, warnings = plan_profiles(entry, config, shapes=shapes, dynamic=dynamic, batch=batch)
    return BuildPlan(entry, precision, config, net_config, onnx_dir, manifest, profiles, warnings, engine_dir,
                     timing_cache, opt_level, workspace_bytes)


def fp8_params(net_config: NetConfig) -> int:
    """Parameters of the Linear layers an fp8 export quantizes (counted on the meta device: no memory)."""
    import torch

    from pid_trt.export.fp8 import fp8_linear_names
    from pid_trt.model import PiDNet

    with torch.device("meta"):
        net = PiDNet(net_config)
    return sum(net.get_submodule(name).weight.numel() for name in fp8_linear_names(net))


def weight_bytes(params: int, precision: str, net_config: NetConfig) -> int:
    """Weight memory of both engines: fp8 stores its FP8 Linear layers in 1 byte and the rest in 16 bits."""
    if precision != "fp8":
        return params * WEIGHT_BYTES[precision]
    quantized = fp8_params(net_config)
    return quantized * WEIGHT_BYTES["fp8"] + (params - quantized) * WEIGHT_BYTES[BASE_PRECISIONS[0]]


def activation_bytes(profile: Profile, net_config: NetConfig, precision: str) -> int:
    """Rough activation memory of one denoise call at the profile's largest size and batch.

    The dominant tensors, with attention assumed fused (no L×L score matrix):
      pixel adaLN modulation  B·L·P²·6·pd   (per-pixel shift/scale/gate for attention and MLP)
      pixel MLP hidden        B·L·P²·4·pd
      patch stream            B·(L+Lt)·(3·D + 2·(8/3)·D)   (joint qkv, SwiGLU gate and up projections)
    with L = (H/P)·(W/P) patch tokens (P = 16), Lt text tokens, D / pd the patch / pixel widths; elements ×
    bytes per activation. TensorRT's real peak also depends on its fusions; treat this as ±50 %.
    """
    b, h, w = profile.batch[2], profile.height[2], profile.width[2]
    p, pd, d = net_config.patch_size, net_config.pixel_hidden_size, net_config.hidden_size
    tokens = (h // p) * (w // p)
    pixel = b * tokens * p * p * (6 * pd + 4 * pd)
    patch = b * (tokens + net_config.text_limit) * (3 * d + 2 * (8 * d // 3))
    return (pixel + patch) * ACTIVATION_BYTES[precision]


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


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
                   f"{gib(weight_bytes(params, plan.precision, plan.net_config))}")
    else:
        weights = (f"{params:,} params × {WEIGHT_BYTES[plan.precision]} B = "
                   f"{gib(weight_bytes(params, plan.precision, plan.net_config))}")
    lines = [
        f"net:          {plan.backbone} {e.ckpt} ({e.net.id}, {e.experiment})",
        *([f"note:         {e.note}"] if e.note else []),
        f"precision:    {plan.precision} (strongly typed: the ONNX graph carries the types)",
        f"sampler:      {e.sampler}" + (" (guidance runs [uncond; cond] as one batch of 2B: profile batches span "
                                        "B..2B)" if e.sampler == "teacher" else ""),
        f"ONNX:         {onnx}",
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
        lines.append(f"  {p.name:<12} {p.kind:<8} {p.describe():<52} "
                     f"~{gib(activation_bytes(p, plan.net_config, plan.precision))}")
    lines += [f"warning:      {w}" for w in plan.warnings]
    return lines




def plan_json(plan: BuildPlan, trt_version: str | None = None, gpu: GpuInfo | None = None) -> dict[str, Any]:
    """The plan as a JSON-able dict (what `--dry-run --json` prints)."""
    e = plan.entry
    params = plan.params
    return {
        "backbone": plan.backbone, "ckpt": e.ckpt, "net_definition": e.net.id, "experiment": e.experiment,
        "note": e.note or None, "precision": plan.precision, "sampler": e.sampler, "onnx_dir": str(plan.onnx_dir),
        "onnx_exists": plan.manifest is not None, "tensorrt_version": trt_version,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability} if gpu else None,
        "engine_dir": str(plan.engine_dir), "engine_name": plan.name(trt_version, gpu),
        "timing_cache": str(plan.timing_cache_path(trt_version, gpu)), "opt_level": plan.opt_level,
        "workspace_bytes": plan.workspace_bytes,
        "weight_bytes": weight_bytes(params, plan.precision, plan.net_config) if params else None,
        "profile_hash": plan.profile_hash,
        "profiles": [{**p.to_json(), "activation_bytes": activation_bytes(p, plan.net_config, plan.precision)}
                     for p in plan.profiles],
        "warnings": plan.warnings,
    }

"""`pid-trt build`: plan a build (profiles, names, memory estimates), export if needed, build, store.

The plan needs neither TensorRT nor a GPU (it is what `--dry-run` prints); `run_build` needs both.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from filelock import FileLock

from pid_trt import __version__
from pid_trt.engines import trt
from pid_trt.engines.profiles import Profile, Range, input_shapes, plan_profiles, profile_set_hash
from pid_trt.engines.store import (FORMAT, FORMAT_VERSION, GRAPHS, UNKNOWN, EngineStore, canonical_names, engine_name,
                                   find_engine)
from pid_trt.errors import ConfigError, MissingDependencyError, PiDError
from pid_trt.images import atomic_write_bytes
from pid_trt.model import DEFAULT_CONFIG
from pid_trt.registry import NET_DEFINITIONS, Entry, match_net_definition, resolve

PRECISIONS = ("bf16", "fp16", "fp8", "fp32")
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 2}  # fp8 graphs keep activations in 16 bit between Q/DQ
DEFAULT_ENGINE_DIR = pathlib.Path("engines")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def gpu_info() -> GpuInfo:
    """The GPU engines are built for (device 0, as TensorRT uses it)."""
    import torch

    if not torch.cuda.is_available():
        raise trt.EngineBuildError("no CUDA GPU is visible to PyTorch; TensorRT engines are built on the GPU "
                                   "that will run them (check the driver, CUDA_VISIBLE_DEVICES and a CUDA PyTorch)")
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}")


def detect_local() -> tuple[str | None, GpuInfo | None]:
    """This machine's TensorRT version and GPU, None where unavailable (dry runs and listings work without)."""
    try:
        version = trt.tensorrt_version()
    except MissingDependencyError:
        return None, None
    try:
        return version, gpu_info()
    except PiDError:
        return version, None


def canonical_backbone(entry: Entry) -> str:
    """Aliases (zimage, flux2-klein-4b, …) use their base net's engines."""
    return canonical_names(entry.backbone, entry.ckpt)[0]


_MANIFEST_FIELDS = (("net_config",), ("precision",), ("weights", "sha256"), ("sampler",)) + tuple(
    ("graphs", g, key) for g in GRAPHS for key in ("file", "sha256", "inputs", "outputs"))


def read_manifest(onnx_dir: pathlib.Path) -> dict[str, Any]:
    """The ONNX directory's manifest.json, with the fields a build needs checked."""
    from pid_trt.export import read_manifest as read_onnx_manifest

    path = onnx_dir / "manifest.json"
    manifest = read_onnx_manifest(onnx_dir)
    for keys in _MANIFEST_FIELDS:
        node = manifest
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"{path} lacks {'.'.join(keys)}; re-export with pid-trt export")
            node = node[key]
    missing = [g for g in GRAPHS if not (onnx_dir / manifest["graphs"][g]["file"]).exists()]
    if missing:
        raise ConfigError(f"{onnx_dir} lacks the {', '.join(missing)} graph file(s) its manifest names; re-export")
    sampler = manifest["sampler"]
    distilled = sampler.get("kind") == "distilled"
    if distilled and sorted(sampler.get("t_lists", {}), key=int) != [str(n) for n in range(1, 9)]:
        raise ConfigError(f"{path} lacks the distilled sampler's t-lists for N = 1..8; re-export")
    return manifest


@dataclass
class BuildPlan:
    """Everything `pid-trt build` will do, decided before TensorRT or a GPU is touched."""

    entry: Entry
    precision: str
    net_config: dict[str, Any]
    export_net_config: dict[str, Any] | None  # --net-config, passed to the exporter
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
        return canonical_backbone(self.entry)

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
              net_config: dict[str, Any] | None = None) -> BuildPlan:
    """Resolve the net, the ONNX directory (given, already exported, or to export) and the profiles.

    With an ONNX directory its manifest supplies backbone/ckpt/precision; flags that contradict it are errors.
    """
    if not 0 <= opt_level <= 5:
        raise ConfigError(f"--opt-level must be 0..5 (TensorRT's builder optimization level), got {opt_level}")
    manifest = read_manifest(onnx_dir) if onnx_dir is not None else None
    in_manifest = (manifest.get("backbone"), manifest.get("ckpt")) if manifest is not None else (None, None)
    backbone = backbone or in_manifest[0]
    if backbone is None:
        raise ConfigError("pass --backbone (the ONNX manifest names none)")
    entry = resolve(backbone, ckpt or in_manifest[1] or "2k")
    if in_manifest[0] is not None:
        built = resolve(in_manifest[0], in_manifest[1] or "2k")
        if (canonical_backbone(entry), entry.ckpt) != (canonical_backbone(built), built.ckpt):
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
        custom = f"_custom{hashlib.sha256(json.dumps(net_config, sort_keys=True).encode()).hexdigest()[:8]}"
        onnx_dir = engine_dir / "onnx" / (f"{canonical_backbone(entry)}_{entry.ckpt}_{precision}"
                                          f"{custom if net_config else ''}")
        if (onnx_dir / "manifest.json").exists():
            manifest = read_manifest(onnx_dir)
    cfg = {**DEFAULT_CONFIG, **(manifest["net_config"] if manifest is not None else entry.net.config),
           **(net_config if manifest is None and net_config else {})}
    profiles, warnings = plan_profiles(entry, cfg, shapes=shapes, dynamic=dynamic, batch=batch)
    return BuildPlan(entry, precision, cfg, net_config, onnx_dir, manifest, profiles, warnings, engine_dir,
                     timing_cache, opt_level, workspace_bytes)


def weight_bytes(params: int, precision: str) -> int:
    return params * WEIGHT_BYTES[precision]


def activation_bytes(profile: Profile, net_config: dict[str, Any], precision: str) -> int:
    """Rough activation memory of one denoise call at the profile's largest size and batch.

    The dominant tensors, with attention assumed fused (no L×L score matrix):
      pixel adaLN modulation  B·L·P²·6·pd   (per-pixel shift/scale/gate for attention and MLP)
      pixel MLP hidden        B·L·P²·4·pd
      patch stream            B·(L+Lt)·(3·D + 2·(8/3)·D)   (joint qkv, SwiGLU gate and up projections)
    with L = (H/P)·(W/P) patch tokens (P = 16), Lt text tokens, D / pd the patch / pixel widths; elements ×
    bytes per activation. TensorRT's real peak also depends on its fusions; treat this as ±50 %.
    """
    b, h, w = profile.batch[2], profile.height[2], profile.width[2]
    p, pd, d = net_config["patch_size"], net_config["pixel_hidden_size"], net_config["hidden_size"]
    tokens = (h // p) * (w // p)
    pixel = b * tokens * p * p * (6 * pd + 4 * pd)
    patch = b * (tokens + net_config["txt_max_length"]) * (3 * d + 2 * (8 * d // 3))
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
    weights = (f"{params:,} params × {WEIGHT_BYTES[plan.precision]} B = {gib(weight_bytes(params, plan.precision))}"
               if params else "unknown (custom net config)")
    lines = [
        f"net:          {plan.backbone} {e.ckpt} ({e.net.id}, {e.experiment})",
        *([f"note:         {e.note}"] if e.note else []),
        f"precision:    {plan.precision} (strongly typed: the ONNX graph carries the types)",
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


def run_build(plan: BuildPlan, *, force: bool = False, progress: bool = True,
              echo: Callable[[str], None] = print) -> pathlib.Path:
    """Export (if needed), build both engines and publish them; returns the sidecar path.

    Holds the engine name's lock from the up-to-date check to the sidecar write, so a second build of the
    same engine waits and then finds it finished.
    """
    trt_version = trt.tensorrt_version()  # first: fail in a second, not after a long export
    gpu = gpu_info()
    if plan.manifest is None:
        _export(plan, echo)
    manifest = plan.manifest
    name = plan.name(trt_version, gpu)
    store = EngineStore(plan.engine_dir)
    with store.lock(name):
        lookup = find_engine(plan.engine_dir, plan.backbone, plan.entry.ckpt, plan.precision, trt_version=trt_version,
                             compute_capability=gpu.compute_capability, onnx_manifest=manifest, name=name)
        if lookup.found and not force:
            echo(f"up to date: {lookup.sidecar_path}")
            return lookup.sidecar_path
        echo(lookup.rebuild_reason() or f"building {name}")
        cache_path = plan.timing_cache_path(trt_version, gpu)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = cache_path.read_bytes() if cache_path.exists() else b""
        engines = {}
        for graph in GRAPHS:
            spec = manifest["graphs"][graph]
            shapes = [input_shapes(spec, p, plan.net_config) for p in plan.profiles]
            echo(f"building the {graph} engine ({len(shapes)} profiles) from {plan.onnx_dir / spec['file']}")
            engines[graph], cache = trt.build_serialized_engine(
                plan.onnx_dir / spec["file"], shapes, opt_level=plan.opt_level,
                workspace_bytes=plan.workspace_bytes, timing_cache=cache, progress=progress)
            with FileLock(f"{cache_path}.lock"):
                atomic_write_bytes(cache_path, cache)
        sidecar = make_sidecar(plan, manifest, trt_version, gpu, cache_path)
        path = store.publish(name, engines, sidecar)
    echo(f"wrote {path}")
    return path


def _export(plan: BuildPlan, echo: Callable[[str], None]) -> None:
    """Export the plan's ONNX directory (once, even with concurrent builds) and adopt its manifest."""
    plan.onnx_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{plan.onnx_dir}.lock"):
        if not (plan.onnx_dir / "manifest.json").exists():  # else another build exported it meanwhile
            echo(f"exporting ONNX to {plan.onnx_dir}")
            from pid_trt.export import export_onnx

            plan.onnx_dir = pathlib.Path(export_onnx(plan.onnx_dir, backbone=plan.entry.backbone, ckpt=plan.entry.ckpt,
                                                     checkpoint=None, precision=plan.precision,
                                                     net_config=plan.export_net_config))
    plan.manifest = read_manifest(plan.onnx_dir)
    plan.net_config = {**DEFAULT_CONFIG, **plan.manifest["net_config"]}


def make_sidecar(plan: BuildPlan, manifest: dict[str, Any], trt_version: str, gpu: GpuInfo,
                 timing_cache: pathlib.Path | None) -> dict[str, Any]:
    """The sidecar (docs/formats.md) before the store fills in engine files and sha256s."""
    def io(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": s["name"], "dtype": s["dtype"], "shape": s["shape"]} for s in specs]

    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "pid_trt_version": __version__, "name": "",
        "backbone": plan.backbone, "ckpt": plan.entry.ckpt, "net_definition": manifest.get("net_definition"),
        "precision": plan.precision, "net_config": manifest["net_config"], "latent": manifest.get("latent"),
        "text": manifest.get("text"), "sampler": manifest["sampler"],
        "engines": {g: {"file": "", "sha256": "", "onnx_sha256": manifest["graphs"][g]["sha256"],
                        "inputs": io(manifest["graphs"][g]["inputs"]), "outputs": io(manifest["graphs"][g]["outputs"])}
                    for g in GRAPHS},
        "profiles": [p.to_json() for p in plan.profiles],
        "profile_hash": plan.profile_hash,
        "weights_sha256": manifest["weights"]["sha256"],
        "tensorrt_version": trt_version,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "build_flags": {"strongly_typed": True, "opt_level": plan.opt_level, "workspace_bytes": plan.workspace_bytes,
                        "timing_cache": str(timing_cache) if timing_cache else None},
    }

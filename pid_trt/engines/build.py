"""Carrying out a build plan: export if needed, build the cond + denoise engines, publish them with a sidecar."""
from __future__ import annotations

import logging
import pathlib
from typing import Any

from filelock import FileLock

from pid_trt.atomic import atomic_write_bytes, check_writable
from pid_trt.config import VERSION, NetConfig
from pid_trt.engines import trt
from pid_trt.engines.detect import GpuInfo, gpu_info, tensorrt_version
from pid_trt.engines.plan import BuildPlan, check_memory
from pid_trt.engines.profiles import input_shapes
from pid_trt.engines.store import FORMAT, FORMAT_VERSION, GRAPHS, EngineStore, find_engine, gpu_model_note
from pid_trt.export.manifest import fp8_id, io_blocks, is_random, read_manifest, weights_id

log = logging.getLogger(__name__)


def run_build(plan: BuildPlan, *, force: bool = False, progress: bool = True) -> pathlib.Path:
    """Export (if needed), build both engines and publish them; returns the sidecar path.

    Holds the engine name's lock from the up-to-date check to the sidecar write, so a second build of the
    same engine waits and then finds it finished.
    """
    trt_version = tensorrt_version()  # first: fail in a second, not after a long export
    gpu = gpu_info()
    check_writable(plan.engine_dir, "--engine-dir")
    check_memory(plan, gpu)
    if is_random(plan.weights):
        log.warning("building engines from RANDOM weights (engine names say so): fine for engine and speed work, "
                    "the images are noise")
    if plan.manifest is None:
        _export(plan)
    manifest = read_manifest(plan.onnx_dir, graphs=GRAPHS, verify=True)  # TensorRT parses exactly these files
    name = plan.name(trt_version, gpu)
    store = EngineStore(plan.engine_dir)
    with store.lock(name):
        lookup = find_engine(plan.engine_dir, plan.backbone, plan.entry.ckpt, plan.precision, trt_version=trt_version,
                             compute_capability=gpu.compute_capability, onnx_manifest=manifest, name=name)
        if lookup.found and not force:
            log.info("up to date: %s", lookup.sidecar_path)
            note = gpu_model_note(lookup.sidecar, gpu.name)
            if note:
                log.warning(note)
            return lookup.sidecar_path
        log.info(lookup.rebuild_reason() or f"building {name}")
        cache_path = plan.timing_cache_path(trt_version, gpu)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = cache_path.read_bytes() if cache_path.exists() else b""
        engines = {}
        for graph in GRAPHS:
            spec = manifest["graphs"][graph]
            shapes = [input_shapes(spec, p, plan.net_config) for p in plan.profiles]
            log.info("building the %s engine (%d profiles) from %s", graph, len(shapes), plan.onnx_dir / spec["file"])
            engines[graph], cache = trt.build_serialized_engine(
                plan.onnx_dir / spec["file"], shapes, opt_level=plan.opt_level,
                workspace_bytes=plan.workspace_bytes, timing_cache=cache, progress=progress)
            with FileLock(f"{cache_path}.lock"):
                atomic_write_bytes(cache_path, cache)
        return store.publish(name, engines, make_sidecar(plan, manifest, trt_version, gpu, cache_path))


def _export(plan: BuildPlan) -> None:
    """Export the plan's ONNX directory (once, even with concurrent builds) and adopt its manifest."""
    plan.onnx_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{plan.onnx_dir}.lock"):
        if not (plan.onnx_dir / "manifest.json").exists():  # else another build exported it meanwhile
            log.info("exporting ONNX to %s", plan.onnx_dir)
            from pid_trt.export import export_onnx

            plan.onnx_dir = pathlib.Path(export_onnx(plan.onnx_dir, backbone=plan.entry.backbone, ckpt=plan.entry.ckpt,
                                                     checkpoint=plan.checkpoint, precision=plan.precision,
                                                     net_config=plan.export_net_config))
    plan.manifest = read_manifest(plan.onnx_dir, graphs=GRAPHS)
    plan.net_config = NetConfig.from_dict(plan.manifest["net_config"])


def fp8_identity(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Per FP8 graph, the choices that make its quantization (layers kept high, calibration); None for others."""
    fp8 = {g: {"keep_high": spec["fp8"].get("keep_high", []), "calibration": spec["fp8"].get("calibration")}
           for g, spec in manifest["graphs"].items() if spec.get("fp8")}
    return fp8 or None


def make_sidecar(plan: BuildPlan, manifest: dict[str, Any], trt_version: str, gpu: GpuInfo,
                 timing_cache: pathlib.Path | None) -> dict[str, Any]:
    """The sidecar (docs/formats.md) before the store fills in engine files and sha256s."""
    def io(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": s["name"], "dtype": s["dtype"], "shape": s["shape"]} for s in specs]

    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "pid_trt_version": VERSION, "name": "",
        "backbone": plan.backbone, "ckpt": plan.entry.ckpt, "net_definition": manifest.get("net_definition"),
        "precision": plan.precision, "net_config": manifest["net_config"],
        **io_blocks(plan.net_config), "sampler": manifest["sampler"],
        "engines": {g: {"file": "", "sha256": "", "onnx_sha256": manifest["graphs"][g]["sha256"],
                        "inputs": io(manifest["graphs"][g]["inputs"]), "outputs": io(manifest["graphs"][g]["outputs"])}
                    for g in GRAPHS},
        "profiles": [p.to_json() for p in plan.profiles],
        "profile_hash": plan.profile_hash,
        "weights_sha256": manifest["weights"]["sha256"],
        "fp8": fp8_identity(manifest),
        "weights": manifest["weights"], "weights_id": weights_id(manifest["weights"]), "fp8_id": fp8_id(manifest),
        "tensorrt_version": trt_version,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "build_flags": {"strongly_typed": True, "opt_level": plan.opt_level, "workspace_bytes": plan.workspace_bytes,
                        "timing_cache": str(timing_cache) if timing_cache else None},
    }

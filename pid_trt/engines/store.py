"""The engine directory: names, sidecars, locked atomic writes, listing and compatibility checks.

Layout and sidecar format: docs/formats.md ("Engine directory"). A build writes the engines under temporary
names, renames them, and writes the sidecar last; an engine without a sidecar is an unfinished build.
Writers of one engine name serialise on `<name>.lock`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import pathlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from filelock import FileLock

from pid_trt.atomic import atomic_write_bytes, atomic_write_json
from pid_trt.engines.profiles import Profile
from pid_trt.errors import ConfigError, PiDError
from pid_trt.formats import read_json, validate
from pid_trt.integrity import contained, verify_file
from pid_trt.memory import gib
from pid_trt.registry import resolve

FORMAT = "pid-trt-engine"
FORMAT_VERSION = 1
GRAPHS = ("cond", "denoise")
UNKNOWN = "<unknown>"  # TensorRT version / SM / weights / fp8 identity in dry-run names, where not known yet
REBUILD = "rebuild with pid-trt build"


def canonical_names(backbone: str, ckpt: str) -> tuple[str, str]:
    """(backbone, ckpt) as engine names and sidecars spell them: aliases share their base net's engines
    (zimage → flux) and the checkpoint type is resolved (flux2 2kto4k → 2kto4k_v1pt5)."""
    entry = resolve(backbone, ckpt)
    return entry.base_backbone, entry.ckpt


def engine_name(backbone: str, ckpt: str, precision: str, profile_hash: str,
                trt_version: str | None, compute_capability: str | None, *, weights: str | None,
                fp8: str | None = None) -> str:
    """`pid_<backbone>_<ckpt>_<precision>_w<weights>[_q<fp8>]_p<hash8>_trt<version>_sm<major><minor>`
    (docs/formats.md): `weights` is the weights identity (export.manifest.weights_id; RANDOM for random
    weights), `fp8` the FP8 quantization identity (fp8 engines only); None where not known yet (dry runs)."""
    sm = compute_capability.replace(".", "") if compute_capability else UNKNOWN
    quant = f"_q{fp8 or UNKNOWN}" if precision == "fp8" else ""
    return (f"pid_{backbone}_{ckpt}_{precision}_w{weights or UNKNOWN}{quant}_p{profile_hash}"
            f"_trt{trt_version or UNKNOWN}_sm{sm}")


def sidecar_weights(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """The weights block a sidecar records (older sidecars: only the weights' sha256)."""
    return sidecar.get("weights") or {"sha256": sidecar["weights_sha256"]}


def sidecar_weights_id(sidecar: Mapping[str, Any]) -> str | None:
    """The weights identity a sidecar records (None for sidecars written before pid-trt recorded one)."""
    from pid_trt.export.manifest import weights_id  # here: pid_trt.export loads torch, `pid-trt engines` does not

    if sidecar.get("weights_id"):
        return sidecar["weights_id"]
    return weights_id(sidecar["weights"]) if sidecar.get("weights") else None


def verify_engine_files(root: str | pathlib.Path, sidecar: Mapping[str, Any]) -> dict[str, pathlib.Path]:
    """The engine files a sidecar names, each checked to lie inside `root` and to have its recorded sha256."""
    return {graph: verify_file(root, spec["file"], spec["sha256"], f"{graph} engine",
                               f"the file changed since the build; {REBUILD}")
            for graph, spec in sidecar["engines"].items()}


def sha256_of(blob: Any) -> str:
    return hashlib.sha256(memoryview(blob)).hexdigest()


def check_compatible(sidecar: dict[str, Any], *, trt_version: str | None, compute_capability: str | None,
                     onnx_manifest: dict[str, Any] | None = None, width: int | None = None,
                     height: int | None = None, batch: int | None = None) -> list[str]:
    """Why the engine a sidecar describes cannot be used here; empty when it can.

    `trt_version` / `compute_capability` None: not checked (unknown here). `onnx_manifest`: the ONNX directory
    the engine should come from (its graphs' and weights' sha256 must match). width/height/batch: a run size
    that some profile must cover.
    """
    if sidecar.get("format") != FORMAT or sidecar.get("format_version") != FORMAT_VERSION:
        return [f"sidecar is {sidecar.get('format')!r} v{sidecar.get('format_version')}, "
                f"this pid-trt reads {FORMAT!r} v{FORMAT_VERSION}"]
    reasons = []
    built_trt = sidecar["tensorrt_version"]
    if trt_version is not None and built_trt != trt_version:
        reasons.append(f"built with TensorRT {built_trt}, this machine has TensorRT {trt_version} "
                       "(engines load only in the TensorRT version that built them)")
    gpu = sidecar["gpu"]
    if compute_capability is not None and gpu["compute_capability"] != compute_capability:
        reasons.append(f"built for GPU compute capability {gpu['compute_capability']} ({gpu['name']}), "
                       f"this GPU is {compute_capability}")
    if onnx_manifest is not None:
        for graph in GRAPHS:
            built_from = sidecar["engines"][graph]["onnx_sha256"]
            now = onnx_manifest["graphs"][graph]["sha256"]
            if built_from != now:
                reasons.append(f"ONNX changed: {graph} sha256 is {now[:12]}…, "
                               f"the engine was built from {built_from[:12]}…")
        weights_now = onnx_manifest["weights"]["sha256"]
        if sidecar["weights_sha256"] != weights_now:
            reasons.append(f"weights changed: sha256 is {weights_now[:12]}…, "
                           f"the engine was built from {sidecar['weights_sha256'][:12]}…")
    if (width, height, batch) != (None, None, None):
        profiles = [Profile.from_json(p) for p in sidecar["profiles"]]
        if not any(p.covers(width, height, batch) for p in profiles):
            size = f"{width or '*'}x{height or '*'}" + (f" batch {batch}" if batch is not None else "")
            reasons.append(f"{size} lies outside every profile ({'; '.join(p.describe() for p in profiles)})")
    return reasons


def gpu_model_note(sidecar: dict[str, Any], gpu_name: str | None) -> str | None:
    """A warning when the engine was built on another GPU model of the same compute capability (it loads and runs,
    but its kernels were chosen by timing on the other model; TensorRT itself warns that this may cost speed or even
    fail), else None. Compute capability decides usability (`check_compatible`); the model only warns."""
    built = (sidecar.get("gpu") or {}).get("name")
    if gpu_name is None or built is None or built == gpu_name:
        return None
    return (f"{sidecar.get('name') or 'engine'} was built on {built}, this GPU is {gpu_name} (same compute capability, "
            "so it runs, but its kernels were tuned on the other model): rebuild here with `pid-trt build --force` "
            "for this GPU's speed")


@dataclass
class StoredEngine:
    """One engine name found in a directory, finished or not."""

    name: str
    sidecar: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)  # why the files themselves are unusable
    size_bytes: int = 0

    @property
    def status(self) -> str:
        return "ok" if not self.problems else "; ".join(self.problems)


class EngineStore:
    """An engine directory. Writes of one name are serialised by a file lock and atomic."""

    def __init__(self, root: str | pathlib.Path):
        self.root = pathlib.Path(root)
        self._locks: dict[str, FileLock] = {}

    def sidecar_path(self, name: str) -> pathlib.Path:
        return self.root / f"{name}.json"

    def engine_path(self, name: str, graph: str) -> pathlib.Path:
        return self.root / f"{name}.{graph}.engine"

    def lock(self, name: str) -> FileLock:
        """The inter-process lock of one engine name (re-entrant within this store object)."""
        if name not in self._locks:
            self.root.mkdir(parents=True, exist_ok=True)
            self._locks[name] = FileLock(self.root / f"{name}.lock")
        return self._locks[name]

    def publish(self, name: str, engines: Mapping[str, Any], sidecar: dict[str, Any]) -> pathlib.Path:
        """Write the engines (bytes-like, one per graph) and then the sidecar, under the name's lock.

        Fills in the sidecar's name and each engine's file and sha256. Returns the sidecar path.
        """
        sidecar = copy.deepcopy(sidecar)
        sidecar["name"] = name
        with self.lock(name):
            # the old sidecar must not describe the new engine files while they are being replaced
            self.sidecar_path(name).unlink(missing_ok=True)
            for stale in self.root.glob(f".{name}.*.tmp"):  # left by a killed writer; we hold the lock
                stale.unlink(missing_ok=True)
            for graph, blob in engines.items():
                path = self.engine_path(name, graph)
                atomic_write_bytes(path, blob)
                sidecar["engines"][graph].update(file=path.name, sha256=sha256_of(blob))
            atomic_write_json(self.sidecar_path(name), sidecar)
        return self.sidecar_path(name)

    def read_sidecar(self, name: str) -> dict[str, Any]:
        """The sidecar of engine `name`, validated against its JSON Schema (one PiDInputError line otherwise)."""
        return read_json(self.sidecar_path(name), "engine sidecar", "sidecar", REBUILD)

    def _item(self, path: pathlib.Path) -> StoredEngine | None:
        """The engine a *.json file describes (with its problems), or None when the file is no engine sidecar."""
        try:
            sidecar = read_json(path, "engine sidecar")
        except PiDError as e:
            return StoredEngine(path.stem, None, [f"unreadable sidecar: {e}"]) if path.stem.startswith("pid_") else None
        if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
            return None
        try:
            validate(sidecar, "sidecar", f"engine sidecar {path}", REBUILD)
        except PiDError as e:
            return StoredEngine(path.stem, None, [f"malformed sidecar: {e}"])
        item = StoredEngine(path.stem, sidecar)
        for graph, spec in sidecar["engines"].items():
            try:
                if not contained(self.root, spec["file"], f"sidecar engines.{graph}.file").exists():
                    item.problems.append(f"missing {spec['file']}")
            except PiDError as e:
                item.problems.append(str(e))
        return item

    def scan(self) -> list[StoredEngine]:
        """Every engine name in the directory, with the problems of its files (unfinished, missing, unreadable,
        malformed). Never raises for what it finds: a bad sidecar is an engine with a problem."""
        if not self.root.is_dir():
            return []
        found = {item.name: item for item in map(self._item, sorted(self.root.glob("*.json"))) if item is not None}
        for path in sorted(self.root.glob("*.engine")):
            name = path.name.rsplit(".", 2)[0]
            found.setdefault(name, StoredEngine(name, None, ["unfinished: engine file without sidecar"]))
            with contextlib.suppress(OSError):  # a dangling link has no size
                found[name].size_bytes += path.stat().st_size
        return sorted(found.values(), key=lambda e: e.name)


@dataclass
class EngineLookup:
    """The result of find_engine: the chosen engine (if any) and why every other candidate was rejected."""

    sidecar_path: pathlib.Path | None
    sidecar: dict[str, Any] | None
    rejected: dict[str, list[str]]
    wanted: str = ""  # what was looked for, for messages

    @property
    def found(self) -> bool:
        return self.sidecar is not None

    def explain(self) -> list[str]:
        return [f"{name}: {'; '.join(reasons)}" for name, reasons in self.rejected.items()]

    def rebuild_reason(self) -> str | None:
        """'rebuilding because: …' when an engine of this name exists but cannot be used."""
        reasons = [r for rs in self.rejected.values() for r in rs]
        return f"rebuilding because: {'; '.join(reasons)}" if reasons else None

    def require(self) -> pathlib.Path:
        """The chosen sidecar's path, or a ConfigError that says why each candidate was rejected."""
        if self.sidecar_path is not None:
            return self.sidecar_path
        why = " | ".join(self.explain()) or "none built"
        raise ConfigError(f"no usable TensorRT engine for {self.wanted} ({why}); build one with pid-trt build")


def find_engine(engine_dir: str | pathlib.Path, backbone: str, ckpt: str, precision: str, *,
                trt_version: str | None, compute_capability: str | None,
                onnx_manifest: dict[str, Any] | None = None, width: int | None = None, height: int | None = None,
                batch: int | None = None, name: str | None = None, weights: str | None = None,
                fp8: str | None = None) -> EngineLookup:
    """Find a usable engine for (backbone, ckpt, precision), or for one engine `name`; every candidate that
    cannot be used is listed with its reasons. `weights`: only engines of this weights identity; `fp8`: only
    engines of this FP8 quantization identity (`fp8_id`).

    Among usable engines, one with a static profile of exactly width×height wins (static-shape kernels).
    """
    store = EngineStore(engine_dir)
    backbone, ckpt = canonical_names(backbone, ckpt)
    prefix = f"pid_{backbone}_{ckpt}_{precision}_"
    candidates = [e for e in store.scan() if (e.name == name if name else e.name.startswith(prefix))]
    rejected: dict[str, list[str]] = {}
    usable = []
    for item in candidates:
        reasons = list(item.problems)
        if item.sidecar is not None:
            reasons += check_compatible(item.sidecar, trt_version=trt_version, compute_capability=compute_capability,
                                        onnx_manifest=onnx_manifest, width=width, height=height, batch=batch)
            if weights is not None and sidecar_weights_id(item.sidecar) != weights:
                reasons.append(f"built from weights {sidecar_weights_id(item.sidecar) or 'unknown'}, not {weights}")
            if fp8 is not None and item.sidecar.get("fp8_id") != fp8:
                reasons.append(f"FP8 quantization {item.sidecar.get('fp8_id') or 'unknown'}, not {fp8}")
        if reasons:
            rejected[item.name] = reasons
        else:
            usable.append(item)

    def exact_static(item: StoredEngine) -> bool:
        return any(p["kind"] == "static" and p["width"][0] == width and p["height"][0] == height
                   for p in item.sidecar["profiles"])

    size = f" at {width or '*'}x{height or '*'}" if (width, height) != (None, None) else ""
    wanted = f"{name or f'{backbone} {ckpt} {precision}'}{size} in {store.root}"
    if not usable:
        return EngineLookup(None, None, rejected, wanted)
    best = min(usable, key=lambda item: (not exact_static(item), item.name))
    return EngineLookup(store.sidecar_path(best.name), best.sidecar, rejected, wanted)


def list_engines(engine_dir: str | pathlib.Path) -> list[tuple]:
    """One row per engine name in `engine_dir`: name, backbone/ckpt, precision, weights (RANDOM, or the weights
    identity), profiles, TensorRT version, SM, size on disk, and "ok" or why it cannot be used on this machine."""
    from pid_trt.engines.detect import detect_local

    trt_version, gpu = detect_local()
    capability = gpu.compute_capability if gpu else None
    rows = []
    for item in EngineStore(engine_dir).scan():
        s, size = item.sidecar, gib(item.size_bytes)
        if s is None:
            rows.append((item.name, "-", "-", "-", "-", "-", "-", size, item.status))
            continue
        try:
            reasons = item.problems + check_compatible(s, trt_version=trt_version, compute_capability=capability)
            statics = sum(p["kind"] == "static" for p in s["profiles"])
            profiles = f"{statics} static" + (" + dynamic" if len(s["profiles"]) > statics else "")
            status = "; ".join(reasons) if reasons else "ok"
            if not reasons and gpu_model_note(s, gpu.name if gpu else None):
                status = f"ok (tuned on {s['gpu']['name']}, not this {gpu.name}: --force a rebuild for its speed)"
            rows.append((item.name, f"{s['backbone']}/{s['ckpt']}", s["precision"], sidecar_weights_id(s) or "unknown",
                         profiles, s["tensorrt_version"], s["gpu"]["compute_capability"], size, status))
        except (KeyError, TypeError) as e:
            rows.append((item.name, "-", "-", "-", "-", "-", "-", size, f"malformed sidecar (no {e})"))
    return rows

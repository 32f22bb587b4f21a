"""Where a decoder comes from: an engine directory, an ONNX export, a checkpoint, or a built-in tiny net.

`open_decoder` opens the one decoder `decode`, `generate` and `reconstruct` run. `Sources` serves `parity` and
`bench`: the same net on several backends (a tiny net is exported to ONNX once, when needed) and the fp32
reference weights it must be compared with.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pid_trt import memory
from pid_trt.config import NetConfig
from pid_trt.engines.store import EngineStore, canonical_names, sidecar_weights
from pid_trt.errors import PiDInputError
from pid_trt.export.manifest import check_weights, is_random, read_manifest
from pid_trt.registry import Entry
from pid_trt.runtime import PiDDecoder, resolve_device, use_device
from pid_trt.runtime.backends import onnxruntime_device
from pid_trt.sampler import SamplerOptions
from pid_trt.tiny import DEFAULT_STRUCTURE, tiny_config

log = logging.getLogger(__name__)


def check_one_source(engine_dir: pathlib.Path | None, onnx_dir: pathlib.Path | None,
                     checkpoint: pathlib.Path | None, tiny: bool = False) -> pathlib.Path | None:
    """The one decoder source given (None for a tiny net); a one-line error for none or several. A checkpoint
    beside an engine or ONNX directory is not a second source: it names the weights they must hold."""
    artifacts = [s for s in (engine_dir, onnx_dir) if s is not None]
    sources = artifacts or ([checkpoint] if checkpoint is not None else [])
    if len(sources) + tiny != 1 or (tiny and checkpoint is not None):
        raise PiDInputError("give exactly one of --engine-dir, --onnx-dir or --checkpoint (a --checkpoint beside "
                            "--engine-dir/--onnx-dir names the weights they must hold)")
    return sources[0] if sources else None


@dataclass(frozen=True)
class SourceInfo:
    """What a decoder source will run, read from its files without loading it: enough to refuse a request that
    cannot fit before any expensive work."""

    net_config: NetConfig
    entry: Entry | None
    precision: str
    device: str
    resident_bytes: int  # weights it will load onto the device

    def options(self, steps: int | None = None, cfg: float | None = None, shift: float | None = None
                ) -> SamplerOptions:
        """The sampler options the decoder will run (PiDDecoder.options, validated before it is loaded)."""
        return SamplerOptions.resolve(steps=steps, cfg=cfg, shift=shift, entry=self.entry)

    def check_request(self, sizes: Iterable[tuple[int, int]], batch: int = 1) -> None:
        """Refuse (PiDInputError naming the largest size that fits) W×H sizes that cannot be decoded at `batch`
        on the device once the weights are loaded; sizes outside the trained range only warn later."""
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return  # loading reports the missing GPU
        guided = self.entry is not None and self.entry.sampler == "teacher"
        budget = memory.available_bytes(self.device)
        for width, height in dict.fromkeys(sizes):
            memory.check_fits(self.net_config, width, height, batch * (2 if guided else 1), self.precision, budget,
                              self.device, self.resident_bytes)


def _files_size(root: pathlib.Path, names: Iterable[str | None]) -> int:
    return sum((root / n).stat().st_size for n in names if n and (root / n).is_file())


def describe_source(*, engine_dir: pathlib.Path | None = None, onnx_dir: pathlib.Path | None = None,
                    checkpoint: pathlib.Path | None = None, tiny: bool = False, backbone: str | None = None,
                    ckpt: str | None = None, device: str | None = None, precision: str = "fp32") -> SourceInfo:
    """`SourceInfo` for the source `open_decoder` would open (manifests and sidecars are read and validated)."""
    from pid_trt.registry import resolve

    check_one_source(engine_dir, onnx_dir, checkpoint, tiny)
    entry = resolve(backbone, ckpt or "2k") if backbone else None
    torch_device = str(resolve_device(device))
    if onnx_dir is not None:
        m = read_manifest(onnx_dir, verify=True)  # the graphs ONNX Runtime will read, checked first (cached)
        if checkpoint is not None:
            check_weights(m["weights"], checkpoint, f"ONNX export {onnx_dir}", m["net_config"])
        entry = entry or (resolve(m["backbone"], m["ckpt"] or "2k") if m.get("backbone") else None)
        files = [n for g in m["graphs"].values() for n in (g["file"], g.get("external_data"))]
        return SourceInfo(NetConfig.from_dict(m["net_config"]), entry, m["precision"], str(onnxruntime_device(device)),
                          _files_size(onnx_dir, files))
    if engine_dir is not None:
        engine_device = torch_device if torch_device.startswith("cuda") else "cuda"  # loading reports a missing GPU
        sidecars = [e.sidecar for e in EngineStore(engine_dir).scan() if e.sidecar is not None]
        if entry is not None:
            sidecars = [s for s in sidecars if (s["backbone"], s["ckpt"]) == canonical_names(backbone, ckpt or "2k")]
        if not sidecars:  # loading says why
            return SourceInfo(entry.net.config if entry else NetConfig(), entry, "fp32", engine_device, 0)
        s = sidecars[0]
        entry = entry or (resolve(s["backbone"], s["ckpt"]) if s.get("backbone") else None)
        files = [spec["file"] for spec in s["engines"].values()]
        return SourceInfo(NetConfig.from_dict(s["net_config"]), entry, s["precision"], engine_device,
                          _files_size(engine_dir, files))
    if entry is None:
        raise PiDInputError(f"{'--tiny' if tiny else 'a checkpoint'} needs --backbone (and --ckpt) to know its net")
    if tiny:
        return SourceInfo(tiny_config(entry.net.id, patch_depth=2, pixel_depth=1), entry, precision, torch_device, 0)
    return SourceInfo(entry.net.config, entry, precision, torch_device, memory.weight_bytes(entry.net.params, "fp32"))


def open_decoder(*, engine_dir: pathlib.Path | None = None, onnx_dir: pathlib.Path | None = None,
                 checkpoint: pathlib.Path | None = None, tiny: bool = False, backbone: str | None = None,
                 ckpt: str | None = None, backend: str | None = None, device: str | None = None,
                 precision: str = "fp32", cuda_graph: bool = True) -> PiDDecoder:
    """A PiDDecoder from exactly one source. With `backbone`, the source must hold that backbone's checkpoint;
    with `checkpoint` beside an engine or ONNX directory, they must have been made from it.
    `tiny=True` builds a small seeded random net with the structure of (backbone, ckpt), for tests and dry runs
    without weights."""
    from pid_trt.registry import resolve

    source = check_one_source(engine_dir, onnx_dir, checkpoint, tiny)
    entry = resolve(backbone, ckpt or "2k") if backbone else None
    if device is not None:  # fail fast: a device that does not exist here is a one-line error
        device = str(resolve_device(device))
    if tiny:
        from pid_trt.tiny import tiny_net

        if entry is None:
            raise PiDInputError("--tiny needs --backbone (and --ckpt) to pick the net's structure")
        net = tiny_net(entry.net.id, patch_depth=2, pixel_depth=1)
        dec = PiDDecoder.from_net(net, device, precision, cuda_graph=cuda_graph, entry=entry,
                                  weights={"source": "random"})
    else:
        dec = PiDDecoder.load(source, backend, device, backbone=backbone, ckpt=ckpt, precision=precision,
                              cuda_graph=cuda_graph, checkpoint=checkpoint if source != checkpoint else None)
    use_device(dec.backend.device)  # every torchrun rank works on its own GPU (cuda:$LOCAL_RANK)
    if entry is not None and dec.entry is not None and dec.entry.experiment != entry.experiment:
        raise PiDInputError(f"{source} holds {dec.entry.experiment}, but --backbone {backbone} --ckpt "
                            f"{entry.ckpt} needs {entry.experiment}")
    if dec.entry is not None and dec.entry.note:
        log.info(dec.entry.note)
    if is_random(dec.weights):
        log.warning("decoding with RANDOM weights: the images are noise (export and build from a checkpoint "
                    "with --checkpoint for real images)")
    return dec


def load_candidate(source: pathlib.Path, backend: str | None, device: str | None, **kwargs: Any) -> PiDDecoder:
    """`PiDDecoder.load`, with any failure to read the files reported as unusable input (exit 2), not a crash."""
    from pid_trt.errors import PiDError

    try:
        return PiDDecoder.load(source, backend, device, **kwargs)
    except PiDError:
        raise
    except Exception as e:  # noqa: BLE001 -- ONNX Runtime, TensorRT and torch.load raise their own types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PiDInputError(f"cannot load {source}: {first}") from None


class Sources:
    """Opens decoders for one source on several backends and finds the source's fp32 reference weights."""

    def __init__(self, *, engine_dir: pathlib.Path | None = None, onnx_dir: pathlib.Path | None = None,
                 checkpoint: pathlib.Path | None = None, backbone: str | None = None, ckpt: str | None = None,
                 tiny_structure: str | None = None, tiny_seed: int | None = None, tiny_init: str = "tame",
                 tiny_overrides: dict[str, Any] | None = None, device: str | None = None,
                 precision: str | None = None, compile: bool = False, export_dir: pathlib.Path | None = None,
                 reference_checkpoint: pathlib.Path | None = None, random_reference: bool = False):
        files = [s for s in (engine_dir, onnx_dir, checkpoint) if s is not None]
        if len(files) > 1:
            raise PiDInputError("give at most one of --engine-dir, --onnx-dir or --checkpoint")
        if tiny_structure is not None and files:
            raise PiDInputError("--tiny builds its own net: drop --engine-dir/--onnx-dir/--checkpoint "
                                "(use --tiny-seed to name an in-memory tiny export's weights)")
        if checkpoint is not None and backbone is None:
            raise PiDInputError("--checkpoint needs --backbone and --ckpt to know its net")
        if device is not None:  # fail fast, before nets are built or exported
            device = str(resolve_device(device))
        self.file = files[0] if files else None
        self.kind = ("engines" if engine_dir else "onnx" if onnx_dir else "checkpoint" if checkpoint else "tiny")
        self.backbone, self.ckpt, self.device, self.compile = backbone, ckpt, device, compile
        self.precision = precision
        self.tiny = (tiny_structure or DEFAULT_STRUCTURE, 0 if tiny_seed is None else tiny_seed, tiny_init,
                     dict(tiny_overrides or {}))
        self.tiny_seed = tiny_seed
        self.export_dir = export_dir
        self.reference_checkpoint = reference_checkpoint
        self.random_reference = random_reference  # bench: any weights of the right shape will do
        self._net = None
        self._reference = None
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        self._stack.close()

    def describe(self) -> str:
        """What is under test, for reports."""
        return str(self.file) if self.file else self.describe_tiny()

    def tiny_net(self):
        if self._net is None:
            from pid_trt.errors import ConfigError
            from pid_trt.tiny import tiny_net

            structure, seed, init, overrides = self.tiny
            try:
                self._net = tiny_net(structure, seed, init, **overrides)
            except KeyError:
                raise PiDInputError(f"unknown tiny structure {structure!r}") from None
            except ConfigError as e:
                raise PiDInputError(f"bad --tiny-override: {e}") from None
        return self._net

    def describe_tiny(self) -> str:
        structure, seed, init, overrides = self.tiny
        extra = "".join(f", {k}={v}" for k, v in overrides.items())
        return f"tiny {structure} seed {seed} ({init}{extra})"

    def _tiny_export(self, precision: str) -> pathlib.Path:
        from pid_trt.export import export_onnx

        out = self.export_dir
        if out is None:
            out = pathlib.Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="pid-trt-"))) / "onnx"
        log.info("exporting the %s net to ONNX (%s) in %s ...", self.describe_tiny(), precision, out)
        return export_onnx(out, net=self.tiny_net(), precision=precision)

    def decoder(self, backend: str | None, cuda_graph: bool = True) -> PiDDecoder:
        """The decoder under test on `backend` (None: what the source implies)."""
        if self.kind == "tiny":
            backend = backend or "torch"
            if backend == "torch":
                return PiDDecoder.from_net(self.tiny_net(), self.device, self._torch_precision(), self.compile,
                                           cuda_graph=cuda_graph)
            if backend == "onnxruntime":
                return load_candidate(self._tiny_export(self.precision or "fp32"), "onnxruntime", self.device)
            raise PiDInputError("a tiny net has no TensorRT engines here: build them with `pid-trt build` and pass "
                                "--engine-dir (with --tiny-seed for the reference)")
        if self.kind in ("onnx", "engines") and backend == "torch":  # the same net in torch
            return PiDDecoder.from_net(self.reference_net()[0], self.device, self._torch_precision(), self.compile,
                                       cuda_graph=cuda_graph)
        return load_candidate(self.file, backend, self.device, backbone=self.backbone, ckpt=self.ckpt,
                              precision=self._torch_precision() if self.kind == "checkpoint" else "fp32",
                              compile=self.compile, cuda_graph=cuda_graph)

    def _torch_precision(self) -> str:
        p = self.precision or "fp32"
        if p not in ("fp32", "bf16"):
            raise PiDInputError(f"the torch backend runs fp32 or bf16 (autocast), not {p}")
        return p

    def reference_net(self):
        """The fp32 weights of the net under test (see pid_trt.parity.reference_net) and how they were found."""
        if self._reference is None:
            self._reference = self._find_reference()
        return self._reference

    def _find_reference(self):
        from pid_trt.parity import reference_net

        if self.kind == "tiny":
            return self.tiny_net(), self.describe_tiny()
        if self.kind == "checkpoint":
            from pid_trt.registry import resolve

            return reference_net(resolve(self.backbone, self.ckpt or "2k").net.config, None, checkpoint=self.file)
        net_config, weights = self._recorded()
        if self.random_reference:
            from pid_trt.export import build_net

            return build_net(net_config=net_config)[0], "random weights of the same shape"
        return reference_net(net_config, weights, checkpoint=self.reference_checkpoint, tiny_seed=self.tiny_seed,
                             tiny_init=self.tiny[2])

    def reference_export(self, directory: pathlib.Path | None = None, single: bool = False) -> pathlib.Path:
        """A fresh fp32 ONNX export of the reference weights (layer-wise parity's reference graphs). Kept in
        `directory` when given, and reused from there while it holds an fp32 export of the same weights."""
        import copy

        from pid_trt.checkpoint import weights_digest
        from pid_trt.config import VERSION
        from pid_trt.export import export_onnx

        net = self.reference_net()[0]
        if directory is not None and (directory / "manifest.json").exists():
            m = read_manifest(directory)
            if (m["precision"], m["weights"]["sha256"], "model" in m["graphs"], m["pid_trt_version"]) != (
                    "fp32", weights_digest(net), single, VERSION):
                raise PiDInputError(f"{directory} holds another export than the fp32 reference of these weights; "
                                    "remove it or pass another --reference-export")
            log.info("reusing the fp32 reference export in %s", directory)
            return directory
        if directory is None:
            directory = pathlib.Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="pid-trt-ref-")))
            directory = directory / "onnx"
        if next(net.parameters()).device.type != "cpu":  # the exporter traces on the CPU
            net = copy.deepcopy(net).cpu()
        log.info("exporting the reference weights to fp32 ONNX in %s (the layer-wise reference) ...", directory)
        return export_onnx(directory, net=net, precision="fp32", single=single)

    def engine_export(self, sidecar: dict[str, Any]) -> pathlib.Path:
        """The ONNX export engines were built from: the one under <engine-dir>/onnx/ with the sidecar's sha256s."""
        want = {g: e["onnx_sha256"] for g, e in sidecar["engines"].items()}
        for path in sorted(self.file.glob("onnx/*/manifest.json")):
            graphs = read_manifest(path.parent)["graphs"]
            if all(graphs.get(g, {}).get("sha256") == sha for g, sha in want.items()):
                return path.parent
        raise PiDInputError(f"no export under {self.file / 'onnx'} has the ONNX sha256s of {sidecar['name']}; "
                            "layer-wise parity rebuilds the engines from the graphs they were built from")

    def _recorded(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(net config, weights block) the export's manifest or the engines' sidecar records."""
        if self.kind == "onnx":
            m = read_manifest(self.file)
            return m["net_config"], m["weights"]
        for item in EngineStore(self.file).scan():
            if item.sidecar is not None:
                s = item.sidecar
                return s["net_config"], sidecar_weights(s)
        raise PiDInputError(f"{self.file} holds no usable engine sidecar (*.json); see pid-trt engines {self.file}")

    def describe_source(self) -> SourceInfo | None:
        """The source's `SourceInfo` (None for a tiny net, whose size is known)."""
        if self.kind == "tiny":
            return None
        return describe_source(engine_dir=self.file if self.kind == "engines" else None,
                               onnx_dir=self.file if self.kind == "onnx" else None,
                               checkpoint=self.file if self.kind == "checkpoint" else None,
                               backbone=self.backbone, ckpt=self.ckpt, device=self.device,
                               precision=self.precision or "fp32")

"""FP8 sensitivity sweep: the error each quantized Linear layer adds, and the fewest layers to keep high.

The sweep starts from a full FP8 export (every layer of `fp8_linear_names` quantized). A variant keeps a set
of layers high by routing their MatMul inputs around the Q/DQ pairs, which is the graph `pid-trt export
--precision fp8 --keep-high …` writes (same scales: a shared activation keeps its amax), without re-exporting.
Each variant decodes the calibration decodes (latents, σ and noise as the reference) with its denoise graph in
ONNX Runtime; its error is parity's, against the fp32 torch reference: the largest velocity difference over
every step, and the image in u8 levels (max and mean).

Ranking, `mode="quantize"` (default): only that layer quantized (attention cores as in every FP8 export),
highest error first; `mode="remove"`: the full FP8 graph with that one layer kept high, lowest error first (the
layer whose exclusion helps most). Quantize-alone measures each layer's own error; remove-alone sees
interactions, but on small nets its differences drown in the other layers' error. The exclusion list is the
shortest prefix of the ranking that meets the targets (by default the fp8 parity tolerance,
`pid_trt.parity.VS_FP32`).
"""
from __future__ import annotations

import copy
import logging
import os
import pathlib
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pid_trt.atomic import atomic_write_bytes
from pid_trt.errors import PiDInputError
from pid_trt.export.fp8 import CALIBRATION_STEPS, default_calibration
from pid_trt.export.graphs import feature_names
from pid_trt.export.manifest import read_manifest
from pid_trt.model import PiDNet
from pid_trt.parity import VS_FP32, image_metrics
from pid_trt.runtime.backends import ort_session, session_feeds
from pid_trt.sampler import sample, to_uint8

log = logging.getLogger(__name__)

MODES = ("quantize", "remove")


@dataclass(frozen=True)
class Targets:
    """What an FP8 graph must meet against the fp32 reference on the calibration decodes."""

    velocity_max_abs: float = VS_FP32.velocity_max_abs
    u8_max_abs: float = VS_FP32.u8_max_abs
    u8_mean_abs: float = VS_FP32.u8_mean_abs

    def met(self, error: Mapping[str, float]) -> bool:
        return all(error[k] <= getattr(self, k) for k in ("velocity_max_abs", "u8_max_abs", "u8_mean_abs"))

    def score(self, error: Mapping[str, float]) -> float:
        """One number for ranking: the velocity and the float image error (u8 levels) over their targets."""
        return max(error["velocity_max_abs"] / self.velocity_max_abs, error["image_max_abs_u8"] / self.u8_max_abs)


class _SamplerNet:
    """The sampler's net: the torch net's cond (or given features: cond has no FP8), a given denoise; records
    every velocity."""

    def __init__(self, net: PiDNet, denoise=None, features: list[torch.Tensor] | None = None):
        self.net, self.config, self.features = net, net.config, features
        self._denoise = denoise or (lambda x, t, y, sigma, feats, grid: net.denoise(x, t, y, sigma, feats))
        self.velocities: list[torch.Tensor] = []

    def condition(self, lq_latent, height, width):
        self.grid = (height // self.net.patch_size, width // self.net.patch_size)  # the graphs' feature layout
        if self.features is None:
            self.features = self.net.condition(lq_latent, height, width)
        return self.features

    def denoise(self, x, t, y, degrade_sigma, feats):
        v = self._denoise(x, t, y, degrade_sigma, feats, self.grid)
        self.velocities.append(v.float())
        return v


def _graph_denoise(net: PiDNet, session):
    names = feature_names(net)

    def denoise(x, t, y, degrade_sigma, feats, grid):
        feeds = {"x": x, "t": t, "y": y, "degrade_sigma": degrade_sigma,
                 **{n: f.reshape(f.shape[0], *grid, f.shape[-1]) for n, f in zip(names, feats)}}
        return torch.from_numpy(session.run(None, session_feeds(session, feeds))[0]).float()
    return denoise


def keep_high_variant(model, layer_nodes: Mapping[str, str], keep_high: Iterable[str]):
    """A copy of the FP8 graph `model` with the layers `keep_high` unquantized: their MatMul/Gemm read the
    tensors before the Q/DQ pairs, and pairs nothing reads any more are dropped."""
    out = copy.deepcopy(model)
    graph = out.graph
    nodes = {layer_nodes[name] for name in keep_high if name in layer_nodes}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name in nodes:
            for i, name in enumerate(node.input):
                dq = producer.get(name)
                if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producer:
                    node.input[i] = producer[dq.input[0]].input[0]
    for op in ("DequantizeLinear", "QuantizeLinear"):  # consumers first, then what fed them
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        kept = [n for n in graph.node if n.op_type != op or n.output[0] in used]
        graph.ClearField("node")
        graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(inits)
    return out


class Fp8Sweep:
    """Variants of one FP8 export, measured on the calibration decodes against the fp32 torch reference."""

    def __init__(self, net: PiDNet, onnx_dir: pathlib.Path, decodes: Sequence[Mapping[str, torch.Tensor]] | None = None,
                 targets: Targets = Targets()):
        import onnx

        manifest = read_manifest(onnx_dir, graphs=("denoise",))
        spec = manifest["graphs"]["denoise"]
        if not spec.get("fp8") or "layer_nodes" not in spec["fp8"]:
            raise PiDInputError(f"{onnx_dir} is not an FP8 export of this pid-trt version (no fp8 layer_nodes)")
        if spec["fp8"]["keep_high"]:
            raise PiDInputError(f"{onnx_dir} already keeps {len(spec['fp8']['keep_high'])} layers high; the sweep "
                                "starts from a full FP8 export")
        self.net, self.targets, self.dir = net.eval(), targets, pathlib.Path(onnx_dir)
        self.layer_nodes: dict[str, str] = spec["fp8"]["layer_nodes"]
        self.layers = sorted(self.layer_nodes)
        self.model = onnx.load(str(self.dir / spec["file"]), load_external_data=False)
        self.external = bool(spec.get("external_data"))
        self.decodes = list(default_calibration(net) if decodes is None else decodes)
        self._reference = [self._decode(_SamplerNet(net), d) for d in self.decodes]
        self._errors: dict[frozenset, dict[str, float]] = {}

    @torch.no_grad()
    def _decode(self, recorder: _SamplerNet, decode: Mapping[str, torch.Tensor]):
        image = sample(recorder, decode["lq_latent"], decode["y"], decode["degrade_sigma"], steps=CALIBRATION_STEPS)
        return recorder, image

    def _session(self, model):
        if not self.external:
            return ort_session(model.SerializeToString())
        import onnx

        fd, tmp = tempfile.mkstemp(prefix=".fp8-sweep.", suffix=".onnx", dir=self.dir)  # beside its weights
        os.close(fd)
        try:
            onnx.save_model(model, tmp)
            return ort_session(pathlib.Path(tmp))
        finally:
            os.unlink(tmp)

    def error(self, keep_high: Iterable[str]) -> dict[str, float]:
        """Parity's error figures of the variant keeping `keep_high` high, over all calibration decodes."""
        key = frozenset(keep_high)
        if key not in self._errors:
            session = self._session(keep_high_variant(self.model, self.layer_nodes, key))
            velocity = image_max = u8_max = u8_mean = 0.0
            for decode, (ref, ref_image) in zip(self.decodes, self._reference):
                net = _SamplerNet(self.net, _graph_denoise(self.net, session), ref.features)
                _, image = self._decode(net, decode)
                steps = zip(net.velocities, ref.velocities)
                velocity = max([velocity] + [float((a - b).abs().max()) for a, b in steps])
                image_max = max(image_max, float((image.double() - ref_image.double()).abs().max()) * 127.5)
                u8 = image_metrics(to_uint8(image), to_uint8(ref_image))
                u8_max, u8_mean = max(u8_max, u8["u8_max_abs"]), max(u8_mean, u8["u8_mean_abs"])
            self._errors[key] = {"velocity_max_abs": velocity, "image_max_abs_u8": image_max, "u8_max_abs": u8_max,
                                 "u8_mean_abs": u8_mean}
            log.debug("fp8 sweep: %d kept high: %s", len(key), self._errors[key])
        return self._errors[key]

    def rank(self, mode: str = "quantize") -> list[dict[str, Any]]:
        """Every layer with the error of its variant, most harmful first (see the module docstring)."""
        if mode not in MODES:
            raise PiDInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        rows = []
        for i, layer in enumerate(self.layers):
            log.info("fp8 sweep (%s): %d/%d %s", mode, i + 1, len(self.layers), layer)
            keep = [layer] if mode == "remove" else [n for n in self.layers if n != layer]
            error = self.error(keep)
            rows.append({"layer": layer, "score": self.targets.score(error), **error})
        return sorted(rows, key=lambda r: r["score"], reverse=mode == "quantize")

    def smallest_exclusion(self, ranking: Sequence[str]) -> tuple[list[str] | None, dict[str, float]]:
        """The shortest prefix of `ranking` whose variant meets the targets (None if even all of it does not),
        and that variant's error."""
        for k in range(len(ranking) + 1):
            error = self.error(ranking[:k])
            if self.targets.met(error):
                return list(ranking[:k]), error
        return None, error

    def run(self, mode: str = "quantize") -> dict[str, Any]:
        """The sweep's report: the full FP8 error, the ranking, the exclusion list and its error."""
        full = self.error([])
        ranking = self.rank(mode)
        keep_high, error = self.smallest_exclusion([r["layer"] for r in ranking])
        return {"mode": mode, "targets": asdict(self.targets), "layers": len(self.layers),
                "calibration_decodes": len(self.decodes), "full_fp8": full,
                "no_linear_fp8": self.error(self.layers), "ranking": ranking,
                "keep_high": keep_high, "keep_high_error": error, "met": keep_high is not None,
                "variants_measured": len(self._errors)}


# -- the keep-high list file --------------------------------------------------------------------------------

def read_layer_list(path: pathlib.Path) -> list[str]:
    """Layer names, one per line; blank lines and everything after `#` are ignored."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PiDInputError(f"cannot read the layer list {path}: {e}") from None
    return [name for line in text.splitlines() if (name := line.split("#", 1)[0].strip())]


def write_layer_list(path: pathlib.Path, layers: Sequence[str], header: Sequence[str] = ()) -> None:
    """The list `read_layer_list` reads, written atomically, with `header` lines as comments."""
    lines = [f"# {h}" for h in header] + list(layers)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())

"""Layer-wise parity: every intermediate tensor of a candidate graph against a reference run, node by node.

Polygraphy does the running: it marks every tensor of a graph as an output (`ModifyOutputs` with
`constants.MARK_ALL`) and runs the graph under `Comparator.run` (ONNX Runtime through `OnnxrtRunner`, TensorRT
through `TrtRunner`). This module adds what Polygraphy does not know about our graphs:

* pairing nodes of two graphs: by ONNX node name (fresh exports of one net name their nodes alike), accepted
  only when the op type and the recorded PiDNet module (`MODULE_KEY`) agree and no input comes from a node
  paired with something else (Cast and FP8 Q/DQ nodes are looked through); what cannot be paired is listed
  with the reason;
* the error figure: max |candidate − reference| over max |reference| per tensor, so one tolerance fits
  tensors of every scale (Polygraphy's tolerances are absolute or per element);
* the first divergence in topological order, the ten worst tensors, and the torch reference's module outputs
  (patch_blocks.3, final_layer, …) matched to the graph tensors that leave the module's nodes.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pid_trt.errors import PiDInputError, import_optional
from pid_trt.export.graphs import feature_names
from pid_trt.export.onnx import MODULE_KEY
from pid_trt.model import PiDNet
from pid_trt.runtime.backends import ort_session, session_feeds

log = logging.getLogger(__name__)

# max |candidate - reference| / max |reference| per tensor. fp32: the same arithmetic up to op order (fresh exports
# agree exactly; torch within 6e-7). fp16 and fp8: the worst tensors of a tame tiny export (2 patch blocks, 1 pixel
# block, ONNX Runtime on the CPU) were 0.0025 and 0.11 (fp8: scores inside pixel attention). bf16: fp16's bound
# scaled by its 8x coarser mantissa (ONNX Runtime has no CPU bf16 kernels to measure it).
NODE_TOLERANCE = {"fp32": 1e-4, "fp16": 0.01, "bf16": 0.08, "fp8": 0.3}
_LOOK_THROUGH = ("Cast", "QuantizeLinear", "DequantizeLinear")
WORST = 10


def _polygraphy(module: str = "polygraphy"):
    return import_optional(module, "debug", "layer-wise parity")


@contextlib.contextmanager
def _quiet_polygraphy():
    """Polygraphy logs to stdout; keep it to its critical errors (which it raises), uncoloured."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # else it prints a note about the optional `colored` module
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        yield


def _module(node) -> str | None:
    return next((p.value for p in node.metadata_props if p.key == MODULE_KEY), None)


# -- running graphs with every tensor marked ----------------------------------------------------------------

def marked_model(path: pathlib.Path, external_data: bool = False):
    """The ONNX graph at `path` with every tensor marked as an output (FP8 tensors left out: no numpy type).
    With `external_data` the weights stay in their file (the model is saved next to it to run)."""
    _polygraphy()
    from polygraphy import constants
    from polygraphy.backend.onnx import ModifyOutputs, OnnxFromPath

    with _quiet_polygraphy():
        model = OnnxFromPath(str(path), ignore_external_data=external_data)()
        fp8 = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
        return ModifyOutputs(model, outputs=constants.MARK_ALL, exclude_outputs=fp8 or None)()


def run_onnxruntime(model, directory: pathlib.Path, feeds: Mapping[str, np.ndarray],
                    providers: Sequence = ("CPUExecutionProvider",), name: str = "onnxruntime",
                    external_data: bool = False) -> dict[str, np.ndarray]:
    """Every marked tensor of `model` for one evaluation on `feeds` (cast to the graph's input types), through
    Polygraphy's OnnxrtRunner and Comparator."""
    _polygraphy()
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator

    if external_data:  # > 2 GB cannot be serialized: a temporary model beside the weights it points to
        import onnx

        fd, tmp = tempfile.mkstemp(prefix=".layerwise.", suffix=".onnx", dir=directory)
        os.close(fd)
        try:
            onnx.save_model(model, tmp)
            session = ort_session(pathlib.Path(tmp), providers)
        finally:
            os.unlink(tmp)
    else:
        session = ort_session(model.SerializeToString(), providers)
    with _quiet_polygraphy():
        results = Comparator.run([OnnxrtRunner(session, name=name)], data_loader=[session_feeds(session, feeds)])
    return {k: np.asarray(v) for _, iterations in results.items() for k, v in iterations[0].items()}


def run_tensorrt(onnx_path: pathlib.Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor TensorRT can mark in an engine built from `onnx_path` (strongly typed, one static profile
    at the shapes of `feeds`), through Polygraphy's TensorRT loaders and TrtRunner. Needs TensorRT and a GPU."""
    from pid_trt.engines.detect import load_tensorrt

    load_tensorrt()  # a one-line error when TensorRT is missing, before Polygraphy tries
    _polygraphy()
    from polygraphy import constants
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        ModifyNetworkOutputs,
        NetworkFromOnnxPath,
        Profile,
        TrtRunner,
    )
    from polygraphy.comparator import Comparator

    profile = Profile()
    for name, value in feeds.items():
        profile.add(name, min=value.shape, opt=value.shape, max=value.shape)
    network = ModifyNetworkOutputs(NetworkFromOnnxPath(str(onnx_path), strongly_typed=True),
                                   outputs=constants.MARK_ALL)
    engine = EngineFromNetwork(network, config=CreateConfig(profiles=[profile]))
    with _quiet_polygraphy():
        results = Comparator.run([TrtRunner(engine, name="tensorrt")], data_loader=[dict(feeds)])
    return {k: np.asarray(v) for _, iterations in results.items() for k, v in iterations[0].items()}


def save_inputs(path: pathlib.Path, feeds: Mapping[str, np.ndarray]) -> None:
    """One evaluation's feeds as `polygraphy run --load-inputs FILE` reads them (a JSON list of feed dicts),
    written under a temporary name and renamed."""
    _polygraphy()
    from polygraphy.json import save_json

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with _quiet_polygraphy():
            save_json([{k: np.ascontiguousarray(v) for k, v in feeds.items()}], tmp, description="input data")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- pairing nodes ------------------------------------------------------------------------------------------

def _sources(graph) -> dict[str, str]:
    """Tensor → name of the node that computes it, looking through Cast and Q/DQ (absent: inputs, weights)."""
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for tensor, node in producer.items():
        while node.op_type in _LOOK_THROUGH and node.input[0] in producer:
            node = producer[node.input[0]]
        if node.op_type not in _LOOK_THROUGH:
            out[tensor] = node.name
    return out


def match_nodes(candidate, reference) -> tuple[dict[str, Any], dict[str, str]]:
    """Candidate node name → reference node, and candidate node name → why it has no partner.

    First by name; then, for nodes whose names differ (a reduced-precision export numbers its nodes
    differently), the k-th unpaired node of an op type within a module pairs with the reference's k-th when
    both modules hold equally many. Either way the op types must agree and no input may come from a node paired
    with another than the reference input's source."""
    by_name = {n.name: n for n in reference.node}
    cand_src, ref_src = _sources(candidate), _sources(reference)
    matched: dict[str, Any] = {}
    unmatched: dict[str, str] = {}

    def why_not(node, ref) -> str | None:
        if ref.op_type != node.op_type or len(ref.input) != len(node.input):
            return f"the reference's {ref.name} is a {ref.op_type} with {len(ref.input)} inputs"
        if None not in (_module(node), _module(ref)) and _module(node) != _module(ref):
            return f"the reference's {ref.name} belongs to {_module(ref)}"
        if any(cand_src.get(c) in matched and matched[cand_src[c]].name != ref_src.get(r)
               for c, r in zip(node.input, ref.input)):
            return "its inputs come from other nodes than the reference's"
        return None

    def groups(nodes) -> dict[tuple, list]:
        out: dict[tuple, list] = {}
        for n in nodes:
            if _module(n) is not None and n.op_type not in _LOOK_THROUGH:
                out.setdefault((_module(n), n.op_type), []).append(n)
        return out

    def pair(node, ref) -> None:
        problem = why_not(node, ref)
        if problem is None:
            matched[node.name] = ref
            unmatched.pop(node.name, None)
        else:
            unmatched[node.name] = problem

    for node in candidate.node:  # topological order: a node's inputs are decided before it
        if node.name in by_name:
            pair(node, by_name[node.name])
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            unmatched[node.name] = "an FP8 Q/DQ node (none in the reference)"
        else:
            unmatched[node.name] = "no node of this name in the reference"
    taken = {r.name for r in matched.values()}
    spare = groups(r for r in reference.node if r.name not in taken)
    for key, nodes in groups(n for n in candidate.node if n.name not in matched).items():
        if len(spare.get(key, [])) == len(nodes):
            for node, ref in zip(nodes, spare[key]):
                pair(node, ref)
    return matched, unmatched


# -- error figures ------------------------------------------------------------------------------------------

def error_figures(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max/mean |c − r|, max |r| and their ratio (inf where the candidate is not finite and the reference is)."""
    c, r = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if r.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "ref_max_abs": 0.0, "rel": 0.0}
    scale = float(np.abs(r).max())
    with np.errstate(invalid="ignore"):
        d = np.abs(c - r)
        same_nonfinite = ~np.isfinite(c) & ~np.isfinite(r) & ((c == r) | (np.isnan(c) & np.isnan(r)))
    d = np.where(same_nonfinite, 0.0, d)
    max_abs = float(np.nan_to_num(d, nan=math.inf).max())
    mean_abs = float(np.nan_to_num(d, nan=math.inf).mean())
    rel = 0.0 if max_abs == 0 else math.inf if not math.isfinite(max_abs) or scale == 0 else max_abs / scale
    return {"max_abs": max_abs, "mean_abs": mean_abs, "ref_max_abs": scale, "rel": rel}


@dataclass
class GraphComparison:
    """One graph's records: each compared tensor in topological order, and what could not be compared."""

    graph: str
    records: list[dict[str, Any]] = field(default_factory=list)
    unmatched: dict[str, str] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)


def compare_tensors(graph_name: str, candidate, reference, cand_out: Mapping[str, np.ndarray],
                    ref_out: Mapping[str, np.ndarray], tolerance: float) -> GraphComparison:
    """Every output of every paired node, candidate graph order (topological: ONNX requires it)."""
    matched, unmatched = match_nodes(candidate, reference)
    result = GraphComparison(graph_name, unmatched=unmatched)
    for index, node in enumerate(candidate.node):
        ref = matched.get(node.name)
        if ref is None:
            continue
        for c_name, r_name in zip(node.output, ref.output):
            if not c_name or c_name not in cand_out or r_name not in ref_out:
                continue  # an unused optional output, a constant or an FP8 tensor: not marked
            c, r = cand_out[c_name], ref_out[r_name]
            if c.shape != r.shape:
                result.unmatched[node.name] = f"output shape {list(c.shape)} vs the reference's {list(r.shape)}"
                continue
            figures = error_figures(c, r)
            result.records.append({"graph": graph_name, "index": index, "node": node.name, "op": node.op_type,
                                   "module": _module(node), "tensor": c_name, "shape": list(c.shape), **figures,
                                   "ok": figures["rel"] <= tolerance})
    return result


# -- the torch reference's module outputs -------------------------------------------------------------------

def block_names(net: PiDNet) -> list[str]:
    """The net's top-level modules, with each ModuleList's items (patch_blocks.0, …) instead of the list."""
    names = []
    for name, child in net.named_children():
        if isinstance(child, torch.nn.ModuleList):
            names += [f"{name}.{i}" for i in range(len(child))]
        else:
            names.append(name)
    return names


@torch.no_grad()
def torch_block_outputs(net: PiDNet, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """What each block of the fp32 torch reference returns when it computes `graph` on `feeds` (blocks called
    more than once are left out: their outputs are ambiguous)."""
    seen: dict[str, list] = {}
    hooks = [net.get_submodule(name).register_forward_hook(
        lambda _m, _a, out, name=name: seen.setdefault(name, []).append(out)) for name in block_names(net)]
    device = next(net.parameters()).device
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)).to(device) for k, v in feeds.items()}
    try:
        if graph == "cond":
            z = t["lq_latent"]
            net.condition(z, z.shape[2] * net.config.pixels_per_latent, z.shape[3] * net.config.pixels_per_latent)
        elif graph == "model":
            net(t["x"], t["t"], t["y"], lq_latent=t["lq_latent"], degrade_sigma=t["degrade_sigma"])
        else:
            net.denoise(t["x"], t["t"], t["y"], t["degrade_sigma"], [t[n].flatten(1, 2) for n in feature_names(net)])
    finally:
        for h in hooks:
            h.remove()

    def tensors(out):
        return [out] if torch.is_tensor(out) else [o for o in out if torch.is_tensor(o)]

    return {name: [o.double().cpu().numpy() for o in tensors(calls[0])] for name, calls in seen.items()
            if len(calls) == 1}


def _exits(graph, module: str, outputs: Sequence[str]) -> list[str]:
    """Tensors computed by `module`'s nodes and used outside it or among the graph's (unmarked) `outputs`: what
    the module returns."""
    inside = {n.name for n in graph.node if (_module(n) or "") == module or (_module(n) or "").startswith(module + ".")}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def used_outside(tensor: str) -> bool:
        for c in consumers.get(tensor, []):
            if c.op_type in _LOOK_THROUGH and c.name not in inside:
                if any(used_outside(o) for o in c.output):
                    return True
            elif c.name not in inside:
                return True
        return False

    return [o for n in graph.node if n.name in inside for o in n.output if o and (o in outputs or used_outside(o))]


def compare_blocks(graph, outputs: Sequence[str], cand_out: Mapping[str, np.ndarray],
                   torch_out: Mapping[str, list[np.ndarray]], tolerance: float) -> list[dict[str, Any]]:
    """Each torch block output against the one candidate tensor of its shape that leaves the block's nodes
    (`outputs`: the graph's own outputs, before every tensor was marked)."""
    rows = []
    for module, outs in torch_out.items():
        exits = [t for t in _exits(graph, module, outputs) if t in cand_out]
        for k, ref in enumerate(outs):
            row = {"module": module, "output": k, "shape": list(ref.shape)}
            same = [t for t in exits if cand_out[t].shape == ref.shape]
            if len(same) != 1:
                why = (f"{len(same)} tensors of this shape leave its nodes" if exits
                       else "no node of the candidate graph records this module")
                rows.append({**row, "tensor": None, "ok": None, "why": why})
                continue
            figures = error_figures(cand_out[same[0]], ref)
            rows.append({**row, "tensor": same[0], **figures, "ok": figures["rel"] <= tolerance})
    return rows


# -- one evaluation, graph by graph -------------------------------------------------------------------------

def graph_feeds(net: PiDNet, lq_latent: torch.Tensor, call: Sequence) -> dict[str, dict[str, np.ndarray]]:
    """Feeds for each graph kind from one recorded denoiser call (x, t, y, σ, features as the torch net returns
    them): cond takes the latent, denoise the call with features in the graphs' [B, gh, gw, D] layout, model
    the call with the latent."""
    x, t, y, sigma, feats = call
    grid = (x.shape[2] // net.patch_size, x.shape[3] // net.patch_size)

    def arrays(d):
        return {k: v.detach().to("cpu", torch.float32).numpy() for k, v in d.items()}

    step = {"x": x, "t": t, "y": y, "degrade_sigma": sigma}
    features = {n: f.reshape(f.shape[0], *grid, f.shape[-1]) for n, f in zip(feature_names(net), feats)}
    return {"cond": arrays({"lq_latent": lq_latent}), "denoise": arrays({**step, **features}),
            "model": arrays({**step, "lq_latent": lq_latent})}


def _graph_files(onnx_dir: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool, list[str]]]:
    """Graph name → (file, weights in an external file?, output names), from the export's manifest."""
    from pid_trt.export import read_manifest

    return {g: (onnx_dir / spec["file"], bool(spec.get("external_data")), [o["name"] for o in spec["outputs"]])
            for g, spec in read_manifest(onnx_dir, verify=True)["graphs"].items()}


def compare_exports(candidate_dir: pathlib.Path, reference_dir: pathlib.Path,
                    feeds: Mapping[str, Mapping[str, np.ndarray]], tolerance: float, *,
                    reference_net: PiDNet | None = None,
                    providers: Sequence = ("CPUExecutionProvider",)) -> list[GraphComparison]:
    """Each graph of the candidate export against the same graph of the reference export, every tensor marked,
    both in ONNX Runtime on the same feeds; with `reference_net`, also the torch blocks' outputs."""
    candidates, references = _graph_files(candidate_dir), _graph_files(reference_dir)
    comparisons = []
    for graph, (path, external, outputs) in candidates.items():
        if graph not in references:
            raise PiDInputError(f"the reference export has no {graph} graph (export it with the same --single)")
        ref_path, ref_external, _ = references[graph]
        log.info("layer-wise: running %s with every tensor marked (candidate and reference) ...", graph)
        cand_model, ref_model = marked_model(path, external), marked_model(ref_path, ref_external)
        cand_out = run_onnxruntime(cand_model, candidate_dir, feeds[graph], providers, "candidate", external)
        ref_out = run_onnxruntime(ref_model, reference_dir, feeds[graph], providers, "reference", ref_external)
        comparison = compare_tensors(graph, cand_model.graph, ref_model.graph, cand_out, ref_out, tolerance)
        if reference_net is not None:
            comparison.blocks = compare_blocks(cand_model.graph, outputs, cand_out,
                                               torch_block_outputs(reference_net, graph, feeds[graph]), tolerance)
        comparisons.append(comparison)
    return comparisons


def compare_engine_graphs(onnx_dir: pathlib.Path, feeds: Mapping[str, Mapping[str, np.ndarray]],
                          tolerance: float, providers: Sequence = ("CUDAExecutionProvider", "CPUExecutionProvider")
                          ) -> list[GraphComparison]:
    """TensorRT engines rebuilt from the export they were built from, every tensor marked, against ONNX Runtime
    on the same graphs and feeds (tensors keep their ONNX names in TensorRT, so pairs are by name)."""
    comparisons = []
    for graph, (path, external, _) in _graph_files(onnx_dir).items():
        model = marked_model(path, external)
        trt_out = run_tensorrt(path, feeds[graph])
        ort_out = run_onnxruntime(model, onnx_dir, feeds[graph], providers, "reference", external)
        comparisons.append(compare_tensors(graph, model.graph, model.graph, trt_out, ort_out, tolerance))
    return comparisons


# -- reports ------------------------------------------------------------------------------------------------

def summarize(comparisons: Sequence[GraphComparison], tolerance: float, pair: str) -> dict[str, Any]:
    """The layer-wise report: first divergence (graph order: cond before denoise), ten worst, every record."""
    records = [r for c in comparisons for r in c.records]
    blocks = [b for c in comparisons for b in c.blocks]
    first = next((r for r in records if not r["ok"]), None)
    worst = sorted(records, key=lambda r: -r["rel"])[:WORST]
    failed_blocks = [b for b in blocks if b["ok"] is False]
    return {
        "pair": pair, "tolerance": {"rel": tolerance, "figure": "max |candidate - reference| / max |reference|"},
        "passed": first is None and not failed_blocks,
        "first_divergence": first, "worst": worst,
        "compared": len(records), "diverged": sum(not r["ok"] for r in records),
        "unmatched": {c.graph: c.unmatched for c in comparisons},
        "blocks": blocks, "records": records,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the CLI prints about a layer-wise report."""
    def describe(r):
        where = f" in {r['module']}" if r.get("module") else ""
        return (f"{r['graph']}/{r['node']} ({r['op']}{where}) -> {r['tensor']} {r['shape']}: max abs "
                f"{r['max_abs']:.3g}, mean abs {r['mean_abs']:.3g}, ref max {r['ref_max_abs']:.3g}, rel {r['rel']:.3g}")

    unmatched = sum(len(u) for u in report["unmatched"].values())
    lines = [(f"layerwise ({report['pair']}, step {report['step']}): {report['compared']} tensors compared, "
              f"{report['diverged']} beyond rel {report['tolerance']['rel']:g}, {unmatched} nodes unmatched")]
    first = report["first_divergence"]
    lines.append(f"first divergence: {describe(first)}" if first else "first divergence: none")
    if first:
        lines += ["worst:"] + [f"  {describe(r)}" for r in report["worst"]]
    blocks = [b for b in report["blocks"] if b["ok"] is not None]
    if report["blocks"]:
        bad = [b for b in blocks if not b["ok"]]
        lines.append(f"torch blocks: {len(blocks)} of {len(report['blocks'])} matched, {len(bad)} beyond tolerance"
                     + (f" (first: {bad[0]['module']} rel {bad[0]['rel']:.3g})" if bad else ""))
    return lines

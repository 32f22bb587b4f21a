"""FP8 (E4M3) post-training quantization of an exported denoise graph with explicit Q/DQ, on an fp16 (or bf16) base.

The graph is exported in its base precision (`export.graphs.precision_policy`, fp16 by default: on a tame tiny net
FP8 on fp16 stays within the error FP8 on fp32 had, while bf16's own rounding is 4.6e-3 of the velocity; see
docs/numerics.md §8), then
QuantizeLinear → DequantizeLinear pairs (FLOAT8E4M3FN, saturate=1, opset ≥ 19) are inserted in front of matrix
products, each quantizing the tensor exactly as the product consumes it, so every DequantizeLinear feeds its MatMul
directly, in the product's own type (the placement TensorRT fuses into FP8 kernels):
* the big Linear layers: per patch block qkv/proj/SwiGLU of both streams, per pixel block compress/expand and
  the attention's qkv/proj (`fp8_linear_names`). Activations per tensor, weights per output channel, amax/448.
* attention cores (both BMM inputs: scaled q, kᵀ, softmax probabilities, v) only where head_dim % 16 == 0
  (`fp8_attention`), what TensorRT's fused FP8 attention needs: patch attention on official nets (64) yes, pixel
  attention (72) no.
Scales are positive constants in the quantized tensor's own type (fp16 in an fp16 graph: ONNX's QuantizeLinear takes
its scale in the input's type, and a Cast between DequantizeLinear and MatMul would keep TensorRT from fusing them),
rounded up so that the calibrated maximum never saturates; zero points are FP8 zeros.
Everything else stays in the base precision: embedders, t-MLP, σ-gates, latent convs, norms, the per-pixel MLP
(width 16: nothing for FP8 to gain), the final layer, and adaLN modulation: in the patch blocks it sees one token per
sample (a GEMV, nothing to gain), and FP8 on the pixel blocks' adaLN doubled the measured error.

Calibration is max calibration in PyTorch, before the export: the fp32 reference student sampler decodes a few
latents (several σ, two sizes, all timesteps) while hooks record max |x| of every quantized Linear input and of the
attention inputs.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pid_trt.atomic import umask
from pid_trt.errors import PiDInputError
from pid_trt.model import PiDNet

log = logging.getLogger(__name__)

E4M3_MAX = 448.0
MIN_OPSET = 19  # FP8 QuantizeLinear/DequantizeLinear (the `saturate` attribute)
BASE_PRECISIONS = ("fp16", "bf16")  # the precision of everything that is not FP8
DEFAULT_BASE = "fp16"
PATCH_LINEARS = ("attn.qkv_x", "attn.qkv_y", "attn.proj_x", "attn.proj_y",
                 "mlp_x.w1", "mlp_x.w3", "mlp_x.w2", "mlp_y.w1", "mlp_y.w3", "mlp_y.w2")
PIXEL_LINEARS = ("compress_to_attn", "attn.qkv", "attn.proj", "expand_from_attn")
CALIBRATION_SIGMAS = (0.0, 0.3, 0.6)
CALIBRATION_LATENT_GRIDS = ((4, 6), (6, 4))
CALIBRATION_STEPS = 4  # the default decode: all four timesteps

Calibration = Sequence[Mapping[str, torch.Tensor]]


def fp8_attention(head_dim: int) -> bool:
    """FP8 attention (Q/DQ on both BMMs) only for head dims TensorRT's fused FP8 attention kernels take."""
    return head_dim % 16 == 0


def fp8_linear_names(net: PiDNet) -> list[str]:
    """Module names (= upstream parameter prefixes) of the Linear layers that get FP8."""
    return ([f"patch_blocks.{i}.{n}" for i in range(len(net.patch_blocks)) for n in PATCH_LINEARS]
            + [f"pixel_blocks.{i}.{n}" for i in range(len(net.pixel_blocks)) for n in PIXEL_LINEARS])


def fp8_params(net_config: Mapping[str, Any]) -> int:
    """Parameters of the Linear layers an fp8 export quantizes (counted on the meta device: no memory)."""
    with torch.device("meta"):
        net = PiDNet(net_config)
    return sum(net.get_submodule(name).weight.numel() for name in fp8_linear_names(net))


def default_calibration(net: PiDNet, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Decode inputs for calibration: per latent grid, one N(0, 1) latent at σ ∈ {0, 0.3, 0.6} in the flow form
    (1−σ)·z + σ·ε (a batch of 3), a random caption embedding, all rounded to bf16 like the runtime's inputs.

    Random latents suit random-weight exports; for a real checkpoint pass real latents and captions instead."""
    g = torch.Generator().manual_seed(seed)
    config = net.config
    sigma = torch.tensor(CALIBRATION_SIGMAS)
    decodes = []
    for h, w in CALIBRATION_LATENT_GRIDS:
        z = torch.randn(1, config.lq_latent_channels, h, w, generator=g)
        eps = torch.randn(len(sigma), *z.shape[1:], generator=g)
        lq = (1 - sigma[:, None, None, None]) * z + sigma[:, None, None, None] * eps
        y = torch.randn(len(sigma), min(config.text_limit, 32), config.txt_embed_dim, generator=g)
        decodes.append({"lq_latent": lq.bfloat16().float(), "y": y.bfloat16().float(), "degrade_sigma": sigma})
    return decodes


# ----------------------------------------------------------------------------------------------------------
# Calibration (PyTorch, fp32 reference)


@dataclass
class Fp8Calibration:
    """max |x| of every tensor that gets FP8, from reference decodes: Linear inputs by module name, and per attention
    call of one denoiser evaluation (in call order) its head_dim and the amax of the scaled q, of k and of v."""

    linear_amax: dict[str, float] = field(default_factory=dict)
    attention: list[dict[str, float]] = field(default_factory=list)
    decodes: int = 0
    evaluations: int = 0
    latent_shapes: list[str] = field(default_factory=list)
    source: str = "caller"


class _Recorder:
    """Stands in for the net in `pid_trt.sampler.sample`, numbering the attention calls of each denoiser call."""

    def __init__(self, net: PiDNet, stats: Fp8Calibration):
        self.net, self.config, self.stats = net, net.config, stats
        self._call = 0

    def condition(self, lq_latent, height, width):
        return self.net.condition(lq_latent, height, width)

    def denoise(self, x, t, y, degrade_sigma, feats):
        self._call = 0
        self.stats.evaluations += 1
        return self.net.denoise(x, t, y, degrade_sigma, feats)

    def attention_hook(self, attention):
        def recorded(q, k, v):
            if self._call == len(self.stats.attention):
                self.stats.attention.append({"head_dim": q.shape[-1], "q": 0.0, "k": 0.0, "v": 0.0})
            entry = self.stats.attention[self._call]
            self._call += 1
            # the export scales q before the first MatMul (export.graphs.export_attention): that is what gets FP8
            amax = {"q": q.abs().max().item() * q.shape[-1] ** -0.5, "k": k.abs().max().item(),
                    "v": v.abs().max().item()}
            for key, value in amax.items():
                entry[key] = max(entry[key], value)
            return attention(q, k, v)
        return recorded


@torch.no_grad()
def calibrate(net: PiDNet, calibration: Calibration | None = None) -> Fp8Calibration:
    """Max calibration of the fp32 `net` over reference 4-step decodes of `calibration` (dicts with `lq_latent`
    [B,C,h,w], `y` [B,L,D] and `degrade_sigma` [B]; None: `default_calibration(net)`)."""
    from pid_trt import model as model_mod
    from pid_trt.sampler import sample

    decodes = default_calibration(net) if calibration is None else list(calibration)
    for d in decodes:
        missing = {"lq_latent", "y", "degrade_sigma"} - set(d)
        if missing:
            raise PiDInputError(f"calibration decode inputs need lq_latent, y and degrade_sigma; missing "
                                f"{', '.join(sorted(missing))}")
    stats = Fp8Calibration(decodes=len(decodes), source="default_calibration (random latents)"
                           if calibration is None else "caller",
                           latent_shapes=sorted({str(list(d["lq_latent"].shape)) for d in decodes}))
    recorder = _Recorder(net, stats)

    def linear_hook(name):
        def hook(module, args):
            stats.linear_amax[name] = max(stats.linear_amax.get(name, 0.0), args[0].abs().max().item())
        return hook

    handles = [net.get_submodule(n).register_forward_pre_hook(linear_hook(n)) for n in fp8_linear_names(net)]
    saved = model_mod.attention
    model_mod.attention = recorder.attention_hook(saved)
    try:
        for d in decodes:
            sample(recorder, d["lq_latent"], d["y"], d["degrade_sigma"], steps=CALIBRATION_STEPS)
    finally:
        model_mod.attention = saved
        for h in handles:
            h.remove()
    return stats


# ----------------------------------------------------------------------------------------------------------
# Graph analysis: which MatMul/Gemm inputs get Q/DQ


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes(), digest_size=16).digest()


def _find_linears(model, net: PiDNet, weight_dtype: torch.dtype) -> list[dict[str, Any]]:
    """The MatMul/Gemm node of each FP8 Linear, found by weight value (as stored: `weight_dtype`): the exporter
    names initializers `val_N` and stores W or Wᵀ, so names say nothing, values do. Layers whose output is unused
    (the last patch block's text-stream proj/MLP) are not in the graph at all."""
    from onnx import numpy_helper

    by_digest: dict[tuple[bytes, bool], list[str]] = {}
    for name in fp8_linear_names(net):
        w = net.get_submodule(name).weight.detach().to(weight_dtype).float().numpy()
        by_digest.setdefault((_digest(w.T), False), []).append(name)  # MatMul(x, Wᵀ) and Gemm(transB=0)
        by_digest.setdefault((_digest(w), True), []).append(name)  # Gemm(transB=1)
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in inits:
            continue
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        names = by_digest.get((_digest(w), trans_b), []) if w.ndim == 2 else []
        if names:  # per output channel: rows of W (Gemm transB=1), columns of Wᵀ
            axis = 0 if trans_b else 1
            found.append({"node": node, "layers": names, "channel_axis": axis, "weight_amax": np.abs(w).max(1 - axis)})
    if not found:
        raise PiDInputError(f"FP8: no MatMul/Gemm in {model.graph.name or 'the graph'} uses a weight of this net; "
                            "quantize the graph exported from the net you pass")
    return found


def attention_cores(model) -> list[dict[str, Any]]:
    """(BMM1 = q·kᵀ → [Cast] → Softmax → [Cast] → BMM2 = P·v) chains of `export_attention`, in graph order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    cores = []
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        bmm1 = producer.get(sm.input[0])
        while bmm1 is not None and bmm1.op_type == "Cast":
            bmm1 = producer.get(bmm1.input[0])
        p = sm.output[0]
        while len(consumers.get(p, [])) == 1 and consumers[p][0].op_type == "Cast":
            p = consumers[p][0].output[0]
        bmm2 = [c for c in consumers.get(p, []) if c.op_type == "MatMul" and c.input[0] == p]
        if bmm1 is not None and bmm1.op_type == "MatMul" and len(bmm2) == 1:
            cores.append({"bmm1": bmm1, "bmm2": bmm2[0], "q": bmm1.input[0], "k": bmm1.input[1], "p": p,
                          "v": bmm2[0].input[1]})
    return cores


# ----------------------------------------------------------------------------------------------------------
# Rewriting


def _scales(amax: np.ndarray | float, elem_type: int) -> np.ndarray:
    """amax/448 in the ONNX type `elem_type`, rounded up (never below amax/448, so the calibrated max never
    saturates); an all-zero tensor gets scale 1/448."""
    import onnx

    s = np.where(np.asarray(amax, np.float32) > 0, amax, 1.0).astype(np.float32) / np.float32(E4M3_MAX)
    if elem_type != onnx.TensorProto.FLOAT:
        torch_dtype = {onnx.TensorProto.BFLOAT16: torch.bfloat16, onnx.TensorProto.FLOAT16: torch.float16}[elem_type]
        s = s * np.float32(1 + torch.finfo(torch_dtype).eps)  # round-to-nearest of s·(1 + ulp) is ≥ s
    return s.astype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def _elem_types(model) -> dict[str, int]:
    """The element type of every tensor in the graph (shape inference; pass the graph without its external data:
    shape inference serializes the model, which protobuf limits to 2 GB)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


def _insert_qdq(model, plan: dict[str, tuple[np.ndarray, int | None]], uses: list[tuple[Any, int, str]]) -> None:
    """Route each (node, input index, tensor) of `uses` through one shared Q→DQ pair per tensor.

    `plan[tensor] = (scale in the tensor's own type, axis)`; the pair is placed right before the tensor's first
    quantized consumer so the node list stays topologically sorted."""
    import onnx
    from onnx import helper, numpy_helper

    pairs: dict[str, list] = {}
    fp8 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.FLOAT8E4M3FN)
    for tensor, (scale, axis) in plan.items():
        zp = numpy_helper.from_array(np.zeros(scale.shape, dtype=fp8), f"{tensor}_fp8_zp")
        model.graph.initializer.extend([numpy_helper.from_array(scale, f"{tensor}_fp8_scale"), zp])
        axis_attr = {"axis": axis} if axis is not None else {}
        q = helper.make_node("QuantizeLinear", [tensor, f"{tensor}_fp8_scale", zp.name], [f"{tensor}_fp8_q"],
                             name=f"fp8_quantize/{tensor}", saturate=1, **axis_attr)
        dq = helper.make_node("DequantizeLinear", [f"{tensor}_fp8_q", f"{tensor}_fp8_scale", zp.name],
                              [f"{tensor}_fp8_dq"], name=f"fp8_dequantize/{tensor}", **axis_attr)
        pairs[tensor] = [q, dq]
    first_use: dict[str, list[str]] = {}  # keyed by the node's first output (unique in the graph)
    for node, index, tensor in uses:
        node.input[index] = f"{tensor}_fp8_dq"
        first_use.setdefault(node.output[0], []).append(tensor)
    nodes, placed = [], set()
    for node in model.graph.node:
        for tensor in first_use.get(node.output[0], []):
            if tensor not in placed:
                nodes.extend(pairs[tensor])
                placed.add(tensor)
        nodes.append(node)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)


def _save_atomic(model, path: pathlib.Path) -> None:
    """Replace `path` (and its `.data` file, when the export used one) with `model`, once it passes the checker;
    both files get the permissions of any other written file (onnx creates its data file 0600)."""
    import onnx

    data = path.with_name(path.name + ".data")
    external = data.exists()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(model, str(tmp / path.name), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        onnx.checker.check_model(str(tmp / path.name))  # by path: works beyond protobuf's 2 GB
        for written in tmp.iterdir():
            written.chmod(0o666 & ~umask())
        if external:
            os.replace(tmp / data.name, data)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())} if a.size else {}


def check_keep_high(net: PiDNet, keep_high: Sequence[str]) -> list[str]:
    """`keep_high` sorted and deduplicated; an input error naming any entry that is not an FP8 Linear layer."""
    known = set(fp8_linear_names(net))
    unknown = sorted(set(keep_high) - known)
    if unknown:
        raise PiDInputError(f"--keep-high: {', '.join(unknown[:3])} {'is' if len(unknown) == 1 else 'are'} not FP8 "
                            f"Linear layers of this net (names like {fp8_linear_names(net)[0]}; "
                            "`pid-trt fp8-sweep` lists them)")
    return sorted(set(keep_high))


def quantize_fp8(onnx_path: str | pathlib.Path, net: PiDNet, stats: Fp8Calibration,
                 base: str = DEFAULT_BASE, keep_high: Sequence[str] = ()) -> dict[str, Any]:
    """Insert FP8 E4M3 Q/DQ into the denoise (or single) graph at `onnx_path`, exported with the `base` precision
    policy, in place.

    `net` holds the fp32 weights the graph was exported from; `stats` is `calibrate(net, ...)`.
    `keep_high` names Linear layers (from `fp8_linear_names`) that stay in the base precision.
    Returns a JSON-able description for the manifest.
    """
    import onnx

    from pid_trt.export.graphs import HALF_DTYPES

    if base not in BASE_PRECISIONS:
        raise PiDInputError(f"FP8 base precision must be one of {', '.join(BASE_PRECISIONS)}, got {base!r}")
    t0 = time.perf_counter()
    path = pathlib.Path(onnx_path)
    keep_high = check_keep_high(net, keep_high)
    model = onnx.load(str(path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise PiDInputError(f"FP8 Q/DQ needs ONNX opset >= {MIN_OPSET}; {path.name} has opset {opset}")
    found = _find_linears(model, net, HALF_DTYPES[base])
    linears = [f for f in found if not set(f["layers"]) & set(keep_high)]
    cores = attention_cores(model)
    if len(cores) != len(stats.attention):
        raise PiDInputError(f"FP8: {path.name} has {len(cores)} attention cores but calibration saw "
                            f"{len(stats.attention)} attention calls per denoiser call; calibrate the net you export")
    types = _elem_types(onnx.load(str(path), load_external_data=False))  # types need no weight bytes

    plan: dict[str, tuple[np.ndarray, int | None]] = {}
    uses: list[tuple[Any, int, str]] = []
    layer_amax: dict[str, float] = {}
    layer_nodes: dict[str, str] = {}
    weight_amax: list[float] = []
    for f in linears:
        x, w_name = f["node"].input[0], f["node"].input[1]
        amax = max(stats.linear_amax[name] for name in f["layers"])
        plan[x] = (_scales(amax, types[x]), None)
        plan[w_name] = (_scales(f["weight_amax"], types[w_name]), f["channel_axis"])
        uses += [(f["node"], 0, x), (f["node"], 1, w_name)]
        weight_amax += f["weight_amax"].tolist()
        for name in f["layers"]:
            layer_amax[name] = round(stats.linear_amax[name], 6)
            layer_nodes[name] = f["node"].name
    attention = []
    for c, recorded in zip(cores, stats.attention):
        use_fp8 = fp8_attention(recorded["head_dim"])
        attention.append({"head_dim": recorded["head_dim"], "fp8": use_fp8})
        if use_fp8:
            for k in ("q", "k", "v"):
                plan[c[k]] = (_scales(recorded[k], types[c[k]]), None)
            plan[c["p"]] = (_scales(1.0, types[c["p"]]), None)  # softmax probabilities lie in [0, 1]
            uses += [(c["bmm1"], 0, c["q"]), (c["bmm1"], 1, c["k"]), (c["bmm2"], 0, c["p"]), (c["bmm2"], 1, c["v"])]
    _insert_qdq(model, plan, uses)
    _save_atomic(model, path)
    seconds = round(time.perf_counter() - t0, 2)
    n_fp8_attention = sum(a["fp8"] for a in attention)
    log.info("fp8: %d Q/DQ pairs (%d Linear, %d/%d attention cores) on a %s base in %s s", len(plan), len(linears),
             n_fp8_attention, len(attention), base, seconds)
    return {
        "method": "explicit Q/DQ inserted by pid_trt (QuantizeLinear→DequantizeLinear, FLOAT8E4M3FN, saturate)",
        "format": "E4M3FN", "base_precision": base, "qdq_pairs": len(plan),
        "layers": sorted(layer_amax),
        "keep_high": keep_high,  # FP8 Linear layers left in high precision (part of the engine's identity)
        "layer_nodes": layer_nodes,  # layer → the MatMul/Gemm node it runs as
        "not_in_graph": [n for n in fp8_linear_names(net) if not any(n in f["layers"] for f in found)],
        "attention": {"rule": "FP8 attention where head_dim % 16 == 0",
                      "head_dims": sorted({a["head_dim"] for a in attention}),
                      "fp8_cores": n_fp8_attention, "cores": len(attention)},
        "scales": {"activations": "per tensor, amax/448 (max calibration); softmax output 1/448",
                   "weights": "per output channel, amax/448",
                   "type": f"the quantized tensor's type ({base}), rounded up",
                   "activation_amax": layer_amax, "activation_amax_summary": _summary(list(layer_amax.values())),
                   "weight_amax_summary": _summary(weight_amax)},
        "calibration": {"source": stats.source, "decodes": stats.decodes, "graph_evaluations": stats.evaluations,
                        "latent_shapes": stats.latent_shapes,
                        "sampler": f"reference student sampler (fp32 PyTorch), {CALIBRATION_STEPS} steps"},
        "seconds": seconds,
    }

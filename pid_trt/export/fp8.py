"""FP8 (E4M3) post-training quantization of an exported fp32 denoise graph with explicit Q/DQ.

What gets FP8 (QuantizeLinear → DequantizeLinear pairs, FLOAT8E4M3FN, saturate=1, opset ≥ 19):
* the big Linear layers: per patch block qkv/proj/SwiGLU of both streams, per pixel block compress/expand and
  the attention's qkv/proj (`fp8_linear_names`). Activations per tensor, weights per output channel, both amax/448.
* attention cores (both BMM inputs: q, kᵀ, softmax, v) only where head_dim % 16 == 0 (`fp8_attention`), which is
  what TensorRT's fused FP8 attention needs: patch attention on official nets (64) yes, pixel attention (72) no.
Everything else stays in the graph's precision: embedders, t-MLP, σ-gates, latent convs, norms, the per-pixel
MLP (width 16: nothing for FP8 to gain), the final layer, and adaLN modulation: in the patch blocks it sees one
token per sample (a GEMV, nothing to gain), and FP8 on the pixel blocks' adaLN doubled the measured error.

Calibration is max calibration: the reference student sampler decodes a few latents (several σ, two sizes, all
timesteps); its denoiser inputs are replayed through the fp32 graph in ONNX Runtime (CPU), which reports the
amax of exactly the tensors that get quantized.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pid_trt.errors import PiDInputError
from pid_trt.export.graphs import feature_names
from pid_trt.model import PiDNet
from pid_trt.sampler import sample

log = logging.getLogger(__name__)

E4M3_MAX = 448.0
MIN_OPSET = 19  # FP8 QuantizeLinear/DequantizeLinear (the `saturate` attribute)
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


class _RecordingNet:
    """Stands in for the net in `pid_trt.sampler.sample` and records every denoiser call as graph inputs."""

    def __init__(self, net: PiDNet):
        self.net, self.config = net, net.config
        self.calls: list[dict[str, torch.Tensor]] = []

    def condition(self, lq_latent, height, width):
        self._latent, self._grid = lq_latent, (height // self.net.patch_size, width // self.net.patch_size)
        return self.net.condition(lq_latent, height, width)

    def denoise(self, x, t, y, degrade_sigma, feats):
        grid = [f.reshape(f.shape[0], *self._grid, f.shape[-1]) for f in feats]  # CondGraph's layout
        self.calls.append({"x": x, "t": t, "y": y, "degrade_sigma": degrade_sigma, "lq_latent": self._latent,
                           **dict(zip(feature_names(self.net), grid))})
        return self.net.denoise(x, t, y, degrade_sigma, feats)


def calibration_feeds(net: PiDNet, decodes: Calibration) -> list[dict[str, np.ndarray]]:
    """Every denoiser input of the reference 4-step decodes of `decodes` (keys: all graph input names)."""
    recorder = _RecordingNet(net)
    for d in decodes:
        missing = {"lq_latent", "y", "degrade_sigma"} - set(d)
        if missing:
            raise PiDInputError(f"calibration decode inputs need lq_latent, y and degrade_sigma; missing "
                                f"{', '.join(sorted(missing))}")
        sample(recorder, d["lq_latent"], d["y"], d["degrade_sigma"], steps=CALIBRATION_STEPS)
    return [{k: v.detach().float().numpy() for k, v in call.items()} for call in recorder.calls]


# ----------------------------------------------------------------------------------------------------------
# Graph analysis: which MatMul/Gemm inputs get Q/DQ


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes(), digest_size=16).digest()


def _find_linears(model, net: PiDNet) -> list[dict[str, Any]]:
    """The MatMul/Gemm node of each FP8 Linear, found by weight value: the exporter names initializers
    `val_N` and stores W or Wᵀ, so names say nothing, values do. Layers whose output is unused (the last patch
    block's text-stream proj/MLP) are not in the graph at all."""
    from onnx import numpy_helper

    by_digest: dict[tuple[bytes, bool], list[str]] = {}
    for name in fp8_linear_names(net):
        w = net.get_submodule(name).weight.detach().float().numpy()
        by_digest.setdefault((_digest(w.T), False), []).append(name)  # MatMul(x, Wᵀ) and Gemm(transB=0)
        by_digest.setdefault((_digest(w), True), []).append(name)  # Gemm(transB=1)
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in inits:
            continue
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        w = numpy_helper.to_array(inits[node.input[1]])
        names = by_digest.get((_digest(w), trans_b), []) if w.ndim == 2 else []
        if names:  # per output channel: rows of W (Gemm transB=1), columns of Wᵀ
            axis = 0 if trans_b else 1
            found.append({"node": node, "layers": names, "channel_axis": axis, "weight_amax": np.abs(w).max(1 - axis)})
    if not found:
        raise PiDInputError(f"FP8: no MatMul/Gemm in {model.graph.name or 'the graph'} uses a weight of this net; "
                            "quantize the graph exported from the net you pass")
    return found


def _attention_cores(model) -> list[dict[str, Any]]:
    """(BMM1 = q·kᵀ → Softmax → BMM2 = P·v) triples of the decomposed scaled_dot_product_attention."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    cores = []
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        bmm1 = producer.get(sm.input[0])
        bmm2 = [c for c in consumers.get(sm.output[0], []) if c.op_type == "MatMul" and c.input[0] == sm.output[0]]
        if bmm1 is not None and bmm1.op_type == "MatMul" and len(bmm2) == 1:
            cores.append({"bmm1": bmm1, "bmm2": bmm2[0], "q": bmm1.input[0], "k": bmm1.input[1],
                          "p": sm.output[0], "v": bmm2[0].input[1]})
    return cores


def _graph_amax(path: pathlib.Path, tensors: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """max |value| and last dim of each tensor over all calibration feeds, from the fp32 graph in ORT (CPU)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)  # weights stay where they are: saved as a sibling
    names = [i.name for i in model.graph.input]
    for t in tensors:
        model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.calib.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        del model
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        stats = {t: {"amax": 0.0, "last_dim": 0} for t in tensors}
        for feed in feeds:
            outs = sess.run(tensors, {n: feed[n] for n in names})
            for t, a in zip(tensors, outs):
                stats[t] = {"amax": max(stats[t]["amax"], float(np.abs(a).max())), "last_dim": a.shape[-1]}
    finally:
        os.unlink(tmp)
    return stats


# ----------------------------------------------------------------------------------------------------------
# Rewriting


def _scale(amax: np.ndarray | float) -> np.ndarray:
    amax = np.asarray(amax, dtype=np.float32)
    return np.where(amax > 0, amax, 1.0).astype(np.float32) / np.float32(E4M3_MAX)  # an all-zero tensor: any scale


def _insert_qdq(model, plan: dict[str, tuple[np.ndarray, int | None]],
                uses: list[tuple[Any, int, str]]) -> None:
    """Route each (node, input index, tensor) of `uses` through one shared Q→DQ pair per tensor.

    `plan[tensor] = (scale, axis)`; the pair is placed right before the tensor's first quantized consumer so the
    node list stays topologically sorted."""
    import onnx
    from onnx import helper, numpy_helper

    pairs: dict[str, list] = {}
    for tensor, (scale, axis) in plan.items():
        zero = np.zeros(scale.shape, dtype=np.float32)
        zp = helper.make_tensor(f"{tensor}_fp8_zp", onnx.TensorProto.FLOAT8E4M3FN, zero.shape, zero.ravel().tolist())
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
    """Replace `path` (and its `.data` file, when the export used one) with `model`, once it passes the checker."""
    import onnx

    data = path.with_name(path.name + ".data")
    external = data.exists()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(model, str(tmp / path.name), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        onnx.checker.check_model(str(tmp / path.name))  # by path: works beyond protobuf's 2 GB
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


def quantize_fp8(onnx_path: str | pathlib.Path, net: PiDNet, calibration: Calibration | None = None,
                 keep_high: Sequence[str] = ()) -> dict[str, Any]:
    """Insert FP8 E4M3 Q/DQ into the fp32 denoise (or single) graph at `onnx_path`, in place.

    `net` is the fp32 PiDNet the graph was exported from. `calibration` is a list of decode inputs, dicts with
    `lq_latent` [B,C,h,w], `y` [B,L,D] and `degrade_sigma` [B] (None: `default_calibration(net)`); each is decoded
    by the reference student sampler and every denoiser call is replayed through the graph.
    `keep_high` names Linear layers (from `fp8_linear_names`) that stay in the graph's precision.
    Returns a JSON-able description for the manifest.
    """
    import onnx

    t0 = time.perf_counter()
    path = pathlib.Path(onnx_path)
    keep_high = check_keep_high(net, keep_high)
    decodes = default_calibration(net) if calibration is None else calibration
    model = onnx.load(str(path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise PiDInputError(f"FP8 Q/DQ needs ONNX opset >= {MIN_OPSET}; {path.name} has opset {opset}")
    found = _find_linears(model, net)
    linears = [f for f in found if not set(f["layers"]) & set(keep_high)]
    cores = _attention_cores(model)
    log.info("fp8: calibrating %d Linear layers and %d attention cores on %d calibration decode(s) ...",
             len(linears), len(cores), len(decodes))
    feeds = calibration_feeds(net, decodes)
    activations = sorted({f["node"].input[0] for f in linears} | {c[k] for c in cores for k in ("q", "k", "v")})
    stats = _graph_amax(path, activations, feeds)

    plan: dict[str, tuple[np.ndarray, int | None]] = {}
    uses: list[tuple[Any, int, str]] = []
    layer_amax: dict[str, float] = {}
    layer_nodes: dict[str, str] = {}
    weight_amax: list[float] = []
    for f in linears:
        x, w_name = f["node"].input[0], f["node"].input[1]
        plan[x] = (_scale(stats[x]["amax"]), None)
        plan[w_name] = (_scale(f["weight_amax"]), f["channel_axis"])
        uses += [(f["node"], 0, x), (f["node"], 1, w_name)]
        weight_amax += f["weight_amax"].tolist()
        for name in f["layers"]:
            layer_amax[name] = round(stats[x]["amax"], 6)
            layer_nodes[name] = f["node"].name
    attention = []
    for c in cores:
        head_dim = stats[c["q"]]["last_dim"]
        use_fp8 = fp8_attention(head_dim)
        attention.append({"head_dim": head_dim, "fp8": use_fp8})
        if use_fp8:
            for k in ("q", "k", "v"):
                plan[c[k]] = (_scale(stats[c[k]]["amax"]), None)
            plan[c["p"]] = (_scale(1.0), None)  # softmax probabilities lie in [0, 1]
            uses += [(c["bmm1"], 0, c["q"]), (c["bmm1"], 1, c["k"]), (c["bmm2"], 0, c["p"]), (c["bmm2"], 1, c["v"])]
    _insert_qdq(model, plan, uses)
    _save_atomic(model, path)
    seconds = round(time.perf_counter() - t0, 2)
    n_fp8_attention = sum(a["fp8"] for a in attention)
    log.info("fp8: %d Q/DQ pairs (%d Linear, %d/%d attention cores) in %s s", len(plan), len(linears),
             n_fp8_attention, len(attention), seconds)
    return {
        "method": "explicit Q/DQ inserted by pid_trt (QuantizeLinear→DequantizeLinear, FLOAT8E4M3FN, saturate)",
        "format": "E4M3FN", "qdq_pairs": len(plan),
        "layers": sorted(layer_amax),
        "keep_high": keep_high,  # FP8 Linear layers left in high precision (part of the engine's identity)
        "layer_nodes": layer_nodes,  # layer → the MatMul/Gemm node it runs as
        "not_in_graph": [n for n in fp8_linear_names(net) if not any(n in f["layers"] for f in found)],
        "attention": {"rule": "FP8 attention where head_dim % 16 == 0",
                      "head_dims": sorted({a["head_dim"] for a in attention}),
                      "fp8_cores": n_fp8_attention, "cores": len(attention)},
        "scales": {"activations": "per tensor, amax/448 (max calibration); softmax output 1/448",
                   "weights": "per output channel, amax/448",
                   "activation_amax": layer_amax, "activation_amax_summary": _summary(list(layer_amax.values())),
                   "weight_amax_summary": _summary(weight_amax)},
        "calibration": {"source": "default_calibration (random latents)" if calibration is None else "caller",
                        "decodes": len(decodes), "graph_evaluations": len(feeds),
                        "latent_shapes": sorted({str(list(d["lq_latent"].shape)) for d in decodes}),
                        "sampler": f"reference student sampler, {CALIBRATION_STEPS} steps"},
        "seconds": seconds,
    }

"""Export PiD's denoiser to ONNX: `cond.onnx` (once per decode) + `denoise.onnx` (once per step), or one graph.

The output directory is self-describing (docs/formats.md): ONNX files, external data when large, and a
`manifest.json` (pid_trt.export.manifest) naming every tensor, the net config, precision, weights hash and the
checkpoint's sampler (the student's t-lists, or the teacher's time grid and guidance).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import pathlib
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pid_trt.atomic import atomic_directory, atomic_write_json, check_directory_target
from pid_trt.checkpoint import weights_digest
from pid_trt.config import EXPORT_PRECISIONS, VERSION, match_net_definition
from pid_trt.errors import PiDInputError
from pid_trt.export.fp8 import BASE_PRECISIONS, DEFAULT_BASE, Calibration, calibrate, check_keep_high, quantize_fp8
from pid_trt.export.graphs import CondGraph, DenoiseGraph, SingleGraph, export_view, feature_names, precision_policy
from pid_trt.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    checkpoint_weights,
    io_blocks,
    is_random,
    sampler_block,
    weights_id,
)
from pid_trt.integrity import sha256_file
from pid_trt.model import PiDNet
from pid_trt.registry import resolve

log = logging.getLogger(__name__)

OPSET = 20
_TWO_GB = 2**31 - 1
MODULE_KEY = "pid_trt.module"  # node metadata: the PiDNet module a node computes (e.g. patch_blocks.0.attn.qkv_x)
_TORCH_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # what the dynamo exporter records (onnxslim drops it)


def _dims():
    from torch.export import Dim

    return {"batch": Dim("batch", min=1, max=64), "lat_h": Dim("lat_h", min=1, max=1024),
            "lat_w": Dim("lat_w", min=1, max=1024), "text_len": Dim("text_len", min=1, max=4096)}


def _example(net: PiDNet, batch: int = 2, lat_hw: tuple[int, int] = (2, 3), text_len: int = 5):
    """Trace inputs: batch 2 and a non-square grid so that no dimension is specialised to 1 or made equal."""
    config = net.config
    text_len = max(2, min(text_len, config.text_limit))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, config.lq_latent_channels, *lat_hw, generator=g)
    x = torch.randn(batch, 3, *config.output_size(lat_hw), generator=g)
    y = torch.randn(batch, text_len, config.txt_embed_dim, generator=g)
    return {"x": x, "t": torch.tensor([866.0, 342.0][:batch]), "y": y, "lq_latent": z,
            "degrade_sigma": torch.tensor([0.25, 0.0][:batch])}


def _io_spec(name: str, shape: list, role: str) -> dict[str, Any]:
    return {"name": name, "dtype": "float32", "shape": shape, "role": role}


def graph_io(net: PiDNet) -> dict[str, dict[str, list]]:
    """Inputs and outputs of both graphs with symbolic dims (also written to the manifest)."""
    config = net.config
    k, r = config.pixels_per_latent, config.patches_per_latent
    feats = [_io_spec(n, ["batch", f"{r}*lat_h", f"{r}*lat_w", config.hidden_size],
                      "latent injection feature (per decode)") for n in feature_names(net)]
    latent = _io_spec("lq_latent", ["batch", config.lq_latent_channels, "lat_h", "lat_w"], "normalised LDM latent")
    sigma = _io_spec("degrade_sigma", ["batch"], "noise level of the latent, in [0, 1]")
    x = _io_spec("x", ["batch", 3, f"{k}*lat_h", f"{k}*lat_w"], "noisy pixels x_t")
    t = _io_spec("t", ["batch"], "flow time × 1000")
    y = _io_spec("y", ["batch", "text_len", config.txt_embed_dim], "caption embedding (truncated in-graph)")
    v = _io_spec("velocity", ["batch", 3, f"{k}*lat_h", f"{k}*lat_w"], "velocity ε − x0")
    return {"cond": {"inputs": [latent], "outputs": feats},
            "denoise": {"inputs": [x, t, y, sigma] + feats, "outputs": [v]},
            "single": {"inputs": [x, t, y, latent, sigma], "outputs": [v]}}


def _dynamic_shapes(net: PiDNet, which: str) -> dict[str, dict[int, Any]]:
    dm = _dims()
    b, lh, lw, lt = dm["batch"], dm["lat_h"], dm["lat_w"], dm["text_len"]
    k, r = net.config.pixels_per_latent, net.config.patches_per_latent
    x, z, feat = {0: b, 2: k * lh, 3: k * lw}, {0: b, 2: lh, 3: lw}, {0: b, 1: r * lh, 2: r * lw}
    if which == "cond":
        return {"lq_latent": z}
    if which == "single":
        return {"x": x, "t": {0: b}, "y": {0: b, 1: lt}, "lq_latent": z, "degrade_sigma": {0: b}}
    return {"x": x, "t": {0: b}, "y": {0: b, 1: lt}, "degrade_sigma": {0: b},
            "feats": tuple(feat for _ in feature_names(net))}


def _node_modules(model) -> dict[str, str]:
    """Node name → PiDNet module path, from the exporter's name scopes (['', 'net.patch_blocks.0', …, 'linear_7'])."""
    import ast

    modules = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == _TORCH_SCOPES_KEY), None)
        owners = [s for s in ast.literal_eval(scopes) if s.startswith("net.")] if scopes else []
        if owners:
            modules[node.name] = owners[-1].removeprefix("net.")
    return modules


def _tag_modules(model, modules: dict[str, str]) -> None:
    """Record each node's module as `MODULE_KEY` metadata (layer-wise parity names modules by it)."""
    import onnx

    for node in model.graph.node:
        if node.name in modules and not any(p.key == MODULE_KEY for p in node.metadata_props):
            node.metadata_props.append(onnx.StringStringEntryProto(key=MODULE_KEY, value=modules[node.name]))


@contextlib.contextmanager
def _quiet(logger: str):
    """The exporter's own log lines (e.g. optional torchvision ops it skips) only with -v."""
    target = logging.getLogger(logger)
    saved = target.level
    if not log.isEnabledFor(logging.DEBUG):
        target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(saved)


def _export_graph(module: torch.nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic_shapes,
                  path: pathlib.Path, meta: dict[str, str]) -> dict[str, Any]:
    """torch.export → ONNX (dynamo, opset 20) → onnxslim → metadata (graph and per-node module) → save.

    Graphs whose weights exceed 1 GB keep their weights in `<file>.data` (protobuf's limit is 2 GB) and skip
    onnxslim, which would hold a second copy in memory (the dynamo exporter has already folded constants).
    """
    import onnx
    import onnxslim

    with warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=names[0],
                                 output_names=names[1], dynamic_shapes=dynamic_shapes, verbose=False)
    prog.save(str(path), external_data=True)  # writes <file> + <file>.data
    del prog
    data = path.with_name(path.name + ".data")
    large = data.exists() and data.stat().st_size > _TWO_GB // 2
    model = onnx.load(str(path), load_external_data=not large)
    nodes_before = len(model.graph.node)
    modules = _node_modules(model)
    if not large:
        model = onnxslim.slim(model)  # keeps node names, drops node metadata
        data.unlink(missing_ok=True)
    _tag_modules(model, modules)
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save_model(model, str(path))  # large: the tensors still point at <file>.data
    dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
              for v in list(model.graph.input) + list(model.graph.output)}
    return {"nodes_before_slim": nodes_before, "nodes_after_slim": len(model.graph.node), "large": large,
            "dtypes": dtypes}


def build_net(*, backbone: str | None = None, ckpt: str | None = None, net_config: Mapping[str, Any] | None = None,
              checkpoint: str | pathlib.Path | None = None, seed: int = 0) -> tuple[PiDNet, dict[str, Any]]:
    """The net to export and what it was built from. Without a checkpoint: random weights of the right shape."""
    entry = None
    if net_config is None:
        if backbone is None:
            raise PiDInputError("give --backbone and --ckpt, or --net-config")
        entry = resolve(backbone, ckpt or "2k")
        net_config = entry.net.config
    weights: dict[str, Any] = {"source": "random"}
    if checkpoint is not None:
        from pid_trt.checkpoint import load_net

        net = load_net(checkpoint, net_config)
        weights = checkpoint_weights(checkpoint)
    else:
        torch.manual_seed(seed)
        net = PiDNet.from_config(net_config).eval()
        for name, p in net.named_parameters():  # upstream zero-inits the heads; keep the graph's outputs live
            if name.startswith(("final_layer.linear", "lq_proj.output_heads", "lq_proj.pit_head")):
                torch.nn.init.normal_(p, std=0.02)
    info = {"backbone": entry.backbone if entry else None, "ckpt": entry.ckpt if entry else None,
            "net_definition": match_net_definition(net.config), "weights": weights, "note": entry.note if entry else ""}
    return net, info


def export_onnx(out_dir: str | pathlib.Path, *, backbone: str | None = None, ckpt: str | None = None,
                net_config: Mapping[str, Any] | None = None, checkpoint: str | pathlib.Path | None = None,
                precision: str = "fp32", single: bool = False, net: PiDNet | None = None,
                calibration: Calibration | None = None, fp8_base: str = DEFAULT_BASE,
                keep_high: Sequence[str] = ()) -> pathlib.Path:
    """Export cond.onnx + denoise.onnx (or model.onnx with `single=True`) and manifest.json into `out_dir`.

    fp8: the graphs are exported in `fp8_base` precision (fp16 or bf16) and the denoise graph gets FP8 Q/DQ, with
    scales from max calibration over reference decodes of `calibration` (default: `fp8.default_calibration`);
    `keep_high` names Linear layers that stay unquantized (pid_trt.export.fp8.quantize_fp8).
    The directory appears only when complete (written to a temporary sibling, then renamed).
    """
    if precision not in EXPORT_PRECISIONS:
        raise PiDInputError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    if keep_high and precision != "fp8":
        raise PiDInputError(f"--keep-high applies to --precision fp8 only (got {precision})")
    if precision == "fp8" and fp8_base not in BASE_PRECISIONS:
        raise PiDInputError(f"fp8_base must be one of {', '.join(BASE_PRECISIONS)}, got {fp8_base!r}")
    out = pathlib.Path(out_dir)
    check_directory_target(out, "export directory")  # before loading weights
    owned = net is None
    if owned:
        net, info = build_net(backbone=backbone, ckpt=ckpt, net_config=net_config, checkpoint=checkpoint)
    else:
        info = {"backbone": backbone, "ckpt": ckpt, "net_definition": match_net_definition(net.config),
                "weights": {"source": "in-memory"}, "note": ""}
    if keep_high:  # names checked before the long export, not after it
        check_keep_high(net, keep_high)
    if is_random(info["weights"]):
        log.warning("no --checkpoint given: exporting RANDOM weights of the official shape "
                    "(fine for engine and performance work, useless for images)")
    weights = {**info["weights"], "sha256": weights_digest(net)}
    base = fp8_base if precision == "fp8" else precision
    if precision == "fp8":
        log.info("fp8: calibrating on reference decodes ...")
        fp8_stats = calibrate(net, calibration)  # the fp32 net, before the export view changes it
    # the export view swaps tables and, for fp16/bf16, casts weights: never on the caller's net
    export_net = export_view(net if owned else copy.deepcopy(net)).eval()
    t0 = time.perf_counter()
    with atomic_directory(out) as tmp:
        sampler = sampler_block(resolve(info["backbone"], info["ckpt"] or "2k") if info["backbone"] else None)
        meta = {"pid_trt_version": VERSION, "backbone": str(info["backbone"]), "ckpt": str(info["ckpt"]),
                "net_definition": str(info["net_definition"]), "weights_sha256": weights["sha256"],
                "weights": weights_id(weights), "precision": precision, "sampler": json.dumps(sampler)}
        if sampler["kind"] == "distilled":
            meta |= {"t_list": json.dumps(sampler["t_lists"]["4"]), "t_lists": json.dumps(sampler["t_lists"])}
        io = graph_io(net)
        ex = _example(net)
        graphs: dict[str, Any] = {}
        with torch.no_grad(), precision_policy(export_net, base):
            plan = ([("model", SingleGraph(export_net), (ex["x"], ex["t"], ex["y"], ex["lq_latent"], ex["degrade_sigma"]),
                      "single")] if single else [])
            if not single:
                feats = CondGraph(export_net)(ex["lq_latent"])
                plan = [("cond", CondGraph(export_net), (ex["lq_latent"],), "cond"),
                        ("denoise", DenoiseGraph(export_net), (ex["x"], ex["t"], ex["y"], ex["degrade_sigma"], *feats),
                         "denoise")]
            for name, module, args, kind in plan:
                log.info("exporting %s.onnx (%s) ...", name, precision)
                spec = io[kind]
                names = ([i["name"] for i in spec["inputs"]], [o["name"] for o in spec["outputs"]])
                path = tmp / f"{name}.onnx"
                stats = _export_graph(module, args, names, _dynamic_shapes(net, kind), path, {**meta, "graph": name})
                dtypes, large = stats.pop("dtypes"), stats.pop("large")
                spec = {side: [{**t, "dtype": dtypes.get(t["name"], t["dtype"])} for t in spec[side]]
                        for side in ("inputs", "outputs")}
                graphs[name] = {"file": path.name, "external_data": path.name + ".data" if large else None,
                                **spec, **stats}
        if precision == "fp8":
            for name in graphs:
                if name != "cond":
                    graphs[name]["fp8"] = quantize_fp8(tmp / graphs[name]["file"], net, fp8_stats, fp8_base,
                                                       keep_high)
        for g in graphs.values():
            g["sha256"] = sha256_file(tmp / g["file"])
            if g["external_data"]:
                g["external_data_sha256"] = sha256_file(tmp / g["external_data"])
        config = net.config
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "pid_trt_version": VERSION,
            "backbone": info["backbone"], "ckpt": info["ckpt"], "net_definition": info["net_definition"],
            "net_config": config.to_dict(), "precision": precision,
            "weights": weights,
            **io_blocks(config),
            "sampler": sampler,
            "opset": OPSET, "graphs": graphs, "export_seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return out

"""`pid-trt demo`: decode a case recorded from NVIDIA's implementation through our exported graphs and compare.

The case ships with the package (pid_trt/data/demo/README.md): a tiny random net with the flux v1.5 structure, its
latent, caption embedding, σ, every Gaussian draw and the 4-step output upstream computed from them. The net is
exported to ONNX once (reused while the weights, pid-trt and torch stay the same), decoded in ONNX Runtime with
upstream's noise injected, and compared step by step with upstream's states, against the golden decode tolerance
(docs/numerics.md §9).
"""
from __future__ import annotations

import importlib.resources
import json
import logging
import pathlib
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from pid_trt.atomic import atomic_write_json
from pid_trt.checkpoint import load_net, weights_digest
from pid_trt.config import VERSION, NetConfig
from pid_trt.errors import PiDInputError
from pid_trt.export import export_onnx, read_manifest
from pid_trt.images import labelled, save_image, side_by_side
from pid_trt.parity import FP32, image_metrics
from pid_trt.runtime import PiDDecoder
from pid_trt.sampler import to_uint8
from pid_trt.workflows.inputs import load_safetensors

log = logging.getLogger(__name__)

CASE = "case_a_flux_v1pt5_square"
# the case imitates this checkpoint's structure, so its export carries that name
BACKBONE, CKPT = "flux", "2kto4k_v1pt5"
STEPS = 4
ZOOM = 2  # the 128-px panels are shown at twice their size


def demo_data() -> pathlib.Path:
    """The folder of the shipped case (package data)."""
    return pathlib.Path(str(importlib.resources.files("pid_trt") / "data" / "demo"))


def load_case() -> tuple[NetConfig, pathlib.Path, dict[str, torch.Tensor], dict[str, Any]]:
    """(net config, weights file, upstream's 4-step decode tensors, how they were recorded)."""
    root = demo_data()
    weights = root / f"{CASE}_weights.safetensors"
    if not weights.is_file():
        raise PiDInputError(f"the demo data is missing from {root}; reinstall pid-trt")
    config = NetConfig.from_dict(json.loads((root / f"{CASE}.json").read_text())["tiny_config"])
    recorded = load_safetensors(root / f"{CASE}_decode_N{STEPS}.safetensors", "demo decode")
    info = json.loads((root / f"{CASE}_decode.json").read_text())
    return config, weights, recorded, info


def export_key(digest: str) -> dict[str, str]:
    """What an export depends on: the weights and the exporter (pid-trt and the torch that traced the graphs)."""
    return {"weights_sha256": digest, "pid_trt": VERSION, "torch": torch.__version__}


def _reusable(onnx_dir: pathlib.Path, previous_report: pathlib.Path, key: dict[str, str]) -> bool:
    try:
        previous = json.loads(previous_report.read_text())["export"]["key"]
        return previous == key and read_manifest(onnx_dir)["weights"]["sha256"] == key["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError, PiDInputError):
        return False


def _latent_preview(lq_latent: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The latent's first three channels as RGB (each scaled to its largest magnitude), upsampled to the image."""
    rgb = lq_latent[0, :3].float()
    rgb = rgb / rgb.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return to_uint8(F.interpolate(rgb[None], size=(height, width), mode="nearest"))[0]


def _difference(image: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(|image − reference|, largest over the channels, as grey amplified so that its maximum is white; the max)."""
    d = (image - reference).abs().amax(dim=1, keepdim=True)[0]
    top = float(d.max())
    return (d / max(top, 1e-12)).clamp(0, 1).mul(255).to(torch.uint8).expand(3, -1, -1), top


def _zoom(u8: torch.Tensor) -> torch.Tensor:
    return F.interpolate(u8[None].float(), scale_factor=ZOOM, mode="nearest")[0].to(torch.uint8)


def run_demo(out_dir: str | pathlib.Path) -> dict[str, Any]:
    """Export (or reuse), decode, compare with upstream's recorded decode, write `comparison.png`, the two
    images and `report.json` into `out_dir`; returns the report."""
    out = pathlib.Path(out_dir)
    t0 = time.perf_counter()
    config, weights, rec, info = load_case()
    net = load_net(weights, config)
    key = export_key(weights_digest(net))
    onnx_dir, report_path = out / "onnx", out / "report.json"
    reused = _reusable(onnx_dir, report_path, key)
    if reused:
        log.info("reusing the export in %s (same weights, pid-trt and torch)", onnx_dir)
    else:
        log.info("exporting the demo net to %s (the slow step; later runs reuse it)", onnx_dir)
        export_onnx(onnx_dir, net=net, backbone=BACKBONE, ckpt=CKPT)
    t_export = time.perf_counter() - t0

    height, width = rec["output"].shape[-2:]
    # ONNX Runtime (its CUDA provider where it has one): TensorRT engines take captions of exactly the net's length,
    # and the recorded caption is shorter
    decoder = PiDDecoder.load(onnx_dir, backend="onnxruntime")
    noise = [rec["x_init"]] + [rec[f"noise_{i}"] for i in range(1, STEPS)]
    states: dict[int, torch.Tensor] = {}
    t1 = time.perf_counter()
    with warnings.catch_warnings():  # a 128-px image is far below the trained sizes, on purpose
        warnings.filterwarnings("ignore", message=".*outside the trained range")
        image = decoder.decode(rec["lq_latent"], rec["y"], rec["degrade_sigma"], noise=noise, steps=STEPS,
                               on_step=lambda i, x: states.__setitem__(i, x.detach().cpu()))
    t_decode = time.perf_counter() - t1
    image = image.detach().cpu()

    step_max = [float((states[i] - rec[f"x_after_step_{i}"]).abs().max()) for i in range(1, STEPS + 1)]
    metrics = image_metrics(to_uint8(image), rec["output_u8"])
    metrics["float_max_abs"] = float((image - rec["output"]).abs().max())
    tolerance = {"x_max_abs": FP32.float_max_abs, "u8_max_abs": FP32.u8_max_abs, "frac_differ": FP32.frac_differ}
    passed = (max(step_max + [metrics["float_max_abs"]]) <= tolerance["x_max_abs"]
              and metrics["u8_max_abs"] <= tolerance["u8_max_abs"]
              and metrics["frac_differ"] <= tolerance["frac_differ"])

    backend = decoder.backend.name
    files = {"comparison": "comparison.png", "reference": "reference_upstream.png", "image": f"pid_{backend}.png"}
    difference, largest = _difference(image, rec["output"])
    panels = [(_latent_preview(rec["lq_latent"], height, width), "input latent (channels 0-2)"),
              (rec["output_u8"][0], "NVIDIA's output"), (to_uint8(image)[0], f"pid-trt, {backend}"),
              (difference, f"|difference|, white = {largest:.1e}")]
    save_image(side_by_side([[labelled(_zoom(p), text) for p, text in panels]]), out / files["comparison"])
    save_image(rec["output_u8"][0], out / files["reference"])
    save_image(to_uint8(image)[0], out / files["image"])
    report = {
        "pid_trt_version": VERSION,
        "case": {"name": CASE, "imitates": info["experiment_config_used"], "upstream": info["upstream_commit"],
                 "net": f"tiny random weights with the flux v1.5 structure, "
                        f"{sum(p.numel() for p in net.parameters()):,} parameters",
                 "latent_shape": list(rec["lq_latent"].shape), "caption_shape": list(rec["y"].shape),
                 "degrade_sigma": float(rec["degrade_sigma"][0]), "image_size_wxh": [width, height],
                 "steps": STEPS, "noise": "upstream's recorded draws, injected"},
        "backend": backend, "device": str(decoder.backend.device),
        "comparison": {"against": "the output recorded from NVIDIA's implementation",
                       "x_max_abs_per_step": step_max, **metrics, "tolerance": tolerance,
                       "tolerance_source": "docs/numerics.md §9 (student decode vs upstream)", "passed": passed},
        "export": {"dir": "onnx", "key": key, "reused": reused},
        "files": files,
        "seconds": {"export": round(t_export, 2), "decode": round(t_decode, 3),
                    "total": round(time.perf_counter() - t0, 2)},
    }
    atomic_write_json(report_path, report)
    return report


def summary_lines(report: dict[str, Any], out_dir: str | pathlib.Path) -> list[str]:
    """What `pid-trt demo` prints: what was decoded, the verdict in one line, the files and what to run next."""
    case, cmp_ = report["case"], report["comparison"]
    w, h = case["image_size_wxh"]
    worst = max(cmp_["x_max_abs_per_step"] + [cmp_["float_max_abs"]])
    values = w * h * 3
    differ = round(cmp_["frac_differ"] * values)
    out = pathlib.Path(out_dir)
    export = "reused" if report["export"]["reused"] else "exported"
    what = f"decoded {case['name']}, a case recorded from NVIDIA's implementation: {case['net']};"
    how = (f"  latent {case['latent_shape']} + caption {case['caption_shape']}, σ {case['degrade_sigma']:g} → "
           f"{w}x{h} in {case['steps']} steps, with {report['backend']} on {report['device']} (ONNX {export})")
    verdict = (f"{'MATCH' if cmp_['passed'] else 'MISMATCH'}: the output recorded from NVIDIA's implementation is "
               f"reproduced within {worst:.1e} "
               f"(largest difference over all {case['steps']} steps; tolerance {cmp_['tolerance']['x_max_abs']:g}); "
               f"{differ} of {values:,} 8-bit pixel values differ, by at most {cmp_['u8_max_abs']:g}")
    return [
        what, how, verdict,
        f"picture: {out / report['files']['comparison']} (latent | NVIDIA | pid-trt | difference)",
        f"report:  {out / 'report.json'}",
        "the weights are random, so the pictures are coloured noise by design; the point is that they agree",
        "next, with NVIDIA's weights (README, \"From weights to images\"):",
        *[f"  {command}" for command in next_commands(report["backend"])],
    ]


def next_commands(backend: str) -> list[str]:
    """The three commands that take real weights to images (the README's recipe, with or without TensorRT)."""
    export = f"pid-trt export --backbone {BACKBONE} --ckpt {CKPT} --checkpoint model_ema_bf16.pth"
    inputs = "--latents latents.safetensors --caption-embedding y.safetensors --out results"
    if backend == "tensorrt":
        return [f"{export} --precision bf16 --out onnx/flux_bf16",
                f"pid-trt build --backbone {BACKBONE} --ckpt {CKPT} --onnx-dir onnx/flux_bf16 --engine-dir engines",
                f"pid-trt decode --engine-dir engines {inputs}"]
    return [f"{export} --out onnx/flux", "pid-trt parity --onnx-dir onnx/flux",
            f"pid-trt decode --onnx-dir onnx/flux {inputs}"]

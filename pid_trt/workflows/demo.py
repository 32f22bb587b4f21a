"""`pid-trt demo`: the built-in default job, no downloads.

A tiny seeded net with the flux v1.5 structure is exported to ONNX, a latent is decoded with the best backend
available (TensorRT when importable on a GPU, else ONNX Runtime), the result is checked against the PyTorch
reference with the same injected noise, and the images plus a JSON report are written.
"""
from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

from pid_trt.atomic import atomic_write_json
from pid_trt.config import VERSION
from pid_trt.engines.detect import tensorrt_available
from pid_trt.export import export_onnx
from pid_trt.images import save_image
from pid_trt.runtime import PiDDecoder
from pid_trt.sampler import sample, to_uint8
from pid_trt.tiny import DEFAULT_STRUCTURE, tiny_inputs, tiny_net

log = logging.getLogger(__name__)

# the demo net has the flux v1.5 structure, so it is exported and built under that checkpoint's name
DEMO_BACKBONE, DEMO_CKPT = "flux", "2kto4k_v1pt5"
# the golden decodes' honest fp32 tolerance (tests/data/decode/README.md)
MAX_ABS, MAX_U8_OFF = 2e-3, 1e-3


def _decoder(onnx_dir: pathlib.Path, out: pathlib.Path, size_wh: tuple[int, int]) -> PiDDecoder:
    if tensorrt_available():
        from pid_trt.engines.build import run_build
        from pid_trt.engines.plan import make_plan

        plan = make_plan(backbone=DEMO_BACKBONE, ckpt=DEMO_CKPT, precision=None, onnx_dir=onnx_dir,
                         shapes=[size_wh], engine_dir=out / "engines")
        run_build(plan, progress=False)
        return PiDDecoder.load(out / "engines", backend="tensorrt")
    log.info("TensorRT is not available here: decoding with ONNX Runtime")
    return PiDDecoder.load(onnx_dir, backend="onnxruntime")


def run_demo(out_dir: str | pathlib.Path, seed: int = 0, latent_hw: tuple[int, int] = (8, 12)) -> dict[str, Any]:
    """Export, decode, compare and write the images and `report.json`; returns the report."""
    out = pathlib.Path(out_dir)
    t0 = time.perf_counter()
    net = tiny_net(DEFAULT_STRUCTURE, seed=seed)
    inputs = tiny_inputs(net, latent_hw=latent_hw, seed=seed)
    z, y, sigma = inputs["lq_latent"], inputs["y"], inputs["degrade_sigma"]
    log.info("exporting the tiny %s net to %s", DEFAULT_STRUCTURE, out / "onnx")
    onnx_dir = export_onnx(out / "onnx", net=net, backbone=DEMO_BACKBONE, ckpt=DEMO_CKPT)
    t_export = time.perf_counter() - t0

    k = net.pixels_per_latent
    height, width = latent_hw[0] * k, latent_hw[1] * k
    dec = _decoder(onnx_dir, out, (width, height))
    noise = dec.noise_for((1, 3, height, width), 4, seed)
    steps_backend, steps_ref = {}, {}
    t1 = time.perf_counter()
    image = dec.decode(z, y, sigma, noise=noise, on_step=lambda i, x: steps_backend.__setitem__(i, x.cpu()))
    t_decode = time.perf_counter() - t1
    reference = sample(net, z, y, sigma, noise=[n.cpu() for n in noise],
                       on_step=lambda i, x: steps_ref.__setitem__(i, x))

    u8, u8_ref = to_uint8(image.cpu()), to_uint8(reference)
    step_err = [float((steps_backend[i] - steps_ref[i]).abs().max()) for i in sorted(steps_ref)]
    off = (u8.int() - u8_ref.int()).abs()
    passed = max(step_err) <= MAX_ABS and int(off.max()) <= 1 and float((off > 0).float().mean()) <= MAX_U8_OFF
    backend = dec.backend.name
    save_image(u8[0], out / f"pid_{backend}.png")
    save_image(u8_ref[0], out / "reference.png")
    report = {
        "pid_trt_version": VERSION,
        "net": f"tiny {DEFAULT_STRUCTURE} (flux v1.5 structure), seed {seed}, "
               f"{sum(p.numel() for p in net.parameters()):,} parameters",
        "backend": backend, "device": str(dec.backend.device),
        "latent_shape": list(z.shape), "image_size_wxh": [width, height], "steps": 4, "seed": seed,
        "parity_vs_reference": {"max_abs_per_step": step_err, "u8_max_diff": int(off.max()),
                                "u8_fraction_off": float((off > 0).float().mean()),
                                "thresholds": {"max_abs": MAX_ABS, "u8_fraction_off": MAX_U8_OFF},
                                "passed": passed},
        "images": {backend: f"pid_{backend}.png", "reference": "reference.png"},
        "onnx_dir": "onnx",
        "seconds": {"export": round(t_export, 2), "decode": round(t_decode, 3),
                    "total": round(time.perf_counter() - t0, 2)},
    }
    atomic_write_json(out / "report.json", report)
    return report

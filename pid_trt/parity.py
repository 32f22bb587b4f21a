"""Parity: a backend's decode against the torch fp32 (or bf16-autocast) reference, same weights, inputs and noise.

What is compared (`compare`):
* per step, the velocity each decoder returned and its state x after the step (each on its own trajectory: the
  first step sees identical inputs, later steps add the drift of earlier ones), which names the step that diverged;
* the final image: max/mean abs in u8 units, PSNR (u8, peak 255), fraction of values off by more than 2/255 and
  fraction that differ at all, plus the max abs of the float image in [-1, 1].

Tolerances (`TOLERANCES`, picked by `tolerance_for`):
* fp32 vs the fp32 reference: velocity and float image within 2e-3, u8 off by at most 1 LSB in ≤ 0.1 % of values
  (the bar the golden decode tests hold ONNX Runtime to);
* bf16/fp16 vs the bf16-autocast reference: mean ≤ 0.6/255, the agreement upstream reports between its compile modes;
* fp8, or any precision vs the fp32 reference: bounds measured on tame tiny nets (see `VS_FP32`).

The reference weights must be the candidate's: `reference_net` finds them (checkpoint, rebuilt random export or
tiny seed) and checks their sha256 against the export's manifest or the engine's sidecar.
"""
from __future__ import annotations

import contextlib
import math
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pid_trt.config import NetConfig
from pid_trt.errors import PiDInputError
from pid_trt.export.manifest import check_weights, is_random
from pid_trt.model import PiDNet
from pid_trt.runtime import PiDDecoder
from pid_trt.sampler import to_uint8

# -- tolerances ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    """Pass bounds; None leaves a metric unchecked. Image bounds are in u8 units unless named `float`."""

    name: str
    reference_precision: str  # "fp32" or "bf16" (torch autocast)
    velocity_max_abs: float  # per step, also what names the diverged step
    float_max_abs: float | None = None
    u8_max_abs: float | None = None
    u8_mean_abs: float | None = None
    frac_differ: float | None = None  # values that differ at all
    frac_off_gt2: float | None = None  # values off by more than 2/255
    note: str = ""


FP32 = Tolerance("fp32", "fp32", velocity_max_abs=2e-3, float_max_abs=2e-3, u8_max_abs=1, frac_differ=1e-3,
                 note="same arithmetic up to op order: 1-LSB truncation flips only")
# Velocity bound here only flags gross divergence (velocities are O(1)); the image bound is upstream's.
REDUCED = Tolerance("reduced-vs-bf16", "bf16", velocity_max_abs=0.1, u8_mean_abs=0.6,
                    note="upstream's compile-mode agreement (0.6/255 mean) against bf16 autocast")
# Measured on tame tiny nets (tiny_net(init="tame"), 128x192, σ 0.25, 4 steps, CPU): bf16 autocast (seeds 0-3),
# ORT fp16 and ORT fp8-QDQ exports (seeds 0-1) against the fp32 reference. Worst seen: velocity 0.0031, u8 max 1,
# u8 mean 0.0123, nothing off by more than 2/255. The bounds give 3-4x headroom and no value off by > 2.
VS_FP32 = Tolerance("reduced-vs-fp32", "fp32", velocity_max_abs=0.01, u8_max_abs=2, u8_mean_abs=0.05,
                    frac_off_gt2=0.0, note="measured on tame tiny nets with 3-4x headroom; for real checkpoints "
                    "prefer the bf16-autocast reference")
TOLERANCES = {t.name: t for t in (FP32, REDUCED, VS_FP32)}


def tolerance_for(precision: str, against: str | None = None) -> Tolerance:
    """fp32 → FP32; bf16/fp16 → REDUCED (vs bf16 autocast); fp8, or `against="fp32"` for any other → VS_FP32."""
    if precision == "fp32":
        return FP32
    if precision in ("bf16", "fp16") and against in (None, "bf16"):
        return REDUCED
    if precision in ("bf16", "fp16", "fp8"):
        return VS_FP32
    raise PiDInputError(f"no parity tolerance for precision {precision!r}")


# -- metrics -------------------------------------------------------------------------------------------------

def image_metrics(candidate_u8: torch.Tensor, reference_u8: torch.Tensor) -> dict[str, float]:
    """u8 image agreement: max/mean abs (u8 units), PSNR in dB (inf when identical), share off by > 2 or at all."""
    if candidate_u8.shape != reference_u8.shape:
        raise PiDInputError(f"image shapes differ: {list(candidate_u8.shape)} vs {list(reference_u8.shape)}")
    diff = (candidate_u8.double() - reference_u8.double()).abs()
    mse = float(diff.pow(2).mean())
    return {"u8_max_abs": float(diff.max()), "u8_mean_abs": float(diff.mean()),
            "psnr_db": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse),
            "frac_off_gt2": float((diff > 2).double().mean()), "frac_differ": float((diff > 0).double().mean())}


@dataclass
class Trace:
    """What one decode produced: the velocity of every denoiser call, x after every step and the final image
    (and, when asked for, the arguments of every denoiser call: x, t, y, σ, features)."""

    velocities: list[torch.Tensor] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    image: torch.Tensor | None = None
    denoise_inputs: list[tuple] | None = None


class _Recording:
    """A backend proxy that keeps every velocity (everything else goes to the wrapped backend)."""

    def __init__(self, backend, trace: Trace):
        self._backend, self._trace = backend, trace
        self.graph_safe = False

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def denoise(self, x, t, y, sigma, feats):
        if self._trace.denoise_inputs is not None:
            self._trace.denoise_inputs.append((x, t, y, sigma, list(feats)))
        v = self._backend.denoise(x, t, y, sigma, feats)
        self._trace.velocities.append(v.detach().to("cpu", torch.float64))
        return v


def trace_decode(decoder: PiDDecoder, inputs: ParityInputs, keep_inputs: bool = False) -> Trace:
    """Decode `inputs` (noise injected) and record velocities and states (with `keep_inputs`, also every denoiser
    call's arguments), eagerly (no CUDA graph)."""
    trace = Trace(denoise_inputs=[] if keep_inputs else None)
    recorder = PiDDecoder(_Recording(decoder.backend, trace), entry=decoder.entry, cuda_graph=False)
    image = recorder.decode(inputs.lq_latent, inputs.y, inputs.degrade_sigma, noise=inputs.noise, steps=inputs.steps,
                            on_step=lambda i, x: trace.states.append(x.detach().to("cpu", torch.float64)))
    trace.image = image.detach().cpu()
    return trace


def _abs_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a - b).abs()
    if not torch.isfinite(a).all():
        return math.inf, math.inf
    return float(d.max()), float(d.mean())


def compare(candidate: Trace, reference: Trace, tolerance: Tolerance) -> dict[str, Any]:
    """Per-step and image metrics, failures against `tolerance` and the first step whose velocity diverged."""
    steps = []
    for i, (vc, vr, xc, xr) in enumerate(zip(candidate.velocities, reference.velocities, candidate.states,
                                             reference.states), start=1):
        v_max, v_mean = _abs_stats(vc, vr)
        x_max, _ = _abs_stats(xc, xr)
        steps.append({"step": i, "velocity_max_abs": v_max, "velocity_mean_abs": v_mean, "x_max_abs": x_max,
                      "ok": v_max <= tolerance.velocity_max_abs})
    diverged = next((s["step"] for s in steps if not s["ok"]), None)
    image = image_metrics(to_uint8(candidate.image), to_uint8(reference.image))
    image["float_max_abs"] = _abs_stats(candidate.image.double(), reference.image.double())[0]

    failures = []
    if diverged is not None:
        s = steps[diverged - 1]
        failures.append(f"step {diverged} diverged: velocity max abs {s['velocity_max_abs']:.3g} > "
                        f"{tolerance.velocity_max_abs:g}")
    for key in ("float_max_abs", "u8_max_abs", "u8_mean_abs", "frac_differ", "frac_off_gt2"):
        bound = getattr(tolerance, key)
        if bound is not None and not image[key] <= bound:
            failures.append(f"image {key} {image[key]:.4g} > {bound:g}")
    return {"passed": not failures, "failures": failures, "first_divergent_step": diverged, "steps": steps,
            "image": image, "tolerance": asdict(tolerance)}


# -- inputs --------------------------------------------------------------------------------------------------

@dataclass
class ParityInputs:
    lq_latent: torch.Tensor
    y: torch.Tensor
    degrade_sigma: torch.Tensor
    noise: list[torch.Tensor]
    steps: int
    description: dict[str, Any]


def make_inputs(net_config: dict[str, Any], noise_for: Callable, *, seed: int = 0, size: tuple[int, int] | None = None,
                batch: int = 1, text_len: int = 8, sigma: float = 0.25, steps: int = 4,
                lq_latent: torch.Tensor | None = None, y: torch.Tensor | None = None,
                degrade_sigma: torch.Tensor | None = None) -> ParityInputs:
    """Inputs for a parity run; whatever is not given is drawn from `seed` (rounded to bf16 like upstream's callers).

    `size` (W, H) sets the output size of a generated latent (default a 4×6 latent). `noise_for` is the reference
    decoder's `noise_for`, so the injected noise is exactly what a seeded decode draws.
    """
    g = torch.Generator().manual_seed(seed)
    net_config = NetConfig.from_dict(net_config)
    k = net_config.pixels_per_latent
    if lq_latent is None:
        w, h = size or (6 * k, 4 * k)
        if w % k or h % k:
            raise PiDInputError(f"--size {w}x{h} is not a multiple of {k} (pixels per latent pixel of this net)")
        lq_latent = torch.randn(batch, net_config.lq_latent_channels, h // k, w // k, generator=g)
    b = lq_latent.shape[0]
    if y is None:
        y = torch.randn(1, text_len, net_config.txt_embed_dim, generator=g)
    if y.dim() == 3 and y.shape[0] == 1 and b > 1:
        y = y.expand(b, -1, -1)
    sig = torch.full((b,), sigma) if degrade_sigma is None else degrade_sigma.float().reshape(-1).expand(b)
    z, y = lq_latent.float().bfloat16().float(), y.float().bfloat16().float()
    shape = (b, 3, z.shape[2] * k, z.shape[3] * k)
    return ParityInputs(z, y, sig.clone(), [n.cpu() for n in noise_for(shape, steps, seed)], steps,
                        {"seed": seed, "lq_latent": list(z.shape), "y": list(y.shape),
                         "degrade_sigma": sig.tolist(), "steps": steps, "size_wxh": [shape[3], shape[2]]})


# -- reference weights ---------------------------------------------------------------------------------------

def reference_net(net_config: dict[str, Any], weights: Mapping[str, Any] | None, *,
                  checkpoint: str | pathlib.Path | None = None, tiny_seed: int | None = None,
                  tiny_init: str = "tame") -> tuple[PiDNet, str]:
    """The fp32 weights an export or engine was made from (`weights`: its weights block, None when unknown), and
    how they were found. First match wins:

    1. `checkpoint` (a model_ema_bf16.pth / .safetensors loaded for `net_config`), refused at once when the
       artifact records another checkpoint file;
    2. `tiny_seed`: the tiny net `tiny_net(seed=tiny_seed, init=tiny_init)` with `net_config` (in-memory exports);
    3. the recorded source: the checkpoint file (by absolute path, so from any directory), or random weights
       (rebuilt with the exporter's seed).
    The result's sha256 must equal the recorded one (when known), so a wrong reference is refused, not compared.
    """
    from pid_trt.checkpoint import load_net, weights_digest
    from pid_trt.export import build_net

    weights = dict(weights or {})
    source = (weights.get("checkpoint") or {}).get("path") or weights.get("source")
    if checkpoint is not None:
        if weights:
            check_weights(weights, checkpoint, "the export or engine under test", net_config)
        net, how = load_net(checkpoint, net_config), f"checkpoint {checkpoint}"
    elif tiny_seed is not None:
        from pid_trt.tiny import tiny_net

        net, how = tiny_net(seed=tiny_seed, init=tiny_init, **net_config), f"tiny net seed {tiny_seed} ({tiny_init})"
    elif is_random(weights):
        net, how = build_net(net_config=net_config)[0], "random weights rebuilt with the exporter's seed"
    elif source and pathlib.Path(source).is_file():
        net, how = load_net(source, net_config), f"checkpoint {source}"
    else:
        raise PiDInputError(f"cannot rebuild the reference weights (recorded source: {source or 'unknown'}); "
                            "pass --reference-checkpoint FILE, or --tiny-seed N for a tiny net exported in memory")
    if weights.get("sha256") and weights_digest(net) != weights["sha256"]:
        raise PiDInputError(f"the reference weights ({how}) are not the ones exported (sha256 "
                            f"{weights['sha256'][:12]}…); pass the checkpoint or tiny seed the export was made from")
    return net.eval(), how


# -- the run -------------------------------------------------------------------------------------------------

def run_parity(candidate: PiDDecoder, reference_weights: PiDNet, inputs: ParityInputs,
               tolerance: Tolerance) -> dict[str, Any]:
    """Decode `inputs` with the candidate and with the torch reference (same device) and compare them."""
    reference = PiDDecoder.from_net(reference_weights, candidate.backend.device, tolerance.reference_precision,
                                    cuda_graph=False, entry=candidate.entry)
    if reference.sampler != "student":
        raise PiDInputError("parity covers the distilled student sampler; teacher checkpoints are not supported")
    with no_tf32():
        ref = trace_decode(reference, inputs)
    report = compare(trace_decode(candidate, inputs), ref, tolerance)
    report["reference"] = {"precision": tolerance.reference_precision, "device": str(reference.backend.device)}
    report["inputs"] = inputs.description
    return report


@contextlib.contextmanager
def no_tf32():
    """The fp32 reference must be real fp32 on CUDA too (cuDNN convs default to TF32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human-readable account of a report (what the CLI prints)."""
    img = report["image"]
    lines = [f"{s['step']}: velocity max {s['velocity_max_abs']:.3g} mean {s['velocity_mean_abs']:.3g}, "
             f"x max {s['x_max_abs']:.3g}{'' if s['ok'] else '  <-- diverged'}" for s in report["steps"]]
    psnr = "inf" if math.isinf(img["psnr_db"]) else f"{img['psnr_db']:.2f}"
    lines.append(f"image: u8 max {img['u8_max_abs']:g} mean {img['u8_mean_abs']:.4f}, PSNR {psnr} dB, "
                 f">2/255 {100 * img['frac_off_gt2']:.3f} %, differ {100 * img['frac_differ']:.3f} %, "
                 f"float max {img['float_max_abs']:.3g}")
    lines += [f"FAIL: {f}" for f in report["failures"]]
    lines.append(f"{'PASS' if report['passed'] else 'FAIL'} ({report['tolerance']['name']} tolerance)")
    return lines


def json_safe(obj: Any) -> Any:
    """inf/nan as strings: JSON has no literal for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj

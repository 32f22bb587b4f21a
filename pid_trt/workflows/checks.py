"""The `parity`, `bench` and `fp8-sweep` workflows: open the net under test, run the check, return a report."""
from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from pid_trt.errors import PiDInputError
from pid_trt.export import read_manifest
from pid_trt.export.manifest import describe_weights, is_random
from pid_trt.workflows.inputs import read_caption_embedding, read_latents
from pid_trt.workflows.sources import Sources

log = logging.getLogger(__name__)


def _given_inputs(latents: pathlib.Path | None, caption_embedding: pathlib.Path | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if latents is not None:
        samples = read_latents(latents)
        shapes = {tuple(s.lq_latent.shape) for s in samples}
        if len(shapes) != 1:
            raise PiDInputError(f"{latents}: parity needs latents of one shape, found {sorted(shapes)}")
        out["lq_latent"] = torch.cat([s.lq_latent for s in samples])
        out["degrade_sigma"] = torch.tensor([s.sigma for s in samples])
    if caption_embedding is not None:
        out["y"] = read_caption_embedding(caption_embedding)
    return out


def _size(net_config, size: tuple[int, int] | None, given: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The W×H a parity run decodes: the given latents', else --size, else the default 4×6 latent."""
    k = net_config.pixels_per_latent
    if "lq_latent" in given:
        return given["lq_latent"].shape[3] * k, given["lq_latent"].shape[2] * k
    return size or (6 * k, 4 * k)


def check_parity(*, backend: str | None = None, reference_checkpoint: pathlib.Path | None = None,
                 export_dir: pathlib.Path | None = None, against: str | None = None,
                 latents: pathlib.Path | None = None, caption_embedding: pathlib.Path | None = None,
                 size: tuple[int, int] | None = None, batch: int = 1, sigma: float = 0.25, seed: int = 0,
                 steps: int = 4, layerwise: bool = False, save_inputs: pathlib.Path | None = None,
                 reference_export: pathlib.Path | None = None, layer_tolerance: float | None = None,
                 **source: Any) -> dict[str, Any]:
    """Decode the same inputs and noise with the net under test (`source`: see `Sources`) and with the torch
    reference of the same weights; the report says whether they agree within the precision's tolerance.

    `layerwise` then compares every tensor of one denoiser evaluation (the first diverged step, else step 1)
    with a reference run (see `layerwise_parity`); `save_inputs` writes that evaluation's feeds for Polygraphy."""
    from pid_trt.parity import make_inputs, run_parity, tolerance_for
    from pid_trt.runtime import PiDDecoder

    sources = Sources(export_dir=export_dir, reference_checkpoint=reference_checkpoint, **source)
    given = _given_inputs(latents, caption_embedding)
    n = len(given["lq_latent"]) if "lq_latent" in given else batch
    try:
        if (info := sources.describe_source()) is not None:  # before anything large is loaded
            info.check_request([_size(info.net_config, size, given)], n)
        candidate = sources.decoder(backend, cuda_graph=False)
        if (layerwise or save_inputs is not None) and candidate.backend.name == "torch":
            raise PiDInputError("--layerwise and --save-inputs compare exported graphs: give --onnx-dir or "
                                "--engine-dir (or --backend onnxruntime for a tiny net)")
        candidate.check_memory(*_size(candidate.net_config, size, given), n)
        ref_net, ref_how = sources.reference_net()
        precision = candidate.precision
        tolerance = tolerance_for(precision, against)
        noise_for = PiDDecoder.from_net(ref_net, candidate.backend.device, cuda_graph=False).noise_for
        fixed = getattr(candidate.backend, "text_length", None)  # TensorRT engines take one caption length
        inputs = make_inputs(candidate.net_config, noise_for, seed=seed, size=size, batch=batch, sigma=sigma,
                             steps=steps, **({"text_len": fixed} if fixed else {}), **given)
        report = run_parity(candidate, ref_net, inputs, tolerance)
        if layerwise or save_inputs is not None:
            report["layerwise"] = layerwise_parity(sources, candidate, inputs, report["first_divergent_step"] or 1,
                                                   compare=layerwise, save_inputs=save_inputs,
                                                   reference_export=reference_export, tolerance=layer_tolerance)
    finally:
        sources.close()
    passed = report["passed"] and report.get("layerwise", {}).get("passed", True)
    return {"status": "pass" if passed else "fail", "backend": candidate.backend.name,
            "precision": precision, "device": str(candidate.backend.device), "source": sources.describe(),
            "reference_weights": ref_how, **report}


def layerwise_parity(sources: Sources, candidate, inputs, step: int, *, compare: bool = True,
                     save_inputs: pathlib.Path | None = None, reference_export: pathlib.Path | None = None,
                     tolerance: float | None = None) -> dict[str, Any]:
    """One denoiser evaluation (step `step` of the torch reference's decode of `inputs`) compared tensor by
    tensor (pid_trt.layerwise): an ONNX Runtime candidate against a fresh fp32 export of the reference weights
    (torch block outputs too), a TensorRT candidate against ONNX Runtime on the graphs it was built from.
    `save_inputs` writes the evaluation's feeds (per-step graph to the file, cond beside it) for Polygraphy."""
    from pid_trt import layerwise as lw
    from pid_trt.parity import no_tf32, trace_decode
    from pid_trt.runtime import PiDDecoder

    ref_net = sources.reference_net()[0]
    reference = PiDDecoder.from_net(ref_net, candidate.backend.device, cuda_graph=False, entry=candidate.entry)
    with no_tf32():
        call = trace_decode(reference, inputs, keep_inputs=True).denoise_inputs[step - 1]
    feeds = lw.graph_feeds(ref_net, inputs.lq_latent, call)
    onnx_dir = (candidate.backend.dir if candidate.backend.name == "onnxruntime"
                else sources.engine_export(candidate.backend.sidecar))
    graphs = list(read_manifest(onnx_dir)["graphs"])
    out: dict[str, Any] = {"step": step}
    if save_inputs is not None:
        out["saved_inputs"] = {}
        for graph in graphs:
            cond_path = save_inputs.with_name(f"{save_inputs.stem}-cond{save_inputs.suffix}")
            path = cond_path if graph == "cond" else save_inputs
            lw.save_inputs(path, feeds[graph])
            out["saved_inputs"][graph] = str(path)
    if not compare:
        return out
    precision = candidate.precision
    tolerance = lw.NODE_TOLERANCE[precision] if tolerance is None else tolerance
    if candidate.backend.name == "onnxruntime":
        ref_dir = sources.reference_export(reference_export, single="model" in graphs)
        comparisons = lw.compare_exports(onnx_dir, ref_dir, feeds, tolerance, reference_net=ref_net,
                                         providers=candidate.backend.session_providers)
        pair = f"ONNX Runtime {precision} graphs vs a fresh fp32 export of the reference weights"
    else:
        device = candidate.backend.device  # TensorRT and ONNX Runtime on the engines' GPU
        with torch.cuda.device(device):
            comparisons = lw.compare_engine_graphs(onnx_dir, feeds, tolerance, providers=[
                ("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"])
        pair = f"TensorRT {precision} engine rebuilt with every tensor marked vs ONNX Runtime on its graphs"
    return {**out, **lw.summarize(comparisons, tolerance, pair)}


def run_bench(*, backends: Sequence[str | None] = (None,), sizes: Sequence[tuple[int, int]] = (),
              batches: Sequence[int] = (1,), steps: int = 4, warmup: int = 2, iters: int = 10,
              text_len: int | None = None, cuda_graph: bool = True, **source: Any) -> list[dict[str, Any]]:
    """Time whole decodes of the net under test on each backend, size and batch; rows carry the speedup over the
    first backend (`pid_trt.bench`)."""
    from pid_trt.bench import add_ratios, bench_decoder

    if warmup < 0 or iters < 1:
        raise PiDInputError("--warmup must be >= 0 and --iters >= 1")
    sources = Sources(random_reference=True, **source)
    rows = []
    try:
        if (info := sources.describe_source()) is not None:  # before anything large is loaded
            info.check_request(sizes or [_size(info.net_config, None, {})], max(batches or (1,)))
        for backend in backends or (None,):
            decoder = sources.decoder(backend, cuda_graph=cuda_graph)
            for size in sizes or [_size(decoder.net_config, None, {})]:
                for batch in batches or (1,):
                    decoder.check_memory(*size, batch, text_len=text_len)
                    row = bench_decoder(decoder, size, batch, steps, warmup, iters, text_len)
                    log.info("%s %s batch %d: p50 %.2f ms", row["backend"], row["size"], batch, row["p50_ms"])
                    rows.append(row)
    finally:
        sources.close()
    return add_ratios(rows)


def run_fp8_sweep(*, backbone: str | None = None, ckpt: str | None = None, net_config: Any = None,
                  checkpoint: pathlib.Path | None = None, mode: str = "quantize", targets: Any = None,
                  out: pathlib.Path | None = None) -> dict[str, Any]:
    """Export the net with every FP8 layer quantized (in a temporary directory), rank the layers by the error
    they add on the calibration decodes (pid_trt.fp8_sweep) and write the smallest keep-high list meeting
    `targets` to `out` (for `pid-trt export --precision fp8 --keep-high-file`)."""
    import tempfile

    from pid_trt.export import build_net, export_onnx
    from pid_trt.fp8_sweep import Fp8Sweep, Targets, write_layer_list

    net, info = build_net(backbone=backbone, ckpt=ckpt, net_config=net_config, checkpoint=checkpoint)
    if is_random(info["weights"]):
        log.warning("no --checkpoint given: sweeping RANDOM weights of the official shape")
    with tempfile.TemporaryDirectory(prefix="pid-trt-fp8-sweep-") as tmp:
        onnx_dir = export_onnx(pathlib.Path(tmp) / "onnx", net=net, precision="fp8")
        report = Fp8Sweep(net, onnx_dir, targets=targets or Targets()).run(mode)
    report["weights"] = info["weights"]
    if out is not None and report["keep_high"] is not None:
        e = report["keep_high_error"]
        summary = (f"pid-trt fp8-sweep ({mode}): {len(report['keep_high'])} of {report['layers']} FP8 Linear layers "
                   f"kept high; velocity {e['velocity_max_abs']:.3g}, u8 max {e['u8_max_abs']:g}, "
                   f"mean {e['u8_mean_abs']:.3g}")
        write_layer_list(out, report["keep_high"], [summary, f"weights: {describe_weights(info['weights'])}"])
        report["out"] = str(out)
    return report

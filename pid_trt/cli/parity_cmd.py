"""`pid-trt parity`: a backend against the torch reference on the same weights, inputs and noise.

Exit status: 0 pass, 1 fail (the report says which step diverged; with --layerwise, which node), 2 unusable input
(files, weights, options).
"""
from __future__ import annotations

import click

from pid_trt.cli.options import (
    DIR,
    FILE,
    PATH,
    command,
    emit_json,
    json_option,
    note,
    result,
    size_option,
    source_options,
)
from pid_trt.config import BACKENDS


@command("parity")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Backend under test [default: what the source implies; torch for a tiny net].")
@source_options
@click.option("--reference-checkpoint", type=FILE,
              help="Weights of the reference when the export/engines do not record a usable source.")
@click.option("--against", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Reference precision: auto = fp32 for fp32/fp8, bf16 autocast for bf16/fp16.")
@click.option("--latents", type=PATH,
              help="safetensors with lq_latent (+ degrade_sigma), as `pid-trt decode` reads them [default: drawn].")
@click.option("--caption-embedding", type=FILE, help="safetensors with y [1 or B, L, D] [default: drawn].")
@size_option(help="Output size of a drawn latent [default: a 4x6 latent].")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch of drawn inputs.")
@click.option("--sigma", type=click.FloatRange(0, 1), default=0.25, show_default=True, help="degrade σ of drawn inputs.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of drawn inputs and of the noise.")
@click.option("--steps", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--export-dir", type=DIR,
              help="Tiny net on onnxruntime: keep its ONNX export here [default: a temporary directory].")
@click.option("--layerwise", is_flag=True,
              help="Also compare every intermediate tensor of one denoiser evaluation (the first diverged step, "
                   "else step 1) and name the first node that diverges (needs pid-trt[debug]).")
@click.option("--save-inputs", type=FILE,
              help="Write that evaluation's feeds for `polygraphy run --load-inputs FILE` (cond's beside it).")
@click.option("--reference-export", type=DIR,
              help="--layerwise: keep the fresh fp32 export of the reference weights here, and reuse it.")
@click.option("--layer-tolerance", type=click.FloatRange(min=0), default=None,
              help="--layerwise: max |diff| / max |reference| per tensor [default: by precision].")
@json_option("The full report: JSON on stdout, or written to FILE.", aliases=("--report",))
@click.pass_context
def command(ctx: click.Context, backend, reference_checkpoint, against, latents, caption_embedding, size, batch,
            sigma, seed, steps, export_dir, layerwise, save_inputs, reference_export, layer_tolerance, json_out,
            **source) -> None:
    """Check a backend against the torch reference; exit 0 pass, 1 fail, 2 unusable input."""
    from pid_trt.layerwise import summary_lines as layerwise_lines
    from pid_trt.parity import summary_lines
    from pid_trt.workflows.checks import check_parity

    report = check_parity(backend=backend, reference_checkpoint=reference_checkpoint, export_dir=export_dir,
                          against=None if against == "auto" else against, latents=latents,
                          caption_embedding=caption_embedding, size=size, batch=batch, sigma=sigma, seed=seed,
                          steps=steps, layerwise=layerwise, save_inputs=save_inputs,
                          reference_export=reference_export, layer_tolerance=layer_tolerance, **source)
    result(f"parity: {report['backend']} {report['precision']} on {report['device']} vs torch "
           f"{report['tolerance']['reference_precision']} ({report['reference_weights']})", json_out)
    for line in summary_lines(report):
        result(line, json_out)
    for graph, path in report.get("layerwise", {}).get("saved_inputs", {}).items():
        result(f"saved the {graph} feeds of step {report['layerwise']['step']} to {path}", json_out)
    if layerwise:
        for line in layerwise_lines(report["layerwise"]):
            result(line, json_out)
    elif not report["passed"] and report["backend"] != "torch":
        note("rerun with --layerwise to name the first node that diverges")
    emit_json(report, json_out)
    ctx.exit(0 if report["status"] == "pass" else 1)

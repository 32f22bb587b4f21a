"""`pid-trt demo`: reproduce a decode recorded from NVIDIA's implementation (no downloads, no weights)."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.options import command, emit_json, json_option, out_option, result


@command("demo")
@out_option(pathlib.Path("pid-trt-demo"), "Output directory: comparison.png, the images, report.json, the export.")
@json_option("The report as JSON on stdout, or written to FILE.")
@click.pass_context
def command(ctx: click.Context, out: pathlib.Path, json_out: str | None) -> None:
    """Decode a case recorded from NVIDIA's implementation (shipped tiny weights, latent, caption and noise) through
    the exported ONNX graphs in ONNX Runtime, and check it matches upstream's output.

    Exit status 0 when it matches, 1 when it does not. A rerun reuses the export.
    """
    from pid_trt.workflows.demo import run_demo, summary_lines

    report = run_demo(out)
    for line in summary_lines(report, out):
        result(line, json_out)
    emit_json(report, json_out)
    ctx.exit(0 if report["comparison"]["passed"] else 1)

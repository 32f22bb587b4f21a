"""`pid-trt demo`: run the built-in default job (no downloads, no weights)."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.options import command, emit_json, json_option, out_option, result


@command("demo")
@out_option(pathlib.Path("pid-trt-demo"), "Output directory for the images and report.json.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@json_option("The report as JSON on stdout, or written to FILE.")
@click.pass_context
def command(ctx: click.Context, out: pathlib.Path, seed: int, json_out: str | None) -> None:
    """Export a tiny seeded net, decode a latent with the best backend here, check it against the reference,
    and write the images and a JSON report."""
    from pid_trt.workflows.demo import run_demo

    report = run_demo(out, seed=seed)
    verdict = "PASSED" if report["parity_vs_reference"]["passed"] else "FAILED"
    result(f"parity vs the PyTorch reference: {verdict}; wrote {out}/report.json", json_out)
    emit_json(report, json_out)
    ctx.exit(0 if verdict == "PASSED" else 1)

"""`pid-trt demo`: run the built-in default job."""
from __future__ import annotations

import json
import pathlib

import click


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=pathlib.Path), default=pathlib.Path("pid-trt-demo"),
              show_default=True, help="Output directory for the image(s) and report.json.")
@click.option("--seed", type=int, default=0, show_default=True)
def command(out_dir: pathlib.Path, seed: int) -> None:
    """Export a tiny seeded net, decode a latent with the best backend here, check it against the reference,
    and write the images and a JSON report (no downloads)."""
    from pid_trt.demo import run_demo

    report = run_demo(out_dir, seed=seed, log=lambda s: click.echo(s, err=True))
    click.echo(json.dumps(report, indent=1))
    verdict = "PASSED" if report["parity_vs_reference"]["passed"] else "FAILED"
    click.echo(f"parity vs the PyTorch reference: {verdict}; wrote {out_dir}/report.json")
    if verdict == "FAILED":
        raise SystemExit(1)

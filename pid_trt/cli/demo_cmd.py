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
    """Decode a latent with a tiny seeded net (no downloads) and write the image(s) and a JSON report."""
    from pid_trt.demo import run_demo

    report = run_demo(out_dir, seed=seed)
    click.echo(json.dumps(report, indent=1))
    click.echo(f"wrote {out_dir}/report.json")

"""`pid-trt inspect FILE`: what a checkpoint, ONNX model or ONNX directory holds."""
from __future__ import annotations

import json
import pathlib

import click


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=pathlib.Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(path: pathlib.Path, as_json: bool) -> None:
    """Describe a checkpoint (.pth/.safetensors), an ONNX model or an ONNX export directory."""
    if path.suffix == ".onnx" or (path.is_dir() and (path / "manifest.json").exists()):
        from pid_trt.export.inspect import inspect_onnx

        info = inspect_onnx(path)
    else:
        from pid_trt.checkpoint import inspect_checkpoint

        info = inspect_checkpoint(path)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        elif isinstance(value, dict):
            value = json.dumps(value)
        click.echo(f"{key:>16}: {value}")

"""`pid-trt inspect PATH`: what a checkpoint, ONNX model or ONNX directory holds."""
from __future__ import annotations

import json
import pathlib

import click

from pid_trt.cli.options import command, emit_json, json_option, result


@command("inspect")
@click.argument("path", type=click.Path(path_type=pathlib.Path))
@json_option("The summary as JSON on stdout, or written to FILE.")
def command(path: pathlib.Path, json_out: str | None) -> None:
    """Describe a checkpoint (.pth/.safetensors), an ONNX model or an ONNX export directory."""
    if path.suffix == ".onnx" or (path.is_dir() and (path / "manifest.json").exists()):
        from pid_trt.export.inspect import inspect_onnx

        info = inspect_onnx(path)
    else:
        from pid_trt.checkpoint import inspect_checkpoint

        info = inspect_checkpoint(path)
    if json_out is not None:
        emit_json(info, json_out)
        return
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        elif isinstance(value, dict):
            value = json.dumps(value)
        result(f"{key:>16}: {value}")

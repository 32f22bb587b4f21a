"""`pid-trt inspect PATH`: what a checkpoint, ONNX model or ONNX directory holds."""
from __future__ import annotations

import json
import pathlib

import click

from pid_trt.cli.options import command, emit_json, json_option, result


@command("inspect")
@click.argument("path", type=click.Path(path_type=pathlib.Path))
@click.option("--layers", is_flag=True, help="Engines: list every layer with its type and precision.")
@json_option("The summary as JSON on stdout, or written to FILE.")
def command(path: pathlib.Path, layers: bool, json_out: str | None) -> None:
    """Describe a checkpoint (.pth/.safetensors), an ONNX model or export directory, or TensorRT engines (an
    .engine file or an engine directory: layers, per-layer precisions, profiles; needs TensorRT)."""
    if path.suffix == ".engine" or (path.is_dir() and any(path.glob("*.engine"))):
        from pid_trt.engines.inspect import inspect_engine

        engines = inspect_engine(path)
        for name, info in engines.items():
            counts = ", ".join(f"{p} {n}" for p, n in sorted(info["layer_precisions"].items()))
            result(f"{name}: {len(info['layers'])} layers ({counts}), {len(info['profiles'])} profiles", json_out)
            for i, profile in enumerate(info["profiles"]):
                shapes = "; ".join(f"{t} {'/'.join('x'.join(map(str, s)) for s in mmo)}" for t, mmo in profile.items())
                result(f"  profile {i} (min/opt/max): {shapes}", json_out)
            for layer in info["layers"] if layers else []:
                result(f"  {layer['name']}  {layer['type'] or '-'}  {','.join(layer['precisions']) or '-'}", json_out)
        emit_json(engines, json_out)
        return
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

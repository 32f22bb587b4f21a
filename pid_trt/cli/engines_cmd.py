"""`pid-trt engines [DIR]`: list the engines of an engine directory and whether each is usable."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.options import command, emit_json, json_option, result
from pid_trt.config import DEFAULT_ENGINE_DIR

_COLUMNS = ("name", "backbone/ckpt", "precision", "weights", "profiles", "TRT", "SM", "size", "status")


@command("engines")
@click.argument("engine_dir", required=False, default=DEFAULT_ENGINE_DIR,
                type=click.Path(exists=True, file_okay=False, path_type=pathlib.Path))
@json_option("The rows as JSON on stdout, or written to FILE.")
def command(engine_dir: pathlib.Path, json_out: str | None) -> None:
    """List TensorRT engines (default directory: ./engines): weights, profiles, TensorRT version, GPU, size, status.

    An engine file without its sidecar is an unfinished (interrupted or running) build. Where TensorRT and a GPU
    are available, engines built for another TensorRT version or GPU are marked unusable, with the reason.
    """
    from pid_trt.engines.store import list_engines

    rows = list_engines(engine_dir)
    if json_out is not None:
        emit_json([dict(zip(_COLUMNS, r)) for r in rows], json_out)
        return
    if not rows:
        result(f"no engines in {engine_dir} (build some with: pid-trt build --backbone B --ckpt C --checkpoint FILE)")
        return
    widths = [max(len(str(r[i])) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    for r in [_COLUMNS, *rows]:
        result("  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths)) + "  " + str(r[-1]))

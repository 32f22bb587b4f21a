"""`pid-trt engines [DIR]`: list the engines of an engine directory and whether each is usable."""
from __future__ import annotations

import json
import pathlib

import click

from pid_trt.engines.build import DEFAULT_ENGINE_DIR, detect_local
from pid_trt.engines.store import EngineStore, StoredEngine, check_compatible

_COLUMNS = ("name", "backbone/ckpt", "precision", "profiles", "TRT", "SM", "size", "status")


@click.command("engines")
@click.argument("engine_dir", required=False, default=DEFAULT_ENGINE_DIR,
                type=click.Path(file_okay=False, path_type=pathlib.Path))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def command(engine_dir: pathlib.Path, as_json: bool) -> None:
    """List TensorRT engines (default directory: ./engines): profiles, TensorRT version, GPU, size, status.

    An engine file without its sidecar is an unfinished (interrupted or running) build. Where TensorRT and a GPU
    are available, engines built for another TensorRT version or GPU are marked unusable, with the reason.
    """
    trt_version, gpu = detect_local()
    rows = [_row(item, trt_version, gpu.compute_capability if gpu else None) for item in EngineStore(engine_dir).scan()]
    if as_json:
        click.echo(json.dumps([dict(zip(_COLUMNS, r)) for r in rows], indent=1))
        return
    if not rows:
        click.echo(f"no engines in {engine_dir} (build some with: pid-trt build --backbone B --ckpt C)")
        return
    widths = [max(len(str(r[i])) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    for r in [_COLUMNS, *rows]:
        click.echo("  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths)) + "  " + str(r[-1]))


def _row(item: StoredEngine, trt_version: str | None, compute_capability: str | None) -> tuple:
    s = item.sidecar
    size = f"{item.size_bytes / 2**30:.2f} GiB"
    if s is None:
        return item.name, "-", "-", "-", "-", "-", size, item.status
    try:
        reasons = item.problems + check_compatible(s, trt_version=trt_version, compute_capability=compute_capability)
        statics = sum(p["kind"] == "static" for p in s["profiles"])
        profiles = f"{statics} static" + (" + dynamic" if len(s["profiles"]) > statics else "")
        return (item.name, f"{s['backbone']}/{s['ckpt']}", s["precision"], profiles, s["tensorrt_version"],
                s["gpu"]["compute_capability"], size, "ok" if not reasons else "; ".join(reasons))
    except (KeyError, TypeError) as e:
        return item.name, "-", "-", "-", "-", "-", size, f"malformed sidecar (no {e})"

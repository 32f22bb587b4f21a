"""`pid-trt build`: export (if needed) and build the cond + denoise TensorRT engines of one net."""
from __future__ import annotations

import pathlib

import click

from pid_trt.engines import trt
from pid_trt.engines.build import DEFAULT_ENGINE_DIR, PRECISIONS, describe_plan, detect_local, make_plan, run_build
from pid_trt.engines.profiles import parse_batch, parse_size
from pid_trt.model import read_config_file


@click.command("build")
@click.option("--backbone", help="LDM/RAE backbone (flux, flux2, sd3, sdxl, qwenimage, dinov2, siglip, …).")
@click.option("--ckpt", help="Checkpoint type: 2k, 2kto4k or 2kto4k_v1pt5 (default 2k, or the ONNX manifest's).")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Engine precision (default bf16, or the ONNX manifest's); the ONNX graph carries the types.")
@click.option("--onnx-dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="A `pid-trt export` directory; without it the net is exported under ENGINE_DIR/onnx/.")
@click.option("--shape", "shapes", multiple=True, metavar="WxH",
              help="Output size (width first) for a static profile; repeatable. Replaces the default profiles.")
@click.option("--dynamic", is_flag=True, help="A dynamic profile over the trained size range (with --shape: added).")
@click.option("--batch", default="1", show_default=True, metavar="MIN:OPT:MAX", help="Batch range of every profile.")
@click.option("--engine-dir", type=click.Path(file_okay=False, path_type=pathlib.Path), default=DEFAULT_ENGINE_DIR,
              show_default=True)
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="TensorRT timing cache file (default: per TensorRT version and GPU under ENGINE_DIR/timing-cache/).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--workspace-gb", type=click.FloatRange(min=0, min_open=True),
              help="Workspace memory-pool limit (default: TensorRT's, the device memory).")
@click.option("--net-config", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="JSON of PidNet keyword arguments overriding the backbone's net (used when exporting).")
@click.option("--force", is_flag=True, help="Rebuild even when a usable engine of the same name exists.")
@click.option("--dry-run", is_flag=True, help="Print the plan (ONNX, profiles, engine names, memory) and stop.")
def command(backbone, ckpt, precision, onnx_dir, shapes, dynamic, batch, engine_dir, timing_cache, opt_level,
            workspace_gb, net_config, force, dry_run) -> None:
    """Build TensorRT engines for PiD: one static profile per trained aspect bucket plus a dynamic fallback."""
    plan = make_plan(backbone=backbone, ckpt=ckpt, precision=precision, onnx_dir=onnx_dir,
                     shapes=[parse_size(s) for s in shapes], dynamic=dynamic, batch=parse_batch(batch),
                     engine_dir=engine_dir, timing_cache=timing_cache, opt_level=opt_level,
                     workspace_bytes=int((workspace_gb or 0) * 2**30), net_config=_read_net_config(net_config))
    if dry_run:
        trt_version, gpu = detect_local()
        click.echo("pid-trt build plan (dry run: nothing is exported or built)")
        for line in describe_plan(plan, trt_version, gpu):
            click.echo(f"  {line}")
        return
    trt.tensorrt_version()  # a missing TensorRT is the one line the user sees
    for note in ([plan.entry.note] if plan.entry.note else []) + [f"warning: {w}" for w in plan.warnings]:
        click.echo(note, err=True)
    run_build(plan, force=force, echo=click.echo)


def _read_net_config(path: pathlib.Path | None) -> dict | None:
    return None if path is None else read_config_file(path)

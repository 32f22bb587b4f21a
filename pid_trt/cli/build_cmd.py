"""`pid-trt build`: export (if needed) and build the cond + denoise TensorRT engines of one net."""
from __future__ import annotations

import click

from pid_trt.cli.options import (
    DIR,
    FILE,
    command,
    emit_json,
    json_option,
    net_config_option,
    net_options,
    note,
    result,
    size_option,
)
from pid_trt.config import DEFAULT_ENGINE_DIR, ENGINE_PRECISIONS


@command("build")
@net_options
@click.option("--precision", type=click.Choice(ENGINE_PRECISIONS),
              help="Engine precision (default bf16, or the ONNX manifest's); the ONNX graph carries the types.")
@click.option("--onnx-dir", type=DIR,
              help="A `pid-trt export` directory; without it the net is exported under ENGINE_DIR/onnx/.")
@click.option("--checkpoint", type=FILE,
              help="model_ema_bf16.pth or .safetensors: the weights to build (exported first); with --onnx-dir, "
                   "the checkpoint the export must come from.")
@click.option("--random-weights", is_flag=True,
              help="Without --checkpoint: build seeded RANDOM weights of the net's shape (engine and speed work; "
                   "engine names and listings say RANDOM).")
@size_option("--shape", multiple=True,
             help="Output size for a static profile (repeatable). Replaces the default profiles.")
@click.option("--dynamic", is_flag=True, help="A dynamic profile over the trained size range (with --size: added).")
@click.option("--batch", default="1", show_default=True, metavar="MIN:OPT:MAX",
              help="Images per decode of every profile (N, MIN:MAX or MIN:OPT:MAX); teacher checkpoints also get the "
                   "guidance batch 2N.")
@click.option("--engine-dir", type=DIR, default=DEFAULT_ENGINE_DIR, show_default=True)
@click.option("--timing-cache", type=FILE,
              help="TensorRT timing cache file (default: per TensorRT version and GPU under ENGINE_DIR/timing-cache/).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--workspace-gb", type=click.FloatRange(min=0, min_open=True),
              help="Workspace memory-pool limit (default: TensorRT's, the device memory).")
@net_config_option("JSON of PidNet keyword arguments overriding the backbone's net (used when exporting).")
@click.option("--force", is_flag=True, help="Rebuild even when a usable engine of the same name exists.")
@click.option("--dry-run", is_flag=True, help="Print the plan (ONNX, profiles, engine names, memory) and stop.")
@json_option("With --dry-run: the plan as JSON on stdout, or written to FILE.")
def command(backbone, ckpt, precision, onnx_dir, checkpoint, random_weights, sizes, dynamic, batch, engine_dir,
            timing_cache, opt_level, workspace_gb, net_config, force, dry_run, json_out) -> None:
    """Build TensorRT engines for PiD: one static profile per trained aspect bucket plus a dynamic fallback.

    The weights come from --checkpoint, an --onnx-dir export, or (--random-weights) seeded random weights."""
    from pid_trt.config import NetConfig
    from pid_trt.engines.build import run_build
    from pid_trt.engines.detect import detect_local, tensorrt_version
    from pid_trt.engines.plan import check_memory, describe_plan, make_plan, plan_json
    from pid_trt.engines.profiles import parse_batch

    plan = make_plan(backbone=backbone, ckpt=ckpt, precision=precision, onnx_dir=onnx_dir, shapes=sizes,
                     dynamic=dynamic, batch=parse_batch(batch), engine_dir=engine_dir, timing_cache=timing_cache,
                     opt_level=opt_level, workspace_bytes=int((workspace_gb or 0) * 2**30),
                     net_config=None if net_config is None else NetConfig.from_file(net_config),
                     checkpoint=checkpoint, random_weights=random_weights)
    if dry_run:
        trt_version, gpu = detect_local()
        check_memory(plan, gpu)
        result("pid-trt build plan (dry run: nothing is exported or built)", json_out)
        for line in describe_plan(plan, trt_version, gpu):
            result(f"  {line}", json_out)
        emit_json(plan_json(plan, trt_version, gpu), json_out)
        return
    tensorrt_version()  # a missing TensorRT is the one line the user sees
    for line in ([plan.entry.note] if plan.entry.note else []):
        note(line)
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    result(f"wrote {run_build(plan, force=force)}", json_out)

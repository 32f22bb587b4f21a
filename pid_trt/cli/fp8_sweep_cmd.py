"""`pid-trt fp8-sweep`: rank the FP8 Linear layers by the error they add and write the fewest to keep high."""
from __future__ import annotations

import click

from pid_trt.cli.options import command, emit_json, export_net_options, json_option, out_option, result


@command("fp8-sweep")
@export_net_options
@click.option("--mode", type=click.Choice(["quantize", "remove"]), default="quantize", show_default=True,
              help="quantize: each layer alone in FP8; remove: the full FP8 graph with that one layer kept high.")
@click.option("--target-velocity", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest velocity difference from the fp32 reference [default: fp8 parity's, 0.01].")
@click.option("--target-u8", type=click.FloatRange(min=0), default=None,
              help="Largest image difference in u8 levels [default: fp8 parity's, 2].")
@out_option(file=True, help="Write the keep-high list here (for `pid-trt export --precision fp8 --keep-high-file`).")
@json_option("The sweep report: JSON on stdout, or written to FILE.")
@click.pass_context
def command(ctx: click.Context, backbone, ckpt, net_config, checkpoint, mode, target_velocity, target_u8, out,
            json_out) -> None:
    """Measure, on the FP8 calibration decodes, the error each quantized Linear layer adds; rank the layers and
    write the smallest keep-high list meeting the target. Exit 1 when even keeping every Linear high misses it."""
    from dataclasses import replace

    from pid_trt.config import NetConfig
    from pid_trt.errors import PiDInputError
    from pid_trt.fp8_sweep import Targets
    from pid_trt.workflows.checks import run_fp8_sweep

    if net_config is None and backbone is None:
        raise PiDInputError("give --backbone (and --ckpt), or --net-config")
    targets = Targets()
    if target_velocity is not None:
        targets = replace(targets, velocity_max_abs=target_velocity)
    if target_u8 is not None:
        targets = replace(targets, u8_max_abs=target_u8)
    report = run_fp8_sweep(backbone=backbone, ckpt=ckpt, checkpoint=checkpoint, mode=mode, targets=targets,
                           net_config=None if net_config is None else NetConfig.from_file(net_config), out=out)
    full = report["full_fp8"]
    result(f"full FP8 ({report['layers']} Linear layers): velocity {full['velocity_max_abs']:.3g}, u8 max "
           f"{full['u8_max_abs']:g}, mean {full['u8_mean_abs']:.3g} (targets {targets.velocity_max_abs:g}, "
           f"{targets.u8_max_abs:g}, {targets.u8_mean_abs:g})", json_out)
    for i, row in enumerate(report["ranking"], start=1):
        result(f"{i:3d}. {row['layer']}: velocity {row['velocity_max_abs']:.3g}, u8 max {row['u8_max_abs']:g} "
               f"({mode} alone)", json_out)
    if report["keep_high"] is None:
        result("FAIL: the targets are missed even with every Linear layer kept high", json_out)
    else:
        e = report["keep_high_error"]
        result(f"keep high ({len(report['keep_high'])}): {' '.join(report['keep_high']) or '-'} -> velocity "
               f"{e['velocity_max_abs']:.3g}, u8 max {e['u8_max_abs']:g}, mean {e['u8_mean_abs']:.3g}", json_out)
        if out is not None:
            result(f"wrote {out}", json_out)
    emit_json(report, json_out)
    ctx.exit(0 if report["met"] else 1)

"""`pid-trt export`: the denoiser to ONNX (cond + denoise graphs, or one graph with --single)."""
from __future__ import annotations

import json
import pathlib

import click

from pid_trt.errors import PiDInputError


@click.command("export")
@click.option("--component", type=click.Choice(["denoiser", "text"]), default="denoiser", show_default=True,
              help="What to export: the PiD denoiser, or the Gemma-2 caption encoder (needs --text-encoder).")
@click.option("--text-encoder", type=click.Path(path_type=pathlib.Path), help="Local Gemma-2-2b-it directory.")
@click.option("--backbone", help="Backbone, e.g. flux2 (see README).")
@click.option("--ckpt", default="2k", show_default=True, help="Checkpoint type: 2k, 2kto4k, 2kto4k_v1pt5.")
@click.option("--net-config", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="Flat JSON dict of upstream PidNet kwargs (custom nets; replaces --backbone/--ckpt).")
@click.option("--checkpoint", type=click.Path(path_type=pathlib.Path),
              help="model_ema_bf16.pth or .safetensors; without it, random weights of the official shape.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "fp8"]), default="fp32", show_default=True)
@click.option("--single", is_flag=True, help="Export one graph (model.onnx) instead of cond + denoise.")
@click.option("--out", "out_dir", type=click.Path(path_type=pathlib.Path), help="Output directory "
              "[default: onnx/<backbone>_<ckpt>_<precision>].")
def command(component, text_encoder, backbone, ckpt, net_config, checkpoint, precision, single, out_dir) -> None:
    """Export the PiD denoiser (dynamic batch, height, width and text length) or the caption encoder to ONNX."""
    from pid_trt.export import export_onnx

    if component == "text":
        if text_encoder is None:
            raise PiDInputError("--component text needs --text-encoder DIR (a local Gemma-2-2b-it)")
        from pid_trt.text import CaptionEncoder, export_text_onnx

        path = export_text_onnx(CaptionEncoder.from_pretrained(text_encoder), out_dir or pathlib.Path("onnx/text"))
        click.echo(f"wrote {path} (inputs input_ids, attention_mask from CaptionEncoder.tokenize; output y)")
        return

    from pid_trt.model import read_config_file

    cfg = None if net_config is None else read_config_file(net_config)
    if cfg is None and backbone is None:
        raise PiDInputError("give --backbone (and --ckpt), or --net-config")
    if out_dir is None:
        out_dir = pathlib.Path("onnx") / (f"{backbone}_{ckpt}_{precision}" if cfg is None else
                                          f"{net_config.stem}_{precision}")
    if backbone is not None and cfg is None:
        from pid_trt.registry import resolve

        note = resolve(backbone, ckpt).note
        if note:
            click.echo(f"note: {note}", err=True)
    out = export_onnx(out_dir, backbone=backbone, ckpt=ckpt, net_config=cfg, checkpoint=checkpoint,
                      precision=precision, single=single, log=lambda s: click.echo(s, err=True))
    manifest = json.loads((out / "manifest.json").read_text())
    for name, g in manifest["graphs"].items():
        click.echo(f"{name}: {g['file']} ({g['nodes_before_slim']} → {g['nodes_after_slim']} nodes after onnxslim)")
    click.echo(f"wrote {out} in {manifest['export_seconds']} s")

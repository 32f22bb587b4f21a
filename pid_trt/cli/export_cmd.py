"""`pid-trt export`: the denoiser to ONNX (cond + denoise graphs, or one graph with --single), or the text encoder."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.options import DIR, FILE, command, emit_json, export_net_options, json_option, note, out_option, result
from pid_trt.config import EXPORT_PRECISIONS


@command("export")
@click.option("--component", type=click.Choice(["denoiser", "text"]), default="denoiser", show_default=True,
              help="What to export: the PiD denoiser, or the Gemma-2 caption encoder (needs --text-encoder).")
@click.option("--text-encoder", type=DIR, help="Local gemma-2-2b-it directory.")
@export_net_options
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="fp32", show_default=True)
@click.option("--keep-high", multiple=True, metavar="LAYER",
              help="fp8: keep this Linear layer (module name, e.g. patch_blocks.3.mlp_x.w2) unquantized (repeatable).")
@click.option("--keep-high-file", type=FILE,
              help="fp8: a file of such layer names, one per line (`pid-trt fp8-sweep --out` writes one).")
@click.option("--single", is_flag=True, help="Export one graph (model.onnx) instead of cond + denoise.")
@out_option(help="Output directory [default: onnx/<backbone>_<ckpt>_<precision>].")
@json_option("The written manifest as JSON on stdout, or copied to FILE.")
def command(component, text_encoder, backbone, ckpt, net_config, checkpoint, precision, keep_high, keep_high_file,
            single, out, json_out) -> None:
    """Export the PiD denoiser (dynamic batch, height, width and text length) or the caption encoder to ONNX."""
    from pid_trt.config import NetConfig
    from pid_trt.errors import PiDInputError

    if component == "text":
        if text_encoder is None:
            raise PiDInputError("--component text needs --text-encoder DIR (a local gemma-2-2b-it)")
        from pid_trt.text import CaptionEncoder, export_text_onnx

        path = export_text_onnx(CaptionEncoder.from_pretrained(text_encoder), out or pathlib.Path("onnx/text"))
        result(f"wrote {path} (inputs input_ids, attention_mask from CaptionEncoder.tokenize; output y)", json_out)
        return

    from pid_trt.export import export_onnx, read_manifest
    from pid_trt.registry import resolve

    config = None if net_config is None else NetConfig.from_file(net_config)
    if config is None and backbone is None:
        raise PiDInputError("give --backbone (and --ckpt), or --net-config")
    ckpt = ckpt or "2k"
    if out is None:
        out = pathlib.Path("onnx") / (f"{backbone}_{ckpt}_{precision}" if config is None else
                                      f"{net_config.stem}_{precision}")
    if backbone is not None and config is None and (entry_note := resolve(backbone, ckpt).note):
        note(entry_note)
    if keep_high_file is not None:
        from pid_trt.fp8_sweep import read_layer_list

        keep_high = (*keep_high, *read_layer_list(keep_high_file))
    out = export_onnx(out, backbone=backbone, ckpt=ckpt, net_config=config, checkpoint=checkpoint,
                      precision=precision, single=single, keep_high=keep_high)
    manifest = read_manifest(out)
    for name, g in manifest["graphs"].items():
        result(f"{name}: {g['file']} ({g['nodes_before_slim']} → {g['nodes_after_slim']} nodes after onnxslim)",
               json_out)
        if g.get("fp8"):
            result(f"{name}: FP8 on {len(g['fp8']['layers'])} Linear layers, {len(g['fp8']['keep_high'])} kept high",
                   json_out)
    result(f"wrote {out} in {manifest['export_seconds']} s", json_out)
    emit_json(manifest, json_out)

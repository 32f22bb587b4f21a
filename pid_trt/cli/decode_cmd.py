"""`pid-trt decode`: latents (safetensors) → images, on any backend; shards round-robin under torchrun."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.options import (
    PATH,
    caption_options,
    command,
    decoder_options,
    emit_json,
    format_option,
    json_option,
    open_decoder_from,
    out_option,
    result,
    sampler_options,
    source_from,
)


@command("decode")
@decoder_options
@click.option("--latents", required=True, type=PATH,
              help="safetensors with lq_latent [B,C,h,w] (+ optional degrade_sigma [B]), or a folder of them.")
@caption_options
@click.option("--caption", help="Caption text for every latent (needs --text-encoder; embeddings are cached).")
@click.option("--sigma", type=click.FloatRange(0, 1), default=None,
              help="degrade σ for every latent [default: from the file, else 0].")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Sample i uses seed + i (its global index).")
@sampler_options
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@out_option(pathlib.Path("results/pid_decode"), "Output directory.")
@format_option
@click.option("--baseline-vae", type=PATH, help="Local diffusers VAE directory: also write the native-VAE decode.")
@json_option("Print the summary as JSON on stdout, or write it to FILE.")
def command(latents: pathlib.Path, caption_embedding: pathlib.Path | None, text_encoder: pathlib.Path | None,
            caption: str | None, sigma: float | None, seed: int, steps: int | None, cfg: float | None,
            shift: float | None, negative_embedding: pathlib.Path | None, batch_size: int, out: pathlib.Path, fmt: str,
            baseline_vae: pathlib.Path | None, json_out: str | None, **source) -> None:
    """Decode latents into images with PiD (student or teacher checkpoints)."""
    from pid_trt.errors import PiDInputError
    from pid_trt.workflows.decode import decode_latents, load_captions, my_share, preflight
    from pid_trt.workflows.inputs import read_latents
    from pid_trt.workflows.sources import check_one_source

    check_one_source(source["engine_dir"], source["onnx_dir"], source["checkpoint"], source["tiny"])
    if caption is not None and caption_embedding is not None:
        raise PiDInputError("give either --caption-embedding FILE or --caption TEXT (with --text-encoder)")
    if caption is not None and text_encoder is None:
        raise PiDInputError("--caption needs --text-encoder DIR (a local gemma-2-2b-it)")
    if caption is None and caption_embedding is None:
        raise PiDInputError("give either --caption-embedding FILE or --caption TEXT (with --text-encoder)")
    samples = read_latents(latents, sigma)
    mine = my_share(len(samples))
    info = preflight(samples, mine, batch_size, baseline_vae, **source_from(source))  # before anything large
    options = info.options(steps, cfg, shift)
    captions, negative = load_captions([caption] * len(samples), mine, caption_embedding=caption_embedding,
                                       text_encoder=text_encoder, negative_embedding=negative_embedding,
                                       teacher=options.sampler == "teacher")
    decoder = open_decoder_from(source)
    summary, path = decode_latents(decoder, samples, captions, out_dir=out, options=options, seed=seed,
                                   negative=negative, batch_size=batch_size, fmt=fmt, baseline_vae=baseline_vae)
    result(f"wrote {len(summary['images'])} image(s) to {out / summary['tag']} and {path}", json_out)
    emit_json(summary, json_out)

"""`pid-trt reconstruct`: images → VAE latent → noise at σ → PiD and the VAE, with PSNR/SSIM and latent consistency."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.options import (
    DIR,
    FILE,
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


@command("reconstruct")
@click.option("--vae", "vae_dir", required=True, type=DIR, help="Local diffusers VAE directory of the backbone.")
@click.option("--image", type=FILE, help="One input image.")
@click.option("--manifest", type=FILE, help='JSONL, one {"image": path, "prompt"?: text} per line.')
@click.option("--caption", help="Caption for --image, and for manifest lines without a prompt (needs --text-encoder).")
@click.option("--sigma", "sigmas", type=click.FloatRange(0, 1), multiple=True,
              help="Latent noise level in [0, 1] (repeatable) [default 0].")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=5, show_default=True,
              help="Sample i uses seed + i (latent noise and PiD).")
@decoder_options
@caption_options
@sampler_options
@format_option
@out_option(help="Output directory [default: results/official_demo_from_clean/<backbone>].")
@json_option("Print the summary as JSON on stdout, or write it to FILE.")
def command(vae_dir, image, manifest, caption, sigmas, seed, caption_embedding, text_encoder, steps, cfg, shift,
            negative_embedding, fmt, out, json_out, **source) -> None:
    """Image → VAE → PiD (upstream's from_clean), scored against the input."""
    from pid_trt.atomic import check_writable
    from pid_trt.errors import PiDInputError
    from pid_trt.vae import load_vae
    from pid_trt.workflows.decode import load_captions, output_tag, weights_summary, write_summary
    from pid_trt.workflows.reconstruct import Sample, check_sigmas, mean_metrics, preflight, read_manifest, reconstruct

    if (image is None) == (manifest is None):
        raise PiDInputError("give either --image FILE or --manifest FILE.jsonl")
    if image is not None and not image.is_file():
        raise PiDInputError(f"image {image} does not exist")
    if source["backbone"] is None:
        raise PiDInputError("reconstruct needs --backbone (the VAE's family)")
    backbone = source["backbone"]
    sigmas = check_sigmas(sigmas or (0.0,))
    samples = [Sample(image.stem, image, caption)] if image is not None else read_manifest(manifest, caption)
    # fail before loading anything large
    out = out or pathlib.Path("results/official_demo_from_clean") / backbone
    check_writable(out)
    indices, _, options = preflight(vae_dir, samples, steps, cfg, shift, **source_from(source))
    captions, negative = load_captions([s.caption for s in samples], indices, caption_embedding=caption_embedding,
                                       text_encoder=text_encoder, negative_embedding=negative_embedding,
                                       teacher=options.sampler == "teacher")
    decoder = open_decoder_from(source)
    vae = load_vae(vae_dir, device=decoder.backend.device)
    records = reconstruct(vae, decoder, samples, captions, backbone=backbone, out_dir=out, sigmas=sigmas, seed=seed,
                          indices=indices, fmt=fmt, options=options, negative_embedding=negative)
    means = mean_metrics(records)
    tag = output_tag(decoder, options, backbone)
    summary = {"backbone": backbone, "manifest": str(manifest) if manifest else None, "vae": str(vae_dir),
               "backend": decoder.backend.name,
               "device": str(decoder.backend.device), "ckpt": getattr(decoder.entry, "ckpt", None),
               "weights": weights_summary(decoder),
               "sampler": options.sampler, "pid_steps": options.steps, "cfg": options.cfg, "tag": tag, "seed": seed,
               "metric_notes": "PiD output area-downsampled to the input size; PSNR/SSIM on [0, 1] RGB; latent "
                               "MSE/cosine of the re-encoded decode against the clean input latent",
               "mean": means, "samples": records}
    path = write_summary(out, summary)
    for label, by in means.items():
        result(f"{label}: PiD PSNR {by['pid']['psnr']:.2f} SSIM {by['pid']['ssim']:.4f} | "
               f"VAE PSNR {by['vae']['psnr']:.2f} SSIM {by['vae']['ssim']:.4f}", json_out)
    result(f"wrote {len(records)} sample(s) to {out / tag} and {path}", json_out)
    emit_json(summary, json_out)

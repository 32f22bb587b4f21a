"""`pid-trt reconstruct`: images → VAE latent → noise at σ → PiD and the VAE, with PSNR/SSIM and latent consistency."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.generate_cmd import PATH, decoder_options, load_captions, open_decoder, write_summary
from pid_trt.errors import PiDInputError


@click.command("reconstruct")
@click.option("--vae", "vae_dir", required=True, type=PATH, help="Local diffusers VAE directory of the backbone.")
@click.option("--image", type=PATH, help="One input image.")
@click.option("--manifest", type=PATH, help='JSONL, one {"image": path, "prompt"?: text} per line.')
@click.option("--caption", help="Caption for --image, and for manifest lines without a prompt (needs --text-encoder).")
@click.option("--sigma", "sigmas", type=float, multiple=True, help="Latent noise level in [0, 1] (repeatable) [default 0].")
@click.option("--seed", type=int, default=5, show_default=True, help="Sample i uses seed + i (latent noise and PiD).")
@decoder_options
@click.option("--out", "out_dir", type=PATH, default=None,
              help="[default: results/official_demo_from_clean/<backbone>]")
def command(vae_dir, image, manifest, caption, sigmas, seed, out_dir, **opts) -> None:
    """Image → VAE → PiD (upstream's from_clean), scored against the input."""
    from pid_trt.cli.decode_cmd import world
    from pid_trt.vae import load_vae
    from pid_trt.workflows.common import output_tag, pid_settings
    from pid_trt.workflows.reconstruct import Sample, check_sigmas, mean_metrics, read_manifest, reconstruct

    if (image is None) == (manifest is None):
        raise PiDInputError("give either --image FILE or --manifest FILE.jsonl")
    if image is not None and not image.is_file():
        raise PiDInputError(f"image {image} does not exist")
    sigmas = check_sigmas(sigmas or (0.0,))
    samples = [Sample(image.stem, image, caption)] if image is not None else read_manifest(manifest, caption)
    dec = open_decoder(opts)
    rank, world_size = world()
    indices = list(range(rank, len(samples), world_size))
    captions, negative = load_captions(opts, [s.caption for s in samples], indices, dec.sampler == "teacher")
    vae = load_vae(vae_dir, device=dec.backend.device)
    steps, cfg = pid_settings(dec, opts["pid_steps"], opts["cfg"])
    tag = output_tag(opts["backbone"], dec, steps, cfg, opts["shift"])
    out_dir = out_dir or pathlib.Path("results/official_demo_from_clean") / opts["backbone"]
    records = reconstruct(vae, dec, samples, captions, backbone=opts["backbone"], out_dir=out_dir, tag=tag,
                          sigmas=sigmas, seed=seed, indices=indices, fmt=opts["fmt"], pid_steps=steps,
                          cfg=opts["cfg"], shift=opts["shift"], negative_embedding=negative)
    means = mean_metrics(records)
    summary = {"backbone": opts["backbone"], "vae": str(vae_dir), "backend": dec.backend.name,
               "device": str(dec.backend.device), "ckpt": getattr(dec.entry, "ckpt", None), "sampler": dec.sampler,
               "pid_steps": steps, "cfg": cfg, "tag": tag, "seed": seed, "rank": rank, "world_size": world_size,
               "metric_notes": "PiD output area-downsampled to the input size; PSNR/SSIM on [0, 1] RGB; latent "
                               "MSE/cosine of the re-encoded decode against the clean input latent",
               "mean": means, "samples": records}
    path = write_summary(out_dir, summary, rank, world_size)
    for label, by in means.items():
        click.echo(f"{label}: PiD PSNR {by['pid']['psnr']:.2f} SSIM {by['pid']['ssim']:.4f} | "
                   f"VAE PSNR {by['vae']['psnr']:.2f} SSIM {by['vae']['ssim']:.4f}")
    click.echo(f"wrote {len(records)} sample(s) to {out_dir / tag} and {path}")

"""`pid-trt generate`: prompts → local diffusers LDM → PiD and the pipeline's VAE; round-robin under torchrun."""
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
    size_option,
    source_from,
)


@command("generate")
@click.option("--model-dir", required=True, type=DIR, help="Local diffusers pipeline directory (no downloads).")
@click.option("--prompt", help="One prompt.")
@click.option("--prompt-file", type=FILE, help="One prompt per non-empty line; its line index names the files.")
@size_option("--resolution", default="2048x2048",
             help="Final PiD size, width first (WxH, W,H or N); the LDM runs at size / sr_scale.")
@click.option("--ldm-steps", type=click.IntRange(min=1), default=None,
              help="LDM steps [default: the backbone's, e.g. flux 28].")
@click.option("--guidance-scale", type=float, default=None, help="LDM guidance [default: the backbone's].")
@click.option("--save-xt-steps", type=click.IntRange(min=1), multiple=True,
              help="Also decode x_t after K LDM steps (repeatable).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Prompt i uses seed + i (LDM and PiD).")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default=None,
              help="LDM dtype [default: bf16 on CUDA, fp32 on CPU].")
@decoder_options
@caption_options
@sampler_options
@format_option
@out_option(help="Output directory [default: results/official_demo/<backbone>].")
@json_option("Print the summary as JSON on stdout, or write it to FILE.")
def command(model_dir, prompt, prompt_file, size, ldm_steps, guidance_scale, save_xt_steps, seed, dtype,
            caption_embedding, text_encoder, steps, cfg, shift, negative_embedding, fmt, out, json_out,
            **source) -> None:
    """Text → diffusers LDM → PiD, beside the pipeline's own VAE decode (upstream's from_ldm)."""
    import torch

    from pid_trt.atomic import check_writable
    from pid_trt.errors import PiDInputError
    from pid_trt.workflows.decode import load_captions, output_tag, weights_summary, write_summary
    from pid_trt.workflows.generate import generate, ldm_settings, load_pipeline, preflight
    from pid_trt.workflows.inputs import read_prompt_file

    if (prompt is None) == (prompt_file is None):
        raise PiDInputError("give either --prompt TEXT or --prompt-file FILE")
    if source["backbone"] is None:
        raise PiDInputError("generate needs --backbone (the LDM's family)")
    if not model_dir.is_dir():
        raise PiDInputError(f"model directory {model_dir} does not exist; pass a local diffusers pipeline folder")
    prompts = [prompt] if prompt is not None else read_prompt_file(prompt_file)
    backbone = source["backbone"]
    # fail before loading anything large
    out = out or pathlib.Path("results/official_demo") / backbone
    check_writable(out)
    ldm_steps, guidance_scale = ldm_settings(backbone, ldm_steps, guidance_scale, save_xt_steps)
    indices, _, options = preflight(model_dir, len(prompts), size, steps, cfg, shift, **source_from(source))
    captions, negative = load_captions(prompts, indices, caption_embedding=caption_embedding,
                                       text_encoder=text_encoder, negative_embedding=negative_embedding,
                                       teacher=options.sampler == "teacher")
    decoder = open_decoder_from(source)
    pipe = load_pipeline(model_dir, backbone, decoder.backend.device,
                         {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype))
    records = generate(pipe, decoder, prompts, captions, backbone=backbone, out_dir=out, resolution=size,
                       ldm_steps=ldm_steps, guidance_scale=guidance_scale, save_xt_steps=sorted(set(save_xt_steps)),
                       seed=seed, indices=indices, fmt=fmt, options=options, negative_embedding=negative,
                       prompt_file=prompt_file)
    tag = output_tag(decoder, options, backbone)
    summary = {"backbone": backbone, "model_dir": str(model_dir), "pipeline": type(pipe).__name__,
               "backend": decoder.backend.name, "device": str(decoder.backend.device),
               "ckpt": getattr(decoder.entry, "ckpt", None), "weights": weights_summary(decoder),
               "sampler": options.sampler, "pid_steps": options.steps,
               "cfg": options.cfg, "tag": tag, "resolution_wxh": list(size), "seed": seed, "prompts": records}
    path = write_summary(out, summary)
    result(f"wrote {len(records)} prompt(s) to {out / tag} and {path}", json_out)
    emit_json(summary, json_out)

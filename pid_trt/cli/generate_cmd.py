"""`pid-trt generate`: prompts → local diffusers LDM → PiD and the pipeline's VAE; round-robin under torchrun."""
from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Sequence

import click
import torch

from pid_trt.errors import PiDInputError

PATH = click.Path(path_type=pathlib.Path)


def decoder_options(f: Callable) -> Callable:
    """The PiD decoder and caption options `generate` and `reconstruct` share with `decode`."""
    options = [
        click.option("--backbone", required=True, help="LDM / VAE backbone: flux, sd3, sdxl, flux2, zimage, ..."),
        click.option("--ckpt", default=None, help="PiD checkpoint type: 2k, 2kto4k, 2kto4k_v1pt5 [default: 2k]."),
        click.option("--engine-dir", type=PATH, help="TensorRT engines (pid-trt build)."),
        click.option("--onnx-dir", type=PATH, help="ONNX export (pid-trt export)."),
        click.option("--checkpoint", type=PATH, help="model_ema_bf16.pth (torch backend)."),
        click.option("--tiny", is_flag=True, hidden=True, help="A tiny seeded random PiD net (tests, dry runs)."),
        click.option("--caption-embedding", type=PATH, help="safetensors with y [1 or N, L, D] (pid-trt embed)."),
        click.option("--text-encoder", type=PATH, help="Local Gemma-2-2b-it directory (embeddings are cached)."),
        click.option("--negative-embedding", type=PATH, help="Teacher checkpoints: y of the negative prompt."),
        click.option("--steps", "pid_steps", type=int, default=None, help="PiD steps [default: 4; teachers 25]."),
        click.option("--cfg", type=float, default=None, help="Teacher checkpoints: PiD guidance [default 5]."),
        click.option("--shift", type=float, default=None, help="Teacher checkpoints: time shift [default: dynamic]."),
        click.option("--backend", type=click.Choice(["tensorrt", "onnxruntime", "torch"]), default=None),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when available]."),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
                     help="torch backend: bf16 mirrors upstream's autocast."),
        click.option("--no-cuda-graph", is_flag=True, help="Run PiD eagerly instead of replaying CUDA graphs."),
        click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="jpg", show_default=True),
    ]
    return functools.reduce(lambda g, option: option(g), reversed(options), f)


def open_decoder(opts: dict):
    from pid_trt.workflows.common import open_decoder as _open

    dec = _open(engine_dir=opts["engine_dir"], onnx_dir=opts["onnx_dir"], checkpoint=opts["checkpoint"],
                tiny=opts["tiny"], backbone=opts["backbone"], ckpt=opts["ckpt"], backend=opts["backend"],
                device=opts["device"], precision=opts["precision"], cuda_graph=not opts["no_cuda_graph"])
    if dec.entry is not None and dec.entry.note:
        click.echo(f"note: {dec.entry.note}", err=True)
    return dec


def load_captions(opts: dict, captions: Sequence[str | None], indices: Sequence[int], teacher: bool):
    """(caption embeddings by global index, negative embedding or None) from --caption-embedding or by encoding
    the samples' captions with --text-encoder (only this rank's, cached)."""
    from pid_trt.cli.decode_cmd import load_safetensors
    from pid_trt.workflows.common import check_captions

    if (opts["caption_embedding"] is None) == (opts["text_encoder"] is None):
        raise PiDInputError("give either --caption-embedding FILE or --text-encoder DIR (to encode the captions)")
    negative = None
    if opts["negative_embedding"] is not None:
        negative = load_safetensors(opts["negative_embedding"], "negative embedding").get("y")
        if negative is None:
            raise PiDInputError(f"{opts['negative_embedding']} has no 'y' tensor")
    if opts["caption_embedding"] is not None:
        y = load_safetensors(opts["caption_embedding"], "caption embedding").get("y")
        if y is None:
            raise PiDInputError(f"{opts['caption_embedding']} has no 'y' tensor")
        check_captions(y, len(captions))
        return y, negative
    missing = [i for i in indices if not captions[i]]
    if missing:
        raise PiDInputError(f"sample {missing[0]} has no caption: give --caption (or a manifest prompt)")
    from pid_trt.text import NEGATIVE_PROMPT, CaptionEncoder, EmbeddingCache

    encoder = CaptionEncoder.from_pretrained(opts["text_encoder"])
    cache = EmbeddingCache()
    rows = encoder.encode_cached([captions[i] for i in indices], cache) if indices else torch.empty(0)
    if teacher and negative is None:
        negative = encoder.encode_cached([NEGATIVE_PROMPT], cache)
    return dict(zip(indices, rows)), negative


def read_prompts(prompt: str | None, prompt_file: pathlib.Path | None) -> list[str]:
    if (prompt is None) == (prompt_file is None):
        raise PiDInputError("give either --prompt TEXT or --prompt-file FILE")
    if prompt is not None:
        return [prompt]
    if not prompt_file.is_file():
        raise PiDInputError(f"prompt file {prompt_file} does not exist")
    prompts = [line.strip() for line in prompt_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise PiDInputError(f"prompt file {prompt_file} has no prompts (one per non-empty line)")
    return prompts


def write_summary(out_dir: pathlib.Path, summary: dict, rank: int, world_size: int) -> pathlib.Path:
    from pid_trt.images import atomic_write_json

    path = out_dir / ("summary.json" if world_size == 1 else f"summary.rank{rank}.json")
    atomic_write_json(path, summary)
    return path


@click.command("generate")
@click.option("--model-dir", required=True, type=PATH, help="Local diffusers pipeline directory (no downloads).")
@click.option("--prompt", help="One prompt.")
@click.option("--prompt-file", type=PATH, help="One prompt per non-empty line; its line index names the files.")
@click.option("--resolution", default="2048x2048", show_default=True,
              help="Final PiD size: N, WxH or W,H (width first); the LDM runs at size / sr_scale.")
@click.option("--ldm-steps", type=int, default=None, help="LDM steps [default: the backbone's, e.g. flux 28].")
@click.option("--guidance-scale", type=float, default=None, help="LDM guidance [default: the backbone's].")
@click.option("--save-xt-steps", type=int, multiple=True, help="Also decode x_t after K LDM steps (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Prompt i uses seed + i (LDM and PiD).")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default=None,
              help="LDM dtype [default: bf16 on CUDA, fp32 on CPU].")
@decoder_options
@click.option("--out", "out_dir", type=PATH, default=None, help="[default: results/official_demo/<backbone>]")
def command(model_dir, prompt, prompt_file, resolution, ldm_steps, guidance_scale, save_xt_steps, seed, dtype,
            out_dir, **opts) -> None:
    """Text → diffusers LDM → PiD, beside the pipeline's own VAE decode (upstream's from_ldm)."""
    from pid_trt.cli.decode_cmd import world
    from pid_trt.workflows.common import output_tag, pid_settings
    from pid_trt.workflows.generate import generate, ldm_settings, ldm_size, load_pipeline, parse_resolution

    prompts = read_prompts(prompt, prompt_file)
    size = parse_resolution(resolution)
    if not model_dir.is_dir():
        raise PiDInputError(f"model directory {model_dir} does not exist; pass a local diffusers pipeline folder")
    dec = open_decoder(opts)
    # fail before loading anything large
    ldm_steps, guidance_scale = ldm_settings(opts["backbone"], ldm_steps, guidance_scale, save_xt_steps)
    ldm_size(opts["backbone"], size, dec.net_config["sr_scale"])
    rank, world_size = world()
    indices = list(range(rank, len(prompts), world_size))
    captions, negative = load_captions(opts, prompts, indices, dec.sampler == "teacher")
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
    pipe = load_pipeline(model_dir, opts["backbone"], dec.backend.device, torch_dtype)
    steps, cfg = pid_settings(dec, opts["pid_steps"], opts["cfg"])
    tag = output_tag(opts["backbone"], dec, steps, cfg, opts["shift"])
    out_dir = out_dir or pathlib.Path("results/official_demo") / opts["backbone"]
    records = generate(pipe, dec, prompts, captions, backbone=opts["backbone"], out_dir=out_dir, tag=tag,
                       resolution=size, ldm_steps=ldm_steps, guidance_scale=guidance_scale,
                       save_xt_steps=sorted(set(save_xt_steps)), seed=seed, indices=indices, fmt=opts["fmt"],
                       pid_steps=steps, cfg=opts["cfg"], shift=opts["shift"], negative_embedding=negative)
    summary = {"backbone": opts["backbone"], "model_dir": str(model_dir), "pipeline": type(pipe).__name__,
               "backend": dec.backend.name, "device": str(dec.backend.device), "ckpt": getattr(dec.entry, "ckpt", None),
               "sampler": dec.sampler, "pid_steps": steps, "cfg": cfg, "tag": tag, "resolution_wxh": list(size),
               "seed": seed, "rank": rank, "world_size": world_size, "prompts": records}
    path = write_summary(out_dir, summary, rank, world_size)
    click.echo(f"wrote {len(records)} prompt(s) to {out_dir / tag} and {path}")

"""`pid-trt embed`: captions -> PiD caption embeddings y [B, L, hidden] fp32 in a safetensors file."""
from __future__ import annotations

import json
import pathlib

import click
import torch

from pid_trt.errors import PiDInputError
from pid_trt.text import TEXT_LENGTH, CaptionEncoder, EmbeddingCache, save_safetensors_atomic

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _read_prompt_file(path: str) -> list[str]:
    try:
        lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PiDInputError(f"cannot read prompt file {path}: {e.strerror or e}") from None
    return [line for line in lines if line.strip()]


@click.command("embed")
@click.argument("prompts", nargs=-1)
@click.option("--text-encoder", "text_encoder", required=True, metavar="DIR", help="Local gemma-2-2b-it directory (HF format).")
@click.option("--prompt-file", metavar="FILE", help="Text file with one prompt per line (blank lines skipped); added after PROMPTS.")
@click.option("--max-length", default=TEXT_LENGTH, show_default=True, help="Text length L of the net.")
@click.option("--dtype", type=click.Choice(sorted(_DTYPES)), default="bfloat16", show_default=True,
              help="Encoder compute dtype (upstream: bfloat16); y is always saved as float32.")
@click.option("--device", default=None, help="Torch device for the encoder [default: cuda if available, else cpu].")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
@click.option("--cache-dir", default=None, metavar="DIR",
              help="Embedding cache [default: $PID_TRT_CACHE/captions, else ~/.cache/pid-trt/captions].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the embedding cache.")
def command(prompts, text_encoder, prompt_file, max_length, dtype, device, output, cache_dir, no_cache) -> None:
    """Encode PROMPTS with Gemma-2 exactly as PiD does; write `y` [B, L, hidden] float32 to OUTPUT.

    Each prompt is encoded on its own and cached per prompt, keyed by the encoder files' sha256.
    """
    prompts = list(prompts) + (_read_prompt_file(prompt_file) if prompt_file else [])
    if not prompts:
        raise PiDInputError("no prompts given; pass them as arguments or with --prompt-file")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = CaptionEncoder.from_pretrained(text_encoder, max_length=max_length, dtype=_DTYPES[dtype], device=device)
    if no_cache:
        y, cached = encoder.encode_each(prompts), 0
    else:
        cache = EmbeddingCache(cache_dir)
        y, cached = encoder.encode_cached(prompts, cache), cache.hits
    metadata = {"prompts": json.dumps(prompts), "text_length": str(max_length), "encoder_dtype": dtype}
    pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic({"y": y}, output, metadata)
    click.echo(f"wrote {output}: y {list(y.shape)} float32 for {len(prompts)} prompt(s) ({cached} cache hits)")

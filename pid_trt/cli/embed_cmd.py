"""`pid-trt embed`: captions → PiD caption embeddings y [B, L, hidden] fp32 in a safetensors file."""
from __future__ import annotations

import click

from pid_trt.cli.options import DIR, FILE, command, out_option, result

_DTYPES = ("bfloat16", "float32")


@command("embed")
@click.argument("prompts", nargs=-1)
@click.option("--text-encoder", required=True, type=DIR, help="Local gemma-2-2b-it directory (HF format).")
@click.option("--prompt-file", type=FILE, help="One prompt per non-empty line; added after PROMPTS.")
@click.option("--max-length", type=click.IntRange(min=2), default=300, show_default=True,
              help="Text length L of the net.")
@click.option("--dtype", type=click.Choice(_DTYPES), default="bfloat16", show_default=True,
              help="Encoder compute dtype (upstream: bfloat16); y is always saved as float32.")
@click.option("--device", default=None, help="Torch device for the encoder [default: cuda if available, else cpu].")
@out_option(file=True, aliases=("--output",), help="Output .safetensors file.")
@click.option("--cache-dir", type=DIR,
              help="Embedding cache [default: $PID_TRT_CACHE/captions, else ~/.cache/pid-trt/captions].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the embedding cache.")
def command(prompts, text_encoder, prompt_file, max_length, dtype, device, out, cache_dir, no_cache) -> None:
    """Encode PROMPTS with Gemma-2 exactly as PiD does; write `y` [B, L, hidden] float32 to --out.

    Each prompt is encoded on its own and cached per prompt, keyed by the encoder files' sha256.
    """
    from pid_trt.errors import PiDInputError
    from pid_trt.runtime.device import resolve_device
    from pid_trt.text import embed_prompts
    from pid_trt.workflows.inputs import read_prompt_file

    if out is None:
        raise PiDInputError("give --out FILE.safetensors for the embeddings")
    prompts = list(prompts) + (read_prompt_file(prompt_file) if prompt_file else [])
    if not prompts:
        raise PiDInputError("no prompts given; pass them as arguments or with --prompt-file")
    y, hits = embed_prompts(prompts, text_encoder, out, max_length=max_length, dtype=dtype,
                            device=str(resolve_device(device)),
                            cache_dir=None if no_cache else cache_dir, use_cache=not no_cache)
    result(f"wrote {out}: y {list(y.shape)} float32 for {len(prompts)} prompt(s) ({hits} cache hits)")

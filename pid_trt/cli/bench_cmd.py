"""`pid-trt bench`: decode latency per backend, size and batch, with the speedup between backends of one run."""
from __future__ import annotations

import click

from pid_trt.cli.options import command, emit_json, json_option, result, size_option, source_options
from pid_trt.config import BACKENDS


@command("bench")
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS),
              help="Backend to time (repeatable; the first is the speedup baseline) [default: what the source "
                   "implies; torch for a tiny net].")
@source_options
@size_option(multiple=True, help="Output size (repeatable) [default: a 4x6 latent].")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), help="Batch size (repeatable) [default 1].")
@click.option("--steps", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed decodes first (CUDA-graph capture).")
@click.option("--iters", type=click.IntRange(min=1), default=10, show_default=True, help="Timed decodes.")
@click.option("--text-len", type=click.IntRange(min=1), default=None, help="Caption tokens [default: the net's maximum].")
@click.option("--no-cuda-graph", is_flag=True, help="Time eager decodes instead of CUDA-graph replays.")
@json_option("All rows: JSON on stdout, or written to FILE.")
def command(backends, sizes, batches, steps, warmup, iters, text_len, no_cuda_graph, json_out, **source) -> None:
    """Time whole decodes (warm-up, then p50/p90, images/s, peak memory, TFLOP/s)."""
    from pid_trt.bench import table
    from pid_trt.workflows.checks import run_bench

    rows = run_bench(backends=backends, sizes=sizes, batches=batches, steps=steps, warmup=warmup, iters=iters,
                     text_len=text_len, cuda_graph=not no_cuda_graph, **source)
    result(table(rows), json_out)
    emit_json({"rows": rows}, json_out)

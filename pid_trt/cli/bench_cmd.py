"""`pid-trt bench`: decode latency per backend, size and batch, with the speedup between backends of one run."""
from __future__ import annotations

import pathlib

import click

from pid_trt.cli.parity_cmd import Sources, source_options
from pid_trt.engines.profiles import parse_size


@click.command("bench")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["tensorrt", "onnxruntime", "torch"]),
              help="Backend to time (repeatable; the first is the speedup baseline) [default: what the source "
                   "implies; torch for a tiny net].")
@source_options
@click.option("--size", "sizes", multiple=True, help="Output WxH, e.g. 256x384 (repeatable) [default: a 4x6 latent].")
@click.option("--batch", "batches", multiple=True, type=int, help="Batch size (repeatable) [default 1].")
@click.option("--steps", type=int, default=4, show_default=True)
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed decodes first (CUDA-graph capture).")
@click.option("--iters", type=int, default=10, show_default=True, help="Timed decodes.")
@click.option("--text-len", type=int, default=None, help="Caption tokens [default: the net's maximum].")
@click.option("--no-cuda-graph", is_flag=True, help="Time eager decodes instead of CUDA-graph replays.")
@click.option("--json", "json_path", type=click.Path(path_type=pathlib.Path), help="Write all rows as JSON here.")
def command(backends, engine_dir, onnx_dir, checkpoint, backbone, ckpt, tiny_structure, tiny_seed, tiny_init,
            tiny_override, device, precision, compile_, sizes, batches, steps, warmup, iters, text_len, no_cuda_graph,
            json_path) -> None:
    """Time whole decodes (warm-up, then p50/p90, images/s, peak memory, TFLOP/s)."""
    from pid_trt.bench import add_ratios, bench_decoder, table
    from pid_trt.errors import PiDInputError
    from pid_trt.images import atomic_write_json

    if warmup < 0 or iters < 1:
        raise PiDInputError("--warmup must be >= 0 and --iters >= 1")
    if any(b < 1 for b in batches):
        raise PiDInputError("--batch must be at least 1")
    sources = Sources(engine_dir=engine_dir, onnx_dir=onnx_dir, checkpoint=checkpoint, backbone=backbone, ckpt=ckpt,
                      tiny_structure=tiny_structure, tiny_seed=tiny_seed, tiny_init=tiny_init,
                      tiny_override=tiny_override, device=device, precision=precision, compile_=compile_,
                      random_reference=True)
    rows = []
    try:
        for backend in backends or (None,):
            decoder = sources.decoder(backend, cuda_graph=not no_cuda_graph)
            k = decoder.net_config["latent_spatial_down_factor"] * decoder.net_config["sr_scale"]
            for size in [parse_size(s) for s in sizes] or [(6 * k, 4 * k)]:
                for batch in batches or (1,):
                    row = bench_decoder(decoder, size, batch, steps, warmup, iters, text_len)
                    click.echo(f"{row['backend']} {row['size']} batch {batch}: p50 {row['p50_ms']:.2f} ms", err=True)
                    rows.append(row)
    finally:
        sources.close()
    add_ratios(rows)
    click.echo(table(rows))
    if json_path is not None:
        atomic_write_json(json_path, {"rows": rows})

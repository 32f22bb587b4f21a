"""`pid-trt serve`: serve PiD over HTTP on Ray Serve until interrupted (pid_trt.serve does the work)."""
from __future__ import annotations

import json

import click

from pid_trt.cli.options import DIR, FILE, SIZE, command, net_options, result
from pid_trt.config import EXPORT_PRECISIONS
from pid_trt.errors import PiDInputError


def _replicas(text: str) -> int | str:
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text if text == "auto" else int(text)
    raise PiDInputError(f"--replicas must be a positive integer or 'auto', got {text!r}")


def _json_object(text: str | None, flag: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PiDInputError(f"{flag} must be a JSON object: {e}") from None
    if not isinstance(value, dict):
        raise PiDInputError(f"{flag} must be a JSON object, got {text!r}")
    return value


@command("serve")
@click.option("--engine-dir", type=DIR, help="TensorRT engines (pid-trt build).")
@click.option("--onnx-dir", type=DIR, help="ONNX export (pid-trt export).")
@click.option("--checkpoint", type=FILE, help="model_ema_bf16.pth (torch backend).")
@net_options
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="fp32", show_default=True,
              help="torch: fp32 or bf16 autocast; engines: which engine set.")
@click.option("--device", default=None, help="Replica device [default: cuda when replicas have a GPU, else cpu].")
@click.option("--text-encoder", type=DIR,
              help="Local Gemma-2-2b-it directory: requests may send `prompt` instead of caption_embedding.")
@click.option("--replicas", default="1", show_default=True, help="Replicas (one per GPU), or 'auto'.")
@click.option("--autoscaling", default=None, help='Ray Serve autoscaling_config as JSON, e.g. '
              '\'{"min_replicas": 1, "max_replicas": 8}\'.')
@click.option("--gpus-per-replica", type=float, default=None,
              help="[default: 1 with --engine-dir or when CUDA is visible, else 0].")
@click.option("--cpus-per-replica", type=float, default=1.0, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most images per decode call (same-shape requests are batched together).")
@click.option("--batch-wait-ms", type=float, default=10.0, show_default=True,
              help="How long a batch waits for more requests after its first one.")
@click.option("--max-size", type=SIZE, default="4096x4096", show_default=True,
              help="Largest W×H output without TensorRT (engines accept the sizes of their profiles).")
@click.option("--max-body-mb", type=float, default=64.0, show_default=True, help="Largest request body.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--address", default=None, help="A running Ray cluster ('auto', 'ray://head:10001') instead of a "
              "local Ray instance.")
@click.option("--dashboard", is_flag=True, help="Start the Ray dashboard of the local instance.")
@click.option("--no-cuda-graph", is_flag=True, help="Run eagerly instead of replaying CUDA graphs.")
def command(engine_dir, onnx_dir, checkpoint, backbone, ckpt, precision, device, text_encoder, replicas, autoscaling,
            gpus_per_replica, cpus_per_replica, max_batch_size, batch_wait_ms, max_size, max_body_mb, host, port,
            address, dashboard, no_cuda_graph) -> None:
    """Serve PiD over HTTP (POST /v1/decode, GET /v1/health, GET /v1/info) on Ray Serve until Ctrl-C."""
    from pid_trt.serve import ServeConfig, run

    def path(p):
        return None if p is None else str(p)

    config = ServeConfig.parse(
        engine_dir=path(engine_dir), onnx_dir=path(onnx_dir), checkpoint=path(checkpoint), backbone=backbone,
        ckpt=ckpt, precision=precision, device=device, cuda_graph=not no_cuda_graph, text_encoder=path(text_encoder),
        replicas=_replicas(replicas), autoscaling=_json_object(autoscaling, "--autoscaling"),
        gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica, max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms, max_size=max_size, max_body_bytes=int(max_body_mb * 2**20))
    run(config, address=address, host=host, port=port, dashboard=dashboard,
        ready=lambda url: result(f"PiD server listening on {url} (POST {url}/decode); Ctrl-C to stop"))
    result("stopped")

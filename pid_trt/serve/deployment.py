"""The Ray Serve application: one deployment whose replicas answer /v1 over HTTP and decode same-shape requests
together (@serve.batch); `run` starts it on a local Ray instance or a cluster and blocks until interrupted.

`app(args)` is also a Ray Serve application builder: `serve run pid_trt.serve:app onnx_dir=onnx/flux`, or
`import_path: pid_trt.serve:app` with `args:` in a Serve config file (KubeRay RayService).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from pid_trt.errors import PiDError, PiDInputError
from pid_trt.serve.config import ServeConfig
from pid_trt.serve.protocol import (
    API_VERSION,
    BodyTooLarge,
    Decoded,
    DecodeRequest,
    ServeError,
    encode_images,
    error_body,
    json_body,
    parse_decode,
)
from pid_trt.serve.service import DecodeService

log = logging.getLogger(__name__)
APP_NAME = "pid-trt"
PREFIX = f"/{API_VERSION}"


def _images(requests: list[DecodeRequest]) -> int:
    """Batch size as @serve.batch counts it: images, not requests."""
    return sum(r.batch for r in requests)


def _error(status: int, message: str) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="PiDDecoder")
class PiDServer:
    """One replica: a warmed decoder behind GET /v1/health, GET /v1/info and POST /v1/decode."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.service = DecodeService.from_config(config)
        self.decode_batch.set_max_batch_size(config.max_batch_size)
        self.decode_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1e3)
        self.routes = {("GET", f"{PREFIX}/health"): self.health, ("GET", f"{PREFIX}/info"): self.info,
                       ("POST", f"{PREFIX}/decode"): self.decode}

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.removeprefix(request.scope.get("root_path", "")) or "/"
        handler = self.routes.get((request.method, path))
        if handler is None:
            methods = [m for m, p in self.routes if p == path]
            if methods:
                return _error(405, f"{request.method} {path} is not allowed; use {', '.join(methods)}")
            return _error(404, f"no route {path}; this server answers {', '.join(p for _, p in self.routes)}")
        try:
            return await handler(request)
        except ServeError as e:
            return _error(e.status, str(e))
        except PiDInputError as e:
            return _error(400, str(e))
        except Exception as e:  # the replica keeps serving; the traceback goes to the replica's log
            log.exception("request failed")
            return _error(500, f"internal error: {type(e).__name__}: {e}")

    async def health(self, request: Request) -> Response:
        return Response(json_body({"status": "ready"}), media_type="application/json")

    async def info(self, request: Request) -> Response:
        return Response(json_body(self.service.info()), media_type="application/json")

    async def decode(self, request: Request) -> Response:
        body = await _read_body(request, self.config.max_body_bytes)
        query = {k: request.query_params.getlist(k) for k in request.query_params}
        parsed = parse_decode(body, query, max_body_bytes=self.config.max_body_bytes)
        prepared = await asyncio.to_thread(self.service.prepare, parsed)
        result = await self.decode_batch(prepared)
        if isinstance(result, Exception):
            raise result
        payload, media_type = await asyncio.to_thread(encode_images, result.images, result.seeds, prepared.format)
        headers = {"X-PiD-Seeds": ",".join(map(str, result.seeds)), "X-PiD-Batch-Size": str(result.batch_size),
                   "X-PiD-Replica-Pid": str(os.getpid())}
        return Response(payload, media_type=media_type, headers=headers)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=_images)
    async def decode_batch(self, requests: list[DecodeRequest]) -> list[Decoded | Exception]:
        # limits are reset from the config in __init__; the decode runs off the event loop so that the
        # replica keeps reading requests (which fill the next batch) and answering health checks meanwhile
        return await asyncio.to_thread(self.service.decode_batch, requests)


def deployment(config: ServeConfig):
    """The PiD deployment with the config's replica options (replicas or autoscaling, GPUs and CPUs per replica)."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": config.gpus(), "num_cpus": config.cpus_per_replica},
        "max_ongoing_requests": config.ongoing_requests(),
        "graceful_shutdown_timeout_s": config.drain_timeout_s,
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling
    else:
        options["num_replicas"] = config.replicas
    return PiDServer.options(**options)


def app(args: ServeConfig | dict[str, Any] | None = None):
    """The PiD application (a Ray Serve `Application`) for a ServeConfig or its dict of fields."""
    config = ServeConfig.parse(args)
    # resolved here, where the application is built: a replica decides its device from this value
    config = config.model_copy(update={"gpus_per_replica": config.gpus()})
    return deployment(config).bind(config)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(config: ServeConfig, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
        dashboard: bool = False, ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests (up to `drain_timeout_s`) and stop.

    Without `address` a local Ray instance is started (on 127.0.0.1 when `host` is a loopback address) and
    stopped afterwards; with one (e.g. "auto" or "ray://head:10001") the application joins that cluster and
    only the application is deleted on exit. `ready(url)` is called once every replica is warmed up.
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage reports, also for the processes Ray starts
    import ray

    if address is None and not config.source.exists():
        raise PiDInputError(f"{config.source} does not exist")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    local = address is None
    node = {"_node_ip_address": "127.0.0.1"} if local and _is_loopback(host) else {}
    ray.init(address=address, include_dashboard=dashboard, **node)
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(app(config), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as e:  # replicas failed to start; Serve's status holds their error
            raise PiDError(f"the PiD server failed to start: {_startup_error(e)}") from None
        if ready is not None:
            ready(f"http://{host}:{port}{PREFIX}")
        while not stop.wait(0.5):
            pass
        log.info("stopping: draining in-flight requests (up to %.0f s)", config.drain_timeout_s)
    finally:
        try:
            # deleting the application first lets replicas finish in-flight requests while the HTTP proxies
            # still deliver the answers; stopping Serve at once would close the proxies under them
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        finally:
            ray.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)


def _startup_error(error: Exception) -> str:
    """The last exception line of the failed replicas (from Serve's status), without its class name."""
    try:
        status = serve.status().applications[APP_NAME]
        text = "\n".join([d.message for d in status.deployments.values()] + [status.message, str(error)])
    except Exception:  # noqa: BLE001 - the status is a nicety; the original error still says something
        text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if "Error: " in ln]
    return lines[-1].split("Error: ", 1)[1][:300] if lines else " ".join(str(error).split())[:300]

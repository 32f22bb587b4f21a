"""Client retries without Ray: a loopback stand-in server drops connections and answers 503 before it succeeds."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import torch

pytest.importorskip("urllib3", reason="the client needs urllib3: pip install 'pid-trt[serve]'")

from pid_trt.serve.client import Client, ServerError
from pid_trt.serve.protocol import encode_images, parse_decode


class StandIn(BaseHTTPRequestHandler):
    """Answers POST /v1/decode with images that encode the request's seeds; misbehaves as `plan` says."""

    plan: ClassVar[list] = []  # per request, in order: "drop", a status code, or "ok" (the default when empty)
    seen: ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        step = self.plan.pop(0) if self.plan else "ok"
        self.seen.append(self.path)
        if step == "drop":  # the connection dies without an answer, like a killed replica's proxy connection
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if step != "ok":
            payload, media = json.dumps({"error": f"status {step}"}).encode(), "application/json"
            self.send_response(step)
        else:
            query = {k: [v] for k, v in (p.split("=") for p in self.path.split("?")[1].split("&"))}
            req = parse_decode(body, query)
            images = torch.full((req.batch, 3, 2, 2), req.seed, dtype=torch.uint8)
            payload, media = encode_images(images, req.seeds, req.format)
            self.send_response(200)
            self.send_header("X-PiD-Batch-Size", "5")
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    StandIn.plan, StandIn.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def inputs(b=2):
    return torch.randn(b, 16, 2, 3), torch.randn(1, 8, 32)


def test_retries_dropped_connections_and_unavailable_answers(server):
    StandIn.plan = ["drop", 503, 502, "drop", 500, "ok"]
    out = Client(server, backoff=0.01).decode(*inputs(), seed=7)
    assert len(StandIn.seen) == 6
    assert out.seeds == [7, 8] and out.batch_size == 5 and out.images.shape == (2, 3, 2, 2)
    assert "seed=7" in StandIn.seen[-1] and "format=safetensors" in StandIn.seen[-1]


def test_refused_requests_are_not_retried(server):
    StandIn.plan = [400]
    with pytest.raises(ServerError, match="400: status 400") as e:
        Client(server, backoff=0.01).decode(*inputs())
    assert e.value.status == 400 and len(StandIn.seen) == 1


def test_gives_up_after_the_retry_budget(server):
    StandIn.plan = ["drop"] * 10
    with pytest.raises(ServerError, match="no answer from") as e:
        Client(server, retries=2, backoff=0.01).decode(*inputs())
    assert e.value.status == 0 and len(StandIn.seen) == 3
    StandIn.plan = [503] * 10
    with pytest.raises(ServerError, match="503") as e:
        Client(server, retries=2, backoff=0.01).decode(*inputs())
    assert e.value.status == 503


def test_url_may_name_the_api_version():
    assert Client("http://127.0.0.1:1/v1/").url == "http://127.0.0.1:1"

"""`pid-trt serve` end to end on a tiny exported net (ONNX Runtime, CPU): one server (one Ray instance) for the
module, inside a private network namespace (tests/serve/conftest.py).

Reference images come from offline `pid-trt decode --format png` (one image per call) of the same latents,
captions, σ and seeds; the server decodes them in dynamic batches. ONNX Runtime's CPU kernels give the same
floats for a sample whatever its batch-mates (checked here: identical bytes), and PNG encoding is lossless and
deterministic, so served PNGs must equal the files byte for byte and served uint8 tensors their pixels.
"""
import io
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.serve.conftest import in_private_network, run_in_private_network

pytest.importorskip("ray.serve", reason="pid-trt serve needs Ray Serve: pip install 'pid-trt[serve]'")

if not in_private_network():
    def test_server_in_a_private_network():
        run_in_private_network(__file__, timeout=420)

else:
    import urllib3
    from click.testing import CliRunner
    from safetensors.torch import save, save_file

    from pid_trt.cli import _register, cli
    from pid_trt.export import export_onnx
    from pid_trt.serve import Client
    from pid_trt.tiny import tiny_net

    URL = "http://127.0.0.1:8000"  # the namespace is private, so the README's default port is free
    N, SEED = 16, 100
    README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    HTTP = urllib3.PoolManager(retries=False, maxsize=N)

    @pytest.fixture(scope="module")
    def tiny(tmp_path_factory):
        """An exported tiny net, N latents/captions/σ, and offline `pid-trt decode --format png` of them."""
        root = tmp_path_factory.mktemp("serve")
        net = tiny_net("V15-16", seed=5, patch_depth=2, pixel_depth=1)
        onnx_dir = export_onnx(root / "onnx", net=net, backbone="flux", ckpt="2kto4k_v1pt5")
        g = torch.Generator().manual_seed(0)
        z = torch.randn(N, 16, 2, 3, generator=g)
        y = torch.randn(N, 8, 32, generator=g)
        sigma = torch.rand(N, generator=g)
        save_file({"lq_latent": z, "degrade_sigma": sigma}, str(root / "latents.safetensors"))
        save_file({"y": y}, str(root / "y.safetensors"))
        _register()
        res = CliRunner().invoke(cli, ["decode", "--onnx-dir", str(onnx_dir), "--latents",
                                       str(root / "latents.safetensors"), "--caption-embedding",
                                       str(root / "y.safetensors"), "--seed", str(SEED), "--format", "png",
                                       "--out", str(root / "offline")])
        assert res.exit_code == 0, res.output
        pngs = sorted((root / "offline").glob("*/*.png"))
        assert len(pngs) == N
        return {"root": root, "onnx": onnx_dir, "z": z, "y": y, "sigma": sigma,
                "png": [p.read_bytes() for p in pngs], "u8": [pixels(p.read_bytes()) for p in pngs]}

    def pixels(png: bytes) -> torch.Tensor:
        return torch.from_numpy(np.array(Image.open(io.BytesIO(png)))).permute(2, 0, 1)

    def request_body(tiny, i: int) -> bytes:
        return save({"lq_latent": tiny["z"][i:i + 1].contiguous(), "caption_embedding": tiny["y"][i:i + 1].contiguous(),
                     "degrade_sigma": tiny["sigma"][i:i + 1].contiguous()})

    def post(body: bytes, query: str = "", headers=None):
        return HTTP.request("POST", f"{URL}/v1/decode{query}", body=body, headers=headers, timeout=120)

    class Server:
        """`pid-trt serve` in its own session; stdout is drained by a thread (Ray writes its logs there too)."""

        def __init__(self, onnx_dir, log_path):
            self.log = open(log_path, "w")  # noqa: SIM115 - the server writes to it until stop()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pid_trt", "serve", "--onnx-dir", str(onnx_dir), "--max-batch-size", "6",
                 "--batch-wait-ms", "50", "--max-size", "256x256", "--max-body-mb", "0.25"],
                stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
            self.lines: queue.Queue = queue.Queue()
            threading.Thread(target=self._drain, daemon=True).start()

        def _drain(self):
            for line in self.proc.stdout:
                self.lines.put(line)

        def first_line(self, timeout: float) -> str:
            return self.lines.get(timeout=timeout)

        def interrupt(self):  # Ctrl-C reaches the whole foreground process group
            os.killpg(self.proc.pid, signal.SIGINT)

        def stop(self):
            if self.proc.poll() is None:
                self.interrupt()
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.log.close()

    @pytest.fixture(scope="module")
    def server(tiny):
        srv = Server(tiny["onnx"], tiny["root"] / "server.log")
        try:
            srv.ready_line = srv.first_line(timeout=180)
            yield srv
        finally:
            srv.stop()

    def test_startup_prints_where_it_listens(server):
        assert "listening on http://127.0.0.1:8000/v1" in server.ready_line

    def test_health_and_info(server, tiny):
        client = Client(URL)
        assert client.health() == {"status": "ready"}
        info = client.info()
        manifest = json.loads((tiny["onnx"] / "manifest.json").read_text())
        assert (info["api"], info["backbone"], info["ckpt"], info["backend"], info["precision"]) == \
            ("v1", "flux", "2kto4k_v1pt5", "onnxruntime", "fp32")
        assert info["weights_sha256"] == manifest["weights"]["sha256"]
        assert info["sizes"] == ["multiples of 32 up to 256x256, batch 1..6"]
        assert info["max_batch_size"] == 6 and info["batch_wait_ms"] == 50 and info["max_body_bytes"] == 2**18
        assert info["caption"] == {"max_length": 8, "embed_dim": 32, "prompts": False}

    def test_concurrent_requests_equal_offline_decode_and_are_batched(server, tiny):
        """16 at once: even ones as PNG (bytes compared), odd ones through the client (uint8 compared)."""
        results: list = [None] * N

        def one(i):
            if i % 2 == 0:
                r = post(request_body(tiny, i), f"?seed={SEED + i}")
                results[i] = (r.status, r.data, int(r.headers["X-PiD-Batch-Size"]))
            else:
                out = Client(URL).decode(tiny["z"][i:i + 1], tiny["y"][i:i + 1], tiny["sigma"][i:i + 1],
                                         seed=SEED + i)
                results[i] = (200, out, out.batch_size)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for i, (status, payload, _) in enumerate(results):
            assert status == 200
            if i % 2 == 0:
                assert payload == tiny["png"][i], f"image {i}: PNG bytes differ from pid-trt decode"
            else:
                assert payload.seeds == [SEED + i] and torch.equal(payload.images[0], tiny["u8"][i]), f"image {i}"
        sizes = [b for *_, b in results]
        print("batch sizes seen by the 16 requests:", sizes)
        assert sum(sizes) / N > 1 and max(sizes) <= 6  # --max-batch-size 6 bounds every decode call
        assert Client(URL).info()["replica"]["mean_batch_size"] > 1

    BAD = {
        "wrong key": (lambda t: save({"latent": t["z"][:1].contiguous(), "y": t["y"][:1].contiguous()}), "", 400,
                      "unknown field(s) latent"),
        "wrong shape": (lambda t: save({"lq_latent": t["z"][:1, :4].contiguous(), "y": t["y"][:1].contiguous()}),
                        "", 400, "has 4 channels"),
        "wrong dtype": (lambda t: save({"lq_latent": t["z"][:1].int().contiguous(), "y": t["y"][:1].contiguous()}),
                        "", 400, "floating-point"),
        "NaN": (lambda t: save({"lq_latent": torch.full((1, 16, 2, 3), float("nan")), "y": t["y"][:1].contiguous()}),
                "", 400, "NaN"),
        "size outside the allowed sizes": (lambda t: save({"lq_latent": torch.zeros(1, 16, 2, 9),
                                                           "y": t["y"][:1].contiguous()}), "", 400,
                                           "288x64 exceeds this server's largest size 256x256"),
        "oversized body": (lambda t: save({"lq_latent": torch.zeros(1, 16, 64, 64), "y": t["y"][:1].contiguous()}),
                           "", 413, "exceeds the limit of 262144 bytes"),
        "not safetensors": (lambda t: b"\x01\x02 not a tensor file", "", 400, "neither a JSON object"),
        "bad option": (lambda t: request_body(t, 0), "?steps=99", 400, "steps must be between 1 and 8"),
        "prompt without text encoder": (lambda t: json.dumps({"lq_latent": t["z"][:1].tolist(),
                                                              "prompt": "a fox"}).encode(), "", 400,
                                        "no text encoder"),
    }

    @pytest.mark.parametrize("kind", list(BAD))
    def test_bad_request_is_a_one_line_4xx_and_the_next_request_succeeds(server, tiny, kind):
        make, query, status, message = BAD[kind]
        r = post(make(tiny), query)
        assert r.status == status, r.data
        assert r.data.count(b"\n") == 1 and r.headers["Content-Type"] == "application/json"
        body = json.loads(r.data)
        assert list(body) == ["error"] and message in body["error"], body
        good = post(request_body(tiny, 0), f"?seed={SEED}")
        assert good.status == 200 and good.data == tiny["png"][0]

    def test_unknown_route_and_method(server):
        assert HTTP.request("GET", f"{URL}/v2/decode").status == 404
        r = HTTP.request("GET", f"{URL}/v1/decode")
        assert r.status == 405 and "use POST" in json.loads(r.data)["error"]

    def test_killed_replica_is_restarted_and_retried_requests_succeed(server, tiny):
        """Four clients send back to back while the replica's worker process is killed: the requests it held
        are retried by the client until Ray's replacement replica answers them, with the right bytes."""
        old_pid = Client(URL).info()["replica"]["pid"]
        stop = threading.Event()
        done: list = []  # (index, start, end, result or exception)

        def loop(first):
            client = Client(URL)
            for k in range(200):  # bounded; `stop` ends it long before
                if stop.is_set():
                    return
                i = (first + 4 * k) % N
                start = time.monotonic()
                try:
                    out = client.decode(tiny["z"][i:i + 1], tiny["y"][i:i + 1], tiny["sigma"][i:i + 1], seed=SEED + i)
                except Exception as e:  # noqa: BLE001 - recorded and asserted below
                    out = e
                done.append((i, start, time.monotonic(), out))

        threads = [threading.Thread(target=loop, args=(j,)) for j in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        new_pid = Client(URL).info()["replica"]["pid"]  # retried until the replacement answers
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=150)
        lost = [(i, out) for i, _, _, out in done if isinstance(out, Exception)]
        assert not lost, f"requests lost: {lost}"
        assert all(torch.equal(out.images[0], tiny["u8"][i]) for i, _, _, out in done)
        in_flight = [i for i, start, end, _ in done if start < killed_at < end]
        after = [i for i, start, *_ in done if start > killed_at]
        print(f"{len(done)} requests; {len(in_flight)} in flight at the kill; {len(after)} sent after it")
        assert in_flight and after and new_pid != old_pid

    def test_readme_serve_section_runs_against_the_server(server, tiny, tmp_path):
        """The README's curl and Python examples, as written, against this server."""
        section = README.read_text().split("## Serve PiD over HTTP (Ray Serve)")[1].split("\n## ")[0]
        save_file({"lq_latent": tiny["z"][:1].contiguous(), "caption_embedding": tiny["y"][:1].contiguous()},
                  str(tmp_path / "request.safetensors"))
        curls = [ln.split("  #")[0] for ln in re.findall(r"^curl .*$", section, re.MULTILINE)]
        assert curls
        for line in curls:
            if shutil.which("curl"):
                done = subprocess.run(["sh", "-c", line], cwd=tmp_path, capture_output=True, timeout=60, check=False)
                assert done.returncode == 0, done.stderr
        if shutil.which("curl"):
            assert pixels((tmp_path / "image.png").read_bytes()).shape == (3, 64, 96)
        blocks = re.findall(r"```python[^\n]*\n(.*?)```", section, re.DOTALL)
        assert blocks
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            for block in blocks:
                exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - the README example, as test_readme runs its own
        finally:
            os.chdir(cwd)

    def test_sigint_drains_in_flight_requests_and_exits(server, tiny):
        """Ctrl-C while a 6-image request is decoding: it is answered, then the server exits 0 within a minute."""
        out: dict = {}
        z6, y6, s6 = tiny["z"][:6], tiny["y"][:6], tiny["sigma"][:6]
        worker = threading.Thread(target=lambda: out.update(r=Client(URL, retries=0).decode(z6, y6, s6, seed=SEED)))
        worker.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        server.interrupt()
        worker.join(timeout=60)
        rc = server.proc.wait(timeout=60)
        assert time.monotonic() - t0 < 60 and rc == 0
        assert "r" in out, "the in-flight request was dropped"
        assert all(torch.equal(out["r"].images[i], tiny["u8"][i]) for i in range(6))

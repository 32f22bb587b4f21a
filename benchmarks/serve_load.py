"""Benchmark: N concurrent clients for T seconds against `pid-trt serve`, next to the offline decoder.

    python benchmarks/serve_load.py [--onnx-dir DIR] [--clients 8] [--seconds 30] [--size 96x64]
                                    [--max-batch-size 8] [--batch-wait-ms 10] [--url URL]

Without --onnx-dir a tiny seeded net (flux v1.5 structure) is exported to a temporary directory. Without --url a
local server is started with `pid-trt serve` on that export and stopped afterwards. Each client sends one image
per request (the inputs `pid_trt.bench` times, seeds varying) as fast as answers come back. Printed: requests,
images/s, p50/p99 latency and the mean dynamic batch size; then `pid_trt.bench.bench_decoder` (what `pid-trt bench`
runs) on the same net and size at batch 1 and at the largest batch, measured after the server has stopped, and the
ratio of served to offline images/s.

The local Ray instance talks over the machine's own address; to keep everything on loopback run it in a private
network namespace: `unshare --net sh -c 'ip link set lo up && python benchmarks/serve_load.py'` (as root).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from pid_trt.bench import bench_decoder, bench_inputs, percentile
from pid_trt.engines.profiles import parse_size
from pid_trt.runtime import PiDDecoder
from pid_trt.serve import Client


def tiny_export(root: pathlib.Path) -> pathlib.Path:
    from pid_trt.export import export_onnx
    from pid_trt.tiny import tiny_net

    net = tiny_net("V15-16", seed=5, patch_depth=2, pixel_depth=1)
    return export_onnx(root / "onnx", net=net, backbone="flux", ckpt="2kto4k_v1pt5")


class LocalServer:
    """`pid-trt serve` in its own session; returns once it prints where it listens."""

    def __init__(self, onnx_dir: pathlib.Path, port: int, max_batch: int, wait_ms: float, log: pathlib.Path):
        self.log = open(log, "w")  # noqa: SIM115 - the server writes to it until stop()
        cmd = [sys.executable, "-m", "pid_trt", "serve", "--onnx-dir", str(onnx_dir), "--port", str(port),
               "--max-batch-size", str(max_batch), "--batch-wait-ms", str(wait_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        line = lines.get(timeout=300)
        if "listening on" not in line:
            raise SystemExit(f"server did not start: {line.strip()} (log: {log})")
        self.url = line.split("listening on ")[1].split()[0].removesuffix("/v1")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=90)
        self.log.close()


def load(url: str, clients: int, seconds: float, z, y, sigma) -> dict:
    """Closed-loop load: each client sends its next request when the previous one is answered."""
    records: list[tuple[float, float, int]] = []  # (start, end, batch size)
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def client(c: int) -> None:
        cli = Client(url)
        k = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            out = cli.decode(z, y, sigma, seed=1000 * c + k)
            with lock:
                records.append((t0, time.monotonic(), out.batch_size))
            k += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = max(end for _, end, _ in records) - start
    latencies = [1e3 * (end - begin) for begin, end, _ in records]
    return {"requests": len(records), "seconds": elapsed, "images_per_s": len(records) / elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "mean_batch": sum(b for *_, b in records) / len(records), "max_batch_seen": max(b for *_, b in records)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx-dir", type=pathlib.Path, default=None)
    ap.add_argument("--url", default=None, help="an already running server of --onnx-dir (default: start one)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", default="96x64", help="output W×H")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="pid-serve-load-"))
    onnx_dir = args.onnx_dir or tiny_export(work)
    size = parse_size(args.size)
    decoder = PiDDecoder.load(onnx_dir)
    z, y, sigma = bench_inputs(decoder.net_config, size, 1)

    server = None if args.url else LocalServer(onnx_dir, args.port, args.max_batch_size, args.batch_wait_ms,
                                               work / "server.log")
    url = args.url or server.url
    try:
        warm = min(args.clients, 4)
        load(url, warm, 2.0, z, y, sigma)  # first requests at this size and batch sizes
        served = load(url, args.clients, args.seconds, z, y, sigma)
    finally:
        if server is not None:
            server.stop()

    offline = {b: bench_decoder(decoder, size, batch=b, warmup=2, iters=10) for b in sorted({1, args.max_batch_size})}
    print(f"net: {onnx_dir} ({decoder.backend.name}, {decoder.backend.device}), output {args.size}, 4 steps")
    print(f"served : {args.clients} clients x {args.seconds:.0f} s, max batch {args.max_batch_size}, wait "
          f"{args.batch_wait_ms:g} ms: {served['requests']} requests in {served['seconds']:.1f} s, "
          f"{served['images_per_s']:.2f} img/s, p50 {served['p50_ms']:.0f} ms, p99 {served['p99_ms']:.0f} ms, "
          f"mean batch {served['mean_batch']:.2f} (max {served['max_batch_seen']})")
    for b, row in offline.items():
        print(f"offline: bench_decoder batch {b}: p50 {row['p50_ms']:.0f} ms/call, {row['images_per_s']:.2f} img/s "
              f"-> served/offline {served['images_per_s'] / row['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: export a full-size official net (random weights) to ONNX on this machine; time and peak RSS.

    python benchmarks/export_full_size.py --backbone flux2 --ckpt 2kto4k [--precision fp32] [--out DIR]

Runs `pid-trt export` in a child process and reads its peak resident memory from the kernel (ru_maxrss),
so the number includes everything the exporter touches. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="flux2")
    ap.add_argument("--ckpt", default="2kto4k")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="keep the export here (default: a temp dir)")
    args = ap.parse_args()
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="pid-export-")) / "onnx"
    cmd = [sys.executable, "-m", "pid_trt", "export", "--backbone", args.backbone, "--ckpt", args.ckpt,
           "--precision", args.precision, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    result = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "seconds": round(seconds, 1),
              "peak_rss_gib": round(peak_gib, 2)}
    if proc.returncode == 0:
        manifest = json.loads((out / "manifest.json").read_text())
        result["graphs"] = {name: {"nodes": g["nodes_after_slim"], "external_data": g["external_data"]}
                            for name, g in manifest["graphs"].items()}
        result["bytes_on_disk"] = sum(f.stat().st_size for f in out.iterdir())
    else:
        result["stderr_tail"] = proc.stderr[-2000:]
    print(json.dumps(result))
    if args.out is None:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""GPU check: the torch backend eager vs the CUDA-graph runtime on a full-size PiD net with random weights.

Needs PyTorch with CUDA, numpy and this repository, nothing else (no TensorRT, no network). The net is the
flux 2kto4k (v1.5, V15-16) definition built directly on the GPU with fp32 master weights and run under bf16
autocast, as upstream runs its checkpoints (5.6 GB of weights; fits an H100 easily). For each size it decodes the
same inputs and injected noise with `PiDDecoder(cuda_graph=False)` and `(cuda_graph=True)`, checks the outputs
agree (identical expected; max abs reported), and times both: ms/decode (CUDA events), the eager/graph ratio, peak
memory and achieved TFLOP/s against pid_trt.bench.decode_flops. Sizes past the time budget are skipped.

`--smoke` runs the same logic on CPU with a tiny net and tiny sizes (what the test suite exercises).
Results go to $OUT/gpu_check.json when $OUT is set (or --json); a summary table is printed last.
Exit status: 0 all agree, 1 a mismatch, 2 no usable GPU.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import torch

from pid_trt.bench import bench_inputs, decode_flops, peak_memory, percentile, time_ms
from pid_trt.runtime import PiDDecoder

FULL_SIZES = ("1024x1024", "2048x2048", "4096x3072")
SMOKE_SIZES = ("64x64", "64x96")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny net, tiny sizes: checks the logic only")
    ap.add_argument("--size", action="append", help="WxH (repeatable) [default: 1024², 2048², 4096x3072 if time]")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=400.0, help="stop starting new sizes past this many seconds")
    ap.add_argument("--tol", type=float, default=2e-3, help="max abs eager vs graph that still counts as agreeing")
    ap.add_argument("--json", type=pathlib.Path, help="results file [default: $OUT/gpu_check.json when $OUT is set]")
    return ap.parse_args(argv)


def build_net(smoke: bool, device: torch.device):
    if smoke:
        from pid_trt.tiny import tiny_net

        return tiny_net(patch_depth=2, pixel_depth=1).to(device), "tiny V15-16 (tame, shallow)"
    from pid_trt.model import PiDNet

    torch.manual_seed(0)
    return PiDNet.for_checkpoint("flux", "2kto4k", device=device).eval(), "flux 2kto4k (V15-16), random weights"


def check_size(eager: PiDDecoder, graph: PiDDecoder, size: tuple[int, int], args) -> dict:
    """Agreement and timing of eager vs CUDA-graph decodes at one W×H."""
    cfg, device = eager.net_config, eager.backend.device
    w, h = size
    z, y, sigma = (t.to(device) for t in bench_inputs(cfg, size, batch=1))
    noise = eager.noise_for((1, 3, h, w), args.steps, seed=0)
    run_eager = lambda: eager.decode(z, y, sigma, noise=noise, steps=args.steps)
    run_graph = lambda: graph.decode(z, y, sigma, noise=noise, steps=args.steps)
    a, b = run_eager(), run_graph()  # the graph decode captures on first use
    max_abs = float((a.float() - b.float()).abs().max())
    flops = decode_flops(cfg, h, w, y.shape[1], args.steps)
    row = {"size": f"{w}x{h}", "max_abs": max_abs, "identical": bool(torch.equal(a, b)),
           "agree": max_abs <= args.tol, "decode_tflop": flops / 1e12}
    for name, fn in (("eager", run_eager), ("graph", run_graph)):
        with peak_memory(device) as mem:
            times = time_ms(fn, device, args.warmup, args.iters)
        p50 = percentile(times, 50)
        row[name] = {"ms": p50, "ms_all": times, "peak_mib": mem["peak_mib"], "memory": mem["memory"],
                     "tflops": flops / p50 / 1e9}
    row["graph_speedup"] = row["eager"]["ms"] / row["graph"]["ms"]
    graph._graphs.clear()  # release this size's captured graph and its pool before the next, larger one
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def summary(result: dict) -> str:
    head = ("size", "eager ms", "graph ms", "speedup", "eager TF/s", "graph TF/s", "peak MiB", "max abs", "agree")
    body = [(r["size"], f"{r['eager']['ms']:.1f}", f"{r['graph']['ms']:.1f}", f"{r['graph_speedup']:.3f}x",
             f"{r['eager']['tflops']:.3g}", f"{r['graph']['tflops']:.3g}",
             f"{max(r['eager']['peak_mib'], r['graph']['peak_mib']):.0f}", f"{r['max_abs']:.3g}",
             "identical" if r["identical"] else str(r["agree"])) for r in result["sizes"]]
    body += [(s, "skipped (time budget)", "", "", "", "", "", "", "") for s in result["skipped"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.rjust(wd) for x, wd in zip(line, widths)) for line in (head, *body)]
    verdict = "PASS" if result["passed"] else "FAIL"
    return "\n".join([f"gpu_check on {result['device_name']} ({result['net']}, {result['precision']}):", *lines,
                      f"{verdict}: eager and CUDA-graph decodes {'agree' if result['passed'] else 'DISAGREE'}"])


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (run with --smoke to check the logic on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    net, net_name = build_net(args.smoke, device)
    precision = "fp32" if args.smoke else "bf16"  # upstream: fp32 master weights under bf16 autocast
    eager = PiDDecoder.from_net(net, device, precision, cuda_graph=False)
    graph = PiDDecoder.from_net(net, device, precision, cuda_graph=True)
    build_s = time.perf_counter() - t0
    print(f"built {net_name} on {device} in {build_s:.1f} s", flush=True)

    sizes = args.size or list(SMOKE_SIZES if args.smoke else FULL_SIZES)
    rows, skipped = [], []
    ms_per_tflop = None  # measured cost, to predict whether the next size fits the budget
    for text in sizes:
        w, h = (int(v) for v in text.lower().split("x"))
        flops = decode_flops(net.config, h, w, net.config["txt_max_length"], args.steps)
        # each size runs 2 untimed + 2 × (warmup + iters) decodes
        decodes = 2 + 2 * (args.warmup + args.iters)
        predicted = decodes * flops / 1e12 * ms_per_tflop / 1e3 if ms_per_tflop else 0.0
        if time.perf_counter() - t0 + predicted > args.budget_s:
            print(f"{text}: skipped (predicted {predicted:.0f} s would pass the {args.budget_s:.0f} s budget)")
            skipped.append(text)
            continue
        row = check_size(eager, graph, (w, h), args)
        ms_per_tflop = max(row["eager"]["ms"], row["graph"]["ms"]) / row["decode_tflop"]
        print(f"{text}: eager {row['eager']['ms']:.1f} ms, graph {row['graph']['ms']:.1f} ms, "
              f"max abs {row['max_abs']:.3g}", flush=True)
        rows.append(row)

    result = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or "cpu", "torch": torch.__version__, "cuda": torch.version.cuda, "net": net_name,
              "precision": precision, "smoke": args.smoke, "steps": args.steps, "warmup": args.warmup,
              "iters": args.iters, "build_s": build_s, "sizes": rows, "skipped": skipped,
              "passed": bool(rows) and all(r["agree"] for r in rows), "seconds": time.perf_counter() - t0}
    out = args.json or (pathlib.Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if out is not None:
        from pid_trt.atomic import atomic_write_json

        atomic_write_json(out, result)
    print(summary(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

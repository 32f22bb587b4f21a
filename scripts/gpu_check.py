#!/usr/bin/env python3
"""GPU check: CUDA graphs and TensorRT on a GPU machine, in one run with one report.

1. torch: the full-size flux 2kto4k (v1.5, V15-16) net with random weights, built on the GPU with fp32 master weights
   under bf16 autocast as upstream runs its checkpoints (5.6 GB of weights). Per size it decodes the same inputs and
   injected noise with `PiDDecoder(cuda_graph=False)` and `(cuda_graph=True)`, checks they agree and times both
   (ms/decode with CUDA events, the graph speedup, peak memory, TFLOP/s against pid_trt.bench.decode_flops).
2. TensorRT (where `tensorrt` imports): tiny seeded nets exported and built into engines here, bf16, fp8 (with FP8
   attention) and a bf16 teacher; `pid-trt parity` on the student engines, the same inputs and noise decoded by the
   C++ runtime (`pidtrt-decode`, when built with TensorRT) against the Python runtime, eager against CUDA-graph
   decodes, and teacher decodes with guidance under CUDA graphs against eager and the torch reference.
Parts that cannot run say why in the report ("skipped" with a reason); sizes and cases past their time budget too.

`--smoke` runs part 1 on the CPU with a tiny net and tiny sizes (what the test suite exercises); part 2 is skipped.
Results go to $OUT/gpu_check.json when $OUT is set (or --json); a summary is printed last.
Exit status: 0 everything that ran agrees, 1 a mismatch or failure, 2 no usable GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from pid_trt.bench import bench_inputs, decode_flops, peak_memory, percentile, time_ms
from pid_trt.parity import image_metrics
from pid_trt.runtime import PiDDecoder

FULL_SIZES = ("1024x1024", "2048x2048", "4096x3072")
SMOKE_SIZES = ("64x64", "64x96")
TINY_SEED = 7
TINY_SIZE = (192, 128)  # W x H: a 4x6 latent at 32 px per latent pixel
TINY_NET = {"patch_depth": 2, "pixel_depth": 1}
FP8_ATTENTION = {"hidden_size": 64, "pixel_attn_hidden_size": 48}  # patch head_dim 32: FP8 attention
# (case, export precision, checkpoint type, tiny-net overrides)
TRT_CASES = (("bf16", "bf16", "2kto4k_v1pt5", {}), ("fp8", "fp8", "2kto4k_v1pt5", FP8_ATTENTION),
             ("teacher", "bf16", "2kto4k_v1pt5_teacher", {}))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny net, tiny sizes: checks the logic only")
    ap.add_argument("--size", action="append", help="WxH (repeatable) [default: 1024², 2048², 4096x3072 if time]")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=300.0, help="part 1: no new size past this many seconds")
    ap.add_argument("--trt-budget-s", type=float, default=330.0, help="part 2: no new case past this many seconds")
    ap.add_argument("--opt-level", type=int, default=1, help="TensorRT builder optimization level of the tiny engines")
    ap.add_argument("--tol", type=float, default=2e-3, help="max abs eager vs graph that still counts as agreeing")
    ap.add_argument("--json", type=pathlib.Path, help="results file [default: $OUT/gpu_check.json when $OUT is set]")
    return ap.parse_args(argv)


# -- part 1: torch eager vs CUDA graph -------------------------------------------------------------------------

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


def torch_part(args, device: torch.device, t0: float) -> dict:
    net, net_name = build_net(args.smoke, device)
    precision = "fp32" if args.smoke else "bf16"  # upstream: fp32 master weights under bf16 autocast
    eager = PiDDecoder.from_net(net, device, precision, cuda_graph=False)
    graph = PiDDecoder.from_net(net, device, precision, cuda_graph=True)
    build_s = time.perf_counter() - t0
    print(f"built {net_name} on {device} in {build_s:.1f} s", flush=True)
    rows, skipped = [], []
    ms_per_tflop = None  # measured cost, to predict whether the next size fits the budget
    for text in args.size or list(SMOKE_SIZES if args.smoke else FULL_SIZES):
        w, h = (int(v) for v in text.lower().split("x"))
        flops = decode_flops(net.config, h, w, net.config["txt_max_length"], args.steps)
        decodes = 2 + 2 * (args.warmup + args.iters)  # 2 untimed + 2 × (warmup + iters) per size
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
    del eager, graph, net
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"net": net_name, "precision": precision, "build_s": build_s, "sizes": rows, "skipped": skipped,
            "passed": bool(rows) and all(r["agree"] for r in rows)}


# -- part 2: TensorRT engines --------------------------------------------------------------------------------

def _u8_diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    m = image_metrics(a.cpu(), b.cpu())
    return {k: m[k] for k in ("u8_max_abs", "u8_mean_abs")}  # psnr is inf when identical: not JSON


def _tool() -> pathlib.Path | None:
    """A pidtrt-decode built with TensorRT: $PIDTRT_BUILD_DIR or build/, else built into build-trt/ when CMake finds
    TensorRT ($TENSORRT_ROOT: headers and libnvinfer; the pip wheels ship no headers)."""
    def with_tensorrt(build: pathlib.Path) -> bool:  # CMake found TensorRT, so the decoder was built
        cache = build / "CMakeCache.txt"
        text = cache.read_text() if cache.is_file() else ""
        return "TensorRT_LIBRARY:FILEPATH=/" in text and "TensorRT_INCLUDE_DIR:PATH=/" in text

    dirs = [pathlib.Path(os.environ["PIDTRT_BUILD_DIR"])] if os.environ.get("PIDTRT_BUILD_DIR") else []
    for build in [*dirs, ROOT / "build", ROOT / "build-trt"]:
        if (build / "cpp" / "pidtrt-decode").is_file() and with_tensorrt(build):
            return build / "cpp" / "pidtrt-decode"
    if not (os.environ.get("TENSORRT_ROOT") and shutil.which("cmake") and shutil.which("nvcc")):
        return None
    build = ROOT / "build-trt"
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DPIDTRT_BUILD_TESTS=OFF"],
                ["cmake", "--build", str(build), "-j8", "--target", "pidtrt-decode"]):
        if subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False).returncode != 0:
            return None
    return build / "cpp" / "pidtrt-decode" if with_tensorrt(build) else None


def _inputs(net_config, device, draws: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(TINY_SEED)
    w, h = TINY_SIZE
    k = net_config.pixels_per_latent
    z = torch.randn(1, net_config.lq_latent_channels, h // k, w // k, generator=g).bfloat16().float()
    y = torch.randn(1, net_config.text_limit, net_config.txt_embed_dim, generator=g).bfloat16().float()
    noise = [torch.randn(1, 3, h, w, generator=g) for _ in range(draws)]
    return z.to(device), y.to(device), torch.tensor([0.25], device=device), [n.to(device) for n in noise]


def _cpp_decode(tool: pathlib.Path, engine_dir: pathlib.Path, work: pathlib.Path, z, y, noise) -> torch.Tensor:
    """pidtrt-decode on the same latent, caption and injected noise; the image as uint8 [1, 3, H, W]."""
    w, h = TINY_SIZE
    for name, t in (("lat", z), ("y", y), ("noise", torch.stack(noise))):
        (work / f"{name}.f32").write_bytes(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    out = work / "cpp.ppm"
    cmd = [str(tool), "--engine-dir", str(engine_dir), "--latent", str(work / "lat.f32"), "--caption",
           str(work / "y.f32"), "--noise", str(work / "noise.f32"), "--width", str(w), "--height", str(h),
           "--sigma", "0.25", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pidtrt-decode failed: {proc.stderr.strip()[-400:]}")
    data = out.read_bytes()
    pixels = np.frombuffer(data[len(data) - 3 * w * h:], dtype=np.uint8).reshape(h, w, 3)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]


def _parity(engine_dir: pathlib.Path, work: pathlib.Path) -> dict:
    """`pid-trt parity` on the engines, against the tiny net they were exported from."""
    report = work / "parity.json"
    w, h = TINY_SIZE
    cmd = [sys.executable, "-m", "pid_trt", "parity", "--engine-dir", str(engine_dir), "--tiny-seed", str(TINY_SEED),
           "--size", f"{w}x{h}", "--json", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode == 2 or not report.is_file():
        raise RuntimeError(f"pid-trt parity could not run: {proc.stderr.strip()[-400:]}")
    r = json.loads(report.read_text())
    return {"passed": r["passed"], "exit": proc.returncode, "tolerance": r["tolerance"]["name"],
            "velocity_max_abs": max(s["velocity_max_abs"] for s in r["steps"]), **{
                k: r["image"][k] for k in ("u8_max_abs", "u8_mean_abs", "psnr_db")}, "failures": r["failures"]}


def trt_case(name: str, precision: str, ckpt: str, overrides: dict, work: pathlib.Path, args, tool) -> dict:
    from pid_trt.engines.build import run_build
    from pid_trt.engines.plan import make_plan
    from pid_trt.export import export_onnx
    from pid_trt.registry import resolve
    from pid_trt.tiny import tiny_net

    t0 = time.perf_counter()
    net = tiny_net("V15-16", seed=TINY_SEED, init="tame", **TINY_NET, **overrides)
    onnx_dir = export_onnx(work / "onnx", net=net, backbone="flux", ckpt=ckpt, precision=precision)
    plan = make_plan(backbone=None, ckpt=None, precision=None, onnx_dir=onnx_dir, shapes=[TINY_SIZE],
                     engine_dir=work / "engines", opt_level=args.opt_level)
    run_build(plan, progress=False)
    out: dict = {"precision": precision, "ckpt": ckpt, "build_s": round(time.perf_counter() - t0, 1),
                 "profiles": [p.describe() for p in plan.profiles]}
    device = torch.device("cuda")
    graph = PiDDecoder.load(plan.engine_dir, cuda_graph=True)
    eager = PiDDecoder.load(plan.engine_dir, cuda_graph=False)
    options = graph.options()
    z, y, sigma, noise = _inputs(graph.net_config, device, options.noise_draws)
    negative = torch.randn_like(y).bfloat16().float() if options.guided else None
    images = {mode: dec.decode(z, y, sigma, noise=noise, output="uint8", options=options, negative_embedding=negative)
              for mode, dec in (("graph", graph), ("eager", eager))}
    out["graph_vs_eager"] = _u8_diff(images["graph"], images["eager"])
    checks = [out["graph_vs_eager"]["u8_max_abs"] <= 1]
    if options.sampler == "teacher":
        reference = PiDDecoder.from_net(net, device, "bf16", cuda_graph=False, entry=resolve("flux", ckpt))
        ref = reference.decode(z, y, sigma, noise=noise, output="uint8", options=options, negative_embedding=negative)
        out["sampler"] = {"steps": options.steps, "cfg": options.cfg}
        out["vs_torch_bf16"] = _u8_diff(images["graph"], ref)
        checks.append(out["vs_torch_bf16"]["u8_mean_abs"] <= 2.0)  # gross errors only: 25 guided bf16 steps
    else:
        out["parity"] = _parity(plan.engine_dir, work)
        checks.append(out["parity"]["passed"])
        if tool is None:
            out["cpp"] = {"status": "skipped", "reason": "no pidtrt-decode built with TensorRT (set TENSORRT_ROOT to "
                                                         "a TensorRT SDK, or PIDTRT_BUILD_DIR to such a build)"}
        else:
            out["cpp"] = _u8_diff(_cpp_decode(tool, plan.engine_dir, work, z, y, noise), images["graph"])
            checks.append(out["cpp"]["u8_max_abs"] <= 1)
    out["passed"] = all(checks)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def tensorrt_part(args, t0: float) -> dict:
    """Part 2, or why it was skipped."""
    from pid_trt.engines.detect import detect_local

    if args.smoke:
        return {"status": "skipped", "reason": "--smoke runs on the CPU; TensorRT needs a GPU"}
    trt_version, gpu = detect_local()
    if trt_version is None:
        return {"status": "skipped", "reason": 'TensorRT is not importable here (pip install "pid-trt[tensorrt]")'}
    if gpu is None:
        return {"status": "skipped", "reason": f"TensorRT {trt_version} but no CUDA GPU visible to PyTorch"}
    tool = _tool()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pid-trt-gpu-check-"))
    cases = {}
    try:
        for name, precision, ckpt, overrides in TRT_CASES:
            if time.perf_counter() - t0 > args.trt_budget_s:
                cases[name] = {"status": "skipped", "reason": f"past the {args.trt_budget_s:.0f} s budget"}
                continue
            (work / name).mkdir()
            try:
                cases[name] = trt_case(name, precision, ckpt, overrides, work / name, args, tool)
            except Exception as e:  # noqa: BLE001 -- one failed case is a result; the report carries on
                cases[name] = {"status": "error", "passed": False, "error": f"{type(e).__name__}: {e}"}
            print(f"tensorrt {name}: {json.dumps(cases[name])[:300]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ran = [c for c in cases.values() if c.get("status") != "skipped"]
    return {"status": "ran", "tensorrt": trt_version, "gpu": gpu.name, "compute_capability": gpu.compute_capability,
            "cpp_tool": str(tool) if tool else None, "cases": cases,
            "passed": bool(ran) and all(c.get("passed") for c in ran)}


# -- the report ----------------------------------------------------------------------------------------------

def _case_line(case: dict) -> str:
    if case.get("status") in ("skipped", "error"):
        return f"{case['status']}: {case.get('reason') or case.get('error')}"
    parts = [f"graph vs eager u8 max {case['graph_vs_eager']['u8_max_abs']:g}"]
    if "parity" in case:
        parts.append(f"parity {'pass' if case['parity']['passed'] else 'FAIL'} ({case['parity']['tolerance']}, "
                     f"u8 max {case['parity']['u8_max_abs']:g})")
    if "cpp" in case:
        cpp = case["cpp"]
        parts.append(f"C++ vs Python u8 max {cpp['u8_max_abs']:g}" if "u8_max_abs" in cpp else
                     f"C++ skipped ({cpp['reason']})")
    if "vs_torch_bf16" in case:
        parts.append(f"{case['sampler']['steps']} guided steps vs torch bf16 u8 mean "
                     f"{case['vs_torch_bf16']['u8_mean_abs']:.3f}")
    return f"{'pass' if case['passed'] else 'FAIL'}: " + "; ".join(parts)


def summary(result: dict) -> str:
    head = ("size", "eager ms", "graph ms", "speedup", "eager TF/s", "graph TF/s", "peak MiB", "max abs", "agree")
    body = [(r["size"], f"{r['eager']['ms']:.1f}", f"{r['graph']['ms']:.1f}", f"{r['graph_speedup']:.3f}x",
             f"{r['eager']['tflops']:.3g}", f"{r['graph']['tflops']:.3g}",
             f"{max(r['eager']['peak_mib'], r['graph']['peak_mib']):.0f}", f"{r['max_abs']:.3g}",
             "identical" if r["identical"] else str(r["agree"])) for r in result["sizes"]]
    body += [(s, "skipped (time budget)", "", "", "", "", "", "", "") for s in result["skipped"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.rjust(wd) for x, wd in zip(line, widths)) for line in (head, *body)]
    trt = result["tensorrt"]
    if trt["status"] == "skipped":
        lines.append(f"tensorrt: skipped ({trt['reason']})")
    else:
        lines.append(f"tensorrt {trt['tensorrt']} on {trt['gpu']}:")
        for name, case in trt["cases"].items():
            lines.append(f"  {name:<8} {_case_line(case)}")
    verdict = "PASS" if result["passed"] else "FAIL"
    trt_verdict = "skipped" if trt["status"] == "skipped" else "pass" if trt["passed"] else "FAIL"
    last = (f"{verdict}: eager and CUDA-graph decodes {'agree' if result['torch_passed'] else 'DISAGREE'}; "
            f"tensorrt {trt_verdict}")
    return "\n".join([f"gpu_check on {result['device_name']} ({result['net']}, {result['precision']}):", *lines, last])


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (run with --smoke to check the logic on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    part1 = torch_part(args, device, t0)
    part2 = tensorrt_part(args, time.perf_counter())
    result = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or "cpu", "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke,
              "steps": args.steps, "warmup": args.warmup, "iters": args.iters, **part1, "torch_passed": part1["passed"],
              "tensorrt": part2, "seconds": time.perf_counter() - t0}
    result["passed"] = part1["passed"] and part2.get("passed", part2["status"] == "skipped")
    out = args.json or (pathlib.Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if out is not None:
        from pid_trt.atomic import atomic_write_json

        atomic_write_json(out, result)
    print(summary(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The TensorRT backend: the cond and denoise engines of one sidecar, run on torch CUDA buffers.

`tensorrt` comes from pid_trt.engines.detect.load_tensorrt (TensorRT 10/11 Python API). Profiles are chosen per
output size from the sidecar (its `profiles` order is the engines' optimization-profile order); one execution
context per profile; `execute_async_v3` on torch's current stream, so a whole decode can be captured in a CUDA
graph.
"""
from __future__ import annotations

import pathlib
from typing import Any

import torch

from pid_trt.config import NetConfig
from pid_trt.engines.detect import detect_local, load_tensorrt
from pid_trt.engines.profiles import Profile
from pid_trt.engines.store import EngineStore, canonical_names, find_engine, sidecar_weights_id, verify_engine_files
from pid_trt.errors import PiDInputError
from pid_trt.export.manifest import check_weights
from pid_trt.integrity import file_sha256


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.BF16: torch.bfloat16, trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}
    return table[dtype]


class _Engine:
    """One deserialized engine with an execution context per optimization profile."""

    def __init__(self, trt, runtime, path: pathlib.Path):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise PiDInputError(f"TensorRT could not deserialize {path} (built by another TensorRT version?)")
        self.trt = trt
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.contexts: dict[int, Any] = {}

    def dtype(self, name: str) -> torch.dtype:
        return _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))

    def run(self, profile: int, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stream = torch.cuda.current_stream().cuda_stream
        ctx = self.contexts.get(profile)
        if ctx is None:
            ctx = self.contexts[profile] = self.engine.create_execution_context()
            ctx.set_optimization_profile_async(profile, stream)
        inputs = {n: feeds[n].to(self.dtype(n)).contiguous() for n in self.inputs}
        for name, tensor in inputs.items():
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self.dtype(name), device="cuda")
            ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not ctx.execute_async_v3(stream):
            raise PiDInputError("TensorRT execution failed (see the TensorRT log above)")
        return outputs


class TensorRTBackend:
    name = "tensorrt"
    graph_safe = True

    def __init__(self, sidecar_path: pathlib.Path):
        trt = load_tensorrt()
        root = sidecar_path.parent
        self.sidecar = EngineStore(root).read_sidecar(sidecar_path.stem)  # validated against its schema
        self.net_config = NetConfig.from_dict(self.sidecar["net_config"])
        self.precision = self.sidecar["precision"]
        self.weights = self.sidecar.get("weights") or {"sha256": self.sidecar["weights_sha256"]}
        self.device = torch.device("cuda")
        self.profiles = [Profile.from_json(p) for p in self.sidecar["profiles"]]
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        files = verify_engine_files(root, self.sidecar)  # inside the directory and unchanged since the build
        self.cond_engine = _Engine(trt, self.runtime, files["cond"])
        self.denoise_engine = _Engine(trt, self.runtime, files["denoise"])
        self._feature_names = self.cond_engine.outputs

    @classmethod
    def from_engine_dir(cls, engine_dir: pathlib.Path, *, backbone: str | None, ckpt: str | None,
                        precision: str | None, checkpoint: str | pathlib.Path | None = None) -> "TensorRTBackend":
        """The usable engine in `engine_dir` for backbone/ckpt/precision and, with `checkpoint`, built from those
        weights; any of them may be left out when the directory's finished engines leave only one choice."""
        finished = [e.sidecar for e in EngineStore(engine_dir).scan() if e.sidecar is not None]
        if backbone is not None:
            want = canonical_names(backbone, ckpt or "2k")
            finished = [s for s in finished if (s["backbone"], s["ckpt"]) == want]
        if checkpoint is not None:
            wanted = file_sha256(checkpoint)[:8]
            finished = [s for s in finished if sidecar_weights_id(s) in (wanted, None)]
        choices = sorted({(s["backbone"], s["ckpt"], s["precision"], sidecar_weights_id(s) or "unknown")
                          for s in finished if precision in (None, s["precision"])})
        if len(choices) != 1:
            found = ", ".join(f"{b} {c} {p} weights {w}" for b, c, p, w in choices) or "none"
            raise PiDInputError(f"{engine_dir}: {len(choices)} matching engine sets ({found}); pass --backbone/"
                                "--ckpt, the precision or --checkpoint (the weights) to choose one")
        backbone, ckpt, precision, weights = choices[0]
        trt_version, gpu = detect_local()
        lookup = find_engine(engine_dir, backbone, ckpt, precision, trt_version=trt_version,
                             compute_capability=gpu.compute_capability if gpu else None,
                             weights=None if weights == "unknown" else weights)
        path = lookup.require()
        if checkpoint is not None:
            sidecar = lookup.sidecar
            check_weights(sidecar.get("weights") or {"sha256": sidecar["weights_sha256"]}, checkpoint,
                          f"engine {sidecar['name']}", sidecar["net_config"])
        return cls(path)

    def _profile(self, batch: int, height: int, width: int) -> int:
        static = [i for i, p in enumerate(self.profiles) if p.kind == "static" and p.covers(width, height, batch)]
        dynamic = [i for i, p in enumerate(self.profiles) if p.kind != "static" and p.covers(width, height, batch)]
        if not static + dynamic:
            raise PiDInputError(f"{width}x{height} batch {batch} lies outside every engine profile "
                                f"({', '.join(p.describe() for p in self.profiles)}); rebuild with --shape {width}x{height}")
        return (static + dynamic)[0]

    def cond(self, lq_latent, height, width):
        profile = self._profile(lq_latent.shape[0], height, width)
        out = self.cond_engine.run(profile, {"lq_latent": lq_latent})
        return [out[n] for n in self._feature_names]

    def denoise(self, x, t, y, sigma, feats):
        profile = self._profile(x.shape[0], x.shape[2], x.shape[3])
        feeds = {"x": x, "t": t, "y": y, "degrade_sigma": sigma, **dict(zip(self._feature_names, feats))}
        return self.denoise_engine.run(profile, feeds)["velocity"].float()

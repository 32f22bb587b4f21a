"""The TensorRT backend: the cond and denoise engines of one sidecar, run on torch CUDA buffers.

`tensorrt` comes from pid_trt.engines.detect.load_tensorrt (TensorRT 10/11 Python API). Profiles are chosen per
output size and batch from the sidecar (its `profiles` order is the engines' optimization-profile order). Each
(profile, input shapes) gets its own execution context, so a CUDA graph captured for one shape keeps a context set up
for that shape; no context owns activation memory: all of them share one user-managed scratch buffer sized for the
largest profile (as the C++ runtime does), which is safe because one decoder's engine runs are serialised on one
stream. `execute_async_v3` runs on torch's current stream of the backend's device, so a whole decode can be captured.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any

import torch

from pid_trt.config import NetConfig
from pid_trt.engines.detect import detect_local, load_tensorrt, tensorrt_logger
from pid_trt.engines.profiles import Profile
from pid_trt.engines.store import (
    EngineStore,
    canonical_names,
    find_engine,
    gpu_model_note,
    sidecar_weights,
    sidecar_weights_id,
    verify_engine_files,
)
from pid_trt.errors import PiDInputError
from pid_trt.export.manifest import check_weights, checkpoint_weights, weights_id
from pid_trt.runtime.device import resolve_device

log = logging.getLogger(__name__)


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.BF16: torch.bfloat16, trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}
    return table[dtype]


class _Engine:
    """One deserialized engine with an execution context per (profile, input shapes), all on shared scratch memory."""

    def __init__(self, trt, runtime, path: pathlib.Path, device: torch.device):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise PiDInputError(f"TensorRT could not deserialize {path} (built by another TensorRT version?)")
        self.trt, self.device, self.path = trt, device, path
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.scratch: torch.Tensor | None = None  # set by the backend: one buffer for both engines
        self.contexts: dict[tuple, Any] = {}  # never evicted: captured CUDA graphs refer to them

    def dtype(self, name: str) -> torch.dtype:
        return _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))

    def _context(self, profile: int, shapes: dict[str, tuple[int, ...]], stream: int):
        key = (profile, tuple(shapes.items()))
        ctx = self.contexts.get(key)
        if ctx is not None:
            return ctx
        ctx = self.engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise PiDInputError(f"TensorRT could not create an execution context for {self.path.name} (see its log)")
        ctx.set_device_memory(self.scratch.data_ptr(), self.scratch.numel())
        if not ctx.set_optimization_profile_async(profile, stream):
            raise PiDInputError(f"{self.path.name}: TensorRT rejected optimization profile {profile}")
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                lo, _, hi = self.engine.get_tensor_profile_shape(name, profile)
                raise PiDInputError(f"{self.path.name}: input {name} of shape {list(shape)} lies outside engine "
                                    f"profile {profile} ({list(lo)} .. {list(hi)})")
        self.contexts[key] = ctx
        return ctx

    def run(self, profile: int, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stream = torch.cuda.current_stream(self.device).cuda_stream
        inputs = {n: feeds[n].to(self.device, self.dtype(n)).contiguous() for n in self.inputs}
        ctx = self._context(profile, {n: tuple(t.shape) for n, t in inputs.items()}, stream)
        for name, tensor in inputs.items():
            ctx.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self.dtype(name), device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not ctx.execute_async_v3(stream):
            raise PiDInputError("TensorRT execution failed (see the TensorRT log above)")
        return outputs


class TensorRTBackend:
    name = "tensorrt"
    graph_safe = True

    def __init__(self, sidecar_path: pathlib.Path, device: str | torch.device | None = None):
        trt = load_tensorrt()
        root = sidecar_path.parent
        self.sidecar = EngineStore(root).read_sidecar(sidecar_path.stem)  # validated against its schema
        self.net_config = NetConfig.from_dict(self.sidecar["net_config"])
        self.precision = self.sidecar["precision"]
        self.weights = sidecar_weights(self.sidecar)
        self.device = resolve_device(None if device is None else str(device))
        if self.device.type != "cuda":
            raise PiDInputError(f"TensorRT engines run on a CUDA GPU, not {self.device}; pass --device cuda[:N]")
        self.profiles = [Profile.from_json(p) for p in self.sidecar["profiles"]]
        self.text_length = self.net_config.text_limit  # the engines' profiles fix the caption length
        files = verify_engine_files(root, self.sidecar)  # inside the directory and unchanged since the build
        with torch.cuda.device(self.device):  # TensorRT works on the current device
            self.runtime = trt.Runtime(tensorrt_logger())
            self.cond_engine = _Engine(trt, self.runtime, files["cond"], self.device)
            self.denoise_engine = _Engine(trt, self.runtime, files["denoise"], self.device)
            size = max(e.engine.device_memory_size_v2 for e in (self.cond_engine, self.denoise_engine))
            scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        self.cond_engine.scratch = self.denoise_engine.scratch = scratch
        self.held_activation_bytes = scratch.numel()  # allocated already: a decode's activations live in it
        self._feature_names = self.cond_engine.outputs
        note = gpu_model_note(self.sidecar, torch.cuda.get_device_name(self.device))
        if note:
            log.warning(note)

    @classmethod
    def from_engine_dir(cls, engine_dir: pathlib.Path, *, backbone: str | None, ckpt: str | None,
                        precision: str | None, device: str | torch.device | None = None,
                        checkpoint: str | pathlib.Path | None = None) -> "TensorRTBackend":
        """The usable engine in `engine_dir` for backbone/ckpt/precision and, with `checkpoint`, built from those
        weights, on `device`; any of them may be left out when the directory's finished engines leave only one
        choice."""
        finished = [e.sidecar for e in EngineStore(engine_dir).scan() if e.sidecar is not None]
        if backbone is not None:
            want = canonical_names(backbone, ckpt or "2k")
            finished = [s for s in finished if (s["backbone"], s["ckpt"]) == want]
        if checkpoint is not None:
            wanted = weights_id(checkpoint_weights(checkpoint))
            finished = [s for s in finished if sidecar_weights_id(s) in (wanted, None)]
        choices = sorted({(s["backbone"], s["ckpt"], s["precision"], sidecar_weights_id(s) or "unknown",
                           s.get("fp8_id") or "") for s in finished if precision in (None, s["precision"])})
        if len(choices) != 1:
            found = ", ".join(f"{b} {c} {p} weights {w}" + (f" fp8 {q}" if q else "")
                              for b, c, p, w, q in choices) or "none"
            raise PiDInputError(f"{engine_dir}: {len(choices)} matching engine sets ({found}); pass --backbone/"
                                "--ckpt, the precision or --checkpoint (the weights) to choose one, and keep FP8 "
                                "engines of different keep-high lists in separate --engine-dir folders")
        backbone, ckpt, precision, weights, fp8 = choices[0]
        resolved = resolve_device(None if device is None else str(device))
        trt_version, gpu = detect_local(resolved.index if resolved.type == "cuda" else None)
        lookup = find_engine(engine_dir, backbone, ckpt, precision, trt_version=trt_version,
                             compute_capability=gpu.compute_capability if gpu else None,
                             weights=None if weights == "unknown" else weights, fp8=fp8 or None)
        path = lookup.require()
        if checkpoint is not None:
            sidecar = lookup.sidecar
            check_weights(sidecar_weights(sidecar), checkpoint, f"engine {sidecar['name']}", sidecar["net_config"])
        return cls(path, resolved)

    def _profile(self, batch: int, height: int, width: int) -> int:
        static = [i for i, p in enumerate(self.profiles) if p.kind == "static" and p.covers(width, height, batch)]
        dynamic = [i for i, p in enumerate(self.profiles) if p.kind != "static" and p.covers(width, height, batch)]
        if static + dynamic:
            return (static + dynamic)[0]
        ranges = ", ".join(p.describe() for p in self.profiles)
        if any(p.covers(width, height) for p in self.profiles):
            teacher = self.sidecar["sampler"]["kind"] == "teacher"
            guided = " (a guided teacher decode runs batch 2B)" if teacher else ""
            images = batch // 2 if teacher else batch  # build doubles a teacher's batch range itself
            raise PiDInputError(f"batch {batch}{guided} lies outside every engine profile ({ranges}); rebuild with "
                                f"pid-trt build --batch 1:{images}")
        raise PiDInputError(f"{width}x{height} lies outside every engine profile ({ranges}); rebuild with "
                            f"pid-trt build --size {width}x{height}")

    def cond(self, lq_latent, height, width):
        profile = self._profile(lq_latent.shape[0], height, width)
        with torch.cuda.device(self.device):
            out = self.cond_engine.run(profile, {"lq_latent": lq_latent})
        return [out[n] for n in self._feature_names]

    def denoise(self, x, t, y, sigma, feats):
        if y.shape[1] > self.text_length:  # exact: the net attends over the first txt_max_length tokens only
            y = y[:, : self.text_length]
        elif y.shape[1] < self.text_length:
            raise PiDInputError(f"the caption embedding has {y.shape[1]} tokens; these TensorRT engines take "
                                f"{self.text_length} (the net's txt_max_length; longer ones are truncated exactly as "
                                f"the net does): pid-trt embed writes {self.text_length}-token embeddings")
        profile = self._profile(x.shape[0], x.shape[2], x.shape[3])
        feeds = {"x": x, "t": t, "y": y, "degrade_sigma": sigma, **dict(zip(self._feature_names, feats))}
        with torch.cuda.device(self.device):
            return self.denoise_engine.run(profile, feeds)["velocity"].float()

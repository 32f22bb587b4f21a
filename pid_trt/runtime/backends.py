"""Denoiser backends behind one small interface: torch (the reference PiDNet) and ONNX Runtime (exported graphs).

A backend computes the per-decode latent features (`cond`) and one denoiser evaluation (`denoise`); the sampler
loop lives in pid_trt.sampler, not here. The TensorRT backend is pid_trt.runtime.tensorrt.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any, Protocol

import numpy as np
import torch

from pid_trt.config import NetConfig
from pid_trt.errors import MissingDependencyError, PiDInputError
from pid_trt.export.manifest import read_manifest
from pid_trt.model import PiDNet
from pid_trt.sampler import autocast


class Backend(Protocol):
    name: str
    device: torch.device
    net_config: NetConfig
    precision: str  # what it computes in: fp32, bf16 (torch autocast or the export's), fp16, fp8
    weights: dict[str, Any]  # where its weights came from (a manifest's weights block)
    graph_safe: bool  # can the decode be captured in a CUDA graph?

    def cond(self, lq_latent: torch.Tensor, height: int, width: int) -> list[torch.Tensor]: ...

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                feats: list[torch.Tensor]) -> torch.Tensor: ...


class TorchBackend:
    """The reference PiDNet; `precision="bf16"` mirrors upstream's autocast, `compile=True` uses torch.compile."""

    name = "torch"

    def __init__(self, net: PiDNet, device: str | torch.device | None = None, precision: str = "fp32",
                 compile: bool = False, weights: dict[str, Any] | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device).eval()
        self.net_config = net.config
        self.precision = precision
        self.weights = dict(weights or {"source": "in-memory"})  # where the weights came from
        self.graph_safe = self.device.type == "cuda" and not compile
        self._denoise = torch.compile(net.denoise, dynamic=False) if compile else net.denoise

    @torch.no_grad()
    def cond(self, lq_latent, height, width):
        with autocast(self.precision, self.device):
            return self.net.condition(lq_latent, height, width)

    @torch.no_grad()
    def denoise(self, x, t, y, sigma, feats):
        with autocast(self.precision, self.device):
            return self._denoise(x, t, y, sigma, feats)


class OnnxRuntimeBackend:
    """The exported cond + denoise graphs (or a single graph) in ONNX Runtime, CPU or CUDA provider."""

    name = "onnxruntime"
    graph_safe = False

    def __init__(self, onnx_dir: str | pathlib.Path, device: str | torch.device | None = None, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime") from None
        self.dir = pathlib.Path(onnx_dir)
        # the files ONNX Runtime reads are checked first: inside the directory, unchanged since export, finite
        self.manifest = read_manifest(self.dir, verify=True)
        self.net_config = NetConfig.from_dict(self.manifest["net_config"])
        self.weights, self.precision = self.manifest["weights"], self.manifest["precision"]
        want_cuda = str(device or "cpu").startswith("cuda")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # ONNX Runtime's own log lines (provider fallbacks and the like) go straight to stderr, past our logging;
        # only -v (debug logging of pid_trt) lets them through
        severity = 0 if logging.getLogger(__name__).isEnabledFor(logging.DEBUG) else 3
        ort.set_default_logger_severity(severity)
        opts.log_severity_level = severity
        # idle worker threads would spin between calls, starving torch's sampler arithmetic on small machines
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for name, graph in self.manifest["graphs"].items():
            path = self.dir / graph["file"]
            self.sessions[name] = ort.InferenceSession(str(path), opts, providers=providers)
        # what actually runs (ORT silently falls back to CPU when CUDA is unusable)
        used = next(iter(self.sessions.values())).get_providers()
        self.device = torch.device("cuda" if used[0] == "CUDAExecutionProvider" else "cpu")
        self.providers = used

    @staticmethod
    def _np(t: torch.Tensor, dtype) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)

    def _inputs(self, session, feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        out = {}
        for i in session.get_inputs():
            if i.type not in types:
                raise PiDInputError(f"ONNX Runtime cannot feed {i.type} input {i.name}; "
                                    "use the tensorrt backend for this precision")
            out[i.name] = self._np(feeds[i.name], types[i.type])
        return out

    def cond(self, lq_latent, height, width):
        if "model" in self.sessions:  # single-graph export: the latent goes in with every step
            return [lq_latent]
        s = self.sessions["cond"]
        outs = s.run(None, self._inputs(s, {"lq_latent": lq_latent}))
        return [torch.from_numpy(o) for o in outs]

    def denoise(self, x, t, y, sigma, feats):
        if "model" in self.sessions:
            s = self.sessions["model"]
            feeds = {"x": x, "t": t, "y": y, "lq_latent": feats[0], "degrade_sigma": sigma}
        else:
            s = self.sessions["denoise"]
            names = [o.name for o in self.sessions["cond"].get_outputs()]
            feeds = {"x": x, "t": t, "y": y, "degrade_sigma": sigma, **dict(zip(names, feats))}
        v = s.run(None, self._inputs(s, feeds))[0]
        return torch.from_numpy(v).float()

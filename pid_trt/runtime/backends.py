"""Denoiser backends behind one small interface: torch (the reference PiDNet) and ONNX Runtime (exported graphs).

A backend computes the per-decode latent features (`cond`) and one denoiser evaluation (`denoise`); the sampler
loop lives in pid_trt.sampler, not here. The TensorRT backend is pid_trt.runtime.tensorrt.
"""
from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from pid_trt.config import NetConfig
from pid_trt.errors import MissingDependencyError, PiDInputError
from pid_trt.export.manifest import read_manifest
from pid_trt.model import PiDNet
from pid_trt.runtime.device import resolve_device
from pid_trt.sampler import autocast

log = logging.getLogger(__name__)


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
        self.device = resolve_device(None if device is None else str(device))
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


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError('onnxruntime is not installed: pip install "pid-trt[onnxruntime]" (CPU) or '
                                     '"pid-trt[onnxruntime-cuda]" (CUDA, see README.md)') from None
    return onnxruntime


def onnxruntime_device(device: str | torch.device | None = None) -> torch.device:
    """The device an ONNX Runtime backend runs on: `device` as `resolve_device` reads it; None: the GPU
    `resolve_device` picks when this ONNX Runtime has its CUDA provider, else the CPU."""
    if device is None and "CUDAExecutionProvider" not in _onnxruntime().get_available_providers():
        return torch.device("cpu")
    return resolve_device(None if device is None else str(device))


def ort_session(model: pathlib.Path | bytes, providers: Sequence = ("CPUExecutionProvider",), threads: int = 0):
    """An ONNX Runtime session on a model file (or serialized model) with pid-trt's session options; `providers`
    as ONNX Runtime takes them (names, or (name, options) pairs)."""
    ort = _onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # ONNX Runtime's own log lines (provider fallbacks and the like) go straight to stderr, past our logging;
    # only -v (debug logging of pid_trt) lets them through
    severity = 0 if log.isEnabledFor(logging.DEBUG) else 3
    ort.set_default_logger_severity(severity)
    opts.log_severity_level = severity
    # idle worker threads would spin between calls, starving torch's sampler arithmetic on small machines
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=list(providers))


def session_feeds(session, feeds: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` as the arrays an ONNX Runtime session takes: its inputs, each in the input's type."""
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    out = {}
    for i in session.get_inputs():
        if i.type not in types:
            raise PiDInputError(f"ONNX Runtime cannot feed {i.type} input {i.name}; "
                                "use the tensorrt backend for this precision")
        value = feeds[i.name]
        if torch.is_tensor(value):
            value = value.detach().to("cpu", torch.float32).numpy()
        out[i.name] = np.asarray(value).astype(types[i.type], copy=False)
    return out


class OnnxRuntimeBackend:
    """The exported cond + denoise graphs (or a single graph) in ONNX Runtime, CPU or CUDA provider.

    `device` None: the CUDA GPU `resolve_device` picks when this ONNX Runtime has its CUDA provider, else the CPU.
    A CUDA device that ONNX Runtime cannot use is an error, never a silent fallback to the CPU."""

    name = "onnxruntime"
    graph_safe = False

    def __init__(self, onnx_dir: str | pathlib.Path, device: str | torch.device | None = None, threads: int = 0):
        ort = _onnxruntime()
        self.dir = pathlib.Path(onnx_dir)
        # the files ONNX Runtime reads are checked first: inside the directory, unchanged since export, finite
        self.manifest = read_manifest(self.dir, verify=True)
        self.net_config = NetConfig.from_dict(self.manifest["net_config"])
        self.weights, self.precision = self.manifest["weights"], self.manifest["precision"]
        self.device = onnxruntime_device(device)
        # with their options (the GPU's index): layer-wise parity opens its sessions with the same providers
        self.session_providers: list = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            self.session_providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index}))
        self.sessions = {name: ort_session(self.dir / graph["file"], self.session_providers, threads)
                         for name, graph in self.manifest["graphs"].items()}
        # what actually runs: ORT falls back to the CPU when CUDA is unusable, and logs it only
        self.providers = next(iter(self.sessions.values())).get_providers()
        if self.device.type == "cuda" and self.providers[0] != "CUDAExecutionProvider":
            raise MissingDependencyError(
                f"ONNX Runtime {ort.__version__} cannot run on {self.device} (its providers here: "
                f"{', '.join(ort.get_available_providers())}; in use: {', '.join(self.providers)}); install the CUDA "
                "route of README.md (pid-trt[onnxruntime-cuda]) or pass --device cpu")

    def cond(self, lq_latent, height, width):
        if "model" in self.sessions:  # single-graph export: the latent goes in with every step
            return [lq_latent]
        s = self.sessions["cond"]
        outs = s.run(None, session_feeds(s, {"lq_latent": lq_latent}))
        return [torch.from_numpy(o) for o in outs]  # host arrays: they only ever go back into ONNX Runtime

    def step_feeds(self, x, t, y, sigma, feats) -> tuple[str, dict[str, torch.Tensor]]:
        """The graph one denoiser call runs ("denoise", or "model" for a single-graph export) and its inputs."""
        if "model" in self.sessions:  # the latent stands in for the features
            return "model", {"x": x, "t": t, "y": y, "lq_latent": feats[0], "degrade_sigma": sigma}
        names = [o.name for o in self.sessions["cond"].get_outputs()]
        return "denoise", {"x": x, "t": t, "y": y, "degrade_sigma": sigma, **dict(zip(names, feats))}

    def denoise(self, x, t, y, sigma, feats):
        graph, feeds = self.step_feeds(x, t, y, sigma, feats)
        s = self.sessions[graph]
        v = s.run(None, session_feeds(s, feeds))[0]
        return torch.from_numpy(v).to(self.device, torch.float32)

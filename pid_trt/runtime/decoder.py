"""PiDDecoder: what users call. Loads a backend, checks inputs, runs the sampler loop (once, for every backend),
with per-sample seeded noise and, on CUDA, the whole decode replayed from a CUDA graph."""
from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import torch

from pid_trt import memory, teacher
from pid_trt.config import BACKENDS, NetConfig
from pid_trt.engines.store import EngineStore
from pid_trt.errors import PiDInputError
from pid_trt.export.manifest import check_weights, read_manifest
from pid_trt.runtime.backends import OnnxRuntimeBackend, TorchBackend
from pid_trt.sampler import SamplerOptions, check_dtypes, check_inputs, check_seed, noise_draws, run_decode, to_uint8


def _kind(source: pathlib.Path) -> str:
    if source.is_dir():
        if (source / "manifest.json").is_file():
            return "onnx"
        if EngineStore(source).scan():
            return "engines"
        raise PiDInputError(f"{source} holds neither an ONNX export (manifest.json) nor engines (*.json sidecars)")
    if source.is_file():
        return "checkpoint"
    raise PiDInputError(f"{source} does not exist")


class PiDDecoder:
    """Decode latents with any backend: `PiDDecoder.load(source).decode(lq_latent, caption_embedding)`."""

    def __init__(self, backend, *, entry=None, cuda_graph: bool = True):
        self.backend = backend
        self.entry = entry  # registry entry when known (sampler type, size warnings)
        self.cuda_graph = cuda_graph and getattr(backend, "graph_safe", False)
        self._graphs: dict[tuple, Any] = {}

    # -- loading ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | pathlib.Path, backend: str | None = None, device: str | None = None, *,
             backbone: str | None = None, ckpt: str | None = None, precision: str = "fp32",
             compile: bool = False, cuda_graph: bool = True,
             checkpoint: str | pathlib.Path | None = None) -> "PiDDecoder":
        """`source`: an engine directory (tensorrt), an ONNX directory (onnxruntime) or a checkpoint file (torch,
        needs backbone/ckpt). `backend` overrides the choice where the source allows it.

        `checkpoint` (with an engine or ONNX directory): the weights the artifacts must have been made from; an
        engine set or export of other (or RANDOM) weights is refused before it is loaded."""
        from pid_trt.registry import resolve

        source = pathlib.Path(source)
        kind = _kind(source)
        if backend is not None and backend not in BACKENDS:
            raise PiDInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        entry = resolve(backbone, ckpt or "2k") if backbone else None
        if kind == "checkpoint":
            if entry is None:
                raise PiDInputError("a checkpoint needs --backbone and --ckpt to know its net")
            if backend not in (None, "torch"):
                raise PiDInputError(f"a checkpoint runs on the torch backend; export it for {backend}")
            if checkpoint is not None and pathlib.Path(checkpoint).resolve() != source.resolve():
                raise PiDInputError(f"two checkpoints given ({source} and {checkpoint}); give one")
            from pid_trt.checkpoint import load_net

            weights = {"source": str(source.resolve())}
            return cls(TorchBackend(load_net(source, entry.net.config), device, precision, compile, weights),
                       entry=entry, cuda_graph=cuda_graph)
        if kind == "onnx":
            if backend not in (None, "onnxruntime"):
                raise PiDInputError(f"{source} is an ONNX export: use --backend onnxruntime or build engines")
            if checkpoint is not None:
                manifest = read_manifest(source)
                check_weights(manifest["weights"], checkpoint, f"ONNX export {source}", manifest["net_config"])
            be = OnnxRuntimeBackend(source, device)
            m = be.manifest
            if entry is None and m.get("backbone"):
                entry = resolve(m["backbone"], m["ckpt"])
            return cls(be, entry=entry, cuda_graph=False)
        if backend not in (None, "tensorrt"):
            raise PiDInputError(f"{source} holds TensorRT engines: use --backend tensorrt")
        from pid_trt.runtime.tensorrt import TensorRTBackend

        engine_precision = None if precision == "fp32" else precision  # fp32 is also the torch default
        be = TensorRTBackend.from_engine_dir(source, backbone=backbone, ckpt=ckpt, precision=engine_precision,
                                             device=device, checkpoint=checkpoint)
        if entry is None:
            entry = resolve(be.sidecar["backbone"], be.sidecar["ckpt"])
        return cls(be, entry=entry, cuda_graph=cuda_graph)

    @classmethod
    def from_net(cls, net, device: str | None = None, precision: str = "fp32", compile: bool = False,
                 cuda_graph: bool = True, entry=None, weights: dict[str, Any] | None = None) -> "PiDDecoder":
        """A torch decoder of a net in memory; `weights` describes where its weights came from (a weights block
        as manifests write it, e.g. {"source": "random"}; default: in-memory)."""
        return cls(TorchBackend(net, device, precision, compile, weights), entry=entry, cuda_graph=cuda_graph)

    @property
    def net_config(self) -> NetConfig:
        return self.backend.net_config

    @property
    def weights(self) -> dict[str, Any]:
        """Where the weights came from: the export's or engines' weights block, or the torch net's source."""
        return self.backend.weights

    @property
    def precision(self) -> str:
        """What the backend computes in: torch fp32 or bf16 autocast, or the export's / engines' precision."""
        return self.backend.precision

    def check_memory(self, width: int, height: int, batch: int, guided: bool = False,
                     text_len: int | None = None) -> None:
        """Refuse, before any work, a decode of W×H at `batch` (captions of `text_len` tokens) whose estimated
        memory exceeds what the device has free now (pid_trt.memory); the message names the largest size that
        fits."""
        dev = self.backend.device
        budget = memory.available_bytes(dev)
        if dev.type == "cuda":  # torch's cache holds memory the decode can reuse
            budget += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        # TensorRT engines hold their activation scratch from load on: the estimate's activations live there
        budget += getattr(self.backend, "held_activation_bytes", 0)
        memory.check_fits(self.net_config, width, height, batch * (2 if guided else 1), self.precision, budget,
                          f"{dev} ({self.backend.name})", text_len=text_len)

    @property
    def sampler(self) -> str:
        """"student" (the distilled 4-step loop) or "teacher" (DPM-Solver++ with guidance), by checkpoint."""
        return getattr(self.entry, "sampler", "student") if self.entry else "student"

    def options(self, steps: int | None = None, cfg: float | None = None, shift: float | None = None
                ) -> SamplerOptions:
        """This decoder's sampler options with the checkpoint's defaults filled in (validated now, not mid-run)."""
        return SamplerOptions.resolve(steps=steps, cfg=cfg, shift=shift, entry=self.entry)

    # -- decoding -----------------------------------------------------------------------------------------
    def noise_for(self, batch_shape: tuple[int, int, int, int], steps: int, seed: int,
                  indices: Sequence[int] | None = None, draws: int | None = None) -> list[torch.Tensor]:
        """Gaussian draws in upstream's order, sample i from its own generator seeded seed + its global index
        (default 0..B-1): batching and world size never change an image."""
        b = batch_shape[0]
        indices = range(b) if indices is None else indices
        if len(indices) != b:
            raise PiDInputError(f"{len(indices)} global indices for a batch of {b}")
        n = noise_draws(steps) if draws is None else draws
        dev = self.backend.device
        per_sample = []
        for i in indices:
            g = torch.Generator(device=dev).manual_seed(seed + i)
            per_sample.append([torch.randn((1, *batch_shape[1:]), generator=g, device=dev) for _ in range(n)])
        return [torch.cat([s[k] for s in per_sample]) for k in range(n)]

    def decode(self, lq_latent: torch.Tensor, caption_embedding: torch.Tensor, degrade_sigma=0.0, *,
               seed: int = 0, noise: Sequence[torch.Tensor] | None = None, steps: int | None = None,
               output: str = "float", indices: Sequence[int] | None = None, round_bf16: bool = True,
               cfg: float | None = None, negative_embedding: torch.Tensor | None = None, shift: float | None = None,
               on_step: Callable[[int, torch.Tensor], None] | None = None,
               options: SamplerOptions | None = None) -> torch.Tensor:
        """Images [B,3,H,W]: float in [-1, 1] (`output="float"`) or uint8 with upstream's truncation ("uint8").

        `noise`: tensors in upstream's draw order (initial, then each re-noise); otherwise drawn per sample from
        generators seeded `seed + index`, with `indices` the samples' global indices (default 0..B-1).
        Latent and caption are rounded to bf16 first, as upstream's callers do (`round_bf16=False`: as given).
        Teacher checkpoints take `cfg`, `negative_embedding` (the negative prompt's caption embedding) and `shift`.
        `options` (from `self.options(...)`) may stand in for `steps`, `cfg` and `shift`.
        """
        if output not in ("float", "uint8"):
            raise PiDInputError(f"output must be 'float' or 'uint8', got {output!r}")
        if options is None:
            options = self.options(steps, cfg, shift)
        elif (steps, cfg, shift) != (None, None, None):
            raise PiDInputError("pass either options or steps/cfg/shift, not both")
        if options.sampler == "student" and negative_embedding is not None:
            raise PiDInputError("a negative embedding applies to the undistilled teacher checkpoints only")
        check_dtypes(lq_latent=lq_latent, caption_embedding=caption_embedding, negative_embedding=negative_embedding)
        if noise is None:
            check_seed(seed, indices, lq_latent.shape[0] if lq_latent.dim() else 0)
        dev = self.backend.device
        z = lq_latent.to(dev, torch.float32)
        y = caption_embedding.to(dev, torch.float32)
        neg = None if negative_embedding is None else negative_embedding.to(dev, torch.float32)
        if round_bf16:
            z, y = z.bfloat16().float(), y.bfloat16().float()
            neg = None if neg is None else neg.bfloat16().float()
        warn = self.entry.size_warning if self.entry is not None else None
        sigma, (hh, ww) = check_inputs(self.net_config, z, y, degrade_sigma, size_warning=warn)
        neg = teacher.check_guidance(y, neg, options.cfg) if options.sampler == "teacher" else None
        key = (tuple(z.shape), tuple(y.shape), options, neg is None)
        if key not in self._graphs:  # a replayed graph has fitted before
            self.check_memory(ww, hh, z.shape[0], options.guided, y.shape[1])
        shape = (z.shape[0], 3, hh, ww)
        draws = options.noise_draws
        if noise is None:
            noise = self.noise_for(shape, options.steps, seed, indices, draws)
        noise = [n.to(dev, torch.float32) for n in noise]
        if len(noise) < draws or any(tuple(n.shape) != shape for n in noise[:draws]):
            raise PiDInputError(f"noise must be {draws} tensors of shape {list(shape)} for {options.steps} steps")

        run = self.capturable(options, (hh, ww), on_step)
        args = (z, y, sigma, noise[:draws], neg)
        if self.cuda_graph and dev.type == "cuda" and on_step is None:
            from pid_trt.runtime.cuda_graphs import replay

            image = replay(self._graphs, key, run, args, dev)
        else:
            image = run(*args)
        return to_uint8(image) if output == "uint8" else image

    def capturable(self, options: SamplerOptions, size_hw: tuple[int, int],
                   on_step: Callable[[int, torch.Tensor], None] | None = None) -> Callable[..., torch.Tensor]:
        """What a decode runs after its input checks, `run(z, y, sigma, noise, negative) -> image`; on CUDA it is
        captured in a CUDA graph, so it must not read device values on the host, use the global RNG or copy host
        data to the device (tests/runtime/test_capture_safety.py runs it under a spy that checks this)."""
        def run(z, y, sigma, noise, neg):
            return run_decode(self.backend.cond, self.backend.denoise, z, y, sigma, size_hw, noise.__getitem__,
                              options, neg, on_step)
        return run

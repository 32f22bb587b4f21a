"""`pid-trt parity`: a backend against the torch reference on the same weights, inputs and noise.

Exit status: 0 pass, 1 fail (the report says which step diverged), 2 unusable input (files, weights, options).
"""
from __future__ import annotations

import contextlib
import pathlib
import sys
import tempfile
from typing import Any

import click
import torch

from pid_trt.engines.profiles import parse_size
from pid_trt.errors import PiDInputError
from pid_trt.tiny import DEFAULT_STRUCTURE


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE tiny-net config overrides; values are ints, floats or strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise PiDInputError(f"--tiny-override {item!r} is not KEY=VALUE (e.g. patch_depth=2)")
        for cast in (int, float, str):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
    return out


def source_options(fn):
    """Where the net under test comes from; shared by `parity` and `bench`."""
    options = [
        click.option("--engine-dir", type=click.Path(path_type=pathlib.Path), help="TensorRT engines (pid-trt build)."),
        click.option("--onnx-dir", type=click.Path(path_type=pathlib.Path), help="ONNX export (pid-trt export)."),
        click.option("--checkpoint", type=click.Path(path_type=pathlib.Path), help="model_ema_bf16.pth (torch)."),
        click.option("--backbone", help="Backbone of --checkpoint (or to pick engines)."),
        click.option("--ckpt", default=None, help="Checkpoint type of --checkpoint: 2k, 2kto4k, 2kto4k_v1pt5."),
        click.option("--tiny", "tiny_structure", default=None, metavar="STRUCTURE",
                     help=f"Built-in tiny seeded net of this structure (the default, {DEFAULT_STRUCTURE}, "
                          "when no files are given)."),
        click.option("--tiny-seed", type=int, default=None,
                     help="Seed of the tiny net [default 0]; with --onnx-dir/--engine-dir it names the reference "
                          "weights of an in-memory tiny export."),
        click.option("--tiny-init", type=click.Choice(["tame", "aggressive"]), default="tame", show_default=True),
        click.option("--tiny-override", multiple=True, metavar="KEY=VALUE",
                     help="Tiny-net config key, e.g. patch_depth=2 (repeatable)."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when available]."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "fp8"]), default=None,
                     help="torch: autocast (fp32|bf16); tiny onnxruntime: the export's precision [default fp32]."),
        click.option("--compile", "compile_", is_flag=True, help="torch backend: torch.compile the denoiser."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class Sources:
    """Opens decoders for one source on several backends; a tiny net is exported to ONNX once, when needed."""

    def __init__(self, *, engine_dir=None, onnx_dir=None, checkpoint=None, backbone=None, ckpt=None,
                 tiny_structure=None, tiny_seed=None, tiny_init="tame", tiny_override=(), device=None,
                 precision=None, compile_=False, export_dir: pathlib.Path | None = None,
                 reference_checkpoint: pathlib.Path | None = None, random_reference: bool = False):
        files = [s for s in (engine_dir, onnx_dir, checkpoint) if s is not None]
        if len(files) > 1:
            raise PiDInputError("give at most one of --engine-dir, --onnx-dir or --checkpoint")
        if tiny_structure is not None and files:
            raise PiDInputError("--tiny builds its own net: drop --engine-dir/--onnx-dir/--checkpoint "
                                "(use --tiny-seed to name an in-memory tiny export's weights)")
        if checkpoint is not None and backbone is None:
            raise PiDInputError("--checkpoint needs --backbone and --ckpt to know its net")
        self.file = files[0] if files else None
        self.kind = ("engines" if engine_dir else "onnx" if onnx_dir else "checkpoint" if checkpoint else "tiny")
        self.backbone, self.ckpt, self.device, self.compile = backbone, ckpt, device, compile_
        self.precision = precision
        self.tiny = (tiny_structure or DEFAULT_STRUCTURE, 0 if tiny_seed is None else tiny_seed, tiny_init,
                     parse_overrides(tiny_override))
        self.tiny_seed = tiny_seed
        self.export_dir = export_dir
        self.reference_checkpoint = reference_checkpoint
        self.random_reference = random_reference  # bench: any weights of the right shape will do
        self._net = None
        self._reference = None
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        self._stack.close()

    def tiny_net(self):
        if self._net is None:
            from pid_trt.tiny import tiny_net

            structure, seed, init, overrides = self.tiny
            try:
                self._net = tiny_net(structure, seed, init, **overrides)
            except KeyError:
                raise PiDInputError(f"unknown tiny structure {structure!r}") from None
            except TypeError as e:
                raise PiDInputError(f"bad --tiny-override: {e}") from None
        return self._net

    def describe_tiny(self) -> str:
        structure, seed, init, overrides = self.tiny
        extra = "".join(f", {k}={v}" for k, v in overrides.items())
        return f"tiny {structure} seed {seed} ({init}{extra})"

    def _tiny_export(self, precision: str) -> pathlib.Path:
        from pid_trt.export import export_onnx

        out = self.export_dir
        if out is None:
            out = pathlib.Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="pid-trt-"))) / "onnx"
        click.echo(f"exporting the {self.describe_tiny()} net to ONNX ({precision}) in {out} ...", err=True)
        return export_onnx(out, net=self.tiny_net(), precision=precision)

    def decoder(self, backend: str | None, cuda_graph: bool = True):
        """The decoder under test on `backend` (None: what the source implies)."""
        from pid_trt.parity import load_candidate
        from pid_trt.runtime import PiDDecoder

        if self.kind == "tiny":
            backend = backend or "torch"
            if backend == "torch":
                return PiDDecoder.from_net(self.tiny_net(), self.device, self._torch_precision(), self.compile,
                                           cuda_graph=cuda_graph)
            if backend == "onnxruntime":
                return load_candidate(self._tiny_export(self.precision or "fp32"), "onnxruntime", self.device)
            raise PiDInputError("a tiny net has no TensorRT engines here: build them with `pid-trt build` and pass "
                                "--engine-dir (with --tiny-seed for the reference)")
        if self.kind in ("onnx", "engines") and backend == "torch":  # the same net in torch
            return PiDDecoder.from_net(self.reference_net()[0], self.device, self._torch_precision(), self.compile,
                                       cuda_graph=cuda_graph)
        return load_candidate(self.file, backend, self.device, backbone=self.backbone, ckpt=self.ckpt,
                              precision=self._torch_precision() if self.kind == "checkpoint" else "fp32",
                              compile=self.compile, cuda_graph=cuda_graph)

    def _torch_precision(self) -> str:
        p = self.precision or "fp32"
        if p not in ("fp32", "bf16"):
            raise PiDInputError(f"the torch backend runs fp32 or bf16 (autocast), not {p}")
        return p

    def reference_net(self):
        """The fp32 weights of the net under test (see pid_trt.parity.reference_net) and how they were found."""
        if self._reference is None:
            self._reference = self._find_reference()
        return self._reference

    def _find_reference(self):
        from pid_trt.export import read_manifest
        from pid_trt.parity import reference_net

        if self.kind == "tiny":
            return self.tiny_net(), self.describe_tiny()
        if self.kind == "checkpoint":
            from pid_trt.registry import resolve

            return reference_net(resolve(self.backbone, self.ckpt or "2k").net.config, None, checkpoint=self.file)
        if self.kind == "onnx":
            m = read_manifest(self.file)
            meta = (m["net_config"], m["weights"]["sha256"], m["weights"].get("source"))
        else:
            meta = self._sidecar_meta()
        if self.random_reference:
            from pid_trt.export import build_net

            return build_net(net_config=meta[0])[0], "random weights of the same shape"
        return reference_net(*meta, checkpoint=self.reference_checkpoint, tiny_seed=self.tiny_seed,
                             tiny_init=self.tiny[2])

    def _sidecar_meta(self):
        import json

        for path in sorted(self.file.glob("*.json")):
            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                sidecar = json.loads(path.read_text())
                if isinstance(sidecar, dict) and sidecar.get("format") == "pid-trt-engine":
                    return sidecar["net_config"], sidecar.get("weights_sha256"), None
        raise PiDInputError(f"{self.file} holds no engine sidecar (*.json)")


def _read_inputs(latents: pathlib.Path | None, caption_embedding: pathlib.Path | None) -> dict[str, torch.Tensor]:
    from pid_trt.cli.decode_cmd import load_safetensors, read_latents

    out: dict[str, torch.Tensor] = {}
    if latents is not None:
        samples = read_latents(latents, None)
        shapes = {tuple(z.shape) for z, _ in samples}
        if len(shapes) != 1:
            raise PiDInputError(f"{latents}: parity needs latents of one shape, found {sorted(shapes)}")
        out["lq_latent"] = torch.cat([z for z, _ in samples])
        out["degrade_sigma"] = torch.tensor([s for _, s in samples])
    if caption_embedding is not None:
        y = load_safetensors(caption_embedding, "caption embedding").get("y")
        if y is None or y.dim() != 3:
            raise PiDInputError(f"{caption_embedding} has no 'y' tensor of shape [B, L, D]")
        out["y"] = y
    return out


@click.command("parity")
@click.option("--backend", type=click.Choice(["tensorrt", "onnxruntime", "torch"]), default=None,
              help="Backend under test [default: what the source implies; torch for a tiny net].")
@source_options
@click.option("--reference-checkpoint", type=click.Path(path_type=pathlib.Path),
              help="Weights of the reference when the export/engines do not record a usable source.")
@click.option("--against", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Reference precision: auto = fp32 for fp32/fp8, bf16 autocast for bf16/fp16.")
@click.option("--latents", type=click.Path(path_type=pathlib.Path),
              help="safetensors with lq_latent (+ degrade_sigma), as `pid-trt decode` reads them [default: drawn].")
@click.option("--caption-embedding", type=click.Path(path_type=pathlib.Path),
              help="safetensors with y [1 or B, L, D] [default: drawn].")
@click.option("--size", default=None, help="Output WxH of a drawn latent [default: a 4x6 latent].")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch of drawn inputs.")
@click.option("--sigma", type=float, default=0.25, show_default=True, help="degrade σ of drawn inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of drawn inputs and of the noise.")
@click.option("--steps", type=int, default=4, show_default=True)
@click.option("--export-dir", type=click.Path(path_type=pathlib.Path),
              help="Tiny net on onnxruntime: keep its ONNX export here [default: a temporary directory].")
@click.option("--report", type=click.Path(path_type=pathlib.Path), help="Write the JSON report here.")
def command(backend, engine_dir, onnx_dir, checkpoint, backbone, ckpt, tiny_structure, tiny_seed, tiny_init,
            tiny_override, device, precision, compile_, reference_checkpoint, against, latents, caption_embedding,
            size, batch, sigma, seed, steps, export_dir, report) -> None:
    """Check a backend against the torch reference; exit 0 pass, 1 fail, 2 unusable input."""
    from pid_trt.images import atomic_write_json
    from pid_trt.parity import backend_precision, json_safe, make_inputs, run_parity, summary_lines, tolerance_for
    from pid_trt.runtime import PiDDecoder

    sources = Sources(engine_dir=engine_dir, onnx_dir=onnx_dir, checkpoint=checkpoint, backbone=backbone, ckpt=ckpt,
                      tiny_structure=tiny_structure, tiny_seed=tiny_seed, tiny_init=tiny_init,
                      tiny_override=tiny_override, device=device, precision=precision, compile_=compile_,
                      export_dir=export_dir, reference_checkpoint=reference_checkpoint)
    try:
        candidate = sources.decoder(backend, cuda_graph=False)
        ref_net, ref_how = sources.reference_net()
        cand_precision = backend_precision(candidate.backend)
        tolerance = tolerance_for(cand_precision, None if against == "auto" else against)
        given = _read_inputs(latents, caption_embedding)
        noise_for = PiDDecoder.from_net(ref_net, candidate.backend.device, cuda_graph=False).noise_for
        inputs = make_inputs(candidate.net_config, noise_for, seed=seed, size=parse_size(size) if size else None,
                             batch=batch, sigma=sigma, steps=steps, **given)
        result = run_parity(candidate, ref_net, inputs, tolerance)
    finally:
        sources.close()
    result = {"status": "pass" if result["passed"] else "fail", "backend": candidate.backend.name,
              "precision": cand_precision, "device": str(candidate.backend.device),
              "source": str(sources.file) if sources.file else sources.describe_tiny(),
              "reference_weights": ref_how, **result}
    click.echo(f"parity: {result['backend']} {cand_precision} on {result['device']} vs torch "
               f"{tolerance.reference_precision} ({ref_how})")
    for line in summary_lines(result):
        click.echo(line)
    if report is not None:
        atomic_write_json(report, json_safe(result))
    sys.exit(0 if result["passed"] else 1)

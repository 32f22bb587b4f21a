"""Text → diffusers LDM → PiD and the pipeline's own VAE, as upstream's `from_ldm` (docs/numerics.md §7, §10).

For each prompt (global index i) the pipeline runs at the PiD size / sr_scale with a generator seeded seed + i,
x_t is captured after each requested scheduler step K (σ = `scheduler.sigmas[K]`), and every capture plus the
final x0 is decoded by PiD (seed + i) and by the pipeline's own VAE. Files follow upstream's layout:

    <out>/<tag>/step_<label>/<i:08d>.<fmt>          PiD
    <out>/vae_decode/step_<label>/<i:08d>.<fmt>     native VAE decode, at the LDM size
    <out>/compare/<i:08d>.<fmt>                     top row VAE (bicubic-upsampled), bottom row PiD, one column per label

with labels "{K:02d}xt" (ascending) and "x0".
"""
from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from typing import Any

import torch

from pid_trt.diffusers import PIPELINE_CLASSES, decode_pipeline_latents
from pid_trt.errors import MissingDependencyError, PiDInputError
from pid_trt.formats import read_json
from pid_trt.images import resize, save_image, side_by_side
from pid_trt.latents import canonical_backbone
from pid_trt.runtime import PiDDecoder, resolve_device
from pid_trt.sampler import SamplerOptions, to_uint8
from pid_trt.workflows.decode import Captions, caption_row, check_captions, gather_records, my_share, output_tag
from pid_trt.workflows.sources import SourceInfo, describe_source

# upstream's per-backbone LDM steps and guidance defaults
LDM_DEFAULTS = {"flux": (28, 3.5), "sd3": (28, 4.0), "sdxl": (30, 7.5), "flux2": (50, 4.0),
                "flux2-klein-4b": (4, 1.0), "flux2-klein-9b": (4, 1.0), "qwenimage": (50, 4.0),
                "qwenimage-2512": (50, 4.0), "zimage": (50, 5.0), "zimage-turbo": (9, 0.0)}
_LONG_PROMPTS = {"max_sequence_length": 512}
EXTRA_KWARGS = {"flux": _LONG_PROMPTS, "flux2": _LONG_PROMPTS, "flux2-klein-4b": _LONG_PROMPTS,
                "flux2-klein-9b": _LONG_PROMPTS, "zimage": _LONG_PROMPTS, "zimage-turbo": _LONG_PROMPTS,
                "qwenimage": {**_LONG_PROMPTS, "true_cfg_scale": 4.0, "negative_prompt": " "},
                "qwenimage-2512": {**_LONG_PROMPTS, "true_cfg_scale": 4.0, "negative_prompt": " "}}
DEFAULT_RESOLUTION = (2048, 2048)


def ldm_size(backbone: str, resolution: tuple[int, int], sr_scale: int) -> tuple[int, int]:
    """The LDM's (W, H) for a final PiD size: resolution / sr_scale, on the pipeline's size grid."""
    name = canonical_backbone(backbone)
    width, height = resolution
    multiple = 8 if name == "sdxl" else 16  # diffusers' packed/patched pipelines need multiples of 16
    if width % (sr_scale * multiple) or height % (sr_scale * multiple):
        raise PiDInputError(f"PiD cannot produce {width}x{height} for {name}: width and height must be multiples "
                            f"of {sr_scale * multiple} (the LDM runs at size / {sr_scale} on a {multiple}-px grid)")
    return width // sr_scale, height // sr_scale


def ldm_settings(backbone: str, steps: int | None, guidance_scale: float | None,
                 save_xt_steps: Sequence[int] = ()) -> tuple[int, float]:
    """(LDM steps, guidance) with upstream's per-backbone defaults; every capture K must lie in [1, steps]."""
    default_steps, default_guidance = LDM_DEFAULTS[canonical_backbone(backbone)]
    steps = default_steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PiDInputError(f"LDM steps must be a positive integer, got {steps!r}")
    bad = [k for k in save_xt_steps if not 1 <= k <= steps]
    if bad:
        raise PiDInputError(f"--save-xt-steps must lie in [1, {steps}] (LDM steps), got {bad}")
    return steps, default_guidance if guidance_scale is None else guidance_scale


def check_pipeline_dir(model_dir: str | pathlib.Path, backbone: str) -> None:
    """A local diffusers pipeline directory of the backbone's class, by its model_index.json (cheap: nothing is
    loaded); one PiDInputError line otherwise."""
    name = canonical_backbone(backbone)
    model_dir = pathlib.Path(model_dir)
    index = model_dir / "model_index.json"
    if not index.is_file():
        raise PiDInputError(f"{model_dir} is not a diffusers pipeline directory (no model_index.json)")
    values = read_json(index, "pipeline index")
    found = values.get("_class_name") if isinstance(values, dict) else None
    if found != PIPELINE_CLASSES[name]:
        raise PiDInputError(f"{model_dir} holds a {found}, but --backbone {name} needs a {PIPELINE_CLASSES[name]}")


def preflight(model_dir: str | pathlib.Path, prompts: int, size: tuple[int, int], steps: int | None = None,
              cfg: float | None = None, shift: float | None = None, **source: Any
              ) -> tuple[list[int], SourceInfo, SamplerOptions]:
    """Everything `generate` can refuse before anything large is loaded: the pipeline folder of the source's
    backbone, this rank's share of `prompts`, the sampler options, a size PiD cannot produce or the device cannot
    hold (`source`: describe_source's arguments). Returns (this rank's prompt indices, the source, the options)."""
    backbone = source["backbone"]
    check_pipeline_dir(model_dir, backbone)
    indices = my_share(prompts, "prompt")
    info = describe_source(**source)
    options = info.options(steps, cfg, shift)
    ldm_size(backbone, size, info.net_config.sr_scale)
    info.check_request([size])
    return indices, info, options


def load_pipeline(model_dir: str | pathlib.Path, backbone: str, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> Any:
    """The backbone's diffusers pipeline from a local directory (model_index.json); never downloads."""
    check_pipeline_dir(model_dir, backbone)
    model_dir = pathlib.Path(model_dir)
    try:
        import diffusers
    except ImportError:
        raise MissingDependencyError('generate needs diffusers: pip install "pid-trt[diffusers]"') from None
    device = resolve_device(None if device is None else str(device))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, torch_dtype=dtype)
    except Exception as e:  # noqa: BLE001 -- diffusers and its components raise many types for bad folders
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise PiDInputError(f"could not load the pipeline in {model_dir}: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run_ldm(pipeline: Any, backbone: str, prompt: str, *, width: int, height: int, steps: int,
            guidance_scale: float, seed: int, save_xt_steps: Sequence[int] = (),
            **pipeline_kwargs: Any) -> dict[str, tuple[torch.Tensor, int | None, float]]:
    """Run the LDM once; → {label: (latents as the pipeline holds them, scheduler steps taken or None for x0,
    scheduler σ)} for each capture ("{K:02d}xt", ascending) and "x0"."""
    name = canonical_backbone(backbone)
    captured: dict[int, torch.Tensor] = {}
    wanted = set(save_xt_steps)

    def capture(pipe, step_index, timestep, callback_kwargs):
        if step_index + 1 in wanted:  # after K scheduler steps; clone, as .cpu() of a CPU tensor aliases it
            captured[step_index + 1] = callback_kwargs["latents"].detach().clone()
        return callback_kwargs

    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    kwargs = {**EXTRA_KWARGS.get(name, {}), **pipeline_kwargs}
    final = pipeline(prompt=prompt, height=height, width=width, num_inference_steps=steps,
                     guidance_scale=guidance_scale, generator=generator, output_type="latent",
                     callback_on_step_end=capture, callback_on_step_end_tensor_inputs=["latents"], **kwargs).images
    sigmas = pipeline.scheduler.sigmas  # the schedule of this run (dynamic shifts depend on the size)
    out = {f"{k:02d}xt": (captured[k], k, float(sigmas[k])) for k in sorted(wanted)}
    out["x0"] = (final, None, float(sigmas[-1]))
    return out


def generate(pipeline: Any, decoder: PiDDecoder, prompts: Sequence[str], captions: Captions, *, backbone: str,
             out_dir: str | pathlib.Path, resolution: tuple[int, int] = DEFAULT_RESOLUTION,
             ldm_steps: int | None = None, guidance_scale: float | None = None, save_xt_steps: Sequence[int] = (),
             seed: int = 0, indices: Sequence[int] | None = None, fmt: str = "jpg",
             options: SamplerOptions | None = None, negative_embedding: torch.Tensor | None = None,
             progress: bool = True, prompt_file: str | pathlib.Path | None = None) -> list[dict[str, Any]]:
    """Generate prompts[i] for each global index i in `indices` (default all) and write upstream's layout under
    `out_dir`; returns one record per prompt of every rank (input, seed, paths relative to `out_dir`, σ values,
    timings). `prompt_file`: where the prompts came from (recorded as each record's input; None: --prompt).

    `resolution` is the final PiD (W, H); the LDM runs at it / sr_scale. `captions`: PiD caption embeddings by
    global index (see `Captions`). `options`: PiD's sampler (default: the checkpoint's). The PiD folder is named
    like upstream's (`decode.output_tag`). Seeds: seed + i for both the LDM generator and PiD's noise, so outputs do
    not depend on how prompts are split across ranks.
    """
    from tqdm import tqdm

    name = canonical_backbone(backbone)
    ldm_steps, guidance_scale = ldm_settings(name, ldm_steps, guidance_scale, save_xt_steps)
    width, height = ldm_size(name, resolution, decoder.net_config.sr_scale)
    options = options or decoder.options()
    tag = output_tag(decoder, options, backbone)
    indices = range(len(prompts)) if indices is None else indices
    check_captions(captions, len(prompts))
    out_dir = pathlib.Path(out_dir)
    records = []
    for i in tqdm(indices, desc="generate", unit="prompt", disable=None if progress else True):
        t0 = time.perf_counter()
        results = run_ldm(pipeline, name, prompts[i], width=width, height=height, steps=ldm_steps,
                          guidance_scale=guidance_scale, seed=seed + i, save_xt_steps=save_xt_steps)
        record = {"index": i, "prompt": prompts[i], "input": str(prompt_file) if prompt_file else "--prompt",
                  "input_index": i, "seed": seed + i, "ldm_size_wxh": [width, height], "ldm_steps": ldm_steps,
                  "guidance_scale": guidance_scale, "ldm_seconds": round(time.perf_counter() - t0, 4), "steps": {}}
        y = caption_row(captions, i)
        row_vae, row_pid = [], []
        for label, (latents, taken, scheduler_sigma) in results.items():
            t0 = time.perf_counter()
            image, lq, sigma = decode_pipeline_latents(pipeline, decoder, latents, y, backbone=name, step=taken,
                                                       height=height, width=width, seed=seed, indices=[i],
                                                       options=options, negative_embedding=negative_embedding)
            step = {"sigma": float(sigma[0]), "scheduler_sigma": scheduler_sigma,
                    "pid_seconds": round(time.perf_counter() - t0, 4)}
            pid_u8 = to_uint8(image)[0]
            path = out_dir / tag / f"step_{label}" / f"{i:08d}.{fmt}"
            save_image(pid_u8, path)
            step["image"] = str(path.relative_to(out_dir))
            row_pid.append(pid_u8)
            if getattr(pipeline, "vae", None) is not None:
                from pid_trt.vae import baseline_decode

                base = baseline_decode(name, pipeline.vae, lq)
                path = out_dir / "vae_decode" / f"step_{label}" / f"{i:08d}.{fmt}"
                save_image(to_uint8(base)[0], path)
                step["baseline"] = str(path.relative_to(out_dir))
                row_vae.append(to_uint8(resize(base, *image.shape[-2:]))[0])
            record["steps"][label] = step
        path = out_dir / "compare" / f"{i:08d}.{fmt}"
        save_image(side_by_side([r for r in (row_vae, row_pid) if r]), path)
        record["compare"] = str(path.relative_to(out_dir))
        records.append(record)
    return gather_records(records)

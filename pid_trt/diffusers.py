"""PiD as the decode stage of a diffusers pipeline: `use_pid(pipe, decoder, ...)`, then call `pipe(...)` as usual.

While PiD is in place, a call runs the pipeline's denoiser unchanged with `output_type="latent"`, converts the latent
bit-exactly (`pid_trt.latents.from_pipeline_output`), decodes it with the `PiDDecoder` (image i of the call seeded
seed + i, as `pid-trt decode/generate` do) and hands the result to the pipeline's own image processor, so "pil",
"np" and "pt" mean what they mean in diffusers, at PiD's size (the LDM size × the checkpoint's SR factor).
`output_type="latent"` is untouched. The pipeline object brings everything, so diffusers is never imported here.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, NamedTuple

import torch

from pid_trt.config import BACKBONE_ALIASES
from pid_trt.errors import PiDInputError
from pid_trt.latents import LATENT_CHANNELS, from_pipeline_output
from pid_trt.runtime import PiDDecoder
from pid_trt.text import NEGATIVE_PROMPT, CaptionEncoder, EmbeddingCache

# The diffusers text-to-image pipeline of each backbone (pid-trt generate loads these). Aliases share a class and
# convert alike, so a pipeline maps back to the first backbone listed for its class.
PIPELINE_CLASSES = {
    "flux": "FluxPipeline", "flux2": "Flux2Pipeline", "flux2-klein-4b": "Flux2KleinPipeline",
    "flux2-klein-9b": "Flux2KleinPipeline", "zimage": "ZImagePipeline", "zimage-turbo": "ZImagePipeline",
    "sd3": "StableDiffusion3Pipeline", "sdxl": "StableDiffusionXLPipeline", "qwenimage": "QwenImagePipeline",
    "qwenimage-2512": "QwenImagePipeline",
}
# PiDDecoder.decode arguments that use_pid sets itself
_SET_BY_USE_PID = ("lq_latent", "caption_embedding", "degrade_sigma", "seed", "steps", "output", "indices")


class PiDOutput(NamedTuple):
    """One PiD decode of pipeline latents: the image [B, 3, H, W] float in [-1, 1] and the conditioning it used."""

    image: torch.Tensor
    lq_latent: torch.Tensor
    degrade_sigma: torch.Tensor


def pipeline_backbone(pipeline: Any) -> str:
    """The backbone whose latents `pipeline` makes, from its class (or a base class: subclasses work too)."""
    for cls in type(pipeline).__mro__:
        for backbone, name in PIPELINE_CLASSES.items():
            if cls.__name__ == name:
                return backbone
    supported = ", ".join(sorted(set(PIPELINE_CLASSES.values())))
    raise PiDInputError(f"PiD cannot decode a {type(pipeline).__name__}; supported pipelines: {supported}")


def check_decoder(decoder: PiDDecoder, backbone: str) -> None:
    """PiDInputError unless `decoder` is PiD for `backbone` latents (by its checkpoint, else by its latent width)."""
    family = BACKBONE_ALIASES.get(backbone, backbone)
    entry = decoder.entry
    if entry is not None and BACKBONE_ALIASES.get(entry.backbone, entry.backbone) != family:
        raise PiDInputError(f"the decoder is PiD for {entry.backbone}, but the pipeline makes {backbone} latents; "
                            f"load a PiD checkpoint for {family}")
    channels = decoder.net_config["lq_latent_channels"]
    if channels != LATENT_CHANNELS[backbone]:
        raise PiDInputError(f"the decoder takes {channels}-channel latents, but {backbone} latents have "
                            f"{LATENT_CHANNELS[backbone]}; load a PiD checkpoint for {family}")


def decode_pipeline_latents(pipeline: Any, decoder: PiDDecoder, latents: torch.Tensor, caption_embedding: torch.Tensor, *,
                   backbone: str | None = None, step: int | None = None, height: int | None = None,
                   width: int | None = None, sigma: float | None = None, seed: int = 0,
                   indices: list[int] | None = None, **decode_options: Any) -> PiDOutput:
    """What `pipeline` returned with `output_type="latent"` (or an x_t capture after `step` scheduler steps) → PiD.

    The one place where pipeline latents meet PiD; `use_pid` and `pid-trt generate` both decode through it.
    `backbone` defaults to the pipeline's; `height`/`width` are the LDM size in px (needed for packed latents);
    σ is the latent's own (0 for a finished sample) unless `sigma` overrides it; sample i's noise is seeded
    seed + indices[i] (default indices 0..B-1). `decode_options` go to `PiDDecoder.decode` (steps or options,
    cfg, shift, negative_embedding, ...).
    """
    backbone = backbone or pipeline_backbone(pipeline)
    check_decoder(decoder, backbone)
    lq_latent, degrade_sigma = from_pipeline_output(backbone, latents, pipeline, step=step, height=height, width=width)
    if sigma is not None:
        degrade_sigma = torch.full_like(degrade_sigma, sigma)
    image = decoder.decode(lq_latent, caption_embedding, degrade_sigma, seed=seed, indices=indices, **decode_options)
    return PiDOutput(image, lq_latent, degrade_sigma)


class PiDStage:
    """What `use_pid` returns: PiD decodes the pipeline's calls until `.restore()` (also a context manager).

    `last` holds the previous call's `PiDOutput` (the raw [-1, 1] image and the converted latent, e.g. for
    `pid_trt.vae.baseline_decode(backbone, pipe.vae, stage.last.lq_latent)`); `pipe.vae` is never touched.
    """

    def __init__(self, pipeline: Any, decoder: PiDDecoder, backbone: str, caption_encoder: CaptionEncoder | None,
                 caption_embedding: torch.Tensor | None, seed: int, sigma: float | None, steps: int | None,
                 decode_options: dict[str, Any]):
        self.pipeline = pipeline
        self.decoder = decoder
        self.backbone = backbone
        self.caption_encoder = caption_encoder
        self.caption_embedding = caption_embedding
        self.seed = seed
        self.sigma = sigma
        self.steps = steps
        self.decode_options = decode_options
        self.last: PiDOutput | None = None
        self._cache = EmbeddingCache() if caption_encoder is not None else None
        self._original = type(pipeline)
        self._signature = inspect.signature(self._original.__call__)
        self._swapped = _subclass_calling(self._original, self)
        pipeline.__class__ = self._swapped  # this instance only: `pipe(...)` looks __call__ up on the class

    @property
    def active(self) -> bool:
        return type(self.pipeline) is self._swapped

    def restore(self) -> None:
        """Give the pipeline its own decode back (the VAE); calling it again does nothing."""
        if self.active:
            self.pipeline.__class__ = self._original

    def __enter__(self) -> PiDStage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __call__(self, pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        """The pipeline call with PiD as its decode stage."""
        call = self._signature.bind(pipeline, *args, **kwargs)

        def given(name: str) -> Any:
            param = self._signature.parameters.get(name)
            default = None if param is None or param.default is inspect.Parameter.empty else param.default
            return call.arguments.get(name, default)

        output_type, return_dict = given("output_type"), given("return_dict")
        if output_type == "latent":
            return self._original.__call__(pipeline, *args, **kwargs)
        prompts = self._prompts(given("prompt"))  # before the LDM runs: a missing caption fails fast
        height, width = self._ldm_size(pipeline, given)
        call.arguments.update(output_type="latent", return_dict=True)
        out = self._original.__call__(*call.args, **call.kwargs)
        with torch.no_grad():
            y = self._captions(prompts, out.images.shape[0])
            self.last = decode_pipeline_latents(pipeline, self.decoder, out.images, y, backbone=self.backbone, height=height,
                                       width=width, sigma=self.sigma, seed=self.seed, steps=self.steps,
                                       **self._decode_options())
            image = self.last.image
            if getattr(pipeline, "watermark", None) is not None:  # SDXL watermarks its own decodes too
                image = pipeline.watermark.apply_watermark(image)
            out.images = pipeline.image_processor.postprocess(image, output_type=output_type)
        return out if return_dict else out.to_tuple()

    def _prompts(self, prompt: str | list[str] | None) -> list[str] | None:
        if prompt is None:
            if self.caption_embedding is None:
                raise PiDInputError("this call passes prompt_embeds without a prompt, so there is no caption to "
                                    "encode for PiD; use use_pid(..., caption_embedding=y) (y from pid-trt embed)")
            return None
        return [prompt] if isinstance(prompt, str) else list(prompt)

    def _captions(self, prompts: list[str] | None, images: int) -> torch.Tensor:
        """y [images, L, D]; images are prompt-major (all images of prompt 0, then prompt 1, ...), as in diffusers."""
        if self.caption_embedding is None:
            return self.caption_encoder.encode_cached(prompts, self._cache).repeat_interleave(images // len(prompts), 0)
        y = self.caption_embedding
        if y.shape[0] == images:
            return y
        if y.shape[0] == 1:
            return y.expand(images, -1, -1)
        if prompts and y.shape[0] == len(prompts):
            return y.repeat_interleave(images // len(prompts), 0)
        raise PiDInputError(f"caption_embedding has {y.shape[0]} rows, but this call makes {images} images"
                            f"{f' from {len(prompts)} prompts' if prompts else ''}: give 1 row, one per prompt or "
                            "one per image")

    @staticmethod
    def _ldm_size(pipeline: Any, given) -> tuple[int | None, int | None]:
        """The size the pipeline runs at: the call's, else its default (as diffusers computes it); unknown when an
        input image sets it (from_pipeline_output then asks for it unless the latent is square)."""
        default = None
        if given("image") is None and getattr(pipeline, "default_sample_size", None):
            default = pipeline.default_sample_size * pipeline.vae_scale_factor
        return given("height") or default, given("width") or default

    def _decode_options(self) -> dict[str, Any]:
        """The decode options; a teacher checkpoint gets the encoded negative prompt unless one was given."""
        if (self.decoder.sampler == "teacher" and self.caption_encoder is not None
                and "negative_embedding" not in self.decode_options):
            self.decode_options["negative_embedding"] = self.caption_encoder.encode_cached([NEGATIVE_PROMPT],
                                                                                           self._cache)
        return self.decode_options


def _subclass_calling(original: type, stage: PiDStage) -> type:
    """A subclass of `original`, named like it (save_pretrained records the name), whose __call__ is `stage`."""
    @functools.wraps(original.__call__)
    def __call__(self, *args, **kwargs):
        return stage(self, *args, **kwargs)

    return type(original.__name__, (original,), {"__call__": __call__, "__module__": original.__module__,
                                                 "__qualname__": original.__qualname__, "__doc__": original.__doc__,
                                                 "_pid_stage": stage})


def use_pid(pipe: Any, decoder: PiDDecoder, *, caption_encoder: CaptionEncoder | str | os.PathLike | None = None,
            caption_embedding: torch.Tensor | None = None, seed: int = 0, sigma: float | None = None,
            steps: int | None = None, **decode_options: Any) -> PiDStage:
    """Make PiD the decode stage of `pipe`: afterwards `pipe(...)` returns PiD's images (see the module docstring).

    * `decoder`: any PiDDecoder (engines, ONNX, checkpoint) for the pipeline's backbone.
    * Captions: `caption_encoder` (a CaptionEncoder or a local Gemma-2 directory) encodes each call's prompts,
      cached like `pid-trt embed`; or `caption_embedding` y [1, L, D] (every image), [prompts, L, D] or
      [images, L, D] is used as given (needed for calls with prompt_embeds and no prompt). Images are
      prompt-major: prompt p's num_images_per_prompt images come together, as diffusers orders them.
    * `seed`: image i of a call uses seed + i. `sigma`: PiD's degrade σ (default: the latent's, 0 when finished).
      `steps` and `decode_options` (cfg, shift, negative_embedding, ...) go to `PiDDecoder.decode`.

    Returns a `PiDStage`; `.restore()` (or leaving a `with` block) puts the pipeline's VAE decode back. Using PiD on
    a pipeline that already uses it replaces the earlier stage.
    """
    backbone = pipeline_backbone(pipe)
    check_decoder(decoder, backbone)
    if caption_encoder is None and caption_embedding is None:
        raise PiDInputError("use_pid needs a caption for PiD: caption_encoder= (a CaptionEncoder or a local "
                            "gemma-2-2b-it directory) or caption_embedding= (y from pid-trt embed)")
    if caption_encoder is not None and caption_embedding is not None:
        raise PiDInputError("give use_pid caption_encoder= or caption_embedding=, not both")
    if caption_embedding is not None:
        if not isinstance(caption_embedding, torch.Tensor) or caption_embedding.dim() not in (2, 3):
            raise PiDInputError("caption_embedding must be a tensor y [L, D] or [N, L, D]")
        caption_embedding = caption_embedding[None] if caption_embedding.dim() == 2 else caption_embedding
    if isinstance(caption_encoder, (str, os.PathLike)):
        caption_encoder = CaptionEncoder.from_pretrained(caption_encoder)
    if sigma is not None and not 0.0 <= sigma <= 1.0:
        raise PiDInputError(f"sigma must lie in [0, 1], got {sigma}")
    allowed = set(inspect.signature(decoder.decode).parameters) - set(_SET_BY_USE_PID)
    unknown = sorted(set(decode_options) - allowed)
    if unknown:
        raise PiDInputError(f"unknown decode option(s) {', '.join(unknown)}; use_pid passes on "
                            f"{', '.join(sorted(allowed))}")
    previous = getattr(type(pipe), "_pid_stage", None)
    if previous is not None:
        previous.restore()
    return PiDStage(pipe, decoder, backbone, caption_encoder, caption_embedding, seed, sigma, steps,
                    dict(decode_options))

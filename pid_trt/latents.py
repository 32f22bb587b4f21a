"""Diffusers pipeline outputs -> PiD conditioning inputs (`lq_latent`, `degrade_sigma`), and back for the baseline.

A diffusers text-to-image pipeline hands over its latent in one of two places: the final x0 returned with
`output_type="latent"`, or an x_t taken in `callback_on_step_end` after K scheduler steps (the callback fires with
`step_index = K - 1`; clone `callback_kwargs["latents"]`, since `.cpu()` of a CPU tensor is the same tensor).
`from_pipeline_output` turns either into the [B, C, h, w] latent in the backbone's normalised space and its noise
level σ, following docs/numerics.md §7 and matching upstream PiD bit for bit.

Every fact the conversion needs can come from the pipeline object or be passed explicitly (explicit values win),
so the conversion also works with `pipeline=None`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from pid_trt.config import BACKBONES as ALL_BACKBONES
from pid_trt.config import RAE_BACKBONES
from pid_trt.errors import PiDInputError
from pid_trt.registry import pairs, resolve

# The backbones that are diffusers pipelines, and the latent channels PiD takes for each (FLUX.2 and Klein: the
# 2x2-patchified 128-channel grid), read off each backbone's official net.
BACKBONES = tuple(b for b in ALL_BACKBONES if b not in RAE_BACKBONES)
LATENT_CHANNELS = {b: resolve(b, next(ck for bb, ck in pairs() if bb == b)).net.config.lq_latent_channels
                   for b in BACKBONES}
_ALIASES = {"flux2-klein": "flux2-klein-4b"}
_NOT_DIFFUSERS = {"dinov2": "RAE", "siglip": "Scale-RAE"}

_PACKED_2X2 = ("flux", "qwenimage", "qwenimage-2512")  # tokens [B, (h/2)(w/2), 4C], channel c*4 + 2*py + px
_BN_NORMALISED = ("flux2", "flux2-klein-4b", "flux2-klein-9b")
_KLEIN = ("flux2-klein-4b", "flux2-klein-9b")
_ZIMAGE = ("zimage", "zimage-turbo")

# (scaling, shift) upstream uses to undo `(raw - shift) * scaling`; zimage reads its pipeline's VAE config instead
# and falls back to the FLUX.1 VAE values it ships with.
_AFFINE_NORMALISATION = {"flux": (0.3611, 0.1159), "sd3": (1.5305, 0.0609), "sdxl": (0.13025, 0.0)}
_FLUX1_VAE = (0.3611, 0.1159)

# Wan2.1 VAE statistics: the class defaults of diffusers' AutoencoderKLQwenImage.
QWEN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
QWEN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class BatchNormStats:
    """FLUX.2 VAE BatchNorm statistics (`pipeline.vae.bn`, eval mode, no affine)."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    eps: float = 1e-4

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> BatchNormStats:
        bn = getattr(getattr(pipeline, "vae", None), "bn", None)
        if bn is None:
            raise PiDInputError("the pipeline has no vae.bn; pass bn_stats=BatchNormStats(mean, var, eps) explicitly")
        return cls(bn.running_mean, bn.running_var, float(bn.eps))

    def mean_std(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, C, 1, 1] mean and std in `dtype`; std is computed in the buffer dtype first, as upstream does."""
        std = torch.sqrt(self.running_var + self.eps)
        return self.running_mean.view(1, -1, 1, 1).to(dtype), std.view(1, -1, 1, 1).to(dtype)


def canonical_backbone(backbone: str) -> str:
    """The registry name of a diffusers backbone; PiDInputError for RAE backbones and unknown names."""
    if backbone in _NOT_DIFFUSERS:
        raise PiDInputError(f"backbone {backbone!r} is a {_NOT_DIFFUSERS[backbone]} model, not a diffusers "
                            f"pipeline; its latents cannot be converted from a pipeline output")
    name = _ALIASES.get(backbone, backbone)
    if name not in LATENT_CHANNELS:
        raise PiDInputError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    return name


def sigma_for_step(sigmas: Sequence[float] | torch.Tensor, step: int | None) -> float:
    """σ of the latent after `step` scheduler steps (`sigmas[step]`), or the terminal σ (`sigmas[-1]`) for x0."""
    count = len(sigmas)
    if count < 2:
        raise PiDInputError(f"scheduler sigmas must have steps+1 >= 2 entries, got {count}")
    if step is None:
        return float(sigmas[-1])
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= count - 1:
        raise PiDInputError(f"step must be an integer in [1, {count - 1}] (scheduler steps taken), got {step!r}")
    return float(sigmas[step])


def sdxl_to_vp(latents: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
    """Move an Euler (VE) sample at σ_eu to the VP frame the PiD student was trained on.

    latent / sqrt(σ²+1) with a Python-float divisor (the op stays in the latent dtype), σ / sqrt(σ²+1) in double.
    """
    scale = (sigma * sigma + 1.0) ** 0.5
    return latents / scale, sigma / scale


def _latent_grid(height: int, width: int, vae_scale_factor: int) -> tuple[int, int]:
    """The (h, w) latent grid diffusers' packed pipelines use: both rounded down to even numbers."""
    return 2 * (height // (2 * vae_scale_factor)), 2 * (width // (2 * vae_scale_factor))


def unpack_flux(tokens: torch.Tensor, height: int, width: int, vae_scale_factor: int = 8) -> torch.Tensor:
    """Flux / Qwen-Image packed tokens [B, (h/2)(w/2), 4C] -> [B, C, h, w] for an LDM image of height x width px."""
    h, w = _latent_grid(height, width, vae_scale_factor)
    batch, _, dim = _check_tokens(tokens, (h // 2) * (w // 2), height, width)
    channels = dim // 4
    return tokens.reshape(batch, h // 2, w // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, h, w)


def pack_flux(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `unpack_flux`: [B, C, h, w] -> [B, (h/2)(w/2), 4C]."""
    batch, channels, h, w = latents.shape
    return (latents.reshape(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
            .reshape(batch, (h // 2) * (w // 2), channels * 4))


def unpack_flux2(tokens: torch.Tensor, height: int, width: int, vae_scale_factor: int = 8) -> torch.Tensor:
    """FLUX.2 tokens [B, (h/2)(w/2), 128] -> [B, 128, h/2, w/2].

    Diffusers scatters the tokens by their position ids, which are row-major over the grid: a plain transpose.
    """
    h, w = _latent_grid(height, width, vae_scale_factor)
    batch, _, dim = _check_tokens(tokens, (h // 2) * (w // 2), height, width)
    return tokens.permute(0, 2, 1).reshape(batch, dim, h // 2, w // 2)


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, 4C, h/2, w/2] with channel c*4 + 2*py + px (FLUX.2 VAE patching)."""
    batch, channels, h, w = latents.shape
    return (latents.reshape(batch, channels, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
            .reshape(batch, channels * 4, h // 2, w // 2))


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `patchify`: [B, 4C, h, w] -> [B, C, 2h, 2w]."""
    batch, channels, h, w = latents.shape
    return (latents.reshape(batch, channels // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
            .reshape(batch, channels // 4, h * 2, w * 2))


def from_pipeline_output(
    backbone: str,
    latents: torch.Tensor,
    pipeline: Any = None,
    *,
    step: int | None = None,
    height: int | None = None,
    width: int | None = None,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    vae_scale_factor: int | None = None,
    bn_stats: BatchNormStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a diffusers latent into PiD's (lq_latent [B, C, h, w], degrade_sigma [B] float32).

    `latents` is what the pipeline returned with `output_type="latent"` (`step=None`: the final x0, σ =
    `sigmas[-1]`), or a clone of `callback_kwargs["latents"]` from `callback_on_step_end` after K scheduler steps
    (`step=K`, σ = `sigmas[K]`). Facts read from `pipeline` unless given:

    * height, width: the LDM image size in px; needed for packed outputs (flux, flux2, klein x_t, qwenimage).
      The pipeline does not remember them, so pass them whenever the latent is packed.
    * sigmas: `pipeline.scheduler.sigmas` (steps+1 values). Optional for x0, where σ defaults to 0.
    * dtype: `pipeline.dtype`. x_t captures are cast to it after conversion, as upstream does; x0 keeps the
      latent's own dtype (Z-Image returns fp32 latents from a bf16 pipeline).
    * vae_scale_factor: `pipeline.vae_scale_factor`, else 8.
    * bn_stats: `pipeline.vae.bn`; needed only for a FLUX.2-klein final latent, which diffusers returns raw
      [B, 32, H/8, W/8] and which is re-patchified and BN-normalised here.

    The returned latent is upstream's `conv_*` tensor: x_t in the pipeline dtype, x0 in the dtype the pipeline
    returned it in (the same except for Z-Image), not yet rounded to bf16; `to_pid_inputs` does that rounding.
    σ is computed in Python double (SDXL's VP rescale included) and cast once to float32.
    """
    name = canonical_backbone(backbone)
    if not isinstance(latents, torch.Tensor):
        raise PiDInputError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if pipeline is not None:
        sigmas = pipeline.scheduler.sigmas if sigmas is None else sigmas
        dtype = pipeline.dtype if dtype is None else dtype
        vae_scale_factor = getattr(pipeline, "vae_scale_factor", None) if vae_scale_factor is None else vae_scale_factor
    vae_scale_factor = vae_scale_factor or 8
    sigma = 0.0 if sigmas is None and step is None else sigma_for_step(_required(sigmas, "sigmas", name), step)

    if name in _PACKED_2X2:
        tokens = _rank(latents, 3, name)
        lq = unpack_flux(tokens, *_size(height, width, name, tokens, vae_scale_factor), vae_scale_factor)
    elif name in _KLEIN and step is None and latents.dim() == 4:
        stats = bn_stats or BatchNormStats.from_pipeline(pipeline)
        lq = _bn_normalise(patchify(_even_grid(latents, name)), stats)
    elif name in _BN_NORMALISED:
        tokens = _rank(latents, 3, name)
        lq = unpack_flux2(tokens, *_size(height, width, name, tokens, vae_scale_factor), vae_scale_factor)
    else:
        lq = _rank(latents, 4, name)
        if name == "sdxl" and step is not None:
            lq, sigma = sdxl_to_vp(lq, sigma)

    if lq.shape[1] != LATENT_CHANNELS[name]:
        raise PiDInputError(f"{name} latents must have {LATENT_CHANNELS[name]} channels after conversion, "
                            f"got shape {tuple(latents.shape)}; check the backbone name")
    if step is not None and dtype is not None:
        lq = lq.to(dtype)
    return lq, torch.full((lq.shape[0],), sigma, dtype=torch.float32)


def to_pid_inputs(lq_latent: torch.Tensor, degrade_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round the latent to bf16 exactly as upstream does before PiD (σ stays float32)."""
    return lq_latent.to(torch.bfloat16), degrade_sigma.to(torch.float32)


def denormalize(
    backbone: str,
    lq_latent: torch.Tensor,
    pipeline: Any = None,
    *,
    bn_stats: BatchNormStats | None = None,
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    latents_mean: Sequence[float] | None = None,
    latents_std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Undo the backbone normalisation of a converted [B, C, h, w] latent for the native-VAE baseline.

    Same shape and dtype out; still patchified for flux2/klein and without Qwen's T axis (callers reshape for
    `vae.decode`). Explicit arguments win; otherwise, as upstream: flux/sd3/sdxl use fixed constants (raw =
    latent / scaling + shift), zimage reads `pipeline.vae.config` (FLUX.1 VAE values without a pipeline),
    qwenimage `vae.config.latents_mean/std` (Wan2.1 defaults) and flux2/klein `pipeline.vae.bn`.
    """
    name = canonical_backbone(backbone)
    x = _rank(lq_latent, 4, name)
    vae_config = getattr(getattr(pipeline, "vae", None), "config", None)
    if name in _BN_NORMALISED:
        mean, std = (bn_stats or BatchNormStats.from_pipeline(pipeline)).mean_std(x.dtype)
        return x * std + mean
    if name.startswith("qwenimage"):
        mean = _config_vector(latents_mean, vae_config, "latents_mean", QWEN_LATENTS_MEAN)
        std = _config_vector(latents_std, vae_config, "latents_std", QWEN_LATENTS_STD)
        return x * std.to(x.dtype) + mean.to(x.dtype)
    if name in _ZIMAGE:
        default_scaling = _config_value(vae_config, "scaling_factor", _FLUX1_VAE[0])
        default_shift = _config_value(vae_config, "shift_factor", _FLUX1_VAE[1])
    else:
        default_scaling, default_shift = _AFFINE_NORMALISATION[name]
    scaling = default_scaling if scaling_factor is None else scaling_factor
    shift = default_shift if shift_factor is None else shift_factor
    return x / scaling + shift


def _bn_normalise(patched: torch.Tensor, stats: BatchNormStats) -> torch.Tensor:
    mean, std = stats.mean_std(patched.dtype)
    return (patched - mean) / std


def _config_value(vae_config: Any, key: str, default: Any) -> Any:
    value = getattr(vae_config, key, None)
    return default if value is None else value


def _config_vector(explicit: Sequence[float] | None, vae_config: Any, key: str,
                   default: Sequence[float]) -> torch.Tensor:
    values = _config_value(vae_config, key, default) if explicit is None else explicit
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def _required(value: Any, what: str, name: str) -> Any:
    if value is None:
        raise PiDInputError(f"{name}: {what} is needed for an x_t capture; pass the pipeline or {what}=")
    return value


def _size(height: int | None, width: int | None, name: str, tokens: torch.Tensor,
          vae_scale_factor: int) -> tuple[int, int]:
    """The LDM image size of packed tokens: as given, or square when the token count is a perfect square
    (each token covers 2×2 latent pixels, i.e. 2·vae_scale_factor image pixels a side)."""
    if height is not None and width is not None:
        return int(height), int(width)
    side = math.isqrt(tokens.shape[1])
    if height is None and width is None and side * side == tokens.shape[1]:
        return (side * 2 * vae_scale_factor,) * 2
    raise PiDInputError(f"{name} latents are packed tokens of a non-square image; pass height= and width= "
                        "(the LDM image size in px)")


def _rank(latents: torch.Tensor, rank: int, name: str) -> torch.Tensor:
    if latents.dim() != rank:
        layout = "[B, tokens, channels]" if rank == 3 else "[B, C, h, w]"
        raise PiDInputError(f"{name} latents must be {layout}, got shape {tuple(latents.shape)}")
    return latents


def _even_grid(latents: torch.Tensor, name: str) -> torch.Tensor:
    if latents.shape[2] % 2 or latents.shape[3] % 2:
        raise PiDInputError(f"{name} latents need an even h and w to patchify, got shape {tuple(latents.shape)}")
    return latents


def _check_tokens(tokens: torch.Tensor, expected: int, height: int, width: int) -> tuple[int, int, int]:
    if tokens.dim() != 3:
        raise PiDInputError(f"packed latents must be [B, tokens, channels], got shape {tuple(tokens.shape)}")
    batch, count, dim = tokens.shape
    if count != expected or dim % 4:
        raise PiDInputError(f"packed latents of shape {tuple(tokens.shape)} do not fit a {height}x{width} (HxW) "
                            f"LDM image ({expected} tokens expected); check height= and width=")
    return batch, count, dim

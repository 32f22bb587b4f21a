"""The native VAE baseline: decode PiD's conditioning latent with the backbone's own VAE (diffusers, local files)."""
from __future__ import annotations

import pathlib
from types import SimpleNamespace

import torch

from pid_trt.errors import MissingDependencyError, PiDInputError
from pid_trt.formats import read_json
from pid_trt.latents import canonical_backbone, denormalize, unpatchify

_VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLQwenImage", "AutoencoderKLFlux2")


def check_vae_dir(path: str | pathlib.Path) -> str:
    """The VAE class a local diffusers VAE directory holds, from its config.json (cheap: no weights are read);
    one PiDInputError line for a missing, unreadable or unsupported config."""
    path = pathlib.Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise PiDInputError(f"{path} is not a diffusers VAE directory (no config.json)")
    values = read_json(config, "VAE config")
    name = values.get("_class_name", "AutoencoderKL") if isinstance(values, dict) else None
    if name not in _VAE_CLASSES:
        raise PiDInputError(f"{path} holds a {name}; supported VAEs: {', '.join(_VAE_CLASSES)}")
    return name


def load_vae(path: str | pathlib.Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers VAE from a local directory (its config.json names the class); no downloads."""
    path = pathlib.Path(path)
    name = check_vae_dir(path)
    try:
        import diffusers
    except ImportError:
        raise MissingDependencyError('the VAE baseline needs diffusers: pip install "pid-trt[diffusers]"') from None
    try:
        vae = getattr(diffusers, name).from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
    except Exception as e:  # noqa: BLE001 -- diffusers, safetensors and torch raise many types for bad files
        raise PiDInputError(f"could not load the VAE in {path}: {(str(e).splitlines() or [type(e).__name__])[0][:160]}"
                            ) from None
    return vae.to(device).eval()


@torch.no_grad()
def baseline_decode(backbone: str, vae, lq_latent: torch.Tensor) -> torch.Tensor:
    """Native decode of a normalised PiD latent [B, C, h, w] → image [B, 3, H', W'] in [-1, 1] at the VAE's size."""
    name = canonical_backbone(backbone)
    raw = denormalize(name, lq_latent.to(vae.dtype), SimpleNamespace(vae=vae))
    if name.startswith("flux2"):
        raw = unpatchify(raw)  # 128 packed channels on the /16 grid → the VAE's 32 channels on the /8 grid
    if name.startswith("qwenimage"):
        raw = raw[:, :, None]  # the Qwen-Image VAE is a video VAE: one frame
    image = vae.decode(raw.to(vae.device, vae.dtype)).sample
    if image.dim() == 5:
        image = image[:, :, 0]
    return image.float().clamp(-1, 1)

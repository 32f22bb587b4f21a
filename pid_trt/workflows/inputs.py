"""Reading decode inputs from files: latents and caption embeddings (safetensors), prompt files.

File formats (docs/formats.md "Input files"): latents hold `lq_latent` [B, C, h, w] (or [C, h, w]) and optionally
`degrade_sigma` [B]; caption embeddings hold `y` [B or 1, L, D]; prompt files hold one prompt per non-empty line.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch

from pid_trt.errors import PiDInputError


def load_safetensors(path: str | pathlib.Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (copied out of the memory map), or a one-line error naming `what`."""
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    if not path.is_file():
        raise PiDInputError(f"{what} file {path} does not exist")
    try:
        return {k: v.clone() for k, v in load_file(str(path)).items()}
    except Exception as e:  # noqa: BLE001 -- safetensors raises several types for a bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise PiDInputError(f"{path} is not a readable safetensors file ({what}): {first}") from None


@dataclass(frozen=True)
class LatentSample:
    """One latent to decode and where it came from."""

    lq_latent: torch.Tensor  # [1, C, h, w]
    sigma: float
    file: pathlib.Path
    index: int  # position in its file's batch


def read_latents(source: str | pathlib.Path, sigma: float | None = None) -> list[LatentSample]:
    """Every sample of a latent file, or of all *.safetensors in a directory (sorted by name).

    σ: `sigma` when given, else the file's `degrade_sigma`, else 0.
    """
    source = pathlib.Path(source)
    if not source.exists():
        raise PiDInputError(f"latents {source} does not exist")
    files = sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    if not files:
        raise PiDInputError(f"no *.safetensors files in {source}")
    samples = []
    for f in files:
        data = load_safetensors(f, "latents")
        if "lq_latent" not in data:
            raise PiDInputError(f"{f} has no 'lq_latent' tensor (found: {', '.join(data) or 'nothing'})")
        z = data["lq_latent"]
        z = z[None] if z.dim() == 3 else z
        if z.dim() != 4:
            raise PiDInputError(f"{f}: lq_latent must be [B, C, h, w], got {list(z.shape)}")
        s = data.get("degrade_sigma", torch.zeros(z.shape[0])).float().reshape(-1)
        if s.numel() not in (1, z.shape[0]):
            raise PiDInputError(f"{f}: degrade_sigma has {s.numel()} values for {z.shape[0]} latents")
        s = s.expand(z.shape[0])
        samples += [LatentSample(z[i:i + 1], float(s[i]) if sigma is None else sigma, f, i) for i in range(z.shape[0])]
    return samples


def read_caption_embedding(path: str | pathlib.Path, what: str = "caption embedding") -> torch.Tensor:
    """The `y` tensor [B or 1, L, D] of a caption-embedding file (`pid-trt embed` writes one)."""
    y = load_safetensors(path, what).get("y")
    if y is None or y.dim() != 3:
        raise PiDInputError(f"{path} has no 'y' tensor of shape [B, L, D] ({what})")
    return y.float()


def read_prompt_file(path: str | pathlib.Path) -> list[str]:
    """One prompt per non-empty line (UTF-8)."""
    path = pathlib.Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PiDInputError(f"cannot read prompt file {path}: {getattr(e, 'strerror', None) or e}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise PiDInputError(f"prompt file {path} has no prompts (one per non-empty line)")
    return prompts

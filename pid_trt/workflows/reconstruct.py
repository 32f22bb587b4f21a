"""Image → VAE → (noise at σ) → PiD, as upstream's `from_clean` (docs/numerics.md §7, §10), plus metrics.

Each input is centre-cropped to a multiple of 16, encoded with the VAE (the posterior mean) and normalised into the
backbone's latent space. For each σ (sorted) the latent is noised with a generator seeded seed + i — flow form
(1−σ)·x0 + σ·ε, VP form sqrt(max(0, 1−σ²))·x0 + σ·ε for sdxl, no draw at σ = 0 — and decoded by PiD (seed + i)
and by the VAE. Files follow upstream's layout:

    <out>/input/<id>.<fmt>                    the cropped input
    <out>/<tag>/sigma_<σ:.3f>/<id>.<fmt>      PiD (sr_scale × the input size)
    <out>/vae_decode/sigma_<σ:.3f>/<id>.<fmt> native VAE decode (the input size)

Metrics, against the cropped input at its own size: PiD's output is area-downsampled (box filter, like upstream's
cv2.INTER_AREA in its LQ colour metric) to the input size first. PSNR and SSIM of PiD and of the VAE decode, and
the latent consistency of each: the decode (at the input size) re-encoded and compared with the clean input
latent (MSE, cosine).
"""
from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from pid_trt import vae as vae_files  # module attribute: tests replace its checks
from pid_trt.errors import PiDInputError
from pid_trt.images import resize, save_image
from pid_trt.latents import canonical_backbone, denormalize, patchify
from pid_trt.runtime import PiDDecoder
from pid_trt.sampler import SamplerOptions, to_uint8
from pid_trt.vae import baseline_decode
from pid_trt.workflows.decode import Captions, caption_row, check_captions, gather_records, my_share, output_tag
from pid_trt.workflows.metrics import latent_consistency, psnr, ssim
from pid_trt.workflows.sources import SourceInfo, describe_source

DEFAULT_SEED = 5  # upstream's from_clean default


@dataclass(frozen=True)
class Sample:
    """One input image: `id` names its files, `caption` is its prompt when known (manifest or --caption)."""

    id: str
    path: pathlib.Path
    caption: str | None = None


def read_manifest(path: str | pathlib.Path, caption: str | None = None) -> list[Sample]:
    """JSONL lines `{"image": path, "prompt"?: str}` → samples with ids `<i:08d>_<stem>`; `caption` fills in for
    lines without a prompt. Relative image paths are looked up from the working directory, then the manifest's."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PiDInputError(f"manifest {path} does not exist")
    samples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PiDInputError(f"cannot read manifest {path}: {getattr(e, 'strerror', None) or e}") from None
    for n, line in enumerate(text for text in lines if text.strip()):
        try:
            row = json.loads(line)
            image = pathlib.Path(row["image"])
        except (ValueError, KeyError, TypeError):  # ValueError: bad JSON and numbers Python cannot hold
            raise PiDInputError(f"{path}: line {n + 1} is not a JSON object with an 'image' path") from None
        if not image.is_absolute() and not image.exists():
            image = path.parent / image
        samples.append(Sample(f"{n:08d}_{image.stem}", image, row.get("prompt") or caption))
    if not samples:
        raise PiDInputError(f"manifest {path} lists no images")
    return samples


def input_size(path: pathlib.Path) -> tuple[int, int]:
    """W×H an input image has after `load_image`'s crop, from its header (the pixels are not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise PiDInputError(f"cannot read image {path}: {str(e).splitlines()[0][:120]}") from None
    if width < 16 or height < 16:
        raise PiDInputError(f"image {path} is {width}x{height}; it must be at least 16x16")
    return width // 16 * 16, height // 16 * 16


def preflight(vae_dir: str | pathlib.Path, samples: Sequence[Sample], steps: int | None = None,
              cfg: float | None = None, shift: float | None = None, **source: Any
              ) -> tuple[list[int], SourceInfo, SamplerOptions]:
    """Everything `reconstruct` can refuse before anything large is loaded: the VAE folder, this rank's share of
    `samples`, the sampler options, input sizes whose decode the device cannot hold (`source`: describe_source's
    arguments). Returns (this rank's sample indices, the source, the sampler options)."""
    vae_files.check_vae_dir(vae_dir)
    indices = my_share(len(samples))
    info = describe_source(**source)
    options = info.options(steps, cfg, shift)
    sr = info.net_config.sr_scale
    info.check_request([(w * sr, h * sr) for w, h in (input_size(samples[i].path) for i in indices)])
    return indices, info, options


def load_image(path: pathlib.Path) -> torch.Tensor:
    """RGB uint8 [3, H, W], centre-cropped to a multiple of 16 (PiD's patch size) as upstream crops its input."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as e:
        raise PiDInputError(f"cannot read image {path}: {str(e).splitlines()[0][:120]}") from None
    h, w = (rgb.shape[1] // 16) * 16, (rgb.shape[2] // 16) * 16
    if not h or not w:
        raise PiDInputError(f"image {path} is {rgb.shape[2]}x{rgb.shape[1]}; it must be at least 16x16")
    top, left = (rgb.shape[1] - h) // 2, (rgb.shape[2] - w) // 2
    return rgb[:, top:top + h, left:left + w].contiguous()


def normalize(backbone: str, raw: torch.Tensor, vae: Any) -> torch.Tensor:
    """Inverse of `latents.denormalize`: a VAE latent (patchified for flux2) → the backbone's normalised space.

    denormalize is a per-channel affine map, so two probes (0 and 1) give its offset and gain exactly.
    """
    probe = torch.zeros(2, raw.shape[1], 1, 1, dtype=torch.float64)
    probe[1] = 1
    offset, one = denormalize(backbone, probe, SimpleNamespace(vae=vae))
    return ((raw.double() - offset) / (one - offset)).to(raw.dtype)


@torch.no_grad()
def encode(backbone: str, vae: Any, image: torch.Tensor) -> torch.Tensor:
    """Float image [1, 3, H, W] in [-1, 1] → normalised latent [1, C, h, w] (VAE posterior mean), float32."""
    name = canonical_backbone(backbone)
    x = image.to(vae.device, vae.dtype)
    if name.startswith("qwenimage"):
        x = x[:, :, None]  # the Qwen-Image VAE is a video VAE: one frame
    raw = vae.encode(x).latent_dist.mean.float()
    if raw.dim() == 5:
        raw = raw[:, :, 0]
    if name.startswith("flux2"):
        raw = patchify(raw)  # 32 channels on the /8 grid → PiD's 128 on the /16 grid
    return normalize(name, raw, vae)


def add_noise(backbone: str, latent: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Noise a clean latent to level σ in fp32 with a generator seeded `seed` (σ = 0: the latent, no draw)."""
    x0 = latent.float()
    if sigma == 0:
        return x0
    g = torch.Generator(device=x0.device).manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g, device=x0.device, dtype=torch.float32)
    if canonical_backbone(backbone) == "sdxl":
        return max(0.0, 1 - sigma * sigma) ** 0.5 * x0 + sigma * eps
    return (1 - sigma) * x0 + sigma * eps


def check_sigmas(sigmas: Sequence[float]) -> list[float]:
    """The σ values, sorted as upstream processes them; each must lie in [0, 1]."""
    sigmas = sorted(float(s) for s in sigmas)
    if not sigmas or any(not 0 <= s <= 1 for s in sigmas):
        raise PiDInputError(f"--sigma values must lie in [0, 1], got {sigmas}")
    return sigmas


def _scores(decoded: torch.Tensor, reference01: torch.Tensor, clean_latent: torch.Tensor, backbone: str,
            vae: Any) -> dict[str, float]:
    """Metrics of a [-1, 1] decode already at the input size."""
    image01 = (decoded.float().cpu() + 1) / 2
    return {"psnr": psnr(image01, reference01), "ssim": ssim(image01, reference01),
            **latent_consistency(encode(backbone, vae, decoded).cpu(), clean_latent.cpu())}


def reconstruct(vae: Any, decoder: PiDDecoder, samples: Sequence[Sample], captions: Captions, *, backbone: str,
                out_dir: str | pathlib.Path, sigmas: Sequence[float] = (0.0,), seed: int = DEFAULT_SEED,
                indices: Sequence[int] | None = None, fmt: str = "jpg", options: SamplerOptions | None = None,
                negative_embedding: torch.Tensor | None = None,
                progress: bool = True) -> list[dict[str, Any]]:
    """Reconstruct samples[i] for each global index i in `indices` (default all) at every σ in `sigmas`, write
    upstream's layout under `out_dir` and return one record per sample of every rank (its input image and index,
    seed, paths relative to `out_dir`, metrics)."""
    from tqdm import tqdm

    name = canonical_backbone(backbone)
    sigmas = check_sigmas(sigmas)
    indices = range(len(samples)) if indices is None else indices
    check_captions(captions, len(samples))
    options = options or decoder.options()
    tag = output_tag(decoder, options, backbone)
    out_dir = pathlib.Path(out_dir)
    records = []
    bar = tqdm(total=len(indices) * len(sigmas), desc="reconstruct", unit="img", disable=None if progress else True)
    for i in indices:
        sample = samples[i]
        image = load_image(sample.path)
        path = out_dir / "input" / f"{sample.id}.{fmt}"
        save_image(image, path)
        reference01 = image[None].float() / 255
        clean = encode(name, vae, reference01 * 2 - 1)
        y = caption_row(captions, i)
        record = {"index": i, "id": sample.id, "input": str(sample.path), "input_index": i, "seed": seed + i,
                  "cropped_input": str(path.relative_to(out_dir)), "size_wxh": [image.shape[2], image.shape[1]],
                  "sigmas": {}}
        for sigma in sigmas:
            lq = add_noise(name, clean, sigma, seed + i).bfloat16().float()  # upstream rounds to bf16 here
            t0 = time.perf_counter()
            pid = decoder.decode(lq, y, sigma, seed=seed, indices=[i], options=options,
                                 negative_embedding=negative_embedding)
            seconds = time.perf_counter() - t0
            base = baseline_decode(name, vae, lq)
            label = f"sigma_{sigma:.3f}"
            pid_path = out_dir / tag / label / f"{sample.id}.{fmt}"
            base_path = out_dir / "vae_decode" / label / f"{sample.id}.{fmt}"
            save_image(to_uint8(pid)[0], pid_path)
            save_image(to_uint8(base)[0], base_path)
            pid_small = resize(pid, *image.shape[1:])
            record["sigmas"][label] = {
                "sigma": sigma, "pid_seconds": round(seconds, 4), "pid_size_wxh": [pid.shape[3], pid.shape[2]],
                "image": str(pid_path.relative_to(out_dir)), "baseline": str(base_path.relative_to(out_dir)),
                "pid": _scores(pid_small, reference01, clean, name, vae),
                "vae": _scores(resize(base, *image.shape[1:]), reference01, clean, name, vae)}
            bar.update()
        records.append(record)
    bar.close()
    return gather_records(records)


def mean_metrics(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per σ label and decoder ("pid", "vae"): each metric averaged over the records."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for record in records:
        for label, result in record["sigmas"].items():
            for who in ("pid", "vae"):
                for metric, value in result[who].items():
                    out.setdefault(label, {}).setdefault(who, {}).setdefault(metric, []).append(value)
    return {label: {who: {m: sum(v) / len(v) for m, v in ms.items()} for who, ms in d.items()}
            for label, d in out.items()}

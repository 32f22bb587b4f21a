"""Pieces both workflows share: opening a PiD decoder, caption rows, side-by-side images, upstream's naming."""
from __future__ import annotations

import pathlib
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from pid_trt.errors import PiDInputError
from pid_trt.runtime import PiDDecoder

# Caption embeddings: one tensor [1 or N, L, D] indexed by global sample index (row 0 for all when 1),
# or a mapping global index -> [L, D] / [1, L, D] (what a rank encodes for its own samples).
Captions = torch.Tensor | Mapping[int, torch.Tensor]


def open_decoder(*, engine_dir: pathlib.Path | None = None, onnx_dir: pathlib.Path | None = None,
                 checkpoint: pathlib.Path | None = None, tiny: bool = False, backbone: str, ckpt: str | None = None,
                 backend: str | None = None, device: str | None = None, precision: str = "fp32",
                 cuda_graph: bool = True) -> PiDDecoder:
    """A PiDDecoder from exactly one source, like `pid-trt decode`; `tiny=True` builds a small seeded random net
    with the structure of (backbone, ckpt), for tests and dry runs without weights."""
    from pid_trt.registry import resolve

    sources = [s for s in (engine_dir, onnx_dir, checkpoint) if s is not None]
    if len(sources) + tiny != 1:
        raise PiDInputError("give exactly one of --engine-dir, --onnx-dir or --checkpoint")
    entry = resolve(backbone, ckpt or "2k")
    if tiny:
        from pid_trt.tiny import tiny_net

        net = tiny_net(entry.net.id, patch_depth=2, pixel_depth=1)
        return PiDDecoder.from_net(net, device, precision, cuda_graph=cuda_graph, entry=entry)
    dec = PiDDecoder.load(sources[0], backend, device, backbone=backbone, ckpt=ckpt, precision=precision,
                          cuda_graph=cuda_graph)
    if dec.entry is not None and dec.entry.experiment != entry.experiment:
        raise PiDInputError(f"{sources[0]} holds {dec.entry.experiment}, but --backbone {backbone} --ckpt "
                            f"{entry.ckpt} needs {entry.experiment}")
    return dec


def pid_settings(decoder: PiDDecoder, steps: int | None, cfg: float | None) -> tuple[int, float]:
    """The PiD steps and guidance a decode will use (for the folder tag): students 4 / 1.0, teachers 25 / 5."""
    if decoder.sampler == "teacher":
        return steps or decoder.entry.default_steps, decoder.entry.default_cfg if cfg is None else cfg
    return steps or 4, 1.0


def output_tag(backbone: str, decoder: PiDDecoder, steps: int, cfg: float, shift: float | None = None) -> str:
    """Upstream's folder name for PiD outputs (`<backbone>_<experiment>_model_ema_bf16.pth_cfg.._steps.._reg`)."""
    from pid_trt.cli.decode_cmd import upstream_tag

    return upstream_tag(backbone, decoder.entry.experiment if decoder.entry else None, cfg, steps, shift)


def caption_row(captions: Captions, index: int) -> torch.Tensor:
    """The [1, L, D] caption embedding of the sample with global index `index`."""
    if isinstance(captions, torch.Tensor):
        y = captions[:1] if captions.shape[0] == 1 else captions[index:index + 1]
    else:
        if index not in captions:
            raise PiDInputError(f"no caption embedding for sample {index}")
        y = captions[index]
    y = y[None] if y.dim() == 2 else y
    if y.dim() != 3 or y.shape[0] != 1:
        raise PiDInputError(f"caption embedding of sample {index} must be [L, D] or [1, L, D], got {list(y.shape)}")
    return y


def check_captions(captions: Captions, count: int) -> None:
    if isinstance(captions, torch.Tensor) and (captions.dim() != 3 or captions.shape[0] not in (1, count)):
        raise PiDInputError(f"caption embedding y must be [1 or {count}, L, D], got {list(captions.shape)}")


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float [B, 3, h, w] in [-1, 1] → [B, 3, height, width]: bicubic up (for viewing), area down (for metrics)."""
    if image.shape[-2:] == (height, width):
        return image
    up = height > image.shape[-2]
    return F.interpolate(image.float(), size=(height, width), mode="bicubic" if up else "area").clamp(-1, 1)


def side_by_side(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """Tile equally sized uint8 [3, H, W] images: one list per row, left to right."""
    return torch.cat([torch.cat(row, dim=2) for row in rows], dim=1)

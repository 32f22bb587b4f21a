"""Images: uint8 [3, H, W] tensors to PNG/JPEG files (atomically), resizing, side-by-side tiles and labels."""
from __future__ import annotations

import io
import pathlib

import torch
import torch.nn.functional as F

from pid_trt.atomic import atomic_write_bytes


def encode_image(u8: torch.Tensor, fmt: str = "png", quality: int = 95) -> bytes:
    """One uint8 [3, H, W] image as PNG (lossless) or JPEG (quality 95, like upstream) file bytes."""
    from PIL import Image

    fmt = "JPEG" if fmt.lower() in ("jpg", "jpeg") else "PNG"
    buf = io.BytesIO()
    Image.fromarray(u8.permute(1, 2, 0).cpu().numpy(), "RGB").save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def save_image(u8: torch.Tensor, path: str | pathlib.Path, quality: int = 95) -> None:
    """Save one uint8 [3,H,W] image as PNG or JPEG, by the file suffix, atomically."""
    path = pathlib.Path(path)
    atomic_write_bytes(path, encode_image(u8, path.suffix.lstrip(".") or "png", quality))


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float [B, 3, h, w] in [-1, 1] → [B, 3, height, width]: bicubic up (for viewing), area down (for metrics)."""
    if image.shape[-2:] == (height, width):
        return image
    up = height > image.shape[-2]
    return F.interpolate(image.float(), size=(height, width), mode="bicubic" if up else "area").clamp(-1, 1)


def side_by_side(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """Tile equally sized uint8 [3, H, W] images: one list per row, left to right."""
    return torch.cat([torch.cat(row, dim=2) for row in rows], dim=1)


def labelled(u8: torch.Tensor, text: str, strip: int = 16) -> torch.Tensor:
    """uint8 [3, H, W] under a black strip carrying `text` in white (PIL's built-in font)."""
    from PIL import Image, ImageDraw, ImageFont

    banner = Image.new("RGB", (u8.shape[2], strip))
    ImageDraw.Draw(banner).text((3, 1), text, fill=(255, 255, 255), font=ImageFont.load_default(size=strip - 4))
    top = torch.frombuffer(bytearray(banner.tobytes()), dtype=torch.uint8).view(strip, u8.shape[2], 3)
    return torch.cat([top.permute(2, 0, 1), u8.cpu()], dim=1)

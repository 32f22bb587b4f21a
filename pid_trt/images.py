"""Writing decoded images: uint8 [B,3,H,W] → PNG/JPEG files, atomically."""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import torch


def umask() -> int:
    """The process umask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | pathlib.Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; published files get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_json(path: str | pathlib.Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def save_image(u8: torch.Tensor, path: str | pathlib.Path, quality: int = 95) -> None:
    """Save one uint8 [3,H,W] image as PNG (lossless) or JPEG (quality 95, like upstream)."""
    import io

    from PIL import Image

    path = pathlib.Path(path)
    img = Image.fromarray(u8.permute(1, 2, 0).cpu().numpy(), "RGB")
    buf = io.BytesIO()
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    img.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    atomic_write_bytes(path, buf.getvalue())

"""The HTTP protocol of `pid-trt serve` (API v1): parse decode requests, check them, encode responses and errors.

No Ray and no decoder here: everything is a pure function of bytes, query parameters and the net's description,
so it is unit-tested on its own. docs/serve.md is the user-facing description of what this module accepts.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from pid_trt.errors import PiDInputError
from pid_trt.images import encode_image

API_VERSION = "v1"
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
FORMATS = ("png", "safetensors")
LATENT_KEY, CAPTION_KEY, SIGMA_KEY = "lq_latent", "caption_embedding", "degrade_sigma"
CAPTION_ALIAS = "y"  # the key `pid-trt embed` and `pid-trt decode` files use for the caption embedding
TENSOR_KEYS = (LATENT_KEY, CAPTION_KEY, CAPTION_ALIAS, SIGMA_KEY)
OPTION_KEYS = ("seed", "steps", "format", "prompt")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; seed + i must stay below this


class ServeError(PiDInputError):
    """A request the server refuses: a one-line message and the HTTP status it is answered with."""

    status = 400


class BodyTooLarge(ServeError):
    status = 413


@dataclass(frozen=True)
class DecodeRequest:
    """One parsed decode request. Image i uses seed `seed + i`, whatever batch it is decoded in."""

    lq_latent: torch.Tensor  # [B, C, h, w] float32
    caption_embedding: torch.Tensor | None  # [B, L, D] float32; None until the prompts are encoded
    prompts: tuple[str, ...] | None
    degrade_sigma: torch.Tensor  # [B] float32
    seed: int = 0
    steps: int | None = None
    format: str = "png"

    @property
    def batch(self) -> int:
        return self.lq_latent.shape[0]

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.batch)]

    def group_key(self) -> tuple:
        """Requests with equal keys can be decoded together in one call (same tensor shapes and steps)."""
        assert self.caption_embedding is not None, "encode the prompts first"
        return (tuple(self.lq_latent.shape[1:]), tuple(self.caption_embedding.shape[1:]), self.steps)

    def with_caption(self, caption_embedding: torch.Tensor) -> DecodeRequest:
        return replace(self, caption_embedding=caption_embedding)


@dataclass(frozen=True)
class Decoded:
    """What a request gets back: uint8 images [B, 3, H, W], their seeds, and how many images the server's
    decode call that produced them held (the dynamic batch size; 0 when unknown)."""

    images: torch.Tensor
    seeds: list[int]
    batch_size: int = 0


# -- parsing -------------------------------------------------------------------------------------------------

def _one_line(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text[:limit] or type(error).__name__


def is_json(body: bytes) -> bool:
    """A JSON object, not a safetensors file (whose first 8 bytes are a little-endian length, so hold NULs)."""
    head = body.lstrip()[:8]
    return head.startswith(b"{") and b"\0" not in head


def _tensors_from_safetensors(body: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(body)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for malformed files
        raise ServeError(f"body is neither a JSON object nor a readable safetensors file: {_one_line(e)}") from None


def _tensor_from_json(name: str, value: Any) -> torch.Tensor:
    try:
        return torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ServeError(f"{name} must be a number or nested lists of numbers: {_one_line(e)}") from None


def _from_json(body: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServeError(f"body is not valid JSON: {_one_line(e)}") from None
    if not isinstance(obj, dict):
        raise ServeError("a JSON body must be an object with lq_latent and caption_embedding or prompt")
    _check_keys(obj, TENSOR_KEYS + OPTION_KEYS)
    tensors = {k: _tensor_from_json(k, v) for k, v in obj.items() if k in TENSOR_KEYS}
    return tensors, {k: v for k, v in obj.items() if k in OPTION_KEYS}


def _check_keys(found: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(found) - set(allowed))
    if unknown:
        raise ServeError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _options_from_query(query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    _check_keys(query, OPTION_KEYS)
    out: dict[str, Any] = {}
    for key, values in query.items():
        if key == "prompt":
            out[key] = list(values)
        elif len(values) != 1:
            raise ServeError(f"query parameter {key} is given {len(values)} times")
        else:
            out[key] = values[0]
    return out


def _merge(json_options: dict[str, Any], query_options: dict[str, Any]) -> dict[str, Any]:
    twice = sorted(set(json_options) & set(query_options))
    if twice:
        raise ServeError(f"{', '.join(twice)} given both in the query and in the body; give each once")
    return json_options | query_options


def _int_option(options: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    try:
        number = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not lo <= number <= hi:
        raise ServeError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return number


def _float_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise ServeError(f"{name} must be a floating-point tensor ({allowed}), got {str(tensor.dtype)[6:]}")
    return tensor.to(torch.float32)


def _prompts(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    prompts = [value] if isinstance(value, str) else value
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ServeError("prompt must be a string or a non-empty list of strings (one per image)")
    return tuple(prompts)


def parse_decode(body: bytes, query: Mapping[str, Sequence[str]] | None = None, *,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> DecodeRequest:
    """A POST /v1/decode body (safetensors file or JSON object) and its query parameters → DecodeRequest.

    Checks what needs no knowledge of the net: keys, dtypes, ranks, batch agreement, options.
    `check_decode` then checks the request against the net the server runs.
    """
    if len(body) > max_body_bytes:
        raise BodyTooLarge(f"request body of {len(body)} bytes exceeds the limit of {max_body_bytes} bytes")
    if is_json(body):
        tensors, options = _from_json(body)
    else:
        tensors, options = _tensors_from_safetensors(body), {}
        _check_keys(tensors, TENSOR_KEYS)
    options = _merge(options, _options_from_query(query or {}))
    if CAPTION_KEY in tensors and CAPTION_ALIAS in tensors:
        raise ServeError(f"give the caption once: {CAPTION_KEY} or {CAPTION_ALIAS}, not both")
    if LATENT_KEY not in tensors:
        raise ServeError(f"missing {LATENT_KEY} [B, C, h, w]")
    z = _float_tensor(LATENT_KEY, tensors[LATENT_KEY])
    z = z[None] if z.dim() == 3 else z
    if z.dim() != 4 or z.shape[0] == 0:
        raise ServeError(f"{LATENT_KEY} must be [B, C, h, w] with B >= 1, got {list(z.shape)}")
    b = z.shape[0]
    y = tensors.get(CAPTION_KEY, tensors.get(CAPTION_ALIAS))
    prompts = _prompts(options.get("prompt"))
    if (y is None) == (prompts is None):
        raise ServeError(f"give either {CAPTION_KEY} [B, L, D] or prompt (with a server text encoder), not "
                         f"{'both' if prompts else 'neither'}")
    if y is not None:
        y = _float_tensor(CAPTION_KEY, y)
        y = y[None] if y.dim() == 2 else y
        if y.dim() != 3 or y.shape[0] not in (1, b):
            raise ServeError(f"{CAPTION_KEY} must be [1 or {b}, L, D], got {list(y.shape)}")
        y = y.expand(b, -1, -1)
    elif len(prompts) not in (1, b):
        raise ServeError(f"{len(prompts)} prompts for {b} latents; give one prompt or one per latent")
    elif len(prompts) == 1:
        prompts = prompts * b
    sigma = _float_tensor(SIGMA_KEY, tensors.get(SIGMA_KEY, torch.zeros(b))).reshape(-1)
    if sigma.numel() not in (1, b):
        raise ServeError(f"{SIGMA_KEY} must hold 1 or {b} values, got {sigma.numel()}")
    sigma = sigma.expand(b).clone()
    fmt = options.get("format") or ("png" if b == 1 else "safetensors")
    if fmt not in FORMATS:
        raise ServeError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "png" and b != 1:
        raise ServeError(f"format png holds one image; this request has {b}: use format=safetensors")
    seed = _int_option(options, "seed", 0, MAX_SEED - b) or 0
    steps = _int_option(options, "steps", 1, 10**6)
    return DecodeRequest(z, y, prompts, sigma, seed, steps, fmt)


# -- checks against the served net ---------------------------------------------------------------------------

def check_decode(request: DecodeRequest, net_config: Mapping[str, Any], max_batch: int,
                 size_refusal: Callable[[int, int, int], str | None]) -> tuple[int, int]:
    """Check an encoded request against the net and the server's limits; returns the output (H, W).

    `size_refusal(width, height, batch)` says why the server cannot decode that size, or None when it can.
    """
    from pid_trt.sampler import check_inputs, t_list

    if request.batch > max_batch:
        raise ServeError(f"{request.batch} images in one request; this server decodes at most {max_batch} "
                         "per request (--max-batch-size): split the request")
    try:
        if request.steps is not None:
            t_list(request.steps)
        _, (height, width) = check_inputs(dict(net_config), request.lq_latent, request.caption_embedding,
                                          request.degrade_sigma)
    except PiDInputError as e:
        raise ServeError(str(e)) from None
    reason = size_refusal(width, height, request.batch)
    if reason:
        raise ServeError(reason)
    return height, width


# -- responses -----------------------------------------------------------------------------------------------

def encode_images(images: torch.Tensor, seeds: Sequence[int], fmt: str) -> tuple[bytes, str]:
    """uint8 [B, 3, H, W] → (body, media type): one PNG, or safetensors with `images` and `seeds` (int64 [B])."""
    if fmt == "png":
        return encode_image(images[0], "png"), "image/png"
    from safetensors.torch import save

    blob = save({"images": images.contiguous().cpu(), "seeds": torch.tensor(list(seeds), dtype=torch.int64)},
                metadata={"format": f"pid-trt-serve/{API_VERSION}"})
    return blob, "application/octet-stream"


def decode_images(body: bytes) -> tuple[torch.Tensor, list[int]]:
    """The inverse of `encode_images` for format=safetensors: (uint8 images [B, 3, H, W], seeds)."""
    from safetensors.torch import load

    tensors = load(body)
    return tensors["images"], tensors["seeds"].tolist()


def error_body(message: str) -> bytes:
    """`{"error": "<one line>"}` as UTF-8 bytes."""
    return json.dumps({"error": " ".join(str(message).split())}).encode() + b"\n"


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, default=str).encode() + b"\n"

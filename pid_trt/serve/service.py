"""DecodeService: the work of one server replica, without Ray: load and warm the decoder, check requests,
decode batches of requests grouped by shape, and count what it did.

Batched requests never change an image's noise: request r's image i is drawn from a generator seeded
`seed_r + i` (passed to `PiDDecoder.decode` as seed 0 with global indices `seed_r + i`), exactly as
`pid-trt decode --seed seed_r` draws image i of a latent file.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any

import torch

from pid_trt.errors import PiDInputError
from pid_trt.serve.config import ServeConfig
from pid_trt.serve.protocol import API_VERSION, Decoded, DecodeRequest, ServeError, check_decode

log = logging.getLogger(__name__)


class DecodeService:
    """Decode requests with one PiDDecoder; thread-safe counters for /v1/info."""

    def __init__(self, decoder, config: ServeConfig, caption_encoder=None, caption_cache=None):
        if decoder.sampler != "student":
            raise PiDInputError("serving undistilled teacher checkpoints (CFG with a negative prompt) is not "
                                "supported; serve a distilled student checkpoint")
        self.decoder = decoder
        self.pixels_per_latent = decoder.net_config.pixels_per_latent
        self.config = config
        self.caption_encoder = caption_encoder
        self.caption_cache = caption_cache
        self.max_size = config.max_size
        self.profiles = getattr(decoder.backend, "profiles", None)  # TensorRT: the engines' accepted sizes
        self._lock = threading.Lock()
        self._text_lock = threading.Lock()  # one caption encode at a time (the encoder loads lazily)
        self._stats = {"requests": 0, "images": 0, "decode_calls": 0}

    @classmethod
    def from_config(cls, config: ServeConfig) -> DecodeService:
        """Load the decoder (and the text encoder) the config names and warm it up."""
        from pid_trt.runtime import PiDDecoder

        decoder = PiDDecoder.load(config.source, device=config.replica_device(), backbone=config.backbone,
                                  ckpt=config.ckpt, precision=config.precision, cuda_graph=config.cuda_graph)
        encoder = cache = None
        if config.text_encoder is not None:
            from pid_trt.text import CaptionEncoder, EmbeddingCache

            encoder = CaptionEncoder.from_pretrained(config.text_encoder)
            cache = EmbeddingCache(config.text_cache_dir)
        service = cls(decoder, config, encoder, cache)
        service.warm_up()
        return service

    # -- what this replica accepts -----------------------------------------------------------------------
    def size_refusal(self, width: int, height: int, batch: int) -> str | None:
        """Why this replica cannot decode `batch` images of W×H, or None when it can."""
        if self.profiles is not None:
            if any(p.covers(width, height, batch) for p in self.profiles):
                return None
            return (f"{width}x{height} batch {batch} lies outside every engine profile "
                    f"({'; '.join(p.describe() for p in self.profiles)})")
        max_w, max_h = self.max_size
        if width > max_w or height > max_h:
            return f"{width}x{height} exceeds this server's largest size {max_w}x{max_h} (--max-size)"
        return None

    def batch_limit(self, width: int, height: int) -> int:
        """The most images one decode call of W×H may hold (engine profiles and --max-batch-size)."""
        limit = self.config.max_batch_size
        while limit > 1 and self.size_refusal(width, height, limit):
            limit -= 1
        return limit

    def accepted_sizes(self) -> list[str]:
        if self.profiles is not None:
            return [p.describe() for p in self.profiles]
        (w, h), k = self.max_size, self.pixels_per_latent
        return [f"multiples of {k} up to {w}x{h}, batch 1..{self.config.max_batch_size}"]

    # -- requests ------------------------------------------------------------------------------------------
    def prepare(self, request: DecodeRequest) -> DecodeRequest:
        """Encode the prompts (when given) and check the request against the net; ServeError when refused."""
        if request.prompts is not None:
            if self.caption_encoder is None:
                raise ServeError("this server has no text encoder (start it with --text-encoder); "
                                 "send caption_embedding instead of prompt")
            with self._text_lock:
                y = self.caption_encoder.encode_cached(list(request.prompts), self.caption_cache)
            request = request.with_caption(y)
        check_decode(request, self.decoder.net_config, self.config.max_batch_size, self.size_refusal)
        return request

    def decode_batch(self, requests: list[DecodeRequest]) -> list[Decoded | Exception]:
        """Decode prepared requests: same-shape requests share decode calls of at most `batch_limit` images.

        Returns one result per request, in order; a failing call fails only the requests it held.
        """
        results: list[Decoded | Exception | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.group_key(), []).append(i)
        for members in groups.values():
            for chunk in self._chunks([requests[i] for i in members]):
                held = [members[j] for j in chunk]
                try:
                    outs = self._decode([requests[i] for i in held])
                except Exception as e:  # reported per request; the replica keeps serving
                    if not isinstance(e, PiDInputError):
                        log.exception("decode of %d request(s) failed", len(held))
                    outs = [e] * len(held)
                for i, out in zip(held, outs):
                    results[i] = out
        return results

    def _chunks(self, reqs: list[DecodeRequest]) -> list[list[int]]:
        """Positions in `reqs` (all of one shape), in runs of at most `batch_limit` images each."""
        k = self.pixels_per_latent
        h, w = reqs[0].lq_latent.shape[2:]
        limit = self.batch_limit(w * k, h * k)
        chunks: list[list[int]] = []
        images = limit  # start a new run with the first request
        for j, r in enumerate(reqs):
            if images + r.batch > limit:
                chunks.append([])
                images = 0
            chunks[-1].append(j)
            images += r.batch
        return chunks

    def _decode(self, reqs: list[DecodeRequest]) -> list[Decoded]:
        seeds = [s for r in reqs for s in r.seeds]
        images = self.decoder.decode(torch.cat([r.lq_latent for r in reqs]),
                                     torch.cat([r.caption_embedding for r in reqs]),
                                     torch.cat([r.degrade_sigma for r in reqs]),
                                     seed=0, indices=seeds, steps=reqs[0].steps, output="uint8").cpu()
        with self._lock:
            self._stats["requests"] += len(reqs)
            self._stats["images"] += len(seeds)
            self._stats["decode_calls"] += 1
        out, start = [], 0
        for r in reqs:
            out.append(Decoded(images[start:start + r.batch], r.seeds, len(seeds)))
            start += r.batch
        return out

    def warm_up(self) -> None:
        """One decode (the smallest size; TensorRT: the first profile's optimum), so that lazy initialisation
        happens before the replica is ready. Its size warning (a tiny size is outside the trained range) is muted."""
        net_config = self.decoder.net_config
        k = self.pixels_per_latent
        if self.profiles is not None:
            p = self.profiles[0]
            batch, hw = p.batch[0], (p.height[1] // k, p.width[1] // k)
        else:
            batch, hw = 1, (max(1, net_config.patch_size // k),) * 2
        z = torch.zeros(batch, net_config.lq_latent_channels, *hw)
        y = torch.zeros(batch, net_config.text_limit, net_config.txt_embed_dim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.decoder.decode(z, y, 0.0, output="uint8")
        log.info("decoder warmed up at latent %sx%s", hw[1], hw[0])

    # -- reporting -----------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            s = dict(self._stats)
        s["mean_batch_size"] = s["images"] / s["decode_calls"] if s["decode_calls"] else None
        return s

    def info(self) -> dict[str, Any]:
        """What /v1/info reports: the model, what it accepts, the batching limits and this replica's counters."""
        dec, net_config = self.decoder, self.decoder.net_config
        entry = dec.entry
        be = dec.backend
        return {
            "api": API_VERSION,
            "backbone": getattr(entry, "backbone", None), "ckpt": getattr(entry, "ckpt", None),
            "experiment": getattr(entry, "experiment", None), "sampler": dec.sampler,
            "precision": dec.precision,
            "backend": be.name, "device": str(be.device),
            "weights_sha256": dec.weights.get("sha256"),
            "latent_channels": net_config.lq_latent_channels,
            "pixels_per_latent": self.pixels_per_latent,
            "caption": {"max_length": net_config.text_limit, "embed_dim": net_config.txt_embed_dim,
                        "prompts": self.caption_encoder is not None},
            "sizes": self.accepted_sizes(),
            "max_batch_size": self.config.max_batch_size, "batch_wait_ms": self.config.batch_wait_ms,
            "max_body_bytes": self.config.max_body_bytes,
            "replica": {"pid": os.getpid(), **self.stats()},
        }

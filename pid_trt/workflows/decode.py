"""The decode workflow behind `pid-trt decode`, `generate` and `reconstruct`: captions, shards, names, files, summary.

Sample i (its global index) always uses seed + i and is handled by rank i mod WORLD_SIZE under torchrun, so
files never depend on the batch size or the number of processes. Folder names follow upstream
(docs/numerics.md §10).
"""
from __future__ import annotations

import datetime
import logging
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pid_trt.atomic import atomic_write_json
from pid_trt.errors import PiDInputError
from pid_trt.export.manifest import describe_weights, is_random, weights_id
from pid_trt.images import save_image
from pid_trt.runtime import PiDDecoder
from pid_trt.runtime.device import can_gather, gather, shard, world
from pid_trt.sampler import SamplerOptions
from pid_trt.workflows.inputs import LatentSample, read_caption_embedding
from pid_trt.workflows.sources import SourceInfo, describe_source

log = logging.getLogger(__name__)

# Caption embeddings: one tensor [1 or N, L, D] indexed by global sample index (row 0 for all when 1),
# or a mapping global index -> [L, D] / [1, L, D] (what a rank encodes for its own samples).
Captions = torch.Tensor | Mapping[int, torch.Tensor]


def output_tag(decoder: PiDDecoder, options: SamplerOptions, backbone: str | None = None) -> str:
    """Upstream's folder name: <backbone>_<experiment>_model_ema_bf16.pth_cfg<cfg>_steps<N>[_shift<s>]_reg."""
    entry = decoder.entry
    backbone = backbone or (entry.backbone if entry else None) or "custom"
    experiment = entry.experiment if entry else "custom"
    extra = f"_shift{options.shift}" if options.shift is not None else ""
    return f"{backbone}_{experiment}_model_ema_bf16.pth_cfg{options.cfg}_steps{options.steps}{extra}_reg"


def weights_summary(decoder: PiDDecoder) -> dict[str, Any]:
    """What a run summary records about the weights: their identity (RANDOM for random weights) and source."""
    weights = decoder.weights
    identified = is_random(weights) or "checkpoint" in weights or "sha256" in weights
    return {**weights, "id": weights_id(weights) if identified else None, "random": is_random(weights),
            "description": describe_weights(weights)}


def check_captions(captions: Captions, count: int) -> None:
    if isinstance(captions, torch.Tensor) and (captions.dim() != 3 or captions.shape[0] not in (1, count)):
        raise PiDInputError(f"caption embedding y must be [1 or {count}, L, D], got {list(captions.shape)}")


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


def load_captions(captions: Sequence[str | None], indices: Sequence[int], *,
                  caption_embedding: pathlib.Path | None = None, text_encoder: pathlib.Path | None = None,
                  negative_embedding: pathlib.Path | None = None,
                  teacher: bool = False) -> tuple[Captions, torch.Tensor | None]:
    """(caption embeddings by global index, negative embedding or None) for `len(captions)` samples: from a
    caption-embedding file, or by encoding this rank's captions (`indices`) with a local text encoder (cached).
    A teacher without a negative-embedding file gets pid_trt.text.NEGATIVE_PROMPT encoded."""
    if (caption_embedding is None) == (text_encoder is None):
        raise PiDInputError("give either --caption-embedding FILE or --text-encoder DIR (to encode the captions)")
    negative = None if negative_embedding is None else read_caption_embedding(negative_embedding,
                                                                              "negative embedding")
    if caption_embedding is not None:
        y = read_caption_embedding(caption_embedding)
        check_captions(y, len(captions))
        return y, negative
    missing = [i for i in indices if not captions[i]]
    if missing:
        raise PiDInputError(f"sample {missing[0]} has no caption: give --caption (or a prompt per sample)")
    from pid_trt.text import NEGATIVE_PROMPT, CaptionEncoder, EmbeddingCache

    encoder = CaptionEncoder.from_pretrained(text_encoder)
    cache = EmbeddingCache()
    rows = encoder.encode_cached([captions[i] for i in indices], cache) if indices else torch.empty(0)
    if teacher and negative is None:
        negative = encoder.encode_cached([NEGATIVE_PROMPT], cache)
    return dict(zip(indices, rows)), negative


def gather_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's records (dicts with the global "index"), in index order, on every rank (one process: its own)."""
    return sorted(gather(records), key=lambda r: r["index"])


def _keep_previous(path: pathlib.Path) -> None:
    """Rename an earlier run's summary to summary.<its time>.json rather than overwrite it."""
    if not path.exists():
        return
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
    path.rename(kept)
    log.info("kept the earlier run's %s as %s", path.name, kept.name)


def my_share(count: int, what: str = "sample") -> list[int]:
    """This rank's global indices of `count` items (runtime.device.shard; a bad torchrun environment is refused
    here, before any work), with a note when this rank has nothing to do."""
    mine = shard(count)
    rank, size = world()
    if not mine:
        log.info("rank %d of %d has nothing to do: %d %s(s) for %d ranks", rank, size, count, what, size)
    return mine


def check_batches(samples: Sequence[LatentSample], indices: Sequence[int], batch_size: int) -> None:
    """Latents decoded in one batch must share a shape: refuse mixed sizes before any work, never reshape them."""
    if batch_size < 1:
        raise PiDInputError("--batch-size must be at least 1")
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        shapes = {tuple(samples[i].lq_latent.shape[1:]) for i in batch}
        if len(shapes) > 1:
            raise PiDInputError(f"samples {batch[0]}..{batch[-1]} have latents of different shapes "
                                f"({', '.join(str(list(s)) for s in sorted(shapes))}) and cannot share a batch; "
                                "use --batch-size 1 or one latent size per run")


def preflight(samples: Sequence[LatentSample], indices: Sequence[int], batch_size: int,
              baseline_vae: pathlib.Path | None = None, **source: Any) -> SourceInfo:
    """Everything `decode_latents` can refuse before the decoder is opened: mixed sizes in a batch, a broken
    baseline VAE folder, and sizes or batches whose memory the source's device cannot hold (`source`:
    describe_source's arguments)."""
    check_batches(samples, indices, batch_size)
    if baseline_vae is not None:
        from pid_trt.vae import check_vae_dir

        check_vae_dir(baseline_vae)
    info = describe_source(**source)
    sizes = [info.net_config.output_size(samples[i].lq_latent.shape[2:])[::-1] for i in indices]
    info.check_request(sizes, min(batch_size, max(1, len(indices))))
    return info


def write_summary(out_dir: pathlib.Path, summary: dict[str, Any]) -> pathlib.Path:
    """Write the run's `summary.json` atomically (returns its path). Under torchrun the records are gathered first
    (`gather_records`) and rank 0 writes it once; ranks without torchrun's rendezvous each write
    `summary.rank<r>.json`. An earlier run's file is kept under a new name (`summary.<time>.json`)."""
    rank, size = world()
    merged = size == 1 or can_gather()
    path = out_dir / ("summary.json" if merged else f"summary.rank{rank}.json")
    if merged and rank != 0:
        return path
    _keep_previous(path)
    atomic_write_json(path, {**summary, "world_size": size, **({} if merged else {"rank": rank})})
    return path


def decode_latents(decoder: PiDDecoder, samples: Sequence[LatentSample], captions: Captions, *,
                   out_dir: pathlib.Path, options: SamplerOptions, seed: int = 0,
                   negative: torch.Tensor | None = None, batch_size: int = 1, fmt: str = "jpg",
                   baseline_vae: pathlib.Path | None = None,
                   progress: bool = True) -> tuple[dict[str, Any], pathlib.Path]:
    """`pid-trt decode`: decode this rank's share of `samples` in batches, write
    `<out>/<tag>/<index:08d>.<fmt>` (and the native-VAE decode under `<out>/vae_decode/` with a baseline VAE),
    then the summary; returns the summary and its path."""
    from tqdm import tqdm

    rank, size = world()
    mine = shard(len(samples))
    check_batches(samples, mine, batch_size)
    check_captions(captions, len(samples))
    vae = None
    if baseline_vae is not None:
        from pid_trt.vae import load_vae

        if decoder.entry is None:
            raise PiDInputError("--baseline-vae needs to know the backbone: pass --backbone")
        vae = load_vae(baseline_vae, device=decoder.backend.device)
    tag = output_tag(decoder, options)
    items = []
    bar = tqdm(total=len(mine), desc=f"decode (rank {rank}/{size})" if size > 1 else "decode", unit="img",
               disable=None if progress else True)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        z = torch.cat([samples[i].lq_latent for i in idx])
        y = torch.cat([caption_row(captions, i) for i in idx])
        sigma = torch.tensor([samples[i].sigma for i in idx])
        t0 = time.perf_counter()
        u8 = decoder.decode(z, y, sigma, seed=seed, output="uint8", indices=idx, options=options,
                            negative_embedding=negative)
        seconds = (time.perf_counter() - t0) / len(idx)
        for j, i in enumerate(idx):
            path = out_dir / tag / f"{i:08d}.{fmt}"
            save_image(u8[j], path)
            item = {"index": i, "image": str(path.relative_to(out_dir)), "input": str(samples[i].file),
                    "input_index": samples[i].index, "sigma": samples[i].sigma, "seed": seed + i,
                    "seconds": round(seconds, 4), "size_wxh": [u8.shape[3], u8.shape[2]]}
            if vae is not None:
                from pid_trt.sampler import to_uint8
                from pid_trt.vae import baseline_decode

                base = to_uint8(baseline_decode(decoder.entry.backbone, vae,
                                                samples[i].lq_latent.to(decoder.backend.device)))
                bpath = out_dir / "vae_decode" / f"{i:08d}.{fmt}"
                save_image(base[0], bpath)
                item["baseline"] = str(bpath.relative_to(out_dir))
            items.append(item)
        bar.update(len(idx))
    bar.close()
    entry = decoder.entry
    summary = {"backend": decoder.backend.name, "device": str(decoder.backend.device),
               "backbone": entry.backbone if entry else None, "ckpt": entry.ckpt if entry else None,
               "weights": weights_summary(decoder),
               "sampler": options.sampler, "steps": options.steps, "cfg": options.cfg, "seed": seed, "tag": tag,
               "images": gather_records(items)}
    return summary, write_summary(out_dir, summary)

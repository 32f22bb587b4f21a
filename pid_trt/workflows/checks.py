"""The `parity` and `bench` workflows: open the net under test from its source, run the check, return a report."""
from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from pid_trt.errors import PiDInputError
from pid_trt.workflows.inputs import read_caption_embedding, read_latents
from pid_trt.workflows.sources import Sources

log = logging.getLogger(__name__)


def _given_inputs(latents: pathlib.Path | None, caption_embedding: pathlib.Path | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if latents is not None:
        samples = read_latents(latents)
        shapes = {tuple(s.lq_latent.shape) for s in samples}
        if len(shapes) != 1:
            raise PiDInputError(f"{latents}: parity needs latents of one shape, found {sorted(shapes)}")
        out["lq_latent"] = torch.cat([s.lq_latent for s in samples])
        out["degrade_sigma"] = torch.tensor([s.sigma for s in samples])
    if caption_embedding is not None:
        out["y"] = read_caption_embedding(caption_embedding)
    return out


def _size(net_config, size: tuple[int, int] | None, given: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The W×H a parity run decodes: the given latents', else --size, else the default 4×6 latent."""
    k = net_config.pixels_per_latent
    if "lq_latent" in given:
        return given["lq_latent"].shape[3] * k, given["lq_latent"].shape[2] * k
    return size or (6 * k, 4 * k)


def check_parity(*, backend: str | None = None, reference_checkpoint: pathlib.Path | None = None,
                 export_dir: pathlib.Path | None = None, against: str | None = None,
                 latents: pathlib.Path | None = None, caption_embedding: pathlib.Path | None = None,
                 size: tuple[int, int] | None = None, batch: int = 1, sigma: float = 0.25, seed: int = 0,
                 steps: int = 4, **source: Any) -> dict[str, Any]:
    """Decode the same inputs and noise with the net under test (`source`: see `Sources`) and with the torch
    reference of the same weights; the report says whether they agree within the precision's tolerance."""
    from pid_trt.parity import make_inputs, run_parity, tolerance_for
    from pid_trt.runtime import PiDDecoder

    sources = Sources(export_dir=export_dir, reference_checkpoint=reference_checkpoint, **source)
    given = _given_inputs(latents, caption_embedding)
    n = len(given["lq_latent"]) if "lq_latent" in given else batch
    try:
        if (info := sources.describe_source()) is not None:  # before anything large is loaded
            info.check_request([_size(info.net_config, size, given)], n)
        candidate = sources.decoder(backend, cuda_graph=False)
        candidate.check_memory(*_size(candidate.net_config, size, given), n)
        ref_net, ref_how = sources.reference_net()
        precision = candidate.precision
        tolerance = tolerance_for(precision, against)
        noise_for = PiDDecoder.from_net(ref_net, candidate.backend.device, cuda_graph=False).noise_for
        inputs = make_inputs(candidate.net_config, noise_for, seed=seed, size=size, batch=batch, sigma=sigma,
                             steps=steps, **given)
        report = run_parity(candidate, ref_net, inputs, tolerance)
    finally:
        sources.close()
    return {"status": "pass" if report["passed"] else "fail", "backend": candidate.backend.name,
            "precision": precision, "device": str(candidate.backend.device), "source": sources.describe(),
            "reference_weights": ref_how, **report}


def run_bench(*, backends: Sequence[str | None] = (None,), sizes: Sequence[tuple[int, int]] = (),
              batches: Sequence[int] = (1,), steps: int = 4, warmup: int = 2, iters: int = 10,
              text_len: int | None = None, cuda_graph: bool = True, **source: Any) -> list[dict[str, Any]]:
    """Time whole decodes of the net under test on each backend, size and batch; rows carry the speedup over the
    first backend (`pid_trt.bench`)."""
    from pid_trt.bench import add_ratios, bench_decoder

    if warmup < 0 or iters < 1:
        raise PiDInputError("--warmup must be >= 0 and --iters >= 1")
    sources = Sources(random_reference=True, **source)
    rows = []
    try:
        if (info := sources.describe_source()) is not None:  # before anything large is loaded
            info.check_request(sizes or [_size(info.net_config, None, {})], max(batches or (1,)))
        for backend in backends or (None,):
            decoder = sources.decoder(backend, cuda_graph=cuda_graph)
            for size in sizes or [_size(decoder.net_config, None, {})]:
                for batch in batches or (1,):
                    decoder.check_memory(*size, batch, text_len=text_len)
                    row = bench_decoder(decoder, size, batch, steps, warmup, iters, text_len)
                    log.info("%s %s batch %d: p50 %.2f ms", row["backend"], row["size"], batch, row["p50_ms"])
                    rows.append(row)
    finally:
        sources.close()
    return add_ratios(rows)

"""`pid-trt decode`: latents (safetensors) → images, on any backend; shards round-robin under torchrun."""
from __future__ import annotations

import os
import pathlib
import time

import click
import torch

from pid_trt.errors import PiDInputError


def load_safetensors(path: pathlib.Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return {k: v.clone() for k, v in load_file(str(path)).items()}
    except Exception as e:
        raise PiDInputError(f"{path} is not a readable safetensors file ({what}): {str(e).splitlines()[0][:120]}") \
            from None


def read_latents(source: pathlib.Path, sigma: float | None) -> list[tuple[torch.Tensor, float]]:
    """Every sample of a latent file, or of all *.safetensors in a directory (sorted): (lq_latent [1,C,h,w], σ)."""
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
        s = data.get("degrade_sigma", torch.zeros(z.shape[0])).reshape(-1).expand(z.shape[0])
        samples += [(z[i:i + 1], float(s[i]) if sigma is None else sigma) for i in range(z.shape[0])]
    return samples


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))), int(os.environ.get("WORLD_SIZE", 1))


def upstream_tag(backbone: str | None, experiment: str | None, cfg: float, steps: int,
                 shift: float | None = None) -> str:
    """Upstream's output folder name: <backbone>_<ckptdir>_model_ema_bf16.pth_cfg<cfg>_steps<N>[_shift<s>]_reg."""
    extra = f"_shift{shift}" if shift is not None else ""
    return f"{backbone or 'custom'}_{experiment or 'custom'}_model_ema_bf16.pth_cfg{cfg}_steps{steps}{extra}_reg"


@click.command("decode")
@click.option("--backbone", help="Backbone (needed with --checkpoint; read from the ONNX manifest/sidecar otherwise).")
@click.option("--ckpt", default=None, help="Checkpoint type: 2k, 2kto4k, 2kto4k_v1pt5, 2kto4k_v1pt5_teacher.")
@click.option("--engine-dir", type=click.Path(path_type=pathlib.Path), help="TensorRT engines (pid-trt build).")
@click.option("--onnx-dir", type=click.Path(path_type=pathlib.Path), help="ONNX export (pid-trt export).")
@click.option("--checkpoint", type=click.Path(path_type=pathlib.Path), help="model_ema_bf16.pth (torch backend).")
@click.option("--latents", required=True, type=click.Path(path_type=pathlib.Path),
              help="safetensors with lq_latent [B,C,h,w] (+ optional degrade_sigma [B]), or a folder of them.")
@click.option("--caption-embedding", type=click.Path(path_type=pathlib.Path),
              help="safetensors with y [B or 1, L, D] (pid-trt embed writes one).")
@click.option("--caption", help="Caption text (needs --text-encoder; embeddings are cached).")
@click.option("--text-encoder", type=click.Path(path_type=pathlib.Path), help="Local Gemma-2-2b-it directory.")
@click.option("--sigma", type=float, default=None, help="degrade σ for every latent [default: from the file, else 0].")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i (its global index).")
@click.option("--steps", type=int, default=None, help="Sampler steps [default: 4; teachers 25].")
@click.option("--cfg", type=float, default=None, help="Teacher checkpoints: text guidance scale [default 5].")
@click.option("--shift", type=float, default=None, help="Teacher checkpoints: time shift [default: dynamic].")
@click.option("--negative-embedding", type=click.Path(path_type=pathlib.Path),
              help="Teacher checkpoints: y of the negative prompt (pid-trt embed of pid_trt.text.NEGATIVE_PROMPT).")
@click.option("--backend", type=click.Choice(["tensorrt", "onnxruntime", "torch"]), default=None)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when available].")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="torch backend: bf16 mirrors upstream's autocast.")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=pathlib.Path), default=pathlib.Path("results/pid_decode"),
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="jpg", show_default=True)
@click.option("--baseline-vae", type=click.Path(path_type=pathlib.Path),
              help="Local diffusers VAE directory: also write the native-VAE decode of each latent.")
@click.option("--no-cuda-graph", is_flag=True, help="Run eagerly instead of replaying CUDA graphs.")
def command(backbone, ckpt, engine_dir, onnx_dir, checkpoint, latents, caption_embedding, caption, text_encoder, sigma,
            seed, steps, cfg, shift, negative_embedding, backend, device, precision, batch_size, out_dir, fmt,
            baseline_vae, no_cuda_graph) -> None:
    """Decode latents into images with PiD (student or teacher checkpoints)."""
    from tqdm import tqdm

    from pid_trt.images import atomic_write_json, save_image
    from pid_trt.runtime import PiDDecoder
    from pid_trt.sampler import to_uint8

    sources = [s for s in (engine_dir, onnx_dir, checkpoint) if s is not None]
    if len(sources) != 1:
        raise PiDInputError("give exactly one of --engine-dir, --onnx-dir or --checkpoint")
    if (caption_embedding is None) == (caption is None):
        raise PiDInputError("give either --caption-embedding FILE or --caption TEXT (with --text-encoder)")
    if batch_size < 1:
        raise PiDInputError("--batch-size must be at least 1")
    samples = read_latents(latents, sigma)
    if caption is not None:
        if text_encoder is None:
            raise PiDInputError("--caption needs --text-encoder DIR (a local Gemma-2-2b-it)")
        from pid_trt.text import CaptionEncoder, EmbeddingCache

        y_all = CaptionEncoder.from_pretrained(text_encoder).encode_cached([caption], EmbeddingCache())
    else:
        y_all = load_safetensors(caption_embedding, "caption embedding").get("y")
        if y_all is None:
            raise PiDInputError(f"{caption_embedding} has no 'y' tensor")
    if y_all.dim() != 3 or y_all.shape[0] not in (1, len(samples)):
        raise PiDInputError(f"caption embedding y must be [1 or {len(samples)}, L, D], got {list(y_all.shape)}")
    neg = None
    if negative_embedding is not None:
        neg = load_safetensors(negative_embedding, "negative embedding").get("y")

    dec = PiDDecoder.load(sources[0], backend, device, backbone=backbone, ckpt=ckpt, precision=precision,
                          cuda_graph=not no_cuda_graph)
    if dec.entry is not None and dec.entry.note:
        click.echo(f"note: {dec.entry.note}", err=True)
    teacher_mode = dec.sampler == "teacher"
    steps = steps or (dec.entry.default_steps if teacher_mode else 4)
    cfg_used = (cfg if cfg is not None else dec.entry.default_cfg) if teacher_mode else 1.0
    vae = None
    if baseline_vae is not None:
        from pid_trt.vae import load_vae

        vae = load_vae(baseline_vae, device=dec.backend.device)

    rank, world_size = world()
    mine = list(range(rank, len(samples), world_size))
    tag = upstream_tag(dec.entry.backbone if dec.entry else None, dec.entry.experiment if dec.entry else None,
                       cfg_used, steps, shift)
    items = []
    bar = tqdm(total=len(mine), desc=f"decode (rank {rank}/{world_size})" if world_size > 1 else "decode",
               unit="img", disable=None)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        z = torch.cat([samples[i][0] for i in idx])
        y = y_all.expand(len(idx), -1, -1) if y_all.shape[0] == 1 else y_all[idx]
        sig = torch.tensor([samples[i][1] for i in idx])
        t0 = time.perf_counter()
        u8 = dec.decode(z, y, sig, seed=seed, steps=steps, output="uint8", indices=idx, cfg=cfg, shift=shift,
                        negative_embedding=neg)
        seconds = (time.perf_counter() - t0) / len(idx)
        for j, i in enumerate(idx):
            path = out_dir / tag / f"{i:08d}.{fmt}"
            save_image(u8[j], path)
            item = {"index": i, "image": str(path.relative_to(out_dir)), "sigma": samples[i][1],
                    "seed": seed + i, "seconds": round(seconds, 4), "size_wxh": [u8.shape[3], u8.shape[2]]}
            if vae is not None:
                from pid_trt.vae import baseline_decode

                base = to_uint8(baseline_decode(dec.entry.backbone, vae, samples[i][0].to(dec.backend.device)))
                bpath = out_dir / "vae_decode" / f"{i:08d}.{fmt}"
                save_image(base[0], bpath)
                item["baseline"] = str(bpath.relative_to(out_dir))
            items.append(item)
        bar.update(len(idx))
    bar.close()
    summary = {"backend": dec.backend.name, "device": str(dec.backend.device), "backbone": getattr(dec.entry, "backbone", None),
               "ckpt": getattr(dec.entry, "ckpt", None), "sampler": dec.sampler, "steps": steps, "cfg": cfg_used,
               "seed": seed, "rank": rank, "world_size": world_size, "images": items}
    name = "summary.json" if world_size == 1 else f"summary.rank{rank}.json"
    atomic_write_json(out_dir / name, summary)
    click.echo(f"wrote {len(items)} image(s) to {out_dir / tag} and {out_dir / name}")

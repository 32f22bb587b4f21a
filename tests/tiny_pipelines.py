"""Tiny random diffusers pipelines built in code (no downloads), one per family PiD decodes, each with a tiny VAE
of its family's config; shared by the latent, runtime, workflow and drop-in tests.

Builders return (pipeline, inputs): `inputs` are precomputed prompt embeddings for BATCH images plus the family's
call options. `with_prompts(pipe, backbone)` lets a pipeline take text prompts without text encoders: its
`encode_prompt` is replaced by one that gives each prompt embeddings seeded by the prompt's text.
"""
import os
import zlib

import pytest
import torch

HEIGHT, WIDTH, STEPS, BATCH = 64, 96, 3, 2
TEXT = (7, 32)  # text tokens and width of every tiny denoiser's text input
FLUX1_VAE = {"scaling_factor": 0.3611, "shift_factor": 0.1159}  # FLUX.1's VAE (also Z-Image's)


def tiny_vae(d, latent_channels: int, **config):
    """A tiny AutoencoderKL with the real /8 factor (4 blocks); `config`: scaling_factor, shift_factor."""
    return d.AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                           up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=latent_channels,
                           norm_num_groups=4, layers_per_block=1, **config)


def _tiny_flux2_vae(d):
    # the klein final latent is BN-inverted by diffusers, so non-trivial BN stats matter
    vae = d.AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2)
    vae.bn.running_mean.copy_(torch.randn(128))
    vae.bn.running_var.copy_(torch.rand(128) * 3 + 0.05)
    return vae


def _tiny_flux2_transformer(d):
    return d.Flux2Transformer2DModel(
        in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4))


def _tiny_flux(d):
    transformer = d.FluxTransformer2DModel(
        in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    pipe = d.FluxPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(d, 16, **FLUX1_VAE),
                          text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                          transformer=transformer)
    return pipe, {"prompt_embeds": torch.randn(BATCH, *TEXT), "pooled_prompt_embeds": torch.randn(BATCH, 32)}


def _tiny_flux2(d):
    pipe = d.Flux2Pipeline(transformer=_tiny_flux2_transformer(d), vae=_tiny_flux2_vae(d), text_encoder=None,
                           tokenizer=None, scheduler=d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    return pipe, {"prompt_embeds": torch.randn(BATCH, *TEXT)}


def _tiny_sd3(d):
    transformer = d.SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, out_channels=16,
        pos_embed_max_size=32)
    pipe = d.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(d, 16, scaling_factor=1.5305, shift_factor=0.0609), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    return pipe, {"prompt_embeds": torch.randn(BATCH, *TEXT), "pooled_prompt_embeds": torch.randn(BATCH, 32),
                  "guidance_scale": 1.0}


def _tiny_sdxl(d):
    unet = d.UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    scheduler = d.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="leading", steps_offset=1)
    pipe = d.StableDiffusionXLPipeline(vae=tiny_vae(d, 4, scaling_factor=0.13025), text_encoder=None,
                                       text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
                                       scheduler=scheduler, add_watermarker=False)
    return pipe, {"prompt_embeds": torch.randn(BATCH, *TEXT), "pooled_prompt_embeds": torch.randn(BATCH, 32),
                  "guidance_scale": 1.0}


def _tiny_klein(d):
    pipe = d.Flux2KleinPipeline(transformer=_tiny_flux2_transformer(d), vae=_tiny_flux2_vae(d), text_encoder=None,
                                tokenizer=None, scheduler=d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    return pipe, {"prompt_embeds": torch.randn(BATCH, *TEXT), "guidance_scale": 1.0}


def _tiny_zimage(d):
    transformer = d.ZImageTransformer2DModel(dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                             cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])
    pipe = d.ZImagePipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0),
                            vae=tiny_vae(d, 16, **FLUX1_VAE), text_encoder=None, tokenizer=None,
                            transformer=transformer)
    return pipe, {"prompt_embeds": [torch.randn(*TEXT) for _ in range(BATCH)], "guidance_scale": 0.0}


def _tiny_qwenimage(d):
    transformer = d.QwenImageTransformer2DModel(in_channels=64, out_channels=16, num_layers=1, attention_head_dim=16,
                                                num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
    # the Wan2.1-style video VAE with the real /8 factor (3 down levels) and its default latents_mean/std
    vae = d.AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    pipe = d.QwenImagePipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                               text_encoder=None, tokenizer=None, transformer=transformer)
    return pipe, {"prompt_embeds": torch.randn(BATCH, *TEXT),
                  "prompt_embeds_mask": torch.ones(BATCH, TEXT[0], dtype=torch.long), "true_cfg_scale": 1.0}


# backbone -> (builder, PiD latent channels)
TINY = {"flux": (_tiny_flux, 16), "flux2": (_tiny_flux2, 128), "sd3": (_tiny_sd3, 16), "sdxl": (_tiny_sdxl, 4),
        "flux2-klein-4b": (_tiny_klein, 128), "zimage": (_tiny_zimage, 16), "qwenimage": (_tiny_qwenimage, 16)}


def build_tiny(backbone: str, dtype: torch.dtype = torch.float32):
    """(pipeline in eval mode, inputs) for `backbone`, seeded, in `dtype`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    pipe, inputs = TINY[backbone][0](diffusers)
    if dtype != torch.float32:
        pipe = pipe.to(dtype)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, {k: [_cast(e, dtype) for e in v] if isinstance(v, list) else _cast(v, dtype)
                  for k, v in inputs.items()}


def _cast(value, dtype: torch.dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def prompt_embedding(prompt: str, shape: tuple[int, ...], salt: str = "") -> torch.Tensor:
    """A stand-in text embedding of `prompt`: Gaussian, seeded by the prompt's text."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32((salt + prompt).encode())))


def with_prompts(pipe, backbone: str):
    """Let `pipe` take text prompts: its encode_prompt returns prompt-seeded embeddings, repeated prompt-major for
    num_images_per_prompt, in the structure each family's pipeline expects."""
    def encode_prompt(prompt=None, num_images_per_prompt=1, **_):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        dtype = pipe.dtype

        def rows(shape, salt=""):
            stack = torch.stack([prompt_embedding(p, shape, salt) for p in prompts])
            return stack.repeat_interleave(num_images_per_prompt, 0).to(pipe.device, dtype)

        embeds = rows(TEXT)
        if backbone == "flux":
            return embeds, rows((32,), "pooled"), torch.zeros(TEXT[0], 3, dtype=dtype)
        if backbone in ("sd3", "sdxl"):
            return embeds, None, rows((32,), "pooled"), None
        if backbone in ("flux2", "flux2-klein-4b"):
            return embeds, pipe._prepare_text_ids(embeds).to(pipe.device)
        if backbone == "zimage":  # ZImagePipeline repeats per image itself
            return list(rows(TEXT)), []
        if backbone == "qwenimage":
            return embeds, None
        raise ValueError(backbone)

    pipe.encode_prompt = encode_prompt
    return pipe


def call_options(inputs: dict) -> dict:
    """The family's call options without the precomputed embeddings."""
    return {k: v for k, v in inputs.items() if "prompt_embeds" not in k}


def run_tiny(backbone: str, dtype: torch.dtype):
    pipe, inputs = build_tiny(backbone, dtype)
    captured = {}

    def capture(pipeline, step_index, timestep, callback_kwargs):
        # upstream stores latent.cpu(), an alias on CPU; keep a real copy
        captured[step_index + 1] = callback_kwargs["latents"].clone()
        return callback_kwargs

    final = pipe(height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, output_type="latent",
                 callback_on_step_end=capture, **inputs).images
    assert sorted(captured) == list(range(1, STEPS + 1))
    return pipe, final, captured

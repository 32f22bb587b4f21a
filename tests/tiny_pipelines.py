"""Tiny random diffusers pipelines built in code (no downloads), shared by the latent and runtime tests."""
import os

import pytest
import torch

HEIGHT, WIDTH, STEPS, BATCH = 64, 96, 3, 2


def _tiny_flux(d):
    transformer = d.FluxTransformer2DModel(
        in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    pipe = d.FluxPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                          text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    return pipe, dict(prompt_embeds=torch.randn(BATCH, 7, 32), pooled_prompt_embeds=torch.randn(BATCH, 32))


def _tiny_sd3(d):
    transformer = d.SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, out_channels=16,
        pos_embed_max_size=32)
    pipe = d.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    return pipe, dict(prompt_embeds=torch.randn(BATCH, 7, 32), pooled_prompt_embeds=torch.randn(BATCH, 32),
                      guidance_scale=1.0)


def _tiny_sdxl(d):
    unet = d.UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    scheduler = d.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="leading", steps_offset=1)
    pipe = d.StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                       tokenizer_2=None, unet=unet, scheduler=scheduler)
    return pipe, dict(prompt_embeds=torch.randn(BATCH, 7, 32), pooled_prompt_embeds=torch.randn(BATCH, 32),
                      guidance_scale=1.0)


def _tiny_klein(d):
    transformer = d.Flux2Transformer2DModel(
        in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4))
    # the klein final latent is BN-inverted by diffusers, so the VAE (and non-trivial BN stats) must be real
    vae = d.AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2)
    vae.bn.running_mean.copy_(torch.randn(128))
    vae.bn.running_var.copy_(torch.rand(128) * 3 + 0.05)
    pipe = d.Flux2KleinPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                                text_encoder=None, tokenizer=None, transformer=transformer)
    return pipe, dict(prompt_embeds=torch.randn(BATCH, 7, 32), guidance_scale=1.0)


def _tiny_zimage(d):
    transformer = d.ZImageTransformer2DModel(dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                             cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])
    pipe = d.ZImagePipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None,
                            tokenizer=None, transformer=transformer)
    return pipe, dict(prompt_embeds=[torch.randn(7, 32) for _ in range(BATCH)], guidance_scale=0.0)


TINY = {"flux": (_tiny_flux, 16), "sd3": (_tiny_sd3, 16), "sdxl": (_tiny_sdxl, 4),
        "flux2-klein-4b": (_tiny_klein, 128), "zimage": (_tiny_zimage, 16)}


def run_tiny(backbone: str, dtype: torch.dtype):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    pipe, inputs = TINY[backbone][0](diffusers)
    pipe = pipe.to(dtype)
    inputs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if backbone == "zimage":
        inputs["prompt_embeds"] = [e.to(dtype) for e in inputs["prompt_embeds"]]
    captured = {}

    def capture(pipeline, step_index, timestep, callback_kwargs):
        # upstream stores latent.cpu(), an alias on CPU; keep a real copy
        captured[step_index + 1] = callback_kwargs["latents"].clone()
        return callback_kwargs

    pipe.set_progress_bar_config(disable=True)
    final = pipe(height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, output_type="latent",
                 callback_on_step_end=capture, **inputs).images
    assert sorted(captured) == list(range(1, STEPS + 1))
    return pipe, final, captured



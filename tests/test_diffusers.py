"""`use_pid`: PiD as the decode stage of tiny diffusers pipelines of every family, built in code (no downloads).

The drop-in must equal, bit for bit, the explicit path: `pipe(..., output_type="latent")` → `from_pipeline_output` →
`decoder.decode(..., seed=)` → `(x + 1) / 2`, with the same LDM generator and PiD seed.
"""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from pid_trt.diffusers import PIPELINE_CLASSES, check_decoder, pipeline_backbone, use_pid
from pid_trt.errors import PiDInputError
from pid_trt.latents import from_pipeline_output
from pid_trt.registry import resolve
from pid_trt.runtime import PiDDecoder
from pid_trt.sampler import to_uint8
from pid_trt.text import NEGATIVE_PROMPT, CaptionEncoder
from pid_trt.tiny import tiny_net
from pid_trt.vae import baseline_decode
from tests.conftest import data_file
from tests.tiny_pipelines import TINY, build_tiny, call_options, with_prompts

# the PiD checkpoint each family decodes with (its tiny net has that checkpoint's structure)
CKPT = {"flux": "2kto4k_v1pt5", "flux2": "2kto4k_v1pt5", "flux2-klein-4b": "2kto4k_v1pt5", "zimage": "2kto4k_v1pt5",
        "sd3": "2k", "sdxl": "2kto4k", "qwenimage": "2kto4k_v1pt5"}
PROMPTS = ["a red cat", "a blue dog"]
PER_IMAGE = ["a red cat", "a red cat", "a blue dog", "a blue dog"]  # 2 images per prompt, prompt-major
H, W, LDM_STEPS, SEED = 32, 48, 2, 11  # LDM size; PiD makes 128x192


@pytest.fixture(autouse=True)
def _quiet_and_private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("PID_TRT_CACHE", str(tmp_path_factory.getbasetemp() / "pid-trt-cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny sizes are far outside the trained range
        yield


@pytest.fixture(scope="module")
def encoder() -> CaptionEncoder:
    """The real caption encoder on a tiny random Gemma-2 (width 64, L = 8)."""
    return CaptionEncoder.from_pretrained(data_file("text", "tiny_gemma2", "model.safetensors").parent,
                                          max_length=8, dtype=torch.float32)


def tiny_decoder(backbone: str, ckpt: str | None = None, *, entry: bool = True) -> PiDDecoder:
    found = resolve(backbone, ckpt or CKPT[backbone])
    net = tiny_net(found.net.id, patch_depth=2, pixel_depth=1, txt_embed_dim=64)
    return PiDDecoder.from_net(net, entry=found if entry else None)


def tiny_pipe(backbone: str):
    pipe, inputs = build_tiny(backbone)
    return with_prompts(pipe, backbone), call_options(inputs)


def run(pipe, options: dict, output_type: str, **kwargs):
    call = {"prompt": PROMPTS, "num_images_per_prompt": 2, "height": H, "width": W,
            "num_inference_steps": LDM_STEPS, **options, **kwargs}
    return pipe(**call, generator=torch.Generator().manual_seed(3), output_type=output_type)


def one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(PiDInputError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("backbone", sorted(TINY))
def test_drop_in_equals_the_explicit_path(backbone, encoder):
    pipe, options = tiny_pipe(backbone)
    original = type(pipe)
    vae_images = run(pipe, options, "pt").images
    decoder = tiny_decoder(backbone)

    latents = run(pipe, options, "latent").images
    lq, sigma = from_pipeline_output(backbone, latents, pipe, height=H, width=W)
    y = encoder.encode_each(PER_IMAGE)
    explicit = (decoder.decode(lq, y, sigma, seed=SEED) + 1) / 2

    stage = use_pid(pipe, decoder, caption_encoder=encoder, seed=SEED)
    assert type(pipe).__name__ == original.__name__ and isinstance(pipe, original)
    images = run(pipe, options, "pt").images
    assert images.shape == (4, 3, 4 * H, 4 * W) and torch.equal(images, explicit)
    assert torch.equal(stage.last.lq_latent, lq) and torch.equal(stage.last.degrade_sigma, sigma)
    # the captions matter: the image-major order (cat, dog, cat, dog) gives other images
    assert not torch.equal(images, (decoder.decode(lq, y[[0, 2, 1, 3]], sigma, seed=SEED) + 1) / 2)

    as_np = run(pipe, options, "np").images
    assert as_np.shape == (4, 4 * H, 4 * W, 3) and np.array_equal(as_np, explicit.permute(0, 2, 3, 1).numpy())
    as_pil = run(pipe, options, "pil").images
    assert len(as_pil) == 4 and as_pil[0].size == (4 * W, 4 * H)
    assert np.array_equal(np.asarray(as_pil[3]), (as_np[3] * 255).round().astype(np.uint8))
    assert torch.equal(run(pipe, options, "latent").images, latents)  # untouched
    as_tuple = run(pipe, options, "pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], explicit)

    # the VAE is still there: a baseline from the converted latent, without running the LDM again
    baseline = (baseline_decode(backbone, pipe.vae, stage.last.lq_latent) + 1) / 2
    torch.testing.assert_close(baseline, vae_images, rtol=0, atol=1e-5)

    stage.restore()
    assert type(pipe) is original and not stage.active
    assert torch.equal(run(pipe, options, "pt").images, vae_images)


def test_any_decoder_backend(tiny_flux_onnx):
    """An ONNX Runtime decoder (its backbone read from the export's manifest) drops in the same way."""
    decoder = PiDDecoder.load(tiny_flux_onnx[1])
    assert decoder.backend.name == "onnxruntime" and decoder.entry.backbone == "flux"
    pipe, options = tiny_pipe("flux")
    y = torch.randn(1, 8, 32)
    lq, sigma = from_pipeline_output("flux", run(pipe, options, "latent").images, pipe, height=H, width=W)
    with use_pid(pipe, decoder, caption_embedding=y, seed=SEED):
        images = run(pipe, options, "pt").images
    assert torch.equal(images, (decoder.decode(lq, y.expand(4, -1, -1), sigma, seed=SEED) + 1) / 2)


def test_sigma_steps_defaults_and_a_positional_prompt():
    pipe, options = tiny_pipe("flux")
    decoder = tiny_decoder("flux")
    y = torch.randn(1, 8, 64)
    latents = run(pipe, options, "latent").images
    lq, _ = from_pipeline_output("flux", latents, pipe, height=H, width=W)
    with use_pid(pipe, decoder, caption_embedding=y, seed=4, sigma=0.3, steps=2) as stage:
        images = run(pipe, options, "pt").images
        assert torch.equal(images, (decoder.decode(lq, y.expand(4, -1, -1), 0.3, seed=4, steps=2) + 1) / 2)
        pipe.default_sample_size = 4  # the size diffusers picks without height/width: 4 * vae_scale_factor
        assert pipe("a red cat", num_inference_steps=1, output_type="pt").images.shape == (1, 3, 128, 128)
    assert not stage.active


def test_caption_embedding_rows_map_to_images():
    pipe, options = tiny_pipe("sd3")
    decoder = tiny_decoder("sd3")
    rows = torch.randn(4, 8, 64)
    per_image = [rows[:1].expand(4, -1, -1), rows[:2].repeat_interleave(2, 0), rows]
    for given, y in zip([rows[0], rows[:2], rows], per_image):  # [L, D], one per prompt, one per image
        with use_pid(pipe, decoder, caption_embedding=given) as stage:
            run(pipe, options, "pt")
        assert torch.equal(stage.last.image, decoder.decode(stage.last.lq_latent, y, 0.0))
    with use_pid(pipe, decoder, caption_embedding=rows[:3]):
        one_line_error("3 rows, but this call makes 4 images from 2 prompts", run, pipe, options, "pt")


def test_prompt_embeds_without_a_prompt_need_a_caption_embedding(encoder):
    pipe, inputs = build_tiny("flux")
    decoder = tiny_decoder("flux")
    steps = []

    def count(pipe, i, t, kwargs):
        steps.append(i)
        return kwargs

    call = {**inputs, "height": H, "width": W, "num_inference_steps": 1, "callback_on_step_end": count}
    with use_pid(pipe, decoder, caption_encoder=encoder):
        one_line_error("prompt_embeds without a prompt.*caption_embedding=y", pipe, **call)
    assert steps == []  # refused before the LDM ran
    y = torch.randn(2, 8, 64)
    with use_pid(pipe, decoder, caption_embedding=y) as stage:
        assert pipe(**call, output_type="pt").images.shape == (2, 3, 4 * H, 4 * W)
    assert torch.equal(stage.last.image, decoder.decode(stage.last.lq_latent, y, 0.0))


def test_mismatched_decoders_and_pipelines_are_one_line_errors():
    pipe, _ = tiny_pipe("flux")
    y = torch.randn(1, 8, 64)
    message = one_line_error("PiD for sd3, but the pipeline makes flux latents", use_pid, pipe, tiny_decoder("sd3"),
                             caption_embedding=y)
    assert "load a PiD checkpoint for flux" in message
    one_line_error("takes 4-channel latents, but flux latents have 16", use_pid, pipe,
                   tiny_decoder("sdxl", entry=False), caption_embedding=y)
    one_line_error("PiD for qwenimage", use_pid, pipe, tiny_decoder("qwenimage"), caption_embedding=y)
    one_line_error("cannot decode a object; supported pipelines: ", use_pid, object(), tiny_decoder("flux"),
                   caption_embedding=y)
    assert type(pipe).__name__ == "FluxPipeline" and not hasattr(type(pipe), "_pid_stage")
    # aliases share a checkpoint: Z-Image decodes with PiD for flux, klein with PiD for flux2
    check_decoder(tiny_decoder("flux"), "zimage")
    check_decoder(tiny_decoder("flux2"), "flux2-klein-4b")
    check_decoder(tiny_decoder("zimage-turbo", "2k"), "flux")


def test_use_pid_argument_errors(encoder):
    pipe, _ = tiny_pipe("flux")
    decoder = tiny_decoder("flux")
    y = torch.randn(1, 8, 64)
    one_line_error("needs a caption", use_pid, pipe, decoder)
    one_line_error("not both", use_pid, pipe, decoder, caption_encoder=encoder, caption_embedding=y)
    one_line_error("caption_embedding must be a tensor", use_pid, pipe, decoder, caption_embedding=[1.0])
    one_line_error("sigma must lie in", use_pid, pipe, decoder, caption_embedding=y, sigma=1.5)
    one_line_error("unknown decode option.* output", use_pid, pipe, decoder, caption_embedding=y, output="uint8")
    one_line_error("does not exist", use_pid, pipe, decoder, caption_encoder="no/such/gemma")
    assert type(pipe).__name__ == "FluxPipeline" and not hasattr(type(pipe), "_pid_stage")


def test_a_second_use_pid_replaces_the_first():
    pipe, options = tiny_pipe("flux")
    original = type(pipe)
    first = use_pid(pipe, tiny_decoder("flux"), caption_embedding=torch.randn(1, 8, 64))
    second = use_pid(pipe, tiny_decoder("flux"), caption_embedding=torch.randn(1, 8, 64), seed=1)
    assert not first.active and second.active and type(pipe).__mro__[1] is original
    run(pipe, options, "pt")
    assert first.last is None and second.last is not None
    first.restore()  # no effect: it is no longer in place
    assert second.active
    second.restore()
    assert type(pipe) is original


def test_sdxl_watermark_applies_to_pid_images():
    pipe, options = tiny_pipe("sdxl")

    class Flip:  # stands in for diffusers' invisible-watermark encoder
        def apply_watermark(self, images):
            return images.flip(-1)

    pipe.watermark = Flip()
    with use_pid(pipe, tiny_decoder("sdxl"), caption_embedding=torch.randn(1, 8, 64)) as stage:
        images = run(pipe, options, "pt").images
    assert torch.equal(images, (stage.last.image.flip(-1) + 1) / 2)


def test_teacher_decoder_gets_the_encoded_negative_prompt(encoder):
    pipe, options = tiny_pipe("flux")
    decoder = tiny_decoder("flux", "2kto4k_v1pt5_teacher")
    with use_pid(pipe, decoder, caption_encoder=encoder, steps=2, cfg=3.0) as stage:
        run(pipe, options, "pt", num_images_per_prompt=1)
    negative = encoder.encode_each([NEGATIVE_PROMPT])
    want = decoder.decode(stage.last.lq_latent, encoder.encode_each(PROMPTS), 0.0, steps=2, cfg=3.0,
                          negative_embedding=negative)
    assert torch.equal(stage.last.image, want)


def test_pipeline_classes_map_back_to_backbones():
    for backbone in TINY:
        assert pipeline_backbone(build_tiny(backbone)[0]) == backbone
    assert set(PIPELINE_CLASSES) == set(CKPT) | {"flux2-klein-9b", "zimage-turbo", "qwenimage-2512"}


def test_generate_decodes_x0_like_the_drop_in(tmp_path):
    """pid-trt generate and use_pid share one decode path: generate's x0 image is the drop-in's, bit for bit."""
    from PIL import Image

    from pid_trt.workflows.decode import output_tag
    from pid_trt.workflows.generate import EXTRA_KWARGS, LDM_DEFAULTS, generate
    from tests.workflows.tiny_full import tiny_full_pipeline

    pipe = tiny_full_pipeline("flux")
    decoder = tiny_decoder("flux")
    y = torch.randn(1, 8, 64)
    generate(pipe, decoder, ["a red cat", "a blue dog"], y, backbone="flux", out_dir=tmp_path,
             resolution=(4 * W, 4 * H), ldm_steps=LDM_STEPS, seed=5, fmt="png", progress=False)
    tag = output_tag(decoder, decoder.options(), "flux")
    saved = np.asarray(Image.open(tmp_path / tag / "step_x0" / "00000001.png"))
    with use_pid(pipe, decoder, caption_embedding=y, seed=5 + 1) as stage:  # prompt 1 uses seed + 1 for both
        pipe("a blue dog", height=H, width=W, num_inference_steps=LDM_STEPS, guidance_scale=LDM_DEFAULTS["flux"][1],
             generator=torch.Generator().manual_seed(5 + 1), **EXTRA_KWARGS["flux"])
    assert np.array_equal(to_uint8(stage.last.image)[0].permute(1, 2, 0).numpy(), saved)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason='TensorRT is not installed (pip install "pid-trt[tensorrt]")')
def test_engine_decoder_asked_for_a_size_outside_its_profiles(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    from pid_trt.engines.build import run_build
    from pid_trt.engines.plan import make_plan
    from pid_trt.export import export_onnx

    net = tiny_net("V15-16", patch_depth=2, pixel_depth=1)
    onnx_dir = export_onnx(tmp_path / "onnx", net=net, backbone="flux", ckpt="2kto4k_v1pt5", precision="fp32")
    plan = make_plan(backbone=None, ckpt=None, precision=None, onnx_dir=onnx_dir, shapes=[(4 * W, 4 * H)],
                     batch=(1, 1, 1), engine_dir=tmp_path / "engines", opt_level=0)
    run_build(plan, progress=False)
    pipe, _ = tiny_pipe("flux")
    with use_pid(pipe, PiDDecoder.load(tmp_path / "engines"), caption_embedding=torch.randn(1, 8, 32)):
        inside = pipe("a red cat", height=H, width=W, num_inference_steps=1, output_type="pt").images
        assert inside.shape == (1, 3, 4 * H, 4 * W)
        one_line_error(f"{4 * W}x{4 * W} batch 1 lies outside every engine profile", pipe, "a red cat", height=W,
                       width=W, num_inference_steps=1, output_type="pt")

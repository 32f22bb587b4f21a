"""pid_trt.latents against upstream's golden conversions (tests/data/latents) and real tiny diffusers pipelines."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pid_trt import latents as L
from pid_trt.errors import PiDInputError
from tests.conftest import DATA, data_file

REQUIRED_CASES = [f"{b}_{d}" for b in ("flux", "flux2", "sd3", "sdxl", "qwenimage") for d in ("fp32", "bf16")]
# Held-back cases (flux2-klein, zimage) of the same format are picked up when their files are dropped in.
EXTRA_CASES = sorted({p.stem for p in (DATA / "latents").glob("*.json")} - set(REQUIRED_CASES))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_case(case: str) -> tuple[dict, dict]:
    meta = json.loads(data_file("latents", f"{case}.json").read_text())
    return meta, load_file(data_file("latents", f"{case}.safetensors"))


def recorded_facts(meta: dict, tensors: dict) -> dict:
    """Everything upstream reads from the pipeline, taken from the recording instead of a pipeline object."""
    attrs = meta["pipeline_attrs_read"]
    facts = dict(height=meta["ldm_height"], width=meta["ldm_width"], sigmas=tensors["scheduler_sigmas"],
                 dtype=DTYPES[meta["pipeline_dtype"]], vae_scale_factor=attrs["vae_scale_factor"])
    if "bn_running_mean" in tensors:
        eps = attrs.get("vae.bn.eps", attrs.get("vae.config.batch_norm_eps"))
        facts["bn_stats"] = L.BatchNormStats(tensors["bn_running_mean"], tensors["bn_running_var"], eps)
    return facts


def denorm_facts(meta: dict, facts: dict) -> dict:
    attrs = meta["pipeline_attrs_read"]
    keys = {"scaling_factor": "vae.config.scaling_factor", "shift_factor": "vae.config.shift_factor",
            "latents_mean": "vae.config.latents_mean", "latents_std": "vae.config.latents_std"}
    out = {k: attrs[a] for k, a in keys.items() if attrs.get(a) is not None}
    if "bn_stats" in facts:
        out["bn_stats"] = facts["bn_stats"]
    return out


@pytest.mark.parametrize("case", REQUIRED_CASES + EXTRA_CASES)
def test_golden_conversion_is_bit_exact(case):
    meta, t = load_case(case)
    backbone, facts = meta["backbone_cli_name"], recorded_facts(meta, t)
    captures = [(f"xt_K{k}", k, t[f"raw_xt_K{k}"]) for k in meta["save_xt_steps"]] + [("x0", None, t["raw_final"])]
    for label, step, raw in captures:
        lq, sigma = L.from_pipeline_output(backbone, raw.clone(), step=step, **facts)
        assert lq.dtype == t[f"conv_{label}"].dtype and torch.equal(lq, t[f"conv_{label}"]), label
        assert sigma.dtype == torch.float32 and torch.equal(sigma, t[f"pid_sigma_{label}"]), label
        assert float(sigma) == meta["captures"][label]["sigma_python_float"] or backbone == "sdxl", label
        pid_lq, pid_sigma = L.to_pid_inputs(lq, sigma)
        assert torch.equal(pid_lq, t[f"pid_lq_{label}"]) and torch.equal(pid_sigma, t[f"pid_sigma_{label}"]), label


@pytest.mark.parametrize("case", REQUIRED_CASES + EXTRA_CASES)
def test_golden_denormalize(case):
    meta, t = load_case(case)
    facts = recorded_facts(meta, t)
    raw = L.denormalize(meta["backbone_cli_name"], t["conv_x0"], **denorm_facts(meta, facts))
    want = t["denorm_x0"]
    assert raw.dtype == want.dtype
    if "bn_stats" in facts and want.dtype == torch.float32:
        # Upstream's fp32 BN inverse uses a std 1 ulp off sqrt(var+eps) in ~1/4 of the channels, and no formula
        # was found that reproduces it (bf16 is exact); the baseline decode does not need bit-exactness.
        torch.testing.assert_close(raw, want, rtol=0, atol=5e-7)
    else:
        assert torch.equal(raw, want)


def test_layout_helpers_round_trip_and_channel_order():
    x = torch.arange(2 * 16 * 8 * 12, dtype=torch.float32).view(2, 16, 8, 12)
    tokens = L.pack_flux(x)
    assert tokens.shape == (2, 24, 64)
    # token (i, j) holds channel c at (2i+py, 2j+px) in slot c*4 + 2*py + px
    assert tokens[1, 1 * 6 + 2, 5 * 4 + 2 * 1 + 0] == x[1, 5, 3, 4]
    assert torch.equal(L.unpack_flux(tokens, 64, 96), x)
    patched = L.patchify(x)
    assert patched.shape == (2, 64, 4, 6) and patched[0, 7 * 4 + 2 * 0 + 1, 2, 3] == x[0, 7, 4, 7]
    assert torch.equal(L.unpatchify(patched), x)


def test_sdxl_vp_conversion_and_sigma_lookup():
    latent, sigma = L.sdxl_to_vp(torch.full((1, 4, 2, 2), 2.0), 1.6236930)
    assert sigma == pytest.approx(0.85147000, abs=1e-8)
    assert torch.allclose(latent, torch.full_like(latent, 2 * sigma / 1.623693))
    assert L.sigma_for_step([1.0, 0.5, 0.0], 1) == 0.5 and L.sigma_for_step([1.0, 0.5, 0.0], None) == 0.0


def test_klein_final_is_patchified_and_bn_normalised():
    stats = L.BatchNormStats(torch.linspace(-1, 1, 128), torch.linspace(0.05, 3.05, 128))
    packed = torch.randn(1, 128, 4, 6, generator=torch.Generator().manual_seed(0))
    mean, std = stats.mean_std(torch.float32)
    raw = L.unpatchify(packed * std + mean)  # what Flux2KleinPipeline returns with output_type="latent"
    lq, sigma = L.from_pipeline_output("flux2-klein-4b", raw, bn_stats=stats)
    assert lq.shape == (1, 128, 4, 6) and float(sigma) == 0.0
    torch.testing.assert_close(lq, packed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(L.denormalize("flux2-klein-9b", lq, bn_stats=stats), packed * std + mean)


@pytest.mark.parametrize("backbone,latents,kwargs,match", [
    ("fluxx", torch.zeros(1, 24, 64), {}, "unknown backbone"),
    ("dinov2", torch.zeros(1, 768, 32, 32), {}, "not a diffusers pipeline"),
    ("siglip", torch.zeros(1, 1152, 16, 16), {}, "not a diffusers pipeline"),
    ("flux", torch.zeros(1, 16, 8, 12), {"height": 64, "width": 96}, "must be"),
    ("flux", torch.zeros(1, 24, 64), {}, "height= and width="),
    ("flux", torch.zeros(1, 24, 64), {"height": 96, "width": 96}, "do not fit"),
    ("sd3", torch.zeros(1, 4, 8, 12), {}, "16 channels"),
    ("sdxl", torch.zeros(1, 4, 8), {}, "must be"),
    ("sd3", torch.zeros(1, 16, 8, 12), {"step": 1}, "sigmas"),
    ("sd3", torch.zeros(1, 16, 8, 12), {"step": 0, "sigmas": [1.0, 0.5, 0.0]}, r"step must be .* \[1, 2\]"),
    ("sd3", torch.zeros(1, 16, 8, 12), {"step": 3, "sigmas": [1.0, 0.5, 0.0]}, "step must be"),
    ("flux2-klein-4b", torch.zeros(1, 32, 8, 12), {}, "vae.bn"),
    ("flux2-klein-4b", torch.zeros(1, 32, 8, 12), {"step": 1, "sigmas": [1.0, 0.5, 0.0]}, "must be"),
])
def test_bad_inputs_raise_one_line_input_errors(backbone, latents, kwargs, match):
    with pytest.raises(PiDInputError, match=match) as info:
        L.from_pipeline_output(backbone, latents, **kwargs)
    assert "\n" not in str(info.value)


# ---- end to end with real tiny diffusers pipelines (random weights, built in code, no downloads) ----------------

from tests.tiny_pipelines import BATCH, HEIGHT, STEPS, TINY, WIDTH, run_tiny  # noqa: E402


@pytest.mark.parametrize("backbone,dtype_name", [("flux", "fp32"), ("flux2", "fp32"), ("sd3", "fp32"),
                                                 ("sdxl", "fp32"), ("flux2-klein-4b", "fp32"),
                                                 ("flux2-klein-4b", "bf16"), ("zimage", "bf16"),
                                                 ("qwenimage", "fp32")])
def test_tiny_pipeline_end_to_end(backbone, dtype_name):
    dtype = DTYPES[dtype_name]
    pipe, final, captured = run_tiny(backbone, dtype)
    sigmas = pipe.scheduler.sigmas
    channels = TINY[backbone][1]
    grid = (BATCH, channels, HEIGHT // 8, WIDTH // 8) if channels != 128 else (BATCH, 128, HEIGHT // 16, WIDTH // 16)
    for k in (1, STEPS - 1):
        lq, sigma = L.from_pipeline_output(backbone, captured[k], pipe, step=k, height=HEIGHT, width=WIDTH)
        assert lq.shape == grid and lq.dtype == dtype and sigma.shape == (BATCH,) and sigma.dtype == torch.float32
        sigma_k = float(sigmas[k])
        if backbone == "sdxl":  # VP frame: σ/sqrt(σ²+1)
            sigma_k /= (sigma_k**2 + 1) ** 0.5
        assert torch.equal(sigma, torch.full((BATCH,), sigma_k))
    lq, sigma = L.from_pipeline_output(backbone, final, pipe, height=HEIGHT, width=WIDTH)
    assert lq.shape == grid and torch.equal(sigma, torch.zeros(BATCH)) and float(sigmas[-1]) == 0.0
    last, _ = L.from_pipeline_output(backbone, captured[STEPS], pipe, step=STEPS, height=HEIGHT, width=WIDTH)
    if backbone == "flux":  # unpacked the way diffusers unpacks it
        assert torch.equal(lq, pipe._unpack_latents(captured[STEPS], HEIGHT, WIDTH, pipe.vae_scale_factor))
    if backbone == "qwenimage":  # the same, without the video VAE's frame axis
        assert torch.equal(lq, pipe._unpack_latents(captured[STEPS], HEIGHT, WIDTH, pipe.vae_scale_factor)[:, :, 0])
    if backbone == "flux2-klein-4b":  # diffusers' BN inverse + our BN forward round-trips the last packed tokens
        torch.testing.assert_close(lq, last, **({} if dtype == torch.float32 else dict(rtol=0.016, atol=0.04)))
    if backbone == "zimage":  # Z-Image keeps fp32 latents in a bf16 pipeline: x0 stays fp32, captures are cast
        assert lq.dtype == torch.float32 and last.dtype == dtype


def test_square_packed_latents_need_no_size():
    tokens = torch.randn(1, 16, 64)  # flux: a 4x4 grid of 2x2-packed tokens = an 8x8 latent of a 64x64 image
    lq, _ = L.from_pipeline_output("flux", tokens, sigmas=torch.tensor([1.0, 0.0]))
    assert lq.shape == (1, 16, 8, 8)
    assert torch.equal(lq, L.unpack_flux(tokens, 64, 64))
    with pytest.raises(PiDInputError, match="non-square"):
        L.from_pipeline_output("flux", torch.randn(1, 24, 64), sigmas=torch.tensor([1.0, 0.0]))

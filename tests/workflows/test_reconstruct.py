"""`reconstruct` (Python API and `pid-trt reconstruct`), its noising, normalisation and metrics, on CPU."""
import json
import math
import pathlib
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from pid_trt import latents as L
from pid_trt.cli import _register, cli
from pid_trt.images import resize
from pid_trt.workflows.decode import output_tag
from pid_trt.workflows.metrics import latent_consistency, psnr, ssim
from pid_trt.workflows.reconstruct import Sample, add_noise, encode, load_image, normalize, reconstruct
from pid_trt.workflows.sources import open_decoder

diffusers = pytest.importorskip("diffusers")
from tests.tiny_pipelines import tiny_vae

CKPT = {"flux": "2k", "sdxl": "2kto4k"}
CHANNELS = {"flux": 16, "sdxl": 4}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny sizes are far outside the trained range
        yield


def _image(path, width=50, height=37, seed=0):
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_load_image_centre_crops_to_multiple_of_16(tmp_path):
    pixels = _image(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png")
    assert image.shape == (3, 32, 48) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(pixels[2:34, 1:49]).permute(2, 0, 1))


@pytest.mark.parametrize("backbone", ["flux", "sd3", "sdxl", "zimage", "qwenimage"])
def test_normalize_inverts_denormalize(backbone):
    x = torch.randn(1, L.LATENT_CHANNELS[backbone], 3, 5)
    raw = L.denormalize(backbone, x, SimpleNamespace(vae=None))
    assert torch.allclose(normalize(backbone, raw, None), x, atol=1e-6)


def test_normalize_inverts_flux2_batchnorm():
    bn = torch.nn.BatchNorm2d(128, eps=1e-4, affine=False).eval()
    bn.running_mean.copy_(torch.randn(128))
    bn.running_var.copy_(torch.rand(128) + 0.1)
    vae = SimpleNamespace(bn=bn)
    x = torch.randn(1, 128, 2, 3)
    assert torch.allclose(normalize("flux2", L.denormalize("flux2", x, SimpleNamespace(vae=vae)), vae), x, atol=1e-5)


@pytest.mark.parametrize("backbone", ["flux", "sdxl"])
def test_add_noise_follows_upstream_forms(backbone):
    x0 = torch.randn(1, 4, 3, 5)
    assert torch.equal(add_noise(backbone, x0, 0.0, 7), x0)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    sigma = 0.3
    clean_weight = math.sqrt(1 - sigma ** 2) if backbone == "sdxl" else 1 - sigma  # VP form for sdxl
    assert torch.allclose(add_noise(backbone, x0, sigma, 7), clean_weight * x0 + sigma * eps)


def test_metrics():
    a = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, (a + 0.1)) == pytest.approx(20.0)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 0 < ssim(a, noisy) < 0.9 and ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    assert latent_consistency(a, a) == pytest.approx({"latent_mse": 0.0, "latent_cosine": 1.0})
    assert latent_consistency(a, -a)["latent_cosine"] == pytest.approx(-1.0)
    # area downsampling by an integer factor is the mean of each block
    big = torch.rand(1, 3, 8, 12) * 2 - 1
    assert torch.allclose(resize(big, 2, 3), big.reshape(1, 3, 2, 4, 3, 4).mean(dim=(3, 5)), atol=1e-6)


@pytest.mark.parametrize("backbone", sorted(CKPT))
def test_reconstruct_writes_layout_and_metrics(backbone, tmp_path):
    _image(tmp_path / "cat.png")
    torch.manual_seed(0)
    vae = tiny_vae(diffusers, CHANNELS[backbone]).eval()
    dec = open_decoder(tiny=True, backbone=backbone, ckpt=CKPT[backbone])
    seen = []
    decode = dec.decode

    def spy(lq, y, sigma, **kw):
        seen.append((lq.clone(), sigma, kw["seed"], kw["indices"]))
        return decode(lq, y, sigma, **kw)

    dec.decode = spy
    out = tmp_path / "out"
    records = reconstruct(vae, dec, [Sample("cat", tmp_path / "cat.png")], torch.randn(1, 8, 32), backbone=backbone,
                          out_dir=out, sigmas=[0.3, 0.0], options=dec.options(steps=1), progress=False)
    tag = output_tag(dec, dec.options(steps=1), backbone)

    clean = encode(backbone, vae, load_image(tmp_path / "cat.png")[None].float() / 127.5 - 1)
    assert [s for _, s, _, _ in seen] == [0.0, 0.3]  # sorted, as upstream
    assert torch.equal(seen[0][0], clean.bfloat16().float())
    assert torch.equal(seen[1][0], add_noise(backbone, clean, 0.3, 5).bfloat16().float())  # seed 5 + index 0
    assert all(seed == 5 and indices == [0] for _, _, seed, indices in seen)
    assert Image.open(out / "input" / "cat.jpg").size == (48, 32)
    for label in ("sigma_0.000", "sigma_0.300"):
        assert Image.open(out / tag / label / "cat.jpg").size == (192, 128)  # sr_scale 4 × the input
        assert Image.open(out / "vae_decode" / label / "cat.jpg").size == (48, 32)
        result = records[0]["sigmas"][label]
        for who in ("pid", "vae"):
            scores = result[who]
            assert set(scores) == {"psnr", "ssim", "latent_mse", "latent_cosine"}
            assert all(math.isfinite(v) for v in scores.values())


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    tiny_vae(diffusers, 16).save_pretrained(path)
    return path


def _invoke(args):
    _register()
    return CliRunner().invoke(cli, args)


def test_cli_reconstruct_manifest(vae_dir, tmp_path):
    _image(tmp_path / "a.png", seed=1)
    _image(tmp_path / "b.png", 40, 33, seed=2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "prompt": "a cat"}\n\n{"image": "%s"}\n' % (tmp_path / "b.png"))
    y = tmp_path / "y.safetensors"
    save_file({"y": torch.randn(1, 8, 32)}, str(y))
    out = tmp_path / "out"
    result = _invoke(["reconstruct", "--backbone", "flux", "--ckpt", "2k", "--tiny", "--vae", str(vae_dir),
                      "--manifest", str(manifest), "--sigma", "0.5", "--sigma", "0", "--caption-embedding", str(y),
                      "--steps", "1", "--format", "png", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sigma_0.500: PiD PSNR" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [s["id"] for s in summary["samples"]] == ["00000000_a", "00000001_b"]
    assert [s["seed"] for s in summary["samples"]] == [5, 6]
    assert [s["input_index"] for s in summary["samples"]] == [0, 1] and summary["manifest"]
    assert all(pathlib.Path(s["input"]).is_file() for s in summary["samples"])
    assert set(summary["mean"]) == {"sigma_0.000", "sigma_0.500"}
    tag = summary["tag"]
    assert Image.open(out / "input" / "00000001_b.png").size == (32, 32)
    assert Image.open(out / tag / "sigma_0.500" / "00000001_b.png").size == (128, 128)
    assert Image.open(out / "vae_decode" / "sigma_0.000" / "00000000_a.png").size == (48, 32)


@pytest.mark.parametrize("args, message", [
    (["--image", "missing.png"], "does not exist"),
    (["--manifest", "missing.jsonl"], "does not exist"),
    (["--image", "a.png", "--sigma", "1.5"], "0<=x<=1"),
])
def test_cli_reconstruct_errors(vae_dir, tmp_path, args, message):
    _image(tmp_path / "a.png")
    y = tmp_path / "y.safetensors"
    save_file({"y": torch.randn(1, 8, 32)}, str(y))
    args = [str(tmp_path / a) if a.endswith((".png", ".jsonl")) else a for a in args]
    result = _invoke(["reconstruct", "--backbone", "flux", "--tiny", "--vae", str(vae_dir), "--caption-embedding",
                      str(y), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1

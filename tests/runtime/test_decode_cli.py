import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pid_trt.cli import _register, cli

TAG = "flux_PiD_v1pt5_res2kto4k_sr4x_official_flux_distill_4step_model_ema_bf16.pth_cfg1.0_steps4_reg"


@pytest.fixture()
def inputs(tmp_path):
    g = torch.Generator().manual_seed(0)
    lat = tmp_path / "latents.safetensors"
    save_file({"lq_latent": torch.randn(3, 16, 2, 3, generator=g), "degrade_sigma": torch.tensor([0.0, 0.3, 0.6])},
              str(lat))
    emb = tmp_path / "emb.safetensors"
    save_file({"y": torch.randn(1, 8, 32, generator=g)}, str(emb))
    return lat, emb


def _decode(args):
    _register()
    return CliRunner().invoke(cli, ["decode", *map(str, args)])


def test_decode_onnx_dir_writes_images_and_summary(tiny_flux_onnx, inputs, tmp_path):
    _, onnx_dir = tiny_flux_onnx
    lat, emb = inputs
    out = tmp_path / "out"
    res = _decode(["--onnx-dir", onnx_dir, "--latents", lat, "--caption-embedding", emb, "--out", out,
                   "--format", "png"])
    assert res.exit_code == 0, res.output
    files = sorted((out / TAG).glob("*.png"))
    assert [f.name for f in files] == ["00000000.png", "00000001.png", "00000002.png"]
    first = json.loads((out / "summary.json").read_text())
    assert [(i["input"], i["input_index"], i["seed"]) for i in first["images"]] == [(str(lat), k, k) for k in range(3)]

    # a second run into the same folder rewrites the images and the summary, keeping the first summary
    res = _decode(["--onnx-dir", onnx_dir, "--latents", lat, "--caption-embedding", emb, "--out", out,
                   "--format", "png", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert [i["seed"] for i in json.loads((out / "summary.json").read_text())["images"]] == [5, 6, 7]
    (kept,) = out.glob("summary.*.json")
    assert json.loads(kept.read_text()) == first and "kept the earlier run's summary.json" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--latents", "missing.safetensors", "--caption-embedding", "x"], "exactly one of"),
    (["--onnx-dir", "ONNX", "--latents", "missing.safetensors", "--caption-embedding", "EMB"], "does not exist"),
    (["--onnx-dir", "ONNX", "--latents", "LAT"], "either --caption-embedding"),
    (["--onnx-dir", "ONNX", "--latents", "LAT", "--caption-embedding", "LAT"], "has no 'y' tensor"),
])
def test_decode_errors(tiny_flux_onnx, inputs, args, message):
    lat, emb = inputs
    args = [{"ONNX": tiny_flux_onnx[1], "LAT": lat, "EMB": emb}.get(a, a) for a in args]
    res = _decode(args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_flux_onnx, inputs, tmp_path):
    """Round-robin sharding by global index: files do not depend on the world size."""
    _, onnx_dir = tiny_flux_onnx
    lat, emb = inputs
    common = ["-m", "pid_trt", "decode", "--onnx-dir", str(onnx_dir), "--latents", str(lat),
              "--caption-embedding", str(emb), "--format", "png", "--seed", "11"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # the ranks meet on loopback
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", *common, "--out", str(tmp_path / "two")],
                   check=True, env=env, capture_output=True)
    one = sorted((tmp_path / "one" / TAG).glob("*.png"))
    two = sorted((tmp_path / "two" / TAG).glob("*.png"))
    assert [f.name for f in one] == [f.name for f in two] == ["00000000.png", "00000001.png", "00000002.png"]
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes()
    # one summary for the whole run, gathered from both ranks
    assert not list((tmp_path / "two").glob("summary.rank*.json"))
    merged = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert merged["world_size"] == 2
    single = json.loads((tmp_path / "one" / "summary.json").read_text())
    keys = ("index", "image", "input", "input_index", "seed")
    assert [{k: i[k] for k in keys} for i in merged["images"]] == [{k: i[k] for k in keys} for i in single["images"]]


def test_baseline_vae(tiny_flux_onnx, inputs, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=16, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    vae.save_pretrained(tmp_path / "vae")
    lat, emb = inputs
    res = _decode(["--onnx-dir", tiny_flux_onnx[1], "--latents", lat, "--caption-embedding", emb, "--out",
                   tmp_path / "out", "--baseline-vae", tmp_path / "vae"])
    assert res.exit_code == 0, res.output
    baselines = sorted((tmp_path / "out" / "vae_decode").glob("*.jpg"))
    assert len(baselines) == 3
    from PIL import Image

    assert Image.open(baselines[0]).size == (3 * 8, 2 * 8)  # the VAE's native size (latent × 8)

"""`generate` (Python API and `pid-trt generate`) on tiny random diffusers pipelines and tiny PiD nets, on CPU."""
import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from pid_trt.cli import _register, cli
from pid_trt.workflows.decode import output_tag
from pid_trt.workflows.generate import generate, ldm_size
from pid_trt.workflows.sources import open_decoder
from tests.workflows.tiny_full import save_tiny_pipeline, tiny_full_pipeline

CKPT = {"flux": "2k", "sd3": "2k", "sdxl": "2kto4k"}
RESOLUTION = (192, 128)  # final PiD W×H; the LDM runs at 48×32 (sr_scale 4)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny sizes are far outside the trained range
        yield


@pytest.mark.parametrize("backbone", sorted(CKPT))
def test_generate_passes_scheduler_sigmas_and_writes_layout(backbone, tmp_path):
    pipe = tiny_full_pipeline(backbone)
    dec = open_decoder(tiny=True, backbone=backbone, ckpt=CKPT[backbone])
    seen = []
    decode = dec.decode

    def spy(lq, y, sigma, **kw):
        seen.append(float(sigma[0]))
        return decode(lq, y, sigma, **kw)

    dec.decode = spy
    options = dec.options(steps=1)
    tag = output_tag(dec, options, backbone)
    records = generate(pipe, dec, ["a red cat"], torch.randn(1, 8, 32), backbone=backbone, out_dir=tmp_path,
                       resolution=RESOLUTION, ldm_steps=3, save_xt_steps=[1, 2], options=options, progress=False)

    sigmas = pipe.scheduler.sigmas.double()  # the schedule of the run just made
    expected = [float(sigmas[1]), float(sigmas[2]), float(sigmas[-1])]
    if backbone == "sdxl":  # Euler (VE) captures move to the VP frame the student was trained on
        expected = [s / (s * s + 1) ** 0.5 for s in expected]
    assert seen == pytest.approx(expected, rel=1e-6)
    assert expected[0] > expected[1] > 0 and expected[2] == 0
    steps = records[0]["steps"]
    assert list(steps) == ["01xt", "02xt", "x0"]
    assert [steps[k]["scheduler_sigma"] for k in steps] == pytest.approx([float(s) for s in sigmas[[1, 2, -1]]])
    for label in steps:
        pid = Image.open(tmp_path / tag / f"step_{label}" / "00000000.jpg")
        base = Image.open(tmp_path / "vae_decode" / f"step_{label}" / "00000000.jpg")
        assert pid.size == RESOLUTION and base.size == (48, 32)
    assert Image.open(tmp_path / "compare" / "00000000.jpg").size == (3 * 192, 2 * 128)


def test_resolution_rules():
    assert ldm_size("flux", (2688, 1536), 4) == (672, 384)
    assert ldm_size("sdxl", (160, 96), 4) == (40, 24)  # sdxl's LDM grid is 8 px, the others' 16
    for backbone, size in (("flux", (160, 96)), ("sd3", (2050, 2048))):
        with pytest.raises(ValueError, match="cannot produce"):
            ldm_size(backbone, size, 4)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_tiny_pipeline("flux", tmp_path_factory.mktemp("flux_pipeline"))


def _invoke(args, env=None):
    _register()
    return CliRunner().invoke(cli, args, env=env)


def _cli_args(model_dir, tmp_path, out):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\n\na blue dog on grass\n")
    y = tmp_path / "y.safetensors"
    save_file({"y": torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0))}, str(y))
    return ["generate", "--backbone", "flux", "--ckpt", "2k", "--tiny", "--model-dir", str(model_dir),
            "--prompt-file", str(prompts), "--resolution", "192x128", "--ldm-steps", "3", "--save-xt-steps", "2",
            "--caption-embedding", str(y), "--steps", "1", "--format", "png", "--out", str(out)]


def test_cli_generate_end_to_end_and_round_robin(flux_dir, tmp_path):
    out = tmp_path / "all"
    result = _invoke(_cli_args(flux_dir, tmp_path, out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    tag = summary["tag"]
    assert tag == "flux_PiD_res2k_sr4x_official_flux_distill_4step_model_ema_bf16.pth_cfg1.0_steps1_reg"
    assert [p["index"] for p in summary["prompts"]] == [0, 1]
    assert [p["seed"] for p in summary["prompts"]] == [0, 1]
    assert summary["prompts"][1]["prompt"] == "a blue dog on grass"
    assert [(p["input"], p["input_index"]) for p in summary["prompts"]] == [(str(tmp_path / "prompts.txt"), i)
                                                                           for i in (0, 1)]
    for i in (0, 1):
        for label in ("02xt", "x0"):
            assert (out / tag / f"step_{label}" / f"{i:08d}.png").is_file()
            assert (out / "vae_decode" / f"step_{label}" / f"{i:08d}.png").is_file()
        assert (out / "compare" / f"{i:08d}.png").is_file()

    # rank 1 of 2 takes prompt 1 only, with the global index's seed: the same image as the single-process run
    ranked = tmp_path / "rank1"
    result = _invoke(_cli_args(flux_dir, tmp_path, ranked), env={"RANK": "1", "WORLD_SIZE": "2"})
    assert result.exit_code == 0, result.output
    part = json.loads((ranked / "summary.rank1.json").read_text())
    assert [p["index"] for p in part["prompts"]] == [1]
    for label in ("02xt", "x0"):
        a = np.asarray(Image.open(out / tag / f"step_{label}" / "00000001.png"))
        b = np.asarray(Image.open(ranked / tag / f"step_{label}" / "00000001.png"))
        assert np.array_equal(a, b)


@pytest.mark.parametrize("change, message", [
    (("--model-dir", "missing"), "model directory"),
    (("--prompt-file", "missing.txt"), "prompt file"),
    (("--resolution", "200x128"), "cannot produce"),
    (("--save-xt-steps", "4"), "save-xt-steps"),
])
def test_cli_generate_errors(flux_dir, tmp_path, change, message):
    args = _cli_args(flux_dir, tmp_path, tmp_path / "out")
    option, value = change
    args[args.index(option) + 1] = str(tmp_path / value) if value.startswith("missing") else value
    result = _invoke(args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_generate_with_teacher_checkpoint(flux_dir, tmp_path):
    """Teacher checkpoints take --cfg/--steps/--shift; the shift is part of upstream's folder tag."""
    out = tmp_path / "teacher"
    args = _cli_args(flux_dir, tmp_path, out)
    args[args.index("--ckpt") + 1] = "2kto4k_v1pt5_teacher"
    args[args.index("--steps") + 1] = "2"
    args += ["--cfg", "1.0", "--shift", "3.0"]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tag"] == ("flux_PiD_v1pt5_res2kto4k_sr4x_official_flux_undistilled_model_ema_bf16.pth"
                              "_cfg1.0_steps2_shift3.0_reg")
    assert (out / summary["tag"] / "step_x0" / "00000000.png").is_file()

"""README "From weights to images": every command of the recipe runs, in order, in one folder.

The official flux v1.5 net is made tiny for this module (its registry definition is patched, so `--backbone flux
--ckpt 2kto4k_v1pt5` means the tiny net) and a tiny net's weights are saved as `model_ema_bf16.pth` the way NVIDIA's
file is laid out (bf16, `net.` keys); the tiny Gemma of tests/data/text stands in for gemma-2-2b-it. Commands that
need TensorRT or a GPU run as `--dry-run`, on the CPU, or are skipped with the reason.
"""
from __future__ import annotations

import pathlib
import re
import shlex
import shutil

import pytest
import torch
from click.testing import CliRunner

from pid_trt.cli import cli
from pid_trt.config import NET_DEFINITIONS
from pid_trt.engines.detect import tensorrt_available
from pid_trt.registry import resolve
from pid_trt.tiny import tiny_config, tiny_net
from tests.conftest import data_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## From weights to images"):README.index("## Python API")]
BASH = [line.split("  #")[0].strip() for block in re.findall(r"```bash recipe\n(.*?)```", SECTION, re.S)
        for line in block.splitlines() if line.strip()]
(PYTHON,) = re.findall(r"```python recipe\n(.*?)```", SECTION, re.S)
COMMANDS = [line for line in BASH if line.startswith("pid-trt ")]
# the tiny stand-in: V15-16 shrunk, with the tiny Gemma's width and upstream's text length
TINY = tiny_config("V15-16", patch_depth=2, pixel_depth=1, txt_embed_dim=64, txt_max_length=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The folder the recipe runs in, with the tiny net registered as flux v1.5 and its stand-in files."""
    folder = tmp_path_factory.mktemp("recipe")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TINY.to_dict().items():
            mp.setitem(NET_DEFINITIONS["V15-16"].overrides, key, value)
        mp.chdir(folder)
        mp.setenv("PID_TRT_CACHE", str(folder / "cache"))  # pid-trt embed's cache stays here
        net = tiny_net("V15-16", seed=3, **{k: TINY[k] for k in ("patch_depth", "pixel_depth", "txt_embed_dim",
                                                                   "txt_max_length")})
        torch.save({f"net.{k}": v.bfloat16() for k, v in net.state_dict().items()}, "model_ema_bf16.pth")
        shutil.copytree(data_file("text", "tiny_gemma2"), "gemma-2-2b-it")
        small = PYTHON.replace("torch.randn(2, 16, 128, 128)", "torch.randn(2, 16, 8, 8)")  # 256x256 on the CPU
        assert small != PYTHON
        exec(compile(small, "README.md", "exec"), {})
        yield folder


def test_install_and_download_lines_match_the_project():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for line in BASH:
        for named in re.findall(r'pip install -e "\.\[([\w,]+)\]"', line):
            assert set(named.split(",")) <= set(extras), line
    checkpoint = resolve("flux", "2kto4k_v1pt5").checkpoint_file
    assert any(line.startswith(f"hf download nvidia/PiD {checkpoint}") for line in BASH)
    assert any(line.startswith("ln -s") and line.endswith(" model_ema_bf16.pth") and checkpoint in line
               for line in BASH)


def test_python_writes_the_input_files(workdir):
    from safetensors.torch import load_file

    assert load_file(workdir / "latents.safetensors")["lq_latent"].shape == (2, 16, 8, 8)
    assert load_file(workdir / "y.safetensors")["y"].shape == (2, 300, 64)


def _needs_tensorrt(args: list[str]) -> bool:
    return "--engine-dir" in args and args[0] in ("parity", "decode")


@pytest.mark.slow
@pytest.mark.parametrize("line", COMMANDS)
def test_recipe_command(workdir, line):
    args = shlex.split(line)[1:]
    if _needs_tensorrt(args) and not tensorrt_available():
        pytest.skip("needs TensorRT engines on a GPU (the build above ran as --dry-run)")
    if args[0] == "build" and not tensorrt_available():
        args.append("--dry-run")
    if "--device" in args and not torch.cuda.is_available():
        args[args.index("--device") + 1] = "cpu"
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    if args[0] == "decode":
        assert len(list((workdir / "results").glob("*_reg/*.jpg"))) == 2


def test_every_command_is_covered():
    assert {shlex.split(c)[1] for c in COMMANDS} == {"inspect", "export", "build", "parity", "embed", "decode"}

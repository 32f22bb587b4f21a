import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import pid_trt
from pid_trt.checkpoint import inspect_checkpoint, load_net
from pid_trt.cli import _register, cli
from pid_trt.errors import CheckpointError
from pid_trt.registry import NET_DEFINITIONS
from tests.golden import case_config, golden_net, load_tensors

CASE = "case_a_flux_v1pt5_square"


@pytest.fixture()
def pth(tmp_path):
    """The golden weights as an official-style .pth: `net.` keys in bf16 plus an ignored EMA copy."""
    w = load_tensors("net", f"{CASE}_weights.safetensors")
    state = {k: v.bfloat16() for k, v in w.items()}
    state["net_ema.y_pos_embedding"] = w["net.y_pos_embedding"]
    path = tmp_path / "model_ema_bf16.pth"
    torch.save(state, path)
    return path


def test_pth_loads_bf16_values_into_fp32(pth):
    net = load_net(pth, case_config(CASE))
    ref = golden_net(CASE)
    p = dict(net.named_parameters())
    for k, v in ref.state_dict().items():
        assert p[k].dtype == torch.float32
        assert torch.equal(p[k], v.bfloat16().float())


def test_safetensors_loads(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(load_tensors("net", f"{CASE}_weights.safetensors"), str(path))
    net = load_net(path, case_config(CASE))
    assert torch.equal(net.y_pos_embedding, golden_net(CASE).y_pos_embedding)


def test_wrong_net_names_offenders(pth):
    net_config = {**case_config(CASE), "lq_latent_channels": 4}
    with pytest.raises(CheckpointError, match=r"lq_proj.latent_proj.0.weight has shape") as e:
        load_net(pth, net_config)
    assert "\n" not in str(e.value)


def test_official_file_suggests_right_backbone(tmp_path):
    with torch.device("meta"):
        state = pid_trt.PiDNet(NET_DEFINITIONS["V1-XL"].config).state_dict()
    # a tiny stand-in would be enormous at full size: write meta shapes as zero-stride tensors
    fake = {"net." + k: torch.empty(0).new_zeros(()).expand(v.shape) for k, v in state.items()}
    torch.save(fake, tmp_path / "sdxl.pth")
    with pytest.raises(CheckpointError, match="--backbone sdxl --ckpt 2kto4k"):
        load_net(tmp_path / "sdxl.pth", NET_DEFINITIONS["V15-16"].config)


def test_inspect_summary(pth):
    info = inspect_checkpoint(pth)
    assert info["net_definition"] is None  # tiny config: no official net
    assert info["tensors"] == len(golden_net(CASE).state_dict())
    assert info["ignored_tensors"] == 1 and info["dtypes"] == ["bfloat16"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_inspect_bad_files_exit_2(tmp_path, pth, content):
    path = tmp_path / "bad.pth"
    if content is None:  # truncated
        path.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    else:
        path.write_bytes(content)
    _register()
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and res.output.count("\n") == 1
    assert "Traceback" not in res.output


def test_inspect_cli_ok(pth):
    _register()
    res = CliRunner().invoke(cli, ["inspect", str(pth)])
    assert res.exit_code == 0, res.output
    assert "tensors" in res.output

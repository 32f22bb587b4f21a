"""The FP8 sensitivity sweep (`pid-trt fp8-sweep`) and FP8 exports that keep named layers high (`--keep-high`).

The planted outliers: eight large weights (3e4, finite in the fp16 base) in one input column of
pixel_blocks.0.expand_from_attn, on a channel its input never fills (the matching row and bias of attn.proj are zeroed), so the fp32 net computes
exactly what it did. FP8 scales each weight row by its largest value: those eight rows then keep their large
weight and flush every other weight to zero, and the pixels they feed lose the attention branch. (Moderately
large weights do not do this: E4M3 is a float format, so per-channel scales keep every weight within 6 %;
large weights there mostly amplify the errors of the layers before them, and the sweep ranks those.)
"""
import json

import pytest
import torch
from click.testing import CliRunner

from pid_trt.cli import _register, cli
from pid_trt.engines.build import fp8_identity
from pid_trt.errors import PiDInputError
from pid_trt.export.fp8 import check_keep_high, fp8_linear_names
from pid_trt.fp8_sweep import Targets, read_layer_list, write_layer_list
from pid_trt.tiny import tiny_net

PLANTED = "pixel_blocks.0.expand_from_attn"
TARGET_VELOCITY = 0.002  # measured: full FP8 0.0031, without the planted layer 0.0009; other layers alone <= 0.0008


def invoke(*args):
    _register()
    return CliRunner().invoke(cli, list(args))


@torch.no_grad()
def planted_net():
    net = tiny_net(patch_depth=1, pixel_depth=1)
    proj, expand = net.get_submodule("pixel_blocks.0.attn.proj"), net.get_submodule(PLANTED)
    proj.weight[5], proj.bias[5] = 0.0, 0.0  # attention output channel 5 is always 0 ...
    expand.weight[:8, 5] = 3e4  # ... so these weights change nothing in fp32 (3e4: finite in the fp16 base)
    return net


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("fp8sweep")
    net = planted_net()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "weights.safetensors"))
    (root / "net.json").write_text(json.dumps(net.config.to_dict()))
    return root, ["--net-config", str(root / "net.json"), "--checkpoint", str(root / "weights.safetensors")]


@pytest.fixture(scope="module")
def sweep(files):
    root, net_args = files
    res = invoke("fp8-sweep", *net_args, "--target-velocity", str(TARGET_VELOCITY), "--out", str(root / "keep.txt"),
                 "--json", str(root / "sweep.json"))
    return res, json.loads((root / "sweep.json").read_text())


def test_the_sweep_ranks_the_planted_layer_first_and_keeps_only_it_high(sweep, files):
    res, report = sweep
    assert res.exit_code == 0, res.output
    assert report["mode"] == "quantize" and report["targets"]["velocity_max_abs"] == TARGET_VELOCITY
    ranking = report["ranking"]
    assert ranking[0]["layer"] == PLANTED and ranking[0]["velocity_max_abs"] > 3 * ranking[1]["velocity_max_abs"]
    assert report["full_fp8"]["velocity_max_abs"] > TARGET_VELOCITY  # the full FP8 export misses the target
    assert report["keep_high"] == [PLANTED] and report["keep_high_error"]["velocity_max_abs"] < TARGET_VELOCITY / 2
    assert read_layer_list(files[0] / "keep.txt") == [PLANTED]
    assert f"keep high (1): {PLANTED}" in res.output


def test_the_export_keeping_that_list_high_meets_the_target(sweep, files, tmp_path):
    root, net_args = files
    res = invoke("export", *net_args, "--precision", "fp8", "--keep-high-file", str(root / "keep.txt"),
                 "--out", str(tmp_path / "fp8"))
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "fp8" / "manifest.json").read_text())
    fp8 = manifest["graphs"]["denoise"]["fp8"]
    assert fp8["keep_high"] == [PLANTED] and PLANTED not in fp8["layers"] and PLANTED not in fp8["layer_nodes"]
    assert "1 kept high" in res.output
    assert fp8_identity(manifest) == {"denoise": {"keep_high": [PLANTED], "calibration": fp8["calibration"]}}

    res = invoke("parity", "--onnx-dir", str(tmp_path / "fp8"), "--reference-checkpoint",
                 str(root / "weights.safetensors"), "--json", str(tmp_path / "parity.json"))
    assert res.exit_code == 0, res.output
    steps = json.loads((tmp_path / "parity.json").read_text())["steps"]
    assert max(s["velocity_max_abs"] for s in steps) < TARGET_VELOCITY


def test_keep_high_names_are_checked_before_exporting(files):
    _, net_args = files
    res = invoke("export", *net_args, "--precision", "fp8", "--keep-high", "pixel_blocks.0.mlp.fc1")
    assert res.exit_code == 2 and "not FP8 Linear layers" in res.output  # the per-pixel MLP never gets FP8
    res = invoke("export", *net_args, "--precision", "fp16", "--keep-high", PLANTED)
    assert res.exit_code == 2 and "--keep-high applies to --precision fp8 only" in res.output
    net = tiny_net(patch_depth=1, pixel_depth=1)
    assert check_keep_high(net, [PLANTED, "patch_blocks.0.attn.qkv_x", PLANTED]) == sorted(
        [PLANTED, "patch_blocks.0.attn.qkv_x"])
    with pytest.raises(PiDInputError, match="is not FP8"):
        check_keep_high(net, ["final_layer.linear"])


def test_layer_list_files_round_trip(tmp_path):
    names = fp8_linear_names(tiny_net(patch_depth=1, pixel_depth=1))[:3]
    write_layer_list(tmp_path / "keep.txt", names, ["written by a test"])
    text = (tmp_path / "keep.txt").read_text()
    assert text.startswith("# written by a test\n")
    (tmp_path / "keep.txt").write_text(text + "\n  # a comment\n" + names[0] + "  # again\n")
    assert read_layer_list(tmp_path / "keep.txt") == names + [names[0]]
    with pytest.raises(PiDInputError, match="cannot read"):
        read_layer_list(tmp_path / "missing.txt")


def test_targets_default_to_the_fp8_parity_tolerance():
    from pid_trt.parity import VS_FP32

    t = Targets()
    assert (t.velocity_max_abs, t.u8_max_abs, t.u8_mean_abs) == (VS_FP32.velocity_max_abs, VS_FP32.u8_max_abs,
                                                                  VS_FP32.u8_mean_abs)
    ok = {"velocity_max_abs": 0.005, "u8_max_abs": 2.0, "u8_mean_abs": 0.01, "image_max_abs_u8": 1.0}
    assert t.met(ok) and not t.met({**ok, "u8_max_abs": 3.0}) and t.score(ok) == 0.5

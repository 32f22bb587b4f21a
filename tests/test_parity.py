import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pid_trt.cli import _register, cli
from pid_trt.errors import PiDInputError
from pid_trt.parity import FP32, REDUCED, VS_FP32, Trace, compare, image_metrics, tolerance_for

SHALLOW = ["--tiny-override", "patch_depth=2", "--tiny-override", "pixel_depth=1"]
SMALL = ["--size", "64x64"]


def invoke(*args):
    _register()
    return CliRunner().invoke(cli, ["parity", *args])


def test_identical_images_have_infinite_psnr():
    img = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    m = image_metrics(img, img.clone())
    assert m == {"u8_max_abs": 0.0, "u8_mean_abs": 0.0, "psnr_db": math.inf, "frac_off_gt2": 0.0, "frac_differ": 0.0}


def test_one_lsb_shift_gives_known_numbers():
    ref = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    m = image_metrics(ref + 1, ref)
    assert m["u8_max_abs"] == 1 and m["u8_mean_abs"] == 1 and m["frac_differ"] == 1 and m["frac_off_gt2"] == 0
    assert m["psnr_db"] == pytest.approx(20 * math.log10(255), abs=1e-9)  # 48.13 dB
    # a quarter of the values off by 3: mean 0.75, MSE 9/4
    off = ref.clone()
    off[..., :1, :] += 3
    m = image_metrics(off, ref)
    assert m["u8_mean_abs"] == 0.75 and m["frac_off_gt2"] == 0.25
    assert m["psnr_db"] == pytest.approx(10 * math.log10(255**2 / 2.25))


def _trace(vs, image):
    return Trace(velocities=list(vs), states=list(vs), image=image)


def test_compare_names_the_step_that_diverged():
    v = [torch.zeros(1, 3, 4, 4, dtype=torch.float64) for _ in range(4)]
    bad = [t.clone() for t in v]
    bad[2] += 0.01  # step 3
    img = torch.zeros(1, 3, 4, 4)
    report = compare(_trace(bad, img), _trace(v, img), FP32)
    assert not report["passed"] and report["first_divergent_step"] == 3
    assert report["failures"][0].startswith("step 3 diverged")
    assert [s["ok"] for s in report["steps"]] == [True, True, False, True]
    assert compare(_trace(v, img), _trace(v, img), FP32)["passed"]


def test_tolerance_choice():
    assert tolerance_for("fp32") is FP32
    assert tolerance_for("bf16") is REDUCED and REDUCED.reference_precision == "bf16" and REDUCED.u8_mean_abs == 0.6
    assert tolerance_for("fp16", "fp32") is VS_FP32 and tolerance_for("fp8") is VS_FP32
    with pytest.raises(PiDInputError):
        tolerance_for("int4")


def test_torch_tiny_passes_and_writes_a_report(tmp_path):
    res = invoke(*SHALLOW, *SMALL, "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "pass" and report["image"]["psnr_db"] == "inf" and len(report["steps"]) == 4


def test_bf16_autocast_against_fp32_stays_within_the_measured_bound():
    res = invoke(*SHALLOW, *SMALL, "--precision", "bf16", "--against", "fp32")
    assert res.exit_code == 0, res.output
    assert "reduced-vs-fp32" in res.output


def test_inputs_from_files(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    save_file({"lq_latent": torch.randn(2, 16, 2, 3, generator=g), "degrade_sigma": torch.tensor([0.0, 0.5])},
              str(tmp_path / "z.safetensors"))
    save_file({"y": torch.randn(1, 5, 32, generator=g)}, str(tmp_path / "y.safetensors"))
    res = invoke(*SHALLOW, "--latents", str(tmp_path / "z.safetensors"), "--caption-embedding",
                 str(tmp_path / "y.safetensors"), "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    inputs = json.loads((tmp_path / "r.json").read_text())["inputs"]
    assert inputs["lq_latent"] == [2, 16, 2, 3] and inputs["degrade_sigma"] == [0.0, 0.5]


def test_unreadable_latents_exit_2(tmp_path):
    (tmp_path / "z.safetensors").write_bytes(b"not a safetensors file")
    res = invoke(*SHALLOW, "--latents", str(tmp_path / "z.safetensors"))
    assert res.exit_code == 2 and "error:" in res.output


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """One shallow tiny export, made by `pid-trt parity --backend onnxruntime` itself (and its result)."""
    root = tmp_path_factory.mktemp("parity")
    res = invoke("--backend", "onnxruntime", *SHALLOW, "--export-dir", str(root / "onnx"),
                 "--report", str(root / "report.json"))
    return res, root / "onnx", json.loads((root / "report.json").read_text())


def test_onnxruntime_tiny_passes(tiny_onnx):
    res, onnx_dir, report = tiny_onnx
    assert res.exit_code == 0, res.output
    assert report["backend"] == "onnxruntime" and report["tolerance"]["name"] == "fp32"
    assert report["image"]["u8_max_abs"] <= 1
    # the kept export checks again by naming its tiny seed as the reference
    assert invoke("--onnx-dir", str(onnx_dir), "--tiny-seed", "0").exit_code == 0


def test_perturbed_initializer_fails_at_step_1(tiny_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, onnx_dir, _ = tiny_onnx
    bad = tmp_path / "bad"
    shutil.copytree(onnx_dir, bad)
    model = onnx.load(str(bad / "denoise.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w + 0.05).astype(w.dtype), init.name))
    onnx.save(model, str(bad / "denoise.onnx"))
    record_graph_sha(bad, "denoise")  # a graph the manifest vouches for, whose weights differ from the reference
    res = invoke("--onnx-dir", str(bad), "--tiny-seed", "0", "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 1, res.output
    assert "step 1 diverged" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["first_divergent_step"] == 1


def test_unloadable_onnx_exits_2(tiny_onnx, tmp_path):
    _, onnx_dir, _ = tiny_onnx
    bad = tmp_path / "bad"
    shutil.copytree(onnx_dir, bad)
    (bad / "denoise.onnx").write_bytes(b"\x00garbage")
    res = invoke("--onnx-dir", str(bad), "--tiny-seed", "0")
    assert res.exit_code == 2 and "changed since it was written" in res.output
    record_graph_sha(bad, "denoise")  # recorded as it is: still not a model
    res = invoke("--onnx-dir", str(bad), "--tiny-seed", "0")
    assert res.exit_code == 2 and "not a readable ONNX model" in res.output and res.output.count("\n") == 1


def record_graph_sha(onnx_dir, graph):
    """Make the manifest record a graph file's current sha256."""
    from pid_trt.integrity import sha256_file

    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    manifest["graphs"][graph]["sha256"] = sha256_file(onnx_dir / manifest["graphs"][graph]["file"])
    (onnx_dir / "manifest.json").write_text(json.dumps(manifest))


def test_wrong_reference_weights_exit_2(tiny_onnx):
    _, onnx_dir, _ = tiny_onnx
    res = invoke("--onnx-dir", str(onnx_dir), "--tiny-seed", "1")
    assert res.exit_code == 2 and "not the ones exported" in res.output
    res = invoke("--onnx-dir", str(onnx_dir))  # an in-memory export names no weights source
    assert res.exit_code == 2 and "--tiny-seed" in res.output

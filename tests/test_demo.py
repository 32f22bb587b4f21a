"""`pid-trt demo`: upstream's recorded decode through our export, the verdict, the files, reuse of the export."""
import json
import re

import pytest
from click.testing import CliRunner

from pid_trt.cli import cli
from pid_trt.parity import Tolerance
from pid_trt.workflows import demo


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "pid-trt-demo"
    return out, CliRunner().invoke(cli, ["demo", "--out", str(out)])


@pytest.mark.slow
def test_demo_matches_upstream_and_says_so(first_run):
    out, res = first_run
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    cmp_ = report["comparison"]
    assert cmp_["passed"] and report["backend"] in ("onnxruntime", "tensorrt") and not report["export"]["reused"]
    assert max(cmp_["x_max_abs_per_step"]) <= 2e-3 and cmp_["u8_max_abs"] <= 1
    lines = res.stdout.splitlines()
    assert len(lines) <= 15
    assert sum(line.startswith("MATCH: the output recorded from NVIDIA's implementation") for line in lines) == 1
    # every stderr line is a note or warning; nothing from other libraries, no size warning for the tiny case
    assert all(line.startswith("note: ") for line in res.stderr.splitlines()), res.stderr
    for name in report["files"].values():
        assert (out / name).stat().st_size > 0
    from PIL import Image

    assert Image.open(out / "comparison.png").size == (4 * 2 * 128, 2 * 128 + 16)  # four labelled panels at 2x


@pytest.mark.slow
def test_rerun_reuses_the_export(first_run):
    out, _ = first_run
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["export"]["reused"] and report["comparison"]["passed"]
    assert "reusing the export" in res.stderr


@pytest.mark.slow
def test_a_mismatch_exits_1(first_run, monkeypatch):
    out, _ = first_run
    monkeypatch.setattr(demo, "FP32", Tolerance("strict", "fp32", velocity_max_abs=0, float_max_abs=1e-9,
                                                u8_max_abs=0, frac_differ=0))
    res = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert res.exit_code == 1 and "MISMATCH: " in res.stdout


def test_next_commands_are_the_readme_recipe():
    readme = (demo.demo_data().parents[2] / "README.md").read_text()
    for backend in ("onnxruntime", "tensorrt"):
        for command in demo.next_commands(backend):
            assert re.search(rf"^{re.escape(command)}\b", readme, re.MULTILINE), command


def test_export_key_names_weights_and_exporter():
    key = demo.export_key("abc")
    assert key["weights_sha256"] == "abc" and {"pid_trt", "torch"} <= set(key)

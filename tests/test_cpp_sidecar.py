"""Cross-language check: the C++ runtime reads the sampler schedule the Python side writes.

The fixture sidecar's t-lists must equal `pid_trt.sampler.t_lists()`, and `pidtrt-decode
--print-schedule` (built by CMake, see cpp/README.md) must print the same lists and the float32 net
timesteps float32(t) * float32(1000).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

from tests.conftest import data_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOL = "pidtrt-decode"


def _fixture() -> dict:
    return json.loads(data_file("sidecar", "pid_tiny_fixture.json").read_text())


def _python_t_lists() -> dict[int, list[float]] | None:
    try:
        from pid_trt.sampler import t_lists
    except ImportError:
        return None
    return t_lists()


def _as_f32(lists: dict) -> dict[int, np.ndarray]:
    return {int(n): np.asarray(values, dtype=np.float32) for n, values in lists.items()}


def _assert_same_lists(actual: dict, expected: dict) -> None:
    actual, expected = _as_f32(actual), _as_f32(expected)
    assert sorted(actual) == sorted(expected)
    for n, values in expected.items():
        np.testing.assert_array_equal(actual[n], values, err_msg=f"t-list for {n} steps")


def _tool() -> pathlib.Path:
    build_dir = os.environ.get("PIDTRT_BUILD_DIR")
    roots = [pathlib.Path(build_dir)] if build_dir else [ROOT / "build"]
    for root in roots:
        for candidate in (root / "cpp" / TOOL, root / TOOL, root / "bin" / TOOL):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    pytest.skip(f"no built {TOOL} under {', '.join(map(str, roots))} (cmake -S . -B build && cmake --build build)")


def test_fixture_t_lists_match_python_sampler():
    expected = _python_t_lists()
    if expected is None:
        pytest.skip("pid_trt.sampler.t_lists is not importable yet")
    _assert_same_lists(_fixture()["sampler"]["t_lists"], expected)


def test_fixture_sampler_block():
    sampler = _fixture()["sampler"]
    assert sampler["kind"] == "distilled"
    assert sampler["timescale"] == 1000.0
    assert sampler["default_steps"] == 4
    assert sampler["t_lists"]["4"] == [0.999, 0.866, 0.634, 0.342, 0.0]


def test_print_schedule_matches_python():
    tool = _tool()
    fixture = data_file("sidecar", "pid_tiny_fixture.json")
    result = subprocess.run([str(tool), "--print-schedule", str(fixture)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)

    # Without the Python sampler this still checks the C++ parser against the file.
    expected = _python_t_lists() or _fixture()["sampler"]["t_lists"]
    _assert_same_lists(printed["t_lists"], expected)

    timescale = np.float32(_fixture()["sampler"]["timescale"])
    for n, values in _as_f32(expected).items():
        net_t = np.asarray(printed["net_timesteps"][str(n)], dtype=np.float32)
        np.testing.assert_array_equal(net_t, values[:-1] * timescale, err_msg=f"net timesteps for {n} steps")
        assert printed["noise_draws"][str(n)] == 1 + int(np.count_nonzero(values[1:] > 0))
    assert printed["default_steps"] == 4
    assert printed["name"] == "pid_tiny_fixture"


def test_print_schedule_reports_a_bad_sidecar(tmp_path):
    tool = _tool()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**_fixture(), "format_version": 2}))
    result = subprocess.run([str(tool), "--print-schedule", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "unsupported format_version 2" in result.stderr


def test_teacher_fixture_says_what_the_exporter_writes():
    from pid_trt.export.manifest import sampler_block
    from pid_trt.registry import resolve

    teacher = json.loads(data_file("sidecar", "pid_tiny_teacher_fixture.json").read_text())
    assert teacher["sampler"] == json.loads(json.dumps(sampler_block(resolve("flux", "2kto4k_v1pt5_teacher"))))
    assert teacher["sampler"]["kind"] == "teacher" and "t_lists" not in teacher["sampler"]
    assert all(p["batch"][2] == 2 * 2 for p in teacher["profiles"] if p["kind"] == "dynamic")  # guidance: 2B


def test_cpp_runtime_refuses_teacher_engines():
    tool = _tool()
    fixture = data_file("sidecar", "pid_tiny_teacher_fixture.json")
    result = subprocess.run([str(tool), "--print-schedule", str(fixture)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "undistilled teacher checkpoint" in result.stderr and "pid-trt decode" in result.stderr

"""Shared test helpers. Test data lives in tests/data/ (copied from the project's golden sets)."""
from __future__ import annotations

import importlib.resources
import os
import pathlib

import pytest

DATA = pathlib.Path(__file__).parent / "data"
# golden case a ships with the package for `pid-trt demo`; the tests read that copy (tests/data/decode/README.md)
PACKAGED = pathlib.Path(str(importlib.resources.files("pid_trt") / "data" / "demo"))


def data_file(*parts: str) -> pathlib.Path:
    """Path of a test data file; in CI (CI=true) a missing file fails the test, elsewhere it skips."""
    path = DATA.joinpath(*parts)
    if not path.exists() and parts[0] in ("net", "decode") and (PACKAGED / parts[-1]).exists():
        path = PACKAGED / parts[-1]
    if not path.exists():
        msg = f"test data file missing: {path.relative_to(DATA.parent.parent)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def tiny_flux_onnx(tmp_path_factory):
    """A shallow tiny net with the flux v1.5 structure, exported once per session: (net, onnx_dir)."""
    from pid_trt.export import export_onnx
    from pid_trt.tiny import tiny_net

    net = tiny_net("V15-16", seed=5, patch_depth=2, pixel_depth=1)
    return net, export_onnx(tmp_path_factory.mktemp("onnx") / "tiny_flux", net=net, backbone="flux",
                            ckpt="2kto4k_v1pt5")

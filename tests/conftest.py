"""Shared test helpers. Test data lives in tests/data/ (copied from the project's golden sets)."""
from __future__ import annotations

import importlib.resources
import os
import pathlib
import shutil

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


# labels of the in-memory sweep nets: the V15-16 exports say they hold the flux teacher checkpoint
SWEEP_LABELS = {"V15-16": {"backbone": "flux", "ckpt": "2kto4k_v1pt5_teacher"}}


@pytest.fixture(scope="session")
def shallow_exports(tmp_path_factory):
    """shallow_exports(structure, precision) -> (net, onnx_dir): a tiny net of an official structure (2 patch blocks,
    1 pixel block) exported once per worker. fp8 is the fp16 export (its default base) with the Q/DQ pass applied to
    a copy: what `export_onnx(precision="fp8")` does after the same trace."""
    from pid_trt.export import export_onnx
    from pid_trt.export.fp8 import DEFAULT_BASE, calibrate, quantize_fp8
    from pid_trt.tiny import tiny_net

    cache = {}

    def get(structure: str, precision: str):
        if (structure, precision) not in cache:
            if precision == "fp8":
                net, base_dir = get(structure, DEFAULT_BASE)
                out = tmp_path_factory.mktemp("fp8") / structure
                shutil.copytree(base_dir, out)
                quantize_fp8(out / "denoise.onnx", net, calibrate(net), DEFAULT_BASE)
            else:
                net = tiny_net(structure, seed=3, patch_depth=2, pixel_depth=1)
                out = export_onnx(tmp_path_factory.mktemp(precision) / structure, net=net, precision=precision,
                                  **SWEEP_LABELS.get(structure, {}))
            cache[structure, precision] = (net, out)
        return cache[structure, precision]
    return get

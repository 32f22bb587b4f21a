import json

import pytest

from pid_trt.workflows.demo import run_demo


@pytest.mark.slow
def test_demo_exports_decodes_and_passes_parity(tmp_path):
    report = run_demo(tmp_path / "demo")
    assert report["parity_vs_reference"]["passed"]
    assert report["backend"] in ("onnxruntime", "tensorrt")
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["images"] == report["images"]
    for image in report["images"].values():
        assert (tmp_path / "demo" / image).stat().st_size > 0
    assert (tmp_path / "demo" / "onnx" / "manifest.json").is_file()

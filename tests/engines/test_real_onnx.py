"""Profiles against a real (tiny) ONNX export: the per-tensor shapes they give run in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from pid_trt.engines.plan import make_plan
from pid_trt.engines.profiles import input_shapes
from pid_trt.export import read_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    from pid_trt import export
    from pid_trt.tiny import tiny_net

    return export.export_onnx(tmp_path_factory.mktemp("onnx") / "tiny", net=tiny_net("V15-F2"), backbone="flux2",
                              ckpt="2kto4k_v1pt5", precision="fp32")


def test_profile_shapes_run_in_onnxruntime(onnx_dir):
    import onnxruntime as ort

    manifest = read_manifest(onnx_dir)
    plan = make_plan(backbone=None, ckpt=None, precision=None, onnx_dir=onnx_dir, shapes=[(256, 128)],
                     dynamic=True, batch=(1, 1, 2))
    assert plan.backbone == "flux2" and plan.precision == "fp32"
    sessions = {g: ort.InferenceSession(str(onnx_dir / manifest["graphs"][g]["file"]),
                                        providers=["CPUExecutionProvider"]) for g in ("cond", "denoise")}
    rng = np.random.default_rng(0)
    static, dynamic = plan.profiles
    for profile, point in ((static, 0), (dynamic, 0)):  # min shapes (the max of the dynamic one is 4096², batch 2)
        shapes = {g: input_shapes(manifest["graphs"][g], profile, plan.net_config) for g in sessions}
        feed = {n: rng.standard_normal(s[point]).astype(np.float32) for n, s in shapes["cond"].items()}
        feats = dict(zip([o.name for o in sessions["cond"].get_outputs()], sessions["cond"].run(None, feed)))
        for name, value in feats.items():  # what cond produces is what the denoise profile expects
            assert value.shape == shapes["denoise"][name][point], name
        feed = {n: rng.standard_normal(s[point]).astype(np.float32) for n, s in shapes["denoise"].items()
                if n not in feats} | feats
        [velocity] = sessions["denoise"].run(None, feed)
        assert velocity.shape == shapes["denoise"]["x"][point]

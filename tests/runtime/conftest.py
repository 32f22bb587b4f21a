import pytest

from pid_trt.export import export_onnx
from pid_trt.tiny import tiny_net


@pytest.fixture(scope="session")
def tiny_flux_onnx(tmp_path_factory):
    """A shallow tiny net with the flux v1.5 structure, exported once per session: (net, onnx_dir)."""
    net = tiny_net("V15-16", seed=5, patch_depth=2, pixel_depth=1)
    return net, export_onnx(tmp_path_factory.mktemp("onnx") / "tiny_flux", net=net, backbone="flux",
                            ckpt="2kto4k_v1pt5")

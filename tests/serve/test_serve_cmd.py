"""`pid-trt serve` refusals before anything starts: one stderr line, exit 2 (the running server: test_server_e2e)."""
import pytest
from click.testing import CliRunner

pytest.importorskip("ray.serve", reason="pid-trt serve needs Ray Serve: pip install 'pid-trt[serve]'")

from pid_trt.cli import _register, cli


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of engine_dir, onnx_dir or checkpoint"),
    (["--onnx-dir", "does/not/exist"], "does/not/exist does not exist"),
    (["--onnx-dir", "x", "--replicas", "0"], "--replicas must be a positive integer or 'auto'"),
    (["--onnx-dir", "x", "--autoscaling", "{max: 2}"], "--autoscaling must be a JSON object"),
    (["--onnx-dir", "x", "--autoscaling", "[1]"], "--autoscaling must be a JSON object"),
    (["--onnx-dir", "x", "--max-batch-size", "0"], "--max-batch-size"),
    (["--onnx-dir", "x", "--max-size", "4096x"], "'4096x' is not a size"),
])
def test_refusals(args, message):
    _register()
    res = CliRunner().invoke(cli, ["serve", *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("error: ")

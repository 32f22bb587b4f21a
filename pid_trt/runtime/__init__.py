"""Runtime: PiDDecoder over the tensorrt, onnxruntime and torch backends."""
from pid_trt.runtime.backends import OnnxRuntimeBackend, TorchBackend
from pid_trt.runtime.decoder import PiDDecoder

__all__ = ["PiDDecoder", "TorchBackend", "OnnxRuntimeBackend"]

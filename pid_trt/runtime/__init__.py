"""Runtime: PiDDecoder over the tensorrt, onnxruntime and torch backends, and the device a decode runs on."""
from pid_trt.runtime.backends import OnnxRuntimeBackend, TorchBackend
from pid_trt.runtime.decoder import PiDDecoder
from pid_trt.runtime.device import resolve_device, use_device

__all__ = ["PiDDecoder", "TorchBackend", "OnnxRuntimeBackend", "resolve_device", "use_device"]

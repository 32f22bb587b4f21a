"""ONNX export of PiD's denoiser: graphs (onnx.py), the manifest (manifest.py), FP8 Q/DQ (fp8.py), inspection."""
from pid_trt.export.manifest import read_manifest
from pid_trt.export.onnx import build_net, export_onnx, graph_io

__all__ = ["build_net", "export_onnx", "graph_io", "read_manifest"]

"""The engine build: every TensorRT builder call pid-trt makes, in one place (TensorRT 10.x / 11.x Python API).

`tensorrt` comes from `pid_trt.engines.detect.load_tensorrt` (the one place it is imported), so the rest of
pid-trt (dry runs, the engine store, tests) works without it. Calls are written out directly so each can be
checked against NVIDIA's API reference.
"""
from __future__ import annotations

import pathlib
import threading
from typing import Any

from pid_trt.engines.detect import load_tensorrt, tensorrt_logger
from pid_trt.errors import EngineBuildError

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def build_serialized_engine(onnx_path: pathlib.Path, profiles: list[Shapes], *, opt_level: int = 3,
                            workspace_bytes: int = 0, timing_cache: bytes = b"",
                            progress: bool = True) -> tuple[Any, Any]:
    """Parse an ONNX file into a strongly typed network and build it with one optimization profile per
    entry of `profiles` ({input name: (min, opt, max)}).

    Returns (serialized engine, serialized timing cache), both buffer-protocol `IHostMemory` objects.
    `workspace_bytes` 0 keeps TensorRT's default workspace limit (the device's memory).
    """
    trt = load_tensorrt()
    logger = tensorrt_logger()
    builder = trt.Builder(logger)
    # strongly typed: the ONNX graph's own types (bf16/fp16/fp8 Q/DQ) decide precision; TensorRT 11 always is
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # the path form also reads external weight files
        errors = " | ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")

    network_inputs = sorted(network.get_input(i).name for i in range(network.num_inputs))
    for shapes in profiles:
        if sorted(shapes) != network_inputs:
            raise EngineBuildError(f"{onnx_path.name} has inputs {network_inputs} but its manifest lists "
                                   f"{sorted(shapes)}; re-export the ONNX directory")

    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer types and precisions for `pid-trt inspect`
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (shape_min, shape_opt, shape_max) in shapes.items():
            profile.set_shape(name, shape_min, shape_opt, shape_max)
        config.add_optimization_profile(profile)
    monitor = _progress_monitor(trt) if progress else None  # must outlive the build
    if monitor is not None:
        config.progress_monitor = monitor

    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    return engine, config.get_timing_cache().serialize()


def _progress_monitor(trt):
    """A tqdm bar per builder phase, fed by TensorRT's IProgressMonitor callbacks (from several threads)."""
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm] = {}
            self._lock = threading.Lock()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=len(self._bars),
                                              leave=parent_phase is None, dynamic_ncols=True)

        def step_complete(self, phase_name, step):
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgressMonitor()

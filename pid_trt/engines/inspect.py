"""`pid-trt inspect` for TensorRT engines: each engine's layers with their precisions, and its profiles.

Engines are deserialized with Polygraphy's TensorRT loader and read through TensorRT's engine inspector
(layer types and tensor formats are there when the engine was built with detailed profiling verbosity, as
`pid-trt build` builds them). Needs TensorRT, a GPU and Polygraphy (`pid-trt[debug]`).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

from pid_trt.engines.detect import load_tensorrt
from pid_trt.errors import PiDInputError, import_optional

# words TensorRT uses in a tensor's "Format/Datatype", and the precision each names (first match wins)
_PRECISIONS = (("FP8", "fp8"), ("BF16", "bf16"), ("FP16", "fp16"), ("Half", "fp16"), ("FP32", "fp32"),
               ("Float", "fp32"), ("Int8", "int8"), ("Int32", "int32"), ("Int64", "int64"), ("Bool", "bool"))


def engine_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The engine at `path`, or every *.engine in the directory `path`."""
    files = sorted(path.glob("*.engine")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise PiDInputError(f"{path} is not a TensorRT engine or a directory of them")
    return files


def _precision(fmt: str) -> str | None:
    return next((p for word, p in _PRECISIONS if word in fmt), None)


def describe_layer(layer: Any) -> dict[str, Any]:
    """One entry of the inspector's JSON "Layers": its name, type and the precisions of its outputs (a bare
    name when the engine was built without detailed profiling verbosity)."""
    if isinstance(layer, str):
        return {"name": layer, "type": None, "precisions": []}
    formats = [t.get("Format/Datatype", "") for t in layer.get("Outputs", [])]
    return {"name": layer.get("Name"), "type": layer.get("LayerType"),
            "precisions": sorted({p for f in formats if (p := _precision(f))}), "tactic": layer.get("TacticName")}


def inspect_engine(path: pathlib.Path) -> dict[str, Any]:
    """Layers, per-layer precisions and optimization profiles of every engine at `path`."""
    files = engine_files(pathlib.Path(path))
    trt = load_tensorrt()  # one line when TensorRT is missing
    import_optional("polygraphy", "debug", "pid-trt inspect ENGINE")
    from polygraphy.backend.trt import EngineFromBytes

    out = {}
    for file in files:
        engine = EngineFromBytes(file.read_bytes())()
        if engine is None:
            raise PiDInputError(f"TensorRT could not deserialize {file} (built by another TensorRT version?)")
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
        layers = [describe_layer(layer) for layer in info.get("Layers", [])]
        inputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                  if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT]
        profiles = [{name: [list(s) for s in engine.get_tensor_profile_shape(name, p)] for name in inputs}
                    for p in range(engine.num_optimization_profiles)]
        counts: dict[str, int] = {}
        for layer in layers:
            for p in layer["precisions"] or ["unknown"]:
                counts[p] = counts.get(p, 0) + 1
        out[file.name] = {"layers": layers, "layer_precisions": counts, "profiles": profiles}
    return out

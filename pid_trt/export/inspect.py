"""`pid-trt inspect` for ONNX files and export directories: metadata_props, I/O and node counts."""
from __future__ import annotations

import json
import pathlib
from typing import Any

from pid_trt.errors import PiDInputError


def _describe(path: pathlib.Path) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise PiDInputError(f"{path} is not a readable ONNX model: {str(e).splitlines()[0][:160]}") from None

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    meta = {p.key: p.value for p in model.metadata_props}
    return {
        "file": str(path),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "nodes": len(model.graph.node),
        "inputs": [f"{i.name}{dims(i)}" for i in model.graph.input],
        "outputs": [f"{o.name}{dims(o)}" for o in model.graph.output],
        **{k: v for k, v in meta.items() if k not in ("t_lists", "sampler")},
        **({"sampler": json.loads(meta["sampler"])["kind"]} if "sampler" in meta else {}),
    }


def inspect_onnx(path: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    if path.is_dir():
        from pid_trt.export.manifest import describe_weights, read_manifest, weights_id

        manifest = read_manifest(path)
        return {"directory": str(path), "backbone": manifest["backbone"], "ckpt": manifest["ckpt"],
                "net_definition": manifest["net_definition"], "precision": manifest["precision"],
                "weights": describe_weights(manifest["weights"]), "weights_id": weights_id(manifest["weights"]),
                "graphs": [f"{n}: {_describe(path / g['file'])['nodes']} nodes" for n, g in manifest["graphs"].items()]}
    if not path.is_file():
        raise PiDInputError(f"{path} does not exist")
    return _describe(path)

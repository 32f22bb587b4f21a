"""What TensorRT 10's ONNX parser (onnx-tensorrt) accepts, checked on an exported graph without TensorRT.

`problems(path)` lists every way a graph breaks the rules below; an empty list means TensorRT 10 can import it and
its attention can be fused:
* opset 9..20 of the default domain only (TensorRT 10.0–10.x parse up to opset 20);
* no DOUBLE anywhere (initializers, constants, casts, intermediate tensors);
* only operators and data types of onnx-tensorrt's support matrix (tests/data/tensorrt, with its source), and the
  matrix's restrictions that apply to us: `axes` inputs are constants, Q/DQ zero points are zero;
* FP8 Q/DQ the way TensorRT imports it: E4M3 (FLOAT8E4M3FN) zero points of 0, positive constant scales (in the
  quantized tensor's own float type, as ONNX's QuantizeLinear requires), per-tensor scales for activations,
  per-output-channel scales for weights, Q and DQ sharing scale and zero point, every DQ feeding a MatMul/Gemm;
* TensorRT's fused-attention rule: between the first MatMul and the Softmax only Casts, and q or k scaled by a
  constant before that MatMul;
* external data next to its graph (a bare file name), readable like the graph (same permission bits).
"""
from __future__ import annotations

import json
import pathlib
import stat

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

DATA = pathlib.Path(__file__).parent / "data" / "tensorrt" / "onnx_tensorrt_10.1_operators.json"
MATRIX = json.loads(DATA.read_text())
TRT_TYPES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
             TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8",
             TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL", TensorProto.FLOAT8E4M3FN: "FP8",
             TensorProto.DOUBLE: "DOUBLE"}
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
CONSTANT_AXES = {"ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1,
                 "ReduceL1": 1, "ReduceL2": 1, "ReduceSumSquare": 1, "ReduceLogSum": 1, "ReduceLogSumExp": 1,
                 "Squeeze": 1, "Unsqueeze": 1, "Slice": 3, "Pad": 3}  # input index of `axes`
# inputs that are sizes or regions, not data, so the data-type column does not apply (Resize: roi, scales, sizes)
AUXILIARY_INPUTS = {"Resize": (1, 2, 3)}
# what may sit between a product's input and the constant scale of q or k (layout and precision only)
PASS_THROUGH = ("Cast", "Transpose", "Reshape", "QuantizeLinear", "DequantizeLinear")


class Graph:
    """A loaded graph with its producers, consumers, constants and every tensor's element type."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.model = onnx.load(str(path))
        inferred = onnx.shape_inference.infer_shapes(self.model)
        g = self.model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.types = {t.name: t.data_type for t in g.initializer}
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if v.type.tensor_type.elem_type:
                self.types[v.name] = v.type.tensor_type.elem_type

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or of a Constant node's output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))
        return None

    def up(self, name: str, through: tuple[str, ...]):
        """The first producer above `name` that is not one of the `through` ops (None at a graph input)."""
        node = self.producer.get(name)
        while node is not None and node.op_type in through:
            node = self.producer.get(node.input[0])
        return node


def opset_problems(g: Graph) -> list[str]:
    out = []
    versions = {o.domain: o.version for o in g.model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    lo, hi = MATRIX["opset"]["min"], MATRIX["opset"]["max"]
    if opset is None or not lo <= opset <= hi:
        out.append(f"opset {opset} outside TensorRT 10's {lo}..{hi}")
    out += [f"{n.name or n.op_type}: custom domain {n.domain!r}" for n in g.model.graph.node
            if n.domain not in ("", "ai.onnx")]
    return out


def double_problems(g: Graph) -> list[str]:
    out = [f"tensor {name} is DOUBLE" for name, t in g.types.items() if t == TensorProto.DOUBLE]
    for n in g.model.graph.node:
        for a in n.attribute:
            if (a.name == "to" and a.i == TensorProto.DOUBLE) or (a.type == onnx.AttributeProto.TENSOR
                                                                   and a.t.data_type == TensorProto.DOUBLE):
                out.append(f"{n.name or n.op_type}: DOUBLE in attribute {a.name}")
    return out


def operator_problems(g: Graph) -> list[str]:
    out = []
    ops = MATRIX["operators"]
    for n in g.model.graph.node:
        label = f"{n.op_type} {n.name}"
        allowed = ops.get(n.op_type)
        if allowed is None:
            out.append(f"{label}: operator not supported by TensorRT's ONNX parser")
            continue
        skip = AUXILIARY_INPUTS.get(n.op_type, ())
        roles = [(t, allowed) for i, t in enumerate(n.input) if t and i not in skip] + [(t, allowed) for t in n.output]
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            q, dq = ops["QuantizeLinear"], ops["DequantizeLinear"]
            float_side = [n.input[1]] + ([n.input[0]] if n.op_type == "QuantizeLinear" else [n.output[0]])
            roles = [(t, q if t in float_side else dq) for t, _ in roles]
        for tensor, types in roles:
            dtype = g.types.get(tensor)
            if dtype is None:
                out.append(f"{label}: type of {tensor} unknown (shape inference)")
            elif TRT_TYPES.get(dtype) not in types:
                out.append(f"{label}: {tensor} is {TensorProto.DataType.Name(dtype)}, not one of {', '.join(types)}")
        index = CONSTANT_AXES.get(n.op_type)
        if index is not None and len(n.input) > index and n.input[index] and g.constant(n.input[index]) is None:
            out.append(f"{label}: axes input {n.input[index]} is not a constant")
    return out


def qdq_problems(g: Graph) -> list[str]:
    out = []
    for q in (n for n in g.model.graph.node if n.op_type == "QuantizeLinear"):
        label = f"QuantizeLinear {q.name}"
        x, scale_name = q.input[0], q.input[1]
        zp_name = q.input[2] if len(q.input) > 2 else ""
        scale, zp = g.constant(scale_name), g.constant(zp_name) if zp_name else None
        if scale is None or zp is None:
            out.append(f"{label}: scale and zero point must be constants")
            continue
        if g.types.get(zp_name) != TensorProto.FLOAT8E4M3FN:
            out.append(f"{label}: zero point is not FLOAT8E4M3FN (E4M3)")
        if np.any(zp.astype(np.float32) != 0):
            out.append(f"{label}: zero point is not 0")
        if g.types.get(scale_name) not in FLOATS or g.types.get(scale_name) != g.types.get(x):
            out.append(f"{label}: scale type must be the input's float type")
        values = scale.astype(np.float32)
        if not (np.all(np.isfinite(values)) and np.all(values > 0)):
            out.append(f"{label}: scales must be finite and positive")
        axis = next((a.i for a in q.attribute if a.name == "axis"), None)
        if x in g.inits:  # a weight: one scale per output channel of the product that uses it
            w = g.constant(x)
            dqs = g.consumers.get(q.output[0], [])
            users = [c for dq in dqs for c in g.consumers.get(dq.output[0], [])]
            trans_b = any(u.op_type == "Gemm" and any(a.name == "transB" and a.i for a in u.attribute) for u in users)
            want_axis = 0 if trans_b else w.ndim - 1
            if axis is None or axis % w.ndim != want_axis or values.shape != (w.shape[want_axis],):
                out.append(f"{label}: weight scale must be per output channel (axis {want_axis}, "
                           f"{w.shape[want_axis]} values), got axis {axis}, shape {list(values.shape)}")
        elif values.size != 1:
            out.append(f"{label}: activation scale must be per tensor, got shape {list(values.shape)}")
        for dq in g.consumers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear":
                out.append(f"{label}: output feeds {dq.op_type}, not DequantizeLinear")
                continue
            same = (dq.input[1:3] == q.input[1:3]
                    and next((a.i for a in dq.attribute if a.name == "axis"), None) == axis)
            if not same:
                out.append(f"DequantizeLinear {dq.name}: scale, zero point and axis differ from its Q")
            users = {c.op_type for c in g.consumers.get(dq.output[0], [])}
            if not users <= {"MatMul", "Gemm"}:
                out.append(f"DequantizeLinear {dq.name}: feeds {sorted(users)}, not a MatMul/Gemm directly")
    return out


def attention_problems(g: Graph) -> list[str]:
    out = []
    softmaxes = [n for n in g.model.graph.node if n.op_type == "Softmax"]
    for sm in softmaxes:
        label = f"Softmax {sm.name}"
        bmm1 = g.up(sm.input[0], ("Cast",))
        if bmm1 is None or bmm1.op_type != "MatMul":
            out.append(f"{label}: fed by {bmm1.op_type if bmm1 else 'a graph input'} (through Casts), not the "
                       "first MatMul: a scale or bias after q·kᵀ keeps TensorRT from fusing attention")
            continue

        def scaled(tensor: str) -> bool:
            node = g.up(tensor, PASS_THROUGH)
            return (node is not None and node.op_type in ("Mul", "Div")
                    and any(g.constant(i) is not None and g.constant(i).size == 1 for i in node.input))

        if not any(scaled(t) for t in bmm1.input):
            out.append(f"{label}: neither q nor k is scaled by a constant before the first MatMul")
        p = sm.output[0]
        while len(g.consumers.get(p, [])) == 1 and g.consumers[p][0].op_type in ("Cast", "QuantizeLinear",
                                                                                "DequantizeLinear"):
            p = g.consumers[p][0].output[0]
        if [c.op_type for c in g.consumers.get(p, [])] != ["MatMul"]:
            out.append(f"{label}: probabilities do not feed the second MatMul directly")
    return out


def external_data_problems(path: pathlib.Path) -> list[str]:
    out = []
    model = onnx.load(str(path), load_external_data=False)
    graph_mode = stat.S_IMODE(path.stat().st_mode)
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in t.external_data}.get("location", "")
        data = path.parent / location
        if pathlib.Path(location).name != location or not data.is_file():
            out.append(f"{t.name}: external data {location!r} is not a file beside {path.name}")
        elif stat.S_IMODE(data.stat().st_mode) != graph_mode:
            out.append(f"{location}: mode {oct(stat.S_IMODE(data.stat().st_mode))}, graph {oct(graph_mode)}")
    return out


def problems(path: pathlib.Path) -> list[str]:
    """Every rule above that the graph at `path` breaks (empty: TensorRT 10 imports it and can fuse attention)."""
    g = Graph(path)
    return (opset_problems(g) + double_problems(g) + operator_problems(g) + qdq_problems(g)
            + attention_problems(g) + external_data_problems(path))

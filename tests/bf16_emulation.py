"""Run a bf16 ONNX graph in ONNX Runtime on the CPU, which has no bf16 kernels for most operators.

`emulated(model)` returns an equivalent graph whose arithmetic is fp32: every node that takes or makes bf16 tensors
gets Casts to fp32 on its bf16 inputs and back to bf16 on its outputs (and its bf16 attributes become fp32); bf16
graph inputs and outputs become fp32 (numpy has no bf16), rounded to bf16 on the way in. Values
are still rounded to bf16 wherever the graph stores bf16, and each operation computes in fp32, as GPU kernels do
(bf16 storage, fp32 arithmetic and accumulation), so the result measures the graph's bf16 rounding.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP = {"Cast", "Shape", "Size"}  # already fine in bf16 on the CPU (or type independent)


def emulated(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with fp32 arithmetic around every bf16 node (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[v.name] = v.type.tensor_type.elem_type
    nodes = []
    for i, node in enumerate(model.graph.node):
        bf16_in = [j for j, t in enumerate(node.input) if t and types.get(t) == TensorProto.BFLOAT16]
        bf16_out = [j for j, t in enumerate(node.output) if types.get(t) == TensorProto.BFLOAT16]
        if node.op_type in KEEP or not (bf16_in or bf16_out):
            nodes.append(node)
            continue
        for j in bf16_in:
            name = f"{node.input[j]}__fp32_{i}_{j}"
            nodes.append(helper.make_node("Cast", [node.input[j]], [name], to=TensorProto.FLOAT))
            node.input[j] = name
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.BFLOAT16:
                value = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
        outputs = list(node.output)
        for j in bf16_out:
            node.output[j] = f"{outputs[j]}__fp32_{i}_{j}"
        nodes.append(node)
        nodes += [helper.make_node("Cast", [node.output[j]], [outputs[j]], to=TensorProto.BFLOAT16) for j in bf16_out]
    for value in model.graph.input:  # take fp32, round to bf16 on entry
        if value.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            inner = f"{value.name}__bf16"
            for node in nodes:
                node.input[:] = [inner if t == value.name else t for t in node.input]
            nodes.insert(0, helper.make_node("Cast", [value.name], [inner], to=TensorProto.BFLOAT16))
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    for value in model.graph.output:  # give fp32 back
        if value.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            inner = f"{value.name}__bf16"
            for node in nodes:
                node.output[:] = [inner if t == value.name else t for t in node.output]
                node.input[:] = [inner if t == value.name else t for t in node.input]
            nodes.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT))
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    model.graph.ClearField("value_info")
    return model

"""The TensorRT import checker (tests/tensorrt_onnx.py) on small hand-made graphs: each rule it states catches what
it should, so a clean sweep over the exports means something."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.tensorrt_onnx import problems

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def _save(tmp_path, nodes, inits=(), opset=20, inputs=None, outputs=None, name="g.onnx", **save):
    inputs = inputs or [helper.make_tensor_value_info("q", F, [1, 2, 4, 8]),
                        helper.make_tensor_value_info("k", F, [1, 2, 4, 8]),
                        helper.make_tensor_value_info("v", F, [1, 2, 4, 8])]
    outputs = outputs or [helper.make_tensor_value_info("out", F, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    path = tmp_path / name
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path), **save)
    return path


def _attention(scale_before: bool):
    """q·kᵀ → softmax → ·v with the 1/√8 scale on q (fusible) or on the scores (not)."""
    scale = numpy_helper.from_array(np.array(8 ** -0.5, np.float32), "scale")
    kt = helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])
    if scale_before:
        nodes = [helper.make_node("Mul", ["q", "scale"], ["qs"]), kt, helper.make_node("MatMul", ["qs", "kt"], ["s"]),
                 helper.make_node("Softmax", ["s"], ["p"], axis=-1)]
    else:
        nodes = [kt, helper.make_node("MatMul", ["q", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s"]),
                 helper.make_node("Softmax", ["s"], ["p"], axis=-1)]
    return nodes + [helper.make_node("MatMul", ["p", "v"], ["out"])], [scale]


def test_fusible_attention_passes_and_a_scale_after_the_first_matmul_fails(tmp_path):
    assert problems(_save(tmp_path, *_attention(True))) == []
    found = problems(_save(tmp_path, *_attention(False)))
    assert len(found) == 1 and "not the first MatMul" in found[0]


def test_opset_double_and_unsupported_operators(tmp_path):
    nodes, inits = _attention(True)
    assert any("opset 21" in p for p in problems(_save(tmp_path, nodes, inits, opset=21)))
    doubled = nodes[:-1] + [helper.make_node("Cast", ["p"], ["pd"], to=TensorProto.DOUBLE),
                            helper.make_node("Cast", ["pd"], ["pf"], to=F), helper.make_node("MatMul", ["pf", "v"], ["out"])]
    assert any("DOUBLE" in p for p in problems(_save(tmp_path, doubled, inits)))
    odd = nodes + [helper.make_node("Det", ["q"], ["d"])]
    assert any("Det" in p and "not supported" in p for p in problems(_save(tmp_path, odd, inits)))


def _fp8_linear(tmp_path, *, weight_scale_shape=(4,), axis=1, zero=0.0, scale_type=F, activation_scale_shape=()):
    """x [2, 3] · W [3, 4] with FP8 Q/DQ on x (per tensor) and W (per output channel: axis 1 of W)."""
    fp8 = helper.tensor_dtype_to_np_dtype(TensorProto.FLOAT8E4M3FN)
    inits = [numpy_helper.from_array(np.ones((3, 4), np.float32), "w"),
             numpy_helper.from_array(np.full(weight_scale_shape, 0.01, helper.tensor_dtype_to_np_dtype(scale_type)), "ws"),
             numpy_helper.from_array(np.full(weight_scale_shape, zero, np.float32).astype(fp8), "wz"),
             numpy_helper.from_array(np.full(activation_scale_shape, 0.02, np.float32), "xs"),
             numpy_helper.from_array(np.zeros(activation_scale_shape, fp8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=axis),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=axis),
             helper.make_node("MatMul", ["xd", "wd"], ["out"])]
    return _save(tmp_path, nodes, inits, inputs=[helper.make_tensor_value_info("x", F, [2, 3])])


def test_fp8_qdq_rules(tmp_path):
    assert problems(_fp8_linear(tmp_path)) == []
    assert any("per output channel" in p for p in problems(_fp8_linear(tmp_path, weight_scale_shape=(3,), axis=0)))
    assert any("zero point is not 0" in p for p in problems(_fp8_linear(tmp_path, zero=1.0)))
    assert any("scale type" in p for p in problems(_fp8_linear(tmp_path, scale_type=H)))
    assert any("per tensor" in p for p in problems(_fp8_linear(tmp_path, activation_scale_shape=(3,))))


@pytest.mark.parametrize("mode, ok", [(0o644, True), (0o600, False)])
def test_external_data_beside_the_graph_and_as_readable(tmp_path, mode, ok):
    path = _save(tmp_path, *_attention(True), save_as_external_data=True, all_tensors_to_one_file=True,
                 location="g.onnx.data", size_threshold=0)  # the scale goes to g.onnx.data
    path.chmod(0o644)
    (tmp_path / "g.onnx.data").chmod(mode)
    assert (problems(path) == []) == ok

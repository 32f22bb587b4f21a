"""Layer-wise parity (`pid-trt parity --layerwise`): every tensor of one denoiser evaluation against a fresh fp32
export of the reference weights, through Polygraphy and ONNX Runtime on the CPU.

One tame tiny export (2 patch blocks, 1 pixel block) is the candidate; the first `--layerwise` run exports the
reference weights into a shared directory, later runs reuse it.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import helper, numpy_helper

from pid_trt.cli import _register, cli
from pid_trt.errors import MissingDependencyError
from pid_trt.export import export_onnx
from pid_trt.integrity import sha256_file
from pid_trt.layerwise import error_figures, match_nodes
from pid_trt.tiny import tiny_net

pytest.importorskip("polygraphy", reason="layer-wise parity needs Polygraphy (pip install 'pid-trt[debug]')")


def invoke(*args):
    _register()
    return CliRunner().invoke(cli, ["parity", *args])


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The candidate (an fp32 export of a tame tiny net), its weights as a checkpoint file, and where the
    reference export is kept."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("layerwise")
    net = tiny_net(patch_depth=2, pixel_depth=1)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "weights.safetensors"))
    export_onnx(root / "onnx", net=net, precision="fp32")
    return root


@pytest.fixture(scope="module")
def untouched(export):
    """`parity --layerwise --save-inputs` on the untouched export (makes the fresh reference export)."""
    res = invoke("--onnx-dir", str(export / "onnx"), "--reference-checkpoint", str(export / "weights.safetensors"),
                 "--layerwise", "--reference-export", str(export / "reference"),
                 "--save-inputs", str(export / "feeds.json"), "--json", str(export / "report.json"))
    return res, json.loads((export / "report.json").read_text())


def test_untouched_export_passes_with_every_node_within_tolerance(untouched):
    res, report = untouched
    assert res.exit_code == 0, res.output
    lw = report["layerwise"]
    assert lw["passed"] and lw["step"] == 1 and lw["first_divergence"] is None
    assert lw["compared"] > 500 and all(r["ok"] for r in lw["records"])
    # fresh exports of one net name their nodes alike: every node pairs with the reference's
    assert lw["unmatched"] == {"cond": {}, "denoise": {}}
    assert max(r["rel"] for r in lw["records"]) <= lw["tolerance"]["rel"] == 1e-4
    assert {r["graph"] for r in lw["records"]} == {"cond", "denoise"}
    matched = [b for b in lw["blocks"] if b["ok"] is not None]
    assert {b["module"] for b in matched} >= {"patch_blocks.0", "patch_blocks.1", "pixel_blocks.0", "final_layer"}
    assert all(b["ok"] and b["rel"] < 1e-5 for b in matched)  # ONNX Runtime vs torch, both fp32
    assert "first divergence: none" in res.output and "0 beyond rel 0.0001" in res.output


def test_saved_inputs_load_with_polygraphy(untouched, export):
    from polygraphy.json import load_json

    from pid_trt.runtime.backends import ort_session

    _, report = untouched
    saved = report["layerwise"]["saved_inputs"]
    assert saved == {"cond": str(export / "feeds-cond.json"), "denoise": str(export / "feeds.json")}
    feeds = load_json(saved["denoise"])
    assert isinstance(feeds, list) and len(feeds) == 1
    session = ort_session(export / "onnx" / "denoise.onnx")
    assert set(feeds[0]) == {i.name for i in session.get_inputs()}
    velocity = session.run(None, dict(feeds[0]))[0]
    assert velocity.shape == feeds[0]["x"].shape == (1, 3, 128, 192)
    assert list(load_json(saved["cond"])[0]) == ["lq_latent"]
    # and what the README says: anyone with Polygraphy reruns the evaluation from the file
    run = subprocess.run([sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())",
                          "run", str(export / "onnx" / "denoise.onnx"), "--onnxrt", "--load-inputs", saved["denoise"]],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and "PASSED" in run.stdout, run.stdout + run.stderr


def test_perturbed_initializer_is_the_first_divergence(untouched, export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(export / "onnx", bad)
    model = onnx.load(str(bad / "denoise.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w + 0.05).astype(w.dtype), init.name))
    onnx.save(model, str(bad / "denoise.onnx"))
    manifest = json.loads((bad / "manifest.json").read_text())  # integrity checks see a consistent export
    manifest["graphs"]["denoise"]["sha256"] = sha256_file(bad / "denoise.onnx")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (consumer,) = [n for n in model.graph.node if init.name in n.input]

    res = invoke("--onnx-dir", str(bad), "--reference-checkpoint", str(export / "weights.safetensors"), "--layerwise",
                 "--reference-export", str(export / "reference"), "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 1, res.output
    lw = json.loads((tmp_path / "r.json").read_text())["layerwise"]
    first = lw["first_divergence"]
    assert (first["graph"], first["node"], first["op"]) == ("denoise", consumer.name, consumer.op_type)
    assert first["rel"] > 1e-2 and first["module"]
    assert all(r["ok"] for r in lw["records"] if r["graph"] == "cond")
    assert f"first divergence: denoise/{consumer.name} ({consumer.op_type} in {first['module']})" in res.output
    assert len(lw["worst"]) == 10 and lw["worst"][0]["rel"] >= first["rel"]


def test_a_reference_directory_holding_something_else_is_refused(export, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(export / "onnx", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["weights"]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    res = invoke("--onnx-dir", str(export / "onnx"), "--reference-checkpoint", str(export / "weights.safetensors"),
                 "--layerwise", "--reference-export", str(other))
    assert res.exit_code == 2 and "holds another export" in res.output


def test_a_torch_candidate_has_no_graphs_to_compare():
    res = invoke("--tiny-override", "patch_depth=1", "--tiny-override", "pixel_depth=1", "--layerwise")
    assert res.exit_code == 2 and "error: --layerwise and --save-inputs compare exported graphs" in res.output


def test_missing_polygraphy_is_one_line_naming_the_extra(monkeypatch):
    from pid_trt import layerwise

    monkeypatch.setitem(__import__("sys").modules, "polygraphy", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "pid-trt\[debug\]"'):
        layerwise.marked_model(None)


# -- pairing and error figures, on hand-made graphs ---------------------------------------------------------

def _graph(nodes, name="g"):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, [2])
    return helper.make_graph(nodes, name, [x], [y])


def _node(op, inputs, output, name, module=None):
    node = helper.make_node(op, inputs, [output], name=name)
    if module:
        node.metadata_props.append(onnx.StringStringEntryProto(key="pid_trt.module", value=module))
    return node


def test_nodes_pair_by_name_then_by_module_and_order():
    reference = _graph([_node("Relu", ["x"], "a", "relu_1", "blk"), _node("Neg", ["a"], "b", "neg_7", "blk"),
                        _node("Abs", ["b"], "c", "abs_1", "blk")])
    candidate = _graph([_node("Relu", ["x"], "a", "relu_1", "blk"), _node("Cast", ["a"], "a16", "cast_1", "blk"),
                        _node("Neg", ["a16"], "b", "neg_9", "blk"), _node("Abs", ["b"], "c", "abs_1", "blk")])
    matched, unmatched = match_nodes(candidate, reference)
    assert {k: v.name for k, v in matched.items()} == {"relu_1": "relu_1", "neg_9": "neg_7", "abs_1": "abs_1"}
    assert list(unmatched) == ["cast_1"]


def test_a_same_named_node_fed_by_other_nodes_is_not_paired():
    reference = _graph([_node("Relu", ["x"], "a", "relu_1"), _node("Neg", ["x"], "b", "neg_1"),
                        _node("Abs", ["a"], "c", "abs_1")])
    candidate = _graph([_node("Relu", ["x"], "a", "relu_1"), _node("Neg", ["x"], "b", "neg_1"),
                        _node("Abs", ["b"], "c", "abs_1")])  # reads neg_1, the reference's reads relu_1
    matched, unmatched = match_nodes(candidate, reference)
    assert set(matched) == {"relu_1", "neg_1"} and unmatched == {"abs_1": "its inputs come from other nodes than "
                                                                            "the reference's"}


def test_error_figures_are_relative_to_the_reference_scale():
    ref = np.array([0.0, 2.0, -4.0])
    assert error_figures(ref + [0, 0, 0.04], ref) == pytest.approx(
        {"max_abs": 0.04, "mean_abs": 0.04 / 3, "ref_max_abs": 4.0, "rel": 0.01})
    assert error_figures(ref, ref)["rel"] == 0.0
    assert error_figures(np.array([np.nan, 2.0, -4.0]), ref)["rel"] == float("inf")
    assert error_figures(np.array([1.0]), np.array([0.0]))["rel"] == float("inf")
    both_inf = np.array([np.inf, 1.0])
    assert error_figures(both_inf, both_inf)["max_abs"] == 0.0


# -- TensorRT: the engine with every tensor marked against ONNX Runtime -------------------------------------

def test_tensorrt_layerwise_matches_onnxruntime(export):
    from pid_trt.engines.detect import tensorrt_available

    if not tensorrt_available():
        pytest.skip("TensorRT with a CUDA GPU is not available here: the engine-vs-ONNX-Runtime path needs both")
    from pid_trt.layerwise import NODE_TOLERANCE, compare_engine_graphs, graph_feeds, summarize

    net = tiny_net(patch_depth=2, pixel_depth=1)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 4, 6, generator=g)
    feats = net.condition(z, 128, 192)
    call = (torch.randn(1, 3, 128, 192, generator=g), torch.tensor([866.0]), torch.randn(1, 8, 32, generator=g),
            torch.tensor([0.25]), feats)
    comparisons = compare_engine_graphs(export / "onnx", graph_feeds(net, z, call), NODE_TOLERANCE["fp32"] * 10)
    report = summarize(comparisons, NODE_TOLERANCE["fp32"] * 10, "tensorrt vs onnxruntime")
    assert report["compared"] > 100 and report["passed"], report["first_divergence"]

"""FP8 (E4M3) explicit Q/DQ on the denoise graph: validity, placement, TensorRT's import rules, and error against the
fp32 PyTorch reference on both bases (fp16, the default, and bf16).

Errors are measured on a tame net (PyTorch default init, zero-initialised heads set to N(0, 0.02), as
`tiny_net(init="tame")`): the goldens' aggressive init is chaotic and would measure chaos, not FP8. ONNX Runtime has
no CPU bf16 kernels, so bf16 graphs run through tests/bf16_emulation.py (bf16 storage, fp32 arithmetic).
"""
import json
import re
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pid_trt.errors import PiDInputError
from pid_trt.export import export_onnx
from pid_trt.export.fp8 import DEFAULT_BASE, calibrate, default_calibration, fp8_attention, fp8_linear_names
from pid_trt.export.graphs import feature_names
from pid_trt.model import PiDNet
from pid_trt.registry import NET_DEFINITIONS
from pid_trt.sampler import sample
from pid_trt.tiny import tiny_config, tiny_inputs, tiny_net
from tests.bf16_emulation import emulated
from tests.tensorrt_onnx import problems

# The tiny structure with head dims that split like the official nets' (patch 64: FP8 attention, pixel 72: not):
# patch head_dim 32, pixel head_dim 24; 2 patch blocks and 1 pixel block keep the export short.
FP8_TINY = {"hidden_size": 64, "pixel_attn_hidden_size": 48, "patch_depth": 2, "pixel_depth": 1}
FP8_LINEAR = re.compile(r"patch_blocks\.\d+\.(attn\.(qkv|proj)_[xy]|mlp_[xy]\.w[123])"
                        r"|pixel_blocks\.\d+\.(compress_to_attn|expand_from_attn|attn\.(qkv|proj))")
# (latent h, latent w, batch): neither size is one of the calibration sizes (4x6, 6x4)
SHAPES = [(3, 5, 1), (5, 4, 2)]


@torch.no_grad()
def _tame_net() -> PiDNet:
    """tiny_net(init="tame") on the FP8_TINY structure."""
    torch.manual_seed(0)
    net = PiDNet({**tiny_config(), **FP8_TINY}).eval()
    g = torch.Generator().manual_seed(1)
    for name, p in net.named_parameters():
        if name.startswith(("final_layer.linear", "lq_proj.output_heads", "lq_proj.pit_head")):
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return net


@pytest.fixture(scope="module", params=["fp16", "bf16"])
def fp8_export(request, tmp_path_factory):
    net = _tame_net()
    out = tmp_path_factory.mktemp(f"fp8_{request.param}") / "onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pid_trt.export.onnx._TWO_GB", 0)  # force external data: the rewrite must keep the .data file right
        export_onnx(out, net=net, precision="fp8", fp8_base=request.param)
    return net, out, json.loads((out / "manifest.json").read_text())


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    s = ort.InferenceSession(emulated(model).SerializeToString(), providers=["CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    return s


def _without_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every Q/DQ pair removed: the base precision alone."""
    producer = {o: n for n in model.graph.node for o in n.output}
    source = {n.output[0]: producer[n.input[0]].input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    kept = [n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    for n in kept:
        n.input[:] = [source.get(t, t) for t in n.input]
    model.graph.ClearField("node")
    model.graph.node.extend(kept)
    used = [t for t in model.graph.initializer if not t.name.endswith(("_fp8_scale", "_fp8_zp"))]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(used)
    return model


def _consumers(graph):
    out = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


# ----------------------------------------------------------------------------------------------------------
# fast


def test_fp8_attention_rule_on_official_and_tiny_head_dims():
    cfg = NET_DEFINITIONS["V15-16"].config
    assert fp8_attention(cfg["hidden_size"] // cfg["num_groups"])  # patch attention, 64
    assert not fp8_attention(cfg["pixel_attn_hidden_size"] // cfg["pixel_num_groups"])  # pixel attention, 72
    tiny = tiny_config()
    assert not fp8_attention(tiny["hidden_size"] // tiny["num_groups"])  # 24: tiny nets get no FP8 patch attention
    assert fp8_attention(32) and not fp8_attention(24)  # FP8_TINY's patch / pixel attention


def test_fp8_layers_are_the_big_patch_and_pixel_linears():
    net = tiny_net(init="tame")
    names = fp8_linear_names(net)
    linears = {n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(names) == {n for n in linears if FP8_LINEAR.fullmatch(n)}
    assert len(names) == 10 * len(net.patch_blocks) + 4 * len(net.pixel_blocks)
    high = linears - set(names)  # embedders, t-MLP, adaLN, gates, latent heads, per-pixel MLP, final layer
    for prefix in ("s_embedder", "pixel_embedder", "y_embedder", "t_embedder", "lq_proj", "final_layer"):
        assert any(n.startswith(prefix) for n in high) and not any(n.startswith(prefix) for n in names)
    assert not any("adaLN" in n or n.endswith((".mlp.fc1", ".mlp.fc2")) for n in names)


def test_calibration_records_every_quantized_tensor():
    net = tiny_net(init="tame")
    stats = calibrate(net, [tiny_inputs(net, (2, 3), batch=2)])
    assert stats.decodes == 1 and stats.evaluations == 4  # all four timesteps of one decode
    assert set(stats.linear_amax) == set(fp8_linear_names(net)) and min(stats.linear_amax.values()) > 0
    head_dims = [a["head_dim"] for a in stats.attention]  # per denoiser call: patch blocks, then pixel blocks
    assert head_dims == [24] * len(net.patch_blocks) + [16] * len(net.pixel_blocks)
    assert all(a[k] > 0 for a in stats.attention for k in ("q", "k", "v"))
    decodes = default_calibration(net)
    assert len({d["lq_latent"].shape for d in decodes}) == 2
    assert all(d["degrade_sigma"].tolist() == pytest.approx([0.0, 0.3, 0.6]) for d in decodes)


def test_calibration_without_a_latent_is_an_input_error():
    net = tiny_net(init="tame")
    with pytest.raises(PiDInputError, match="lq_latent"):
        calibrate(net, [{"y": torch.zeros(1, 8, 32), "degrade_sigma": torch.zeros(1)}])


def test_fp16_is_the_default_base():
    assert DEFAULT_BASE == "fp16"


# ----------------------------------------------------------------------------------------------------------
# one FP8 export per base (about 30 s each), shared


@pytest.mark.slow
def test_fp8_export_is_valid_onnx_with_external_data(fp8_export):
    _, out, manifest = fp8_export
    den = manifest["graphs"]["denoise"]
    assert manifest["precision"] == "fp8" and den["external_data"]
    assert sorted(p.name for p in out.iterdir()) == ["cond.onnx", "cond.onnx.data", "denoise.onnx",
                                                     "denoise.onnx.data", "manifest.json"]  # no temporary leftovers
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the data files are as readable as the graphs (not 0600)
    onnx.checker.check_model(str(out / "denoise.onnx"), full_check=True)  # includes strict shape inference
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "denoise.onnx")), strict_mode=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input[:4])
    info = den["fp8"]
    assert info["format"] == "E4M3FN" and info["calibration"]["graph_evaluations"] == 8
    assert info["base_precision"] in ("fp16", "bf16")
    assert "fp8" not in manifest["graphs"]["cond"]
    json.dumps(info)


@pytest.mark.slow
def test_fp8_graphs_meet_tensorrt_import_rules(fp8_export):
    _, out, _ = fp8_export
    for graph in ("cond.onnx", "denoise.onnx"):
        assert problems(out / graph) == []


@pytest.mark.slow
def test_fp8_qdq_sit_only_on_the_intended_layers(fp8_export):
    net, out, manifest = fp8_export
    cond = onnx.load(str(out / "cond.onnx"))
    assert not any("Quantize" in n.op_type for n in cond.graph.node)  # latent convs and heads stay high precision
    graph = onnx.load(str(out / "denoise.onnx")).graph
    inits = {t.name: onnx.numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(qs) == len(dqs) == manifest["graphs"]["denoise"]["fp8"]["qdq_pairs"]
    for q in qs:
        assert [c.op_type for c in consumers[q.output[0]]] == ["DequantizeLinear"]
    for dq in dqs:  # FP8 feeds matrix products only: no Conv, Gemm, norm or gate
        assert {c.op_type for c in consumers[dq.output[0]]} == {"MatMul"}

    def quantized(tensor):
        p = producer.get(tensor)
        return p is not None and p.op_type == "DequantizeLinear"

    def weight(node):  # (array as stored, quantized?) of a MatMul/Gemm's second input
        name = node.input[1]
        if quantized(name):
            return inits.get(producer[producer[name].input[0]].input[0]), True
        return inits.get(name), False

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[manifest["graphs"]["denoise"]["fp8"]["base_precision"]]
    products = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    for name, m in net.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        w = m.weight.detach().to(dtype).float().numpy()
        uses = [(n, q) for n in products for arr, q in [weight(n)] if arr is not None
                and arr.shape in (w.shape, w.T.shape) and (np.array_equal(arr, w.T) or np.array_equal(arr, w))]
        if not uses:  # in cond.onnx, training-only, or pruned (the last block's text stream feeds nothing)
            assert (name.startswith(("lq_proj.output_heads", "lq_proj.pit_head", "lq_proj.lq_aux_rgb_head")) or
                    re.fullmatch(rf"patch_blocks\.{len(net.patch_blocks) - 1}\.(attn\.proj_y|mlp_y\.w[123])", name))
            continue
        assert len(uses) == 1, name
        node, weight_q = uses[0]
        want = bool(FP8_LINEAR.fullmatch(name))
        assert weight_q == want and quantized(node.input[0]) == want, name

    cores = []
    for sm in (n for n in graph.node if n.op_type == "Softmax"):
        bmm1 = producer[sm.input[0]]
        while bmm1.op_type == "Cast":
            bmm1 = producer[bmm1.input[0]]
        p = sm.output[0]
        while [c.op_type for c in consumers[p]] in (["Cast"], ["QuantizeLinear"], ["DequantizeLinear"]):
            p = consumers[p][0].output[0]
        (bmm2,) = consumers[p]
        assert bmm1.op_type == bmm2.op_type == "MatMul"
        cores.append([quantized(i) for i in (*bmm1.input, *bmm2.input)])
    # patch attention (head_dim 32): q, kᵀ, P and v all FP8; pixel attention (head_dim 24): none
    assert sorted(cores) == [[False] * 4] * len(net.pixel_blocks) + [[True] * 4] * len(net.patch_blocks)
    att = manifest["graphs"]["denoise"]["fp8"]["attention"]
    assert att["head_dims"] == [24, 32] and att["fp8_cores"] == len(net.patch_blocks)


class _Recorder:
    """The reference net, recording every denoiser call's inputs."""

    def __init__(self, net):
        self.net, self.config, self.calls = net, net.config, []

    def condition(self, lq_latent, height, width):
        self.feats = self.net.condition(lq_latent, height, width)
        return self.feats

    def denoise(self, x, t, y, degrade_sigma, feats):
        self.calls.append((x, t, y, degrade_sigma))
        return self.net.denoise(x, t, y, degrade_sigma, feats)


def _errors(net, reference: _Recorder, reference_image, cond, den, dec) -> tuple[float, float, float]:
    """(worst velocity |err|/|v − mean|, worst cosine, 4-step image max abs) of the graphs against the fp32 net's
    decode `reference` (its denoiser inputs) and `reference_image`."""
    names = [i.name for i in den.get_inputs()]

    class OrtNet:  # the sampler's net, evaluated by ONNX Runtime (cond once per decode, denoise per step)
        config = net.config

        def condition(self, lq_latent, height, width):
            self.feats = cond.run(None, {"lq_latent": lq_latent.numpy()})
            return self.feats

        def denoise(self, x, t, y, degrade_sigma, feats):
            feeds = {"x": x, "t": t, "y": y, "degrade_sigma": degrade_sigma}
            feeds = {k: v.numpy() for k, v in feeds.items()} | dict(zip(feature_names(net), self.feats))
            return torch.from_numpy(den.run(None, {n: feeds[n] for n in names})[0])

    candidate = OrtNet()
    image = float((sample(candidate, **dec) - reference_image).abs().max())
    worst_rel, worst_cos = 0.0, 1.0
    for x, t, y, sigma in reference.calls:  # the reference decode's denoiser inputs, all 4 timesteps
        with torch.no_grad():
            ref = net.denoise(x, t, y, sigma, reference.feats).numpy()
        got = candidate.denoise(x, t, y, sigma, None).numpy()
        # against the image-dependent part of v (the tame final layer's bias is a large per-channel offset)
        centred = ref - ref.mean(axis=(2, 3), keepdims=True)
        got_c = got - got.mean(axis=(2, 3), keepdims=True)
        worst_rel = max(worst_rel, float(np.linalg.norm(got - ref) / np.linalg.norm(centred)))
        worst_cos = min(worst_cos, float((got_c * centred).sum() / np.linalg.norm(got_c) / np.linalg.norm(centred)))
    return worst_rel, worst_cos, image


@pytest.mark.slow
def test_fp8_error_vs_fp32_reference_is_bounded(fp8_export):
    net, out, manifest = fp8_export
    base = manifest["graphs"]["denoise"]["fp8"]["base_precision"]
    cond, den = onnx.load(str(out / "cond.onnx")), onnx.load(str(out / "denoise.onnx"))
    fp8 = (_session(cond), _session(den))
    base_only = (fp8[0], _session(_without_qdq(den)))
    g = torch.Generator().manual_seed(123)
    for lat_h, lat_w, batch in SHAPES:
        dec = {"lq_latent": torch.randn(batch, 16, lat_h, lat_w, generator=g).bfloat16().float(),
               "y": torch.randn(batch, 8, 32, generator=g), "degrade_sigma": torch.tensor([0.2, 0.5][:batch])}
        reference = _Recorder(net)
        reference_image = sample(reference, **dec)
        rel, cos, image = _errors(net, reference, reference_image, *fp8, dec)
        base_rel, _, base_image = _errors(net, reference, reference_image, *base_only, dec)
        print(f"fp8 on {base} vs fp32 torch, latent {lat_h}x{lat_w} batch {batch}: velocity |err|/|v - mean| "
              f"{rel:.2e} (base alone {base_rel:.2e}), cos {cos:.6f}; 4-step image max_abs {image:.2e} "
              f"(base alone {base_image:.2e})")
        # measured on this net (ORT 1.32 CPU, 3x5 b1 / 5x4 b2): fp16 base 1.03e-3 / 1.04e-3 relative (fp16 alone
        # 3.5e-4), image 2.0e-4; bf16 base 4.75e-3 (bf16 alone 4.6e-3), image 4.5e-4 / 5.9e-4. FP8 on fp32 had
        # 9.5e-4 and 1.6-2.1e-4: fp16 keeps that bound; with bf16 the base's own rounding dominates.
        assert rel > base_rel and cos > 0.9999 and image < 1e-3  # Q/DQ is active; images stay within 1e-3
        if base == "fp16":
            assert rel < 4e-3
        else:
            assert rel < 1.1 * base_rel  # FP8 adds little to bf16's own error

"""Optimization profiles: defaults per backbone/ckpt, parsing, validation and per-tensor shapes."""
from __future__ import annotations

import re

import pytest

from pid_trt.engines.profiles import (
    Profile,
    dynamic_profile,
    input_shapes,
    parse_batch,
    plan_profiles,
    profile_set_hash,
    static_profile,
)
from pid_trt.errors import ConfigError, PiDInputError
from pid_trt.registry import PRESETS_2K, V15_GRID, resolve
from tests.engines.manifest import flux2_manifest


def _plan(backbone, ckpt, **kw):
    entry = resolve(backbone, ckpt)
    return plan_profiles(entry, entry.net.config, **kw)


def test_flux2_2kto4k_defaults_cover_4096x3072_static_and_dynamic():
    profiles, warnings = _plan("flux2", "2kto4k")
    assert not warnings
    statics = {(p.width[0], p.height[0]) for p in profiles if p.kind == "static"}
    smallest_largest = {s for sizes in V15_GRID.values() for s in (sizes[0], sizes[-1])}
    assert statics == smallest_largest | {(4096, 4096), (4096, 3072)}
    assert all(p.width == (p.width[0],) * 3 and p.height == (p.height[0],) * 3 for p in profiles if p.kind == "static")
    [dynamic] = [p for p in profiles if p.kind == "dynamic"]
    assert dynamic.width == (1536, 2496, 4096) and dynamic.height == (1536, 2496, 4096)
    assert any(p.kind == "static" and p.covers(4096, 3072) for p in profiles)
    assert dynamic.covers(4096, 3072) and dynamic.covers(3008, 2240)  # off-grid sizes fall back to it
    assert all(v % 64 == 0 for v in dynamic.width + dynamic.height)


def test_rae_backbones_get_2048_square_only():
    for backbone in ("dinov2", "siglip"):
        profiles, _ = _plan(backbone, "2k")
        assert [p.to_json() for p in profiles] == [static_profile(2048, 2048, (1, 1, 1)).to_json()]


def test_2k_presets_plus_dynamic():
    profiles, _ = _plan("flux", "2k", batch=(1, 2, 4))
    assert [(p.width[0], p.height[0]) for p in profiles if p.kind == "static"] == list(PRESETS_2K)
    dynamic = profiles[-1]
    assert dynamic.kind == "dynamic" and dynamic.width[::2] == (1536, 2688) and dynamic.height[::2] == (1536, 2688)
    assert all(p.batch == (1, 2, 4) for p in profiles)


def test_shape_and_dynamic_override_defaults():
    profiles, _ = _plan("flux2", "2kto4k", shapes=[(4096, 3072)])
    assert [p.name for p in profiles] == ["4096x3072"]
    profiles, _ = _plan("flux2", "2kto4k", dynamic=True)
    assert [p.kind for p in profiles] == ["dynamic"]
    profiles, warnings = _plan("sd3", "2k", shapes=[(1024, 1024)], dynamic=True)
    assert [p.name for p in profiles] == ["1024x1024", "dynamic"]
    assert profiles[1].covers(1024, 1024) and profiles[1].covers(2688, 1536)  # widened to the shape
    assert warnings and "outside the trained range" in warnings[0]


def test_fixed_size_backbone_warns_for_other_sizes():
    _, warnings = _plan("dinov2", "2k", shapes=[(4096, 3072)])
    assert warnings == ["dinov2 was trained for 2048x2048 output only; 4096x3072 is untested"]


def test_sizes_must_be_multiples_of_pixels_per_latent():
    with pytest.raises(PiDInputError, match="multiples of 64"):
        _plan("flux2", "2kto4k", shapes=[(4100, 3072)])
    with pytest.raises(PiDInputError, match="multiples of 128"):  # siglip: /16 latent × SR 8
        _plan("siglip", "2k", shapes=[(2048, 2112)])
    _plan("sdxl", "2kto4k", shapes=[(2080, 2080)])  # sdxl: /8 × 4 = 32


def test_parse_batch():
    assert parse_batch("2") == (2, 2, 2)
    assert parse_batch("1:4") == (1, 1, 4)
    assert parse_batch("1:2:4") == (1, 2, 4)
    for bad in ("0", "4:1", "1:2:3:4", "a", "1:5:4", ""):
        with pytest.raises(PiDInputError):
            parse_batch(bad)


def test_input_shapes_follow_the_profile():
    manifest = flux2_manifest()
    net_config = manifest["net_config"]
    profile = Profile("dynamic", "dynamic", (1, 1, 2), (1536, 2496, 4096), (1536, 2496, 3072))
    cond = input_shapes(manifest["graphs"]["cond"], profile, net_config)
    assert cond == {"lq_latent": ((1, 128, 24, 24), (1, 128, 39, 39), (2, 128, 48, 64))}
    denoise = input_shapes(manifest["graphs"]["denoise"], profile, net_config)
    assert denoise["x"] == ((1, 3, 1536, 1536), (1, 3, 2496, 2496), (2, 3, 3072, 4096))
    assert denoise["y"] == ((1, 300, 2304), (1, 300, 2304), (2, 300, 2304))  # text length fixed
    assert denoise["degrade_sigma"] == ((1,), (1,), (2,))
    assert denoise["lq_feat_pit"] == ((1, 96, 96, 1536), (1, 156, 156, 1536), (2, 192, 256, 1536))
    assert set(denoise) == {s["name"] for s in manifest["graphs"]["denoise"]["inputs"]}


def test_input_shapes_documented_dim_names_and_static_profile():
    graph = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3, "height", "width"]},
                        {"name": "y", "dtype": "float32", "shape": ["batch", 300, 2304]},
                        {"name": "f", "dtype": "float32", "shape": ["batch", "tokens", 1536]}]}
    shapes = input_shapes(graph, static_profile(4096, 3072, (1, 1, 1)), flux2_manifest()["net_config"])
    assert shapes == {"x": ((1, 3, 3072, 4096),) * 3, "y": ((1, 300, 2304),) * 3, "f": ((1, 192 * 256, 1536),) * 3}


def test_input_shapes_cover_every_dim_the_exporter_writes():
    from pid_trt.export import graph_io
    from pid_trt.tiny import tiny_net

    for structure in ("V1-16", "V1-SG", "V15-F2"):
        net = tiny_net(structure)
        io = graph_io(net)
        profile = static_profile(2048, 2048, (1, 1, 2))
        shapes = {g: input_shapes(io[g], profile, net.config) for g in ("cond", "denoise")}
        step = net.pixels_per_latent
        assert shapes["cond"]["lq_latent"][2] == (2, net.config["lq_latent_channels"], 2048 // step, 2048 // step)
        assert shapes["denoise"]["x"][0] == (1, 3, 2048, 2048)
        assert shapes["denoise"]["y"][2] == (2, net.config["txt_max_length"], net.config["txt_embed_dim"])
        for out in io["cond"]["outputs"]:  # each cond output feeds the denoise input of the same name
            assert shapes["denoise"][out["name"]][0][:3] == (1, 128, 128)


def test_input_shapes_rejects_unknown_symbols():
    for bad in ("s53", "16*s53", "lat_h+1"):
        graph = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3, bad, "width"]}]}
        with pytest.raises(ConfigError, match=re.escape(f"symbolic dim {bad!r}")):
            input_shapes(graph, static_profile(2048, 2048, (1, 1, 1)), resolve("flux", "2k").net.config)


def test_profile_hash_is_stable_and_sensitive():
    a, _ = _plan("flux2", "2kto4k")
    b, _ = _plan("flux2", "2kto4k")
    c, _ = _plan("flux2", "2kto4k", batch=(1, 1, 2))
    assert profile_set_hash(a) == profile_set_hash(b) != profile_set_hash(c)
    assert len(profile_set_hash(a)) == 8


def test_profile_json_round_trip_and_dynamic_grid():
    entry = resolve("siglip", "2k")
    p = dynamic_profile([(2000, 2100)], (1, 1, 1), entry.net.config)
    assert all(v % 128 == 0 for v in p.width + p.height)  # lcm(64, 128)
    assert Profile.from_json(p.to_json()) == p


def test_teacher_profiles_include_the_guidance_batch():
    profiles, _ = _plan("flux", "2kto4k_v1pt5_teacher")
    assert all(p.batch == (1, 2, 2) for p in profiles)  # cfg 1: batch B; cfg != 1: [uncond; cond], batch 2B
    profiles, _ = _plan("qwenimage", "teacher", shapes=[(2048, 2048)], batch=(1, 2, 4))
    assert profiles[0].batch == (1, 4, 8)
    student, _ = _plan("flux", "2kto4k_v1pt5")
    assert all(p.batch == (1, 1, 1) for p in student)

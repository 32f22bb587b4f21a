import json

import pytest

import pid_trt
from pid_trt import config, registry
from pid_trt.errors import ConfigError
from tests.conftest import data_file

PARAMS = json.loads(data_file("params", "index.json").read_text())["configs"]


@pytest.mark.parametrize("entry", PARAMS, ids=[p["experiment"] for p in PARAMS])
def test_for_checkpoint_meta_matches_official_keys(entry):
    spec = json.loads(data_file("params", entry["file"]).read_text())
    for backbone, ckpt in spec["registry_pairs"]:
        e = registry.resolve(backbone, ckpt)
        assert e.experiment == spec["experiment"]
        net = pid_trt.PiDNet.for_checkpoint(backbone, ckpt, device="meta")
        got = {"net." + k: list(v.shape) for k, v in net.state_dict().items()}
        assert list(got) == spec["checkpoint_keys"]
        assert got == {"net." + k: v["shape"] for k, v in spec["parameters"].items()}
        assert sum(v.numel() for v in net.state_dict().values()) == spec["total_params"]
        assert net.config == {**net.config, **spec["net_kwargs"]}


def test_every_backbone_has_a_pair_and_aliases_resolve():
    backbones = {bb for bb, _ in registry.pairs()}
    assert backbones == set(registry.BACKBONES)
    assert registry.resolve("zimage-turbo", "2k").experiment == registry.resolve("flux", "2k").experiment
    assert registry.resolve("qwenimage-2512", "2kto4k_v1pt5").net.id == "V15-16"


@pytest.mark.parametrize("backbone", ["flux", "flux2", "zimage", "qwenimage", "flux2-klein-4b", "qwenimage-2512"])
def test_2kto4k_resolves_to_v15_and_says_so(backbone):
    e = registry.resolve(backbone, "2kto4k")
    assert e.ckpt == "2kto4k_v1pt5" and e.net.id.startswith("V15")
    assert "v1.5" in e.note


def test_sd3_and_sdxl_2kto4k_stay_v1():
    assert registry.resolve("sd3", "2kto4k").net.id == "V1-16" and not registry.resolve("sd3", "2kto4k").note
    assert registry.resolve("sdxl", "2kto4k").net.id == "V1-XL"


def test_unknown_pair_lists_valid_pairs():
    with pytest.raises(ConfigError, match="valid pairs: flux: 2k, 2kto4k_v1pt5"):
        registry.resolve("sdxl", "2k")
    with pytest.raises(ConfigError, match="unknown backbone"):
        registry.resolve("sd15", "2k")


def test_seven_net_definitions_and_geometry():
    assert set(registry.NET_DEFINITIONS) == {"V1-16", "V1-F2", "V1-D2", "V1-SG", "V1-XL", "V15-16", "V15-F2"}
    assert registry.resolve("siglip").net.config.pixels_per_latent == 128
    assert registry.resolve("flux2", "2kto4k").net.config.pixels_per_latent == 64
    assert registry.resolve("dinov2").presets() == ((2048, 2048),)
    assert (4096, 3072) in registry.resolve("flux", "2kto4k").presets()
    assert registry.resolve("flux").size_warning(4096, 4096)
    assert registry.resolve("flux").size_warning(2048, 2048) is None


def test_match_net_definition():
    for net_id, net in registry.NET_DEFINITIONS.items():
        assert config.match_net_definition(net.config) == net_id

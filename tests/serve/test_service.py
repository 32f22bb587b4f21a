"""DecodeService without Ray: shape grouping, batch limits, per-request seeds, prompts, what /v1/info reports."""
import pytest
import torch
from safetensors.torch import save

pytest.importorskip("pydantic", reason="pid_trt.serve needs pydantic: pip install 'pid-trt[serve]'")

from pid_trt.engines.profiles import Profile
from pid_trt.errors import PiDInputError
from pid_trt.registry import resolve
from pid_trt.runtime import PiDDecoder
from pid_trt.serve.config import ServeConfig
from pid_trt.serve.protocol import ServeError, parse_decode
from pid_trt.serve.service import DecodeService
from pid_trt.tiny import tiny_net
from tests.conftest import data_file

CONFIG = ServeConfig(onnx_dir="unused", max_batch_size=4, max_size="256x256")


@pytest.fixture(scope="module")
def decoder():
    return PiDDecoder.from_net(tiny_net("V15-16", seed=5, patch_depth=2, pixel_depth=1), device="cpu")


def request(b=1, hw=(2, 3), seed=0, sigma=0.25, gen=0, text=8):
    g = torch.Generator().manual_seed(gen)
    tensors = {"lq_latent": torch.randn(b, 16, *hw, generator=g), "y": torch.randn(b, text, 32, generator=g),
               "degrade_sigma": torch.full((b,), sigma)}
    return parse_decode(save(tensors), {"seed": [str(seed)], "format": ["safetensors"]})


class Spy:
    """Records the decode calls the service makes (shapes and per-sample seeds), then runs them."""

    def __init__(self, decoder, fail_width=None):
        self.decoder, self.calls, self.fail_width = decoder, [], fail_width

    def __call__(self, z, y, sigma, **kw):
        self.calls.append((tuple(z.shape), kw["seed"], list(kw["indices"])))
        if z.shape[3] == self.fail_width:
            raise RuntimeError("boom")
        return self.decoder.__class__.decode(self.decoder, z, y, sigma, **kw)


def test_same_shape_requests_share_calls_bounded_by_max_batch(decoder, monkeypatch):
    service = DecodeService(decoder, CONFIG)
    spy = Spy(decoder)
    monkeypatch.setattr(decoder, "decode", spy)
    reqs = [request(1, seed=10), request(2, seed=20, gen=1), request(1, hw=(3, 3), seed=30), request(3, seed=40)]
    reqs = [service.prepare(r) for r in reqs]
    out = service.decode_batch(reqs)
    # 2x3 latents: 1 + 2 images fill one call of ≤ 4, the 3-image request needs its own; 3x3 decodes alone
    assert spy.calls == [((3, 16, 2, 3), 0, [10, 20, 21]), ((3, 16, 2, 3), 0, [40, 41, 42]),
                         ((1, 16, 3, 3), 0, [30])]
    assert [o.batch_size for o in out] == [3, 3, 1, 3]
    assert [o.seeds for o in out] == [[10], [20, 21], [30], [40, 41, 42]]
    assert [tuple(o.images.shape) for o in out] == [(1, 3, 64, 96), (2, 3, 64, 96), (1, 3, 96, 96), (3, 3, 64, 96)]
    assert service.stats() == {"requests": 4, "images": 7, "decode_calls": 3, "mean_batch_size": 7 / 3}


def test_batched_images_equal_offline_decodes(decoder):
    """Each request's images are what PiDDecoder.decode gives for that request alone with its seed. The torch
    backend's matmuls are not bit-identical across batch sizes on CPU, so allow 1 in u8 here; the server test
    (ONNX Runtime, batch-invariant) checks bytes."""
    service = DecodeService(decoder, CONFIG)
    reqs = [service.prepare(request(b, seed=s, gen=g, sigma=0.1 * g)) for b, s, g in ((1, 5, 0), (2, 9, 1), (1, 0, 2))]
    for r, out in zip(reqs, service.decode_batch(reqs)):
        alone = decoder.decode(r.lq_latent, r.caption_embedding, r.degrade_sigma, seed=r.seed, output="uint8")
        assert (alone.int() - out.images.int()).abs().max() <= 1


def test_a_failing_call_fails_only_its_requests(decoder, monkeypatch):
    service = DecodeService(decoder, CONFIG)
    monkeypatch.setattr(decoder, "decode", Spy(decoder, fail_width=3))
    reqs = [service.prepare(r) for r in (request(hw=(2, 3)), request(hw=(2, 2)), request(hw=(2, 3)))]
    out = service.decode_batch(reqs)
    assert isinstance(out[0], RuntimeError) and out[0] is out[2] and out[1].images.shape == (1, 3, 64, 64)


def test_size_limits_and_text_length_groups(decoder):
    service = DecodeService(decoder, CONFIG)
    with pytest.raises(ServeError, match="exceeds this server's largest size 256x256"):
        service.prepare(request(hw=(2, 9)))
    with pytest.raises(ServeError, match="at most 4 per request"):
        service.prepare(request(5))
    a, b = service.prepare(request(text=8)), service.prepare(request(text=5))
    assert a.group_key() != b.group_key()  # different caption lengths never share a call


def test_engine_profiles_decide_sizes_and_batch(decoder, monkeypatch):
    profiles = [Profile("s", "static", (1, 1, 2), (96, 96, 96), (64, 64, 64)),
                Profile("d", "dynamic", (1, 2, 4), (64, 96, 128), (64, 96, 128))]
    monkeypatch.setattr(decoder.backend, "profiles", profiles, raising=False)
    service = DecodeService(decoder, CONFIG)
    assert service.size_refusal(96, 64, 2) is None and service.batch_limit(96, 64) == 4
    assert service.batch_limit(128, 128) == 4
    assert "outside every engine profile" in service.size_refusal(160, 64, 1)
    assert service.accepted_sizes() == [p.describe() for p in profiles]


def test_prompts_without_a_text_encoder_are_refused(decoder):
    raw = b'{"lq_latent": [[[[0.0]]]], "prompt": "a fox"}'
    with pytest.raises(ServeError, match="no text encoder"):
        DecodeService(decoder, CONFIG).prepare(parse_decode(raw))


def test_prompts_go_through_the_cached_text_encoder(tmp_path):
    from pid_trt.text import CaptionEncoder, EmbeddingCache

    encoder = CaptionEncoder.from_pretrained(data_file("text", "tiny_gemma2", "config.json").parent)
    cache = EmbeddingCache(tmp_path / "cache")
    decoder = PiDDecoder.from_net(tiny_net("V15-16", seed=1, patch_depth=2, pixel_depth=1, txt_embed_dim=64))
    service = DecodeService(decoder, CONFIG, encoder, cache)
    raw = b'{"lq_latent": ' + str(torch.randn(2, 16, 2, 2).tolist()).encode() + b', "prompt": ["a fox", "a cat"]}'
    prepared = service.prepare(parse_decode(raw))
    assert torch.equal(prepared.caption_embedding, encoder.encode_cached(["a fox", "a cat"], cache))
    (out,) = service.decode_batch([prepared])
    assert out.images.shape == (2, 3, 64, 64) and out.seeds == [0, 1]


def test_teacher_checkpoints_are_refused():
    net = tiny_net("V15-16", seed=0, patch_depth=2, pixel_depth=1)
    teacher = PiDDecoder.from_net(net, entry=resolve("flux", "2kto4k_v1pt5_teacher"))
    with pytest.raises(PiDInputError, match="teacher"):
        DecodeService(teacher, CONFIG)


def test_info_reports_model_limits_and_counters(decoder):
    service = DecodeService(decoder, CONFIG)
    service.warm_up()  # warm-up decodes are not counted
    service.decode_batch([service.prepare(request(2))])
    info = service.info()
    assert info["api"] == "v1" and info["backend"] == "torch" and info["device"] == "cpu"
    assert info["precision"] == "fp32" and info["sampler"] == "student" and info["max_batch_size"] == 4
    assert info["caption"] == {"max_length": 8, "embed_dim": 32, "prompts": False}
    assert info["sizes"] == ["multiples of 32 up to 256x256, batch 1..4"]
    assert info["replica"]["decode_calls"] == 1 and info["replica"]["mean_batch_size"] == 2

"""The v1 HTTP protocol without Ray: parsing, checks against the net, response and error encoding."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from pid_trt.serve.protocol import (
    BodyTooLarge,
    ServeError,
    check_decode,
    decode_images,
    encode_images,
    error_body,
    is_json,
    parse_decode,
)
from pid_trt.tiny import tiny_config

CFG = tiny_config()  # flux v1.5 structure: 16 latent channels, 32 px per latent pixel, text 8 × 32


def body(**tensors):
    return save({k: v.contiguous() for k, v in tensors.items()})


def z(b=1, c=16, h=2, w=3):
    return torch.randn(b, c, h, w)


def y(b=1, length=8, d=32):
    return torch.randn(b, length, d)


def accept_all(width, height, batch):
    return None


def test_safetensors_body_with_query_options():
    r = parse_decode(body(lq_latent=z(2), caption_embedding=y(1), degrade_sigma=torch.tensor([0.1, 0.2])),
                     {"seed": ["7"], "steps": ["2"]})
    assert r.batch == 2 and r.seeds == [7, 8] and r.steps == 2 and r.format == "safetensors"
    assert r.caption_embedding.shape == (2, 8, 32)  # one caption for every latent
    assert r.degrade_sigma.tolist() == pytest.approx([0.1, 0.2])
    assert check_decode(r, CFG, 8, accept_all) == (64, 96)


def test_one_image_defaults_to_png_and_y_is_an_alias():
    r = parse_decode(body(lq_latent=z()[0], y=y()))  # [C, h, w] is one latent
    assert r.batch == 1 and r.format == "png" and r.seed == 0 and r.degrade_sigma.tolist() == [0.0]


def test_json_body_with_prompts_and_nested_lists():
    raw = json.dumps({"lq_latent": z(2).tolist(), "prompt": "a red fox", "seed": 3, "format": "safetensors"})
    r = parse_decode(raw.encode())
    assert r.prompts == ("a red fox", "a red fox") and r.caption_embedding is None and r.seeds == [3, 4]


def test_is_json_tells_safetensors_from_json():
    assert is_json(b'  {"lq_latent": 1}') and not is_json(body(lq_latent=z()))


@pytest.mark.parametrize("make, query, message", [
    (lambda: body(latent=z(), y=y()), {}, "unknown field(s) latent"),
    (lambda: body(lq_latent=z().int(), y=y()), {}, "floating-point"),
    (lambda: body(lq_latent=torch.randn(1, 1, 16, 2, 3), y=y()), {}, "[B, C, h, w]"),
    (lambda: body(lq_latent=z(), y=y(), caption_embedding=y()), {}, "not both"),
    (lambda: body(lq_latent=z()), {}, "neither"),
    (lambda: body(lq_latent=z(3), y=y(2)), {}, "[1 or 3, L, D]"),
    (lambda: body(lq_latent=z(2), y=y(), degrade_sigma=torch.zeros(3)), {}, "1 or 2 values"),
    (lambda: body(lq_latent=z(2), y=y()), {"format": ["png"]}, "format png holds one image"),
    (lambda: body(lq_latent=z(), y=y()), {"format": ["jpeg"]}, "format must be one of"),
    (lambda: body(lq_latent=z(), y=y()), {"seed": ["-1"]}, "seed must be an integer"),
    (lambda: body(lq_latent=z(), y=y()), {"seed": ["1", "2"]}, "given 2 times"),
    (lambda: body(lq_latent=z(), y=y()), {"color": ["red"]}, "unknown field(s) color"),
    (lambda: b"\x00\x01garbage", {}, "neither a JSON object nor a readable safetensors file"),
    (lambda: b'{"lq_latent": [[1, 2], [3]]}', {}, "nested lists of numbers"),
    (lambda: b'{"lq_latent": 1, "seed": 2}', {"seed": ["2"]}, "both in the query and in the body"),
    (lambda: b'[1, 2]', {}, "neither a JSON object"),
    (lambda: b'{"lq_latent": [1', {}, "not valid JSON"),
])
def test_parse_refusals_are_one_line(make, query, message):
    with pytest.raises(ServeError) as e:
        parse_decode(make(), query)
    assert message in str(e.value) and "\n" not in str(e.value) and e.value.status == 400


def test_oversized_body_is_413():
    with pytest.raises(BodyTooLarge) as e:
        parse_decode(body(lq_latent=z(), y=y()), max_body_bytes=100)
    assert e.value.status == 413


@pytest.mark.parametrize("latent, caption, sigma, message", [
    (z(c=4), y(), 0.0, "has 4 channels"),
    (z(), y(d=16), 0.0, "caption embedding width is 16"),
    (z().index_fill_(3, torch.tensor([1]), float("nan")), y(), 0.0, "NaN"),
    (z(), y(), 1.5, "degrade_sigma must lie in [0, 1]"),
])
def test_checks_against_the_net(latent, caption, sigma, message):
    r = parse_decode(body(lq_latent=latent, y=caption, degrade_sigma=torch.tensor([sigma])))
    with pytest.raises(ServeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_decode(r, CFG, 8, accept_all)


def test_checks_steps_batch_and_size():
    r = parse_decode(body(lq_latent=z(3), y=y()), {"steps": ["9"]})
    with pytest.raises(ServeError, match="at most 2 per request"):
        check_decode(r, CFG, 2, accept_all)
    with pytest.raises(ServeError, match="steps must be between 1 and 8"):
        check_decode(r, CFG, 8, accept_all)
    r = parse_decode(body(lq_latent=z(3), y=y()))
    with pytest.raises(ServeError, match="too big: 96x64 batch 3"):
        check_decode(r, CFG, 8, lambda w, h, b: f"too big: {w}x{h} batch {b}")


def test_png_and_safetensors_responses_roundtrip():
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    blob, media = encode_images(images, [5, 6], "safetensors")
    assert media == "application/octet-stream"
    back, seeds = decode_images(blob)
    assert torch.equal(back, images) and seeds == [5, 6]
    png, media = encode_images(images[:1], [5], "png")
    assert media == "image/png"
    assert torch.equal(torch.from_numpy(np.array(Image.open(io.BytesIO(png)))).permute(2, 0, 1), images[0])


def test_error_body_is_one_json_line():
    raw = error_body("bad\nthing  here")
    assert raw.count(b"\n") == 1 and json.loads(raw) == {"error": "bad thing here"}

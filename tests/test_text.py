"""Caption conditioning against golden vectors from upstream's own text path (tests/data/text/README.md).

The goldens come from a tiny random Gemma2 run through upstream PiD under transformers 4.57.1 (`tf457_sdpa`,
un-capped attention: upstream as pinned) and 5.24 (`tf524_eager`, softcapped), each in bf16 and fp32.
"""
from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from pid_trt.errors import PiDInputError
from pid_trt.text import (
    CHI_PROMPT,
    NEGATIVE_PROMPT,
    CaptionEncoder,
    EmbeddingCache,
    default_cache_dir,
    encoder_fingerprint,
    export_text_onnx,
)
from tests.conftest import data_file

CASES = [(case, L) for case in ("c1_empty", "c2_short", "c4_batch2") for L in (300, 8)]


def tiny_gemma2():
    return data_file("text", "tiny_gemma2", "model.safetensors").parent


def load_case(case: str, L: int) -> tuple[list[str], dict[str, torch.Tensor], dict]:
    info = json.loads(data_file("text", "cases", f"{case}__L{L}.json").read_text())
    return info["captions"], load_file(data_file("text", "cases", f"{case}__L{L}.safetensors")), info


@functools.cache
def shared_encoder(L: int, dtype: torch.dtype) -> CaptionEncoder:
    return CaptionEncoder.from_pretrained(tiny_gemma2(), max_length=L, dtype=dtype)


@pytest.fixture
def tiny_copy(tmp_path):
    """A private, writable copy of the tiny encoder directory."""
    return shutil.copytree(tiny_gemma2(), tmp_path / "tiny_gemma2")


def test_prompt_constants():
    _, _, info = load_case("c2_short", 8)
    assert CHI_PROMPT == info["chi_prompt_joined"]
    assert len(CHI_PROMPT.split("\n")) == 8 and CHI_PROMPT.endswith("User Prompt: ")
    assert NEGATIVE_PROMPT.startswith("low quality, worst quality, over-saturated,")
    assert NEGATIVE_PROMPT.endswith("plastic skin, jpeg artifacts, watermark")


@pytest.mark.parametrize("case,L", CASES)
def test_tokenize_matches_upstream(case, L):
    captions, golden, info = load_case(case, L)
    encoder = shared_encoder(L, torch.float32)
    input_ids, attention_mask = encoder.tokenize(captions)
    assert encoder.n_chi == info["n_chi"] and encoder.token_length == info["max_length"]
    assert torch.equal(input_ids, golden["input_ids"])
    assert torch.equal(attention_mask, golden["attention_mask"])
    assert torch.equal(encoder.select_index, golden["select_index"])


@pytest.mark.parametrize("case,L", CASES)
def test_encode_fp32_matches_upstream(case, L):
    captions, golden, _ = load_case(case, L)
    y = shared_encoder(L, torch.float32).encode(captions)
    assert y.dtype == torch.float32 and y.shape == (len(captions), L, 64)
    torch.testing.assert_close(y, golden["tf457_sdpa.fp32.y"], rtol=0, atol=1e-5)
    # The softcapped (transformers 5.x eager) result is far away: the match above is not an accident.
    assert (y - golden["tf524_eager.fp32.y"]).abs().max() > 0.1


@pytest.mark.parametrize("case,L", CASES)
def test_encode_bf16_matches_upstream(case, L):
    captions, golden, _ = load_case(case, L)
    y = shared_encoder(L, torch.bfloat16).encode(captions)
    assert y.dtype == torch.float32
    diff = (y - golden["tf457_sdpa.bf16.y"].float()).abs()
    # Same SDPA kernel as upstream: (near) bit-exact on CPU; eager attention would be ~1e-2 off on average.
    assert diff.mean() < 1e-3 and diff.max() < 0.07


def test_truncation_keeps_bos_and_chi():
    encoder = shared_encoder(8, torch.float32)
    input_ids, attention_mask = encoder.tokenize(["A long caption " * 50])
    chi_ids = encoder.tokenizer.encode(CHI_PROMPT)
    assert input_ids.shape == (1, encoder.token_length) and bool(attention_mask.all())
    assert input_ids[0, : encoder.n_chi - 1].tolist() == chi_ids[:-1]  # all but the CHI's trailing-space token
    assert encoder.tokenizer.eos_token_id not in input_ids[0].tolist()


def test_caption_that_does_not_absorb_the_space():
    # "▁Z" is not in the tiny vocab, so the CHI's lone "▁" is y[1] and the caption starts at y[2].
    encoder = shared_encoder(8, torch.float32)
    input_ids, _ = encoder.tokenize(["Zebra crossing at night"])
    tokens = encoder.tokenizer.convert_ids_to_tokens(input_ids[0, encoder.select_index].tolist())
    assert tokens[:3] == ["<bos>", "▁", "Z"]


@pytest.mark.parametrize("prompts", [[], "a caption", [None]])
def test_bad_prompts(prompts):
    with pytest.raises(PiDInputError, match="prompts"):
        shared_encoder(8, torch.float32).tokenize(prompts)


def test_missing_or_invalid_directory(tmp_path):
    with pytest.raises(PiDInputError, match="does not exist"):
        CaptionEncoder.from_pretrained(tmp_path / "nope")
    with pytest.raises(PiDInputError, match="config.json"):
        CaptionEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PiDInputError, match="tokenizer"):
        CaptionEncoder.from_pretrained(tmp_path)
    with pytest.raises(PiDInputError, match="max_length"):
        CaptionEncoder.from_pretrained(tiny_gemma2(), max_length=1)


def test_fingerprint_changes_with_any_file(tiny_copy):
    before = encoder_fingerprint(tiny_copy)
    assert encoder_fingerprint(tiny_copy) == before
    with open(tiny_copy / "special_tokens_map.json", "a") as f:
        f.write("\n")
    assert encoder_fingerprint(tiny_copy) != before


def test_cache_hit_miss_and_invalidation(tiny_copy, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache")
    encoder = CaptionEncoder.from_pretrained(tiny_copy, max_length=8, dtype=torch.float32)
    y = encoder.encode_cached(["a cat", "a dog", "a cat"], cache)
    assert (cache.hits, cache.misses) == (0, 2) and len(list(cache.cache_dir.glob("*.safetensors"))) == 2
    assert torch.equal(y, encoder.encode_each(["a cat", "a dog", "a cat"]))

    # A fresh encoder: hits never run (or even load) the Gemma decoder; only the new prompt is encoded.
    encoded = []
    real_encode = CaptionEncoder.encode
    monkeypatch.setattr(CaptionEncoder, "encode", lambda self, p: encoded.append(list(p)) or real_encode(self, p))
    fresh = CaptionEncoder.from_pretrained(tiny_copy, max_length=8, dtype=torch.float32)
    assert torch.equal(fresh.encode_cached(["a dog", "a cat"], cache), y[[1, 0]])
    assert encoded == [] and fresh._decoder is None and cache.hits == 2
    fresh.encode_cached(["a dog", "a bird"], cache)
    assert encoded == [["a bird"]]

    # Another text length or dtype is another key.
    CaptionEncoder.from_pretrained(tiny_copy, max_length=9, dtype=torch.float32).encode_cached(["a cat"], cache)
    CaptionEncoder.from_pretrained(tiny_copy, max_length=8, dtype=torch.bfloat16).encode_cached(["a cat"], cache)
    assert len(encoded) == 3

    # Any changed encoder file invalidates the entries.
    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps({**config, "initializer_range": 0.03}))
    CaptionEncoder.from_pretrained(tiny_copy, max_length=8, dtype=torch.float32).encode_cached(["a cat"], cache)
    assert encoded[-1] == ["a cat"] and len(encoded) == 4


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    encoder = shared_encoder(8, torch.float32)
    y = encoder.encode_cached(["a cat"], cache)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"garbage")
    assert torch.equal(encoder.encode_cached(["a cat"], cache), y)
    assert cache.hits == 0 and load_file(entry)["y"].shape == (8, 64)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PID_TRT_CACHE", str(tmp_path / "pid"))
    assert default_cache_dir() == tmp_path / "pid" / "captions"
    monkeypatch.delenv("PID_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pid-trt" / "captions"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pid-trt" / "captions"


def run_cli(*args: str):
    from pid_trt.cli import _register, cli

    _register()
    return CliRunner().invoke(cli, ["embed", *args])


def test_cli_embed(tmp_path):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("A cat sleeping on a warm sunny windowsill\n\n")
    out = tmp_path / "out" / "emb.safetensors"
    args = ["--text-encoder", str(tiny_gemma2()), "A red fox in the snow", "--prompt-file", str(prompt_file),
            "--max-length", "8", "--dtype", "float32", "--device", "cpu", "-o", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: y [2, 8, 64] float32" in result.stdout and "(0 cache hits)" in result.stdout

    with safe_open(out, "pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
        y = f.get_tensor("y")
    _, fox, _ = load_case("c2_short", 8)
    _, batch, _ = load_case("c4_batch2", 8)
    assert prompts == ["A red fox in the snow", "A cat sleeping on a warm sunny windowsill"]
    torch.testing.assert_close(y[0], fox["tf457_sdpa.fp32.y"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(y[1], batch["tf457_sdpa.fp32.y"][0], rtol=0, atol=1e-5)

    assert "(2 cache hits)" in run_cli(*args).stdout
    result = run_cli(*args, "--no-cache")
    assert result.exit_code == 0 and "(0 cache hits)" in result.stdout
    assert torch.equal(load_file(out)["y"], y)


@pytest.mark.parametrize("extra", [[], ["--prompt-file", "missing.txt"]])
def test_cli_errors(tmp_path, extra):
    text_encoder = str(tmp_path / "missing") if not extra else str(tiny_gemma2())
    result = run_cli("--text-encoder", text_encoder, "a cat", "-o", str(tmp_path / "y.safetensors"), *extra)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_onnx_export_matches_encode(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    encoder = shared_encoder(8, torch.float32)
    session = ort.InferenceSession(str(export_text_onnx(encoder, tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_encoder.onnx", "text_encoder.onnx.data"]
    for captions in (["A red fox in the snow"], ["", "Zebra crossing at night", "A long caption " * 50]):
        input_ids, attention_mask = encoder.tokenize(captions)
        (y,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), encoder.encode(captions), rtol=0, atol=1e-5)

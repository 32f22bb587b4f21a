"""Caption embeddings: Gemma-2 text embeddings computed exactly as upstream PiD does (docs/numerics.md §6).

The caption is prefixed with the CHI prompt, tokenised to a fixed length, run through Gemma-2's decoder with the
attention mask, and BOS plus the last L-1 positions are kept: y is [B, L, hidden], pads included, returned as fp32.

Upstream pins transformers 4.57, whose SDPA path silently drops Gemma-2's attention-logit softcap; transformers 5.x
runs eager attention and applies it. Upstream's embeddings are therefore un-capped, and so are ours: the cap is
switched off in the config at load time and attention runs through SDPA as in 4.57 (checked against golden vectors
from upstream's own code: fp32 within 1e-5, bf16 (near) bit-exact on CPU).

Embeddings are cached on disk per prompt, keyed by a fingerprint of the encoder files, so that a prompt seen
before never runs (or even loads) the encoder again.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from pid_trt import memory
from pid_trt.atomic import atomic_write_bytes, check_writable
from pid_trt.config import cache_root
from pid_trt.errors import MissingDependencyError, PiDInputError
from pid_trt.formats import read_json

# The prefix PiD was trained with (configs/pid/*/shared_config.py); joined with "\n" and prepended verbatim.
CHI_PROMPT: str = "\n".join(
    [
        'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for'
        " image generation. Evaluate the level of detail in the user prompt:",
        "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial"
        " relationships to create vivid and concrete scenes.",
        "- If the prompt is already detailed, refine and enhance the existing details slightly without"
        " overcomplicating.",
        "Here are examples of how to transform or refine prompts:",
        "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping"
        " peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
        "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing"
        " street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering"
        " glass skyscrapers.",
        "Please generate only the enhanced description for the prompt below and avoid including any additional"
        " commentary or evaluations:",
        "User Prompt: ",
    ]
)

# The undistilled teacher's unconditional caption; it goes through the same CHI path.
NEGATIVE_PROMPT: str = (
    "low quality, worst quality, over-saturated, three legs, six fingers, cartoon, anime, cgi, low res, blurry,"
    " deformed, distortion, duplicated limbs, plastic skin, jpeg artifacts, watermark"
)

TEXT_LENGTH = 300  # L: text tokens the official PiD nets attend over

# No "sdpa" in the name: transformers would check any such name against Gemma-2's (softcap-motivated) SDPA opt-out.
_UNCAPPED_ATTENTION = "pid_uncapped"


def encoder_fingerprint(local_dir: str | os.PathLike) -> str:
    """sha256 over the names and contents of the encoder directory's files (config, tokenizer, weights)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in pathlib.Path(local_dir).iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode() + b"\0")
        file_digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                file_digest.update(chunk)
        digest.update(file_digest.digest())
    return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
    """`captions` under pid-trt's user cache (pid_trt.config.cache_root: `$PID_TRT_CACHE`, else XDG, else ~/.cache)."""
    return cache_root() / "captions"


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """Write a safetensors file atomically (readers never see a partial file)."""
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


class EmbeddingCache:
    """One safetensors file per (encoder fingerprint, text length, dtype, prompt) holding y [L, hidden] fp32."""

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
        # refused now, not after the encoder ran: pass another --cache-dir, --no-cache or set PID_TRT_CACHE
        check_writable(self.cache_dir, "caption embedding cache")
        self.hits = 0
        self.misses = 0

    def path(self, fingerprint: str, text_length: int, dtype: torch.dtype, prompt: str) -> pathlib.Path:
        key = json.dumps([fingerprint, text_length, str(dtype), prompt])
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"

    def get(self, fingerprint: str, text_length: int, dtype: torch.dtype, prompt: str) -> torch.Tensor | None:
        path = self.path(fingerprint, text_length, dtype, prompt)
        try:
            y = load_file(path)["y"]
        except (OSError, KeyError, SafetensorError):  # missing or unreadable entry: recompute it
            self.misses += 1
            return None
        self.hits += 1
        return y

    def put(self, fingerprint: str, text_length: int, dtype: torch.dtype, prompt: str, y: torch.Tensor) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(fingerprint, text_length, dtype, prompt)
        metadata = {"prompt": prompt, "encoder_fingerprint": fingerprint}
        save_safetensors_atomic({"y": y.float().cpu().clone()}, path, metadata)


class CaptionEncoder:
    """Gemma-2 caption encoder: prompts -> y [B, L, hidden] fp32, as upstream PiD computes it.

    The tokenizer is loaded at once; the (large) decoder only on the first encode, so fully cached runs skip it.
    """

    def __init__(self, local_dir: pathlib.Path, tokenizer, text_length: int, dtype: torch.dtype, device) -> None:
        self.local_dir = local_dir
        self.tokenizer = tokenizer
        self.text_length = text_length
        self.dtype = dtype
        self.device = torch.device(device)
        # Upstream relies on the tokenizer defaults; the spec (and HF's default) is right padding and truncation.
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        self.n_chi = len(tokenizer.encode(CHI_PROMPT))  # BOS included
        self.token_length = self.n_chi + text_length - 2  # upstream's tokenizer max_length
        # BOS plus the last L-1 positions; the window starts at the CHI's last token (index n_chi - 1).
        self.select_index = torch.tensor([0, *range(self.token_length - (text_length - 1), self.token_length)])
        self._decoder = None
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        local_dir: str | os.PathLike,
        max_length: int = TEXT_LENGTH,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
    ) -> CaptionEncoder:
        """Load the tokenizer of a local Gemma-2 directory; `max_length` is L, the net's text length."""
        local_dir = pathlib.Path(local_dir)
        if max_length < 2:
            raise PiDInputError(f"text max_length must be at least 2 (BOS + one caption slot), got {max_length}")
        if not local_dir.is_dir():
            raise PiDInputError(
                f"text encoder directory {local_dir} does not exist; pass a local gemma-2-2b-it directory"
            )
        if not (local_dir / "config.json").is_file():
            raise PiDInputError(
                f"text encoder directory {local_dir} has no config.json; pass a local gemma-2-2b-it directory"
                " (config, tokenizer and weight files)"
            )
        config = read_json(local_dir / "config.json", "text encoder config")
        _check_weight_files(local_dir)
        transformers = _import_transformers()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(local_dir, local_files_only=True)
        except Exception as e:  # noqa: BLE001 -- tokenizers raises bare Exceptions for a damaged tokenizer.json
            raise PiDInputError(f"cannot load the tokenizer from {local_dir}: {_one_line(e)}") from None
        _check_memory(local_dir, config, len(tokenizer.encode(CHI_PROMPT)), max_length, dtype, device)
        return cls(local_dir, tokenizer, max_length, dtype, device)

    @property
    def fingerprint(self) -> str:
        """sha256 of the encoder files; any changed file changes it (and so invalidates cached embeddings)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.local_dir)
        return self._fingerprint

    @property
    def decoder(self) -> torch.nn.Module:
        """The Gemma2Model (decoder of the causal LM), loaded on first use in `dtype` on `device`, eval mode."""
        if self._decoder is None:
            transformers = _import_transformers()
            try:
                lm = transformers.AutoModelForCausalLM.from_pretrained(
                    self.local_dir,
                    local_files_only=True,
                    dtype=self.dtype,
                    attn_implementation=_register_uncapped_sdpa(transformers),
                    attn_logit_softcapping=None,  # upstream's pinned SDPA path never applied the cap
                )
            except Exception as e:  # noqa: BLE001 -- transformers and safetensors raise many types for bad files
                raise PiDInputError(f"cannot load the text encoder from {self.local_dir}: {_one_line(e)}") from None
            self._decoder = lm.get_decoder().to(self.device).eval().requires_grad_(False)
        return self._decoder

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CHI + caption -> (input_ids, attention_mask), both int64 [B, n_chi + L - 2], right-padded/truncated."""
        _check_prompts(prompts)
        batch = self.tokenizer(
            [CHI_PROMPT + p for p in prompts],
            max_length=self.token_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Captions -> y [B, L, hidden] float32 (computed in `dtype`, cast to fp32 last, as upstream does)."""
        input_ids, attention_mask = self.tokenize(prompts)
        decoder = self.decoder  # loaded outside inference mode, so its weights stay usable for export
        with torch.inference_mode():
            hidden = decoder(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).last_hidden_state
            return hidden[:, self.select_index.to(self.device)].float().cpu()

    def encode_each(self, prompts: Sequence[str]) -> torch.Tensor:
        """`encode` one prompt at a time (batch 1, as upstream encodes one caption per decode call).

        In bf16 a row's value can depend on its batch-mates (a batch with pads takes the masked attention kernel);
        encoding alone makes y a function of the prompt only, which is what a cache needs, and bounds memory.
        """
        _check_prompts(prompts)
        return torch.cat([self.encode([p]) for p in prompts])

    def encode_cached(self, prompts: Sequence[str], cache: EmbeddingCache) -> torch.Tensor:
        """`encode_each` with an on-disk cache: only prompts missing from `cache` go through the encoder."""
        _check_prompts(prompts)
        key = (self.fingerprint, self.text_length, self.dtype)
        rows = {p: cache.get(*key, p) for p in dict.fromkeys(prompts)}
        for prompt in [p for p, y in rows.items() if y is None]:
            rows[prompt] = self.encode([prompt])[0]
            cache.put(*key, prompt, rows[prompt])
        return torch.stack([rows[p] for p in prompts])


class _TokensToEmbedding(torch.nn.Module):
    """The tensor part of `CaptionEncoder.encode`: (input_ids, attention_mask) -> y [B, L, hidden] fp32."""

    def __init__(self, decoder: torch.nn.Module, select_index: torch.Tensor) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("select_index", select_index, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden[:, self.select_index].float()


def export_text_onnx(encoder: CaptionEncoder, out_dir: str | os.PathLike) -> pathlib.Path:
    """Export the encoder (after tokenisation) to `out_dir/text_encoder.onnx` with its weights in `.onnx.data`.

    Inputs `input_ids`, `attention_mask`: int64 [batch, n_chi + L - 2] from `encoder.tokenize`; output `y`:
    float32 [batch, L, hidden], computed in the encoder's dtype. Batch is dynamic.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = _TokensToEmbedding(encoder.decoder, encoder.select_index.to(encoder.device)).eval()
    # Padded rows, so that the trace takes the general masked-attention path, not the no-padding shortcut.
    input_ids, attention_mask = (t.to(encoder.device) for t in encoder.tokenize(["", "a"]))
    batch = torch.export.Dim("batch")
    # Export next to the destination, then move the weights and then the graph in, so no reader sees a partial model.
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_model = pathlib.Path(tmp) / "text_encoder.onnx"
        torch.onnx.export(
            module,
            (input_ids, attention_mask),
            tmp_model,
            input_names=["input_ids", "attention_mask"],
            output_names=["y"],
            dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
            dynamo=True,
            external_data=True,
            verbose=False,
        )
        os.replace(tmp_model.with_name("text_encoder.onnx.data"), out_dir / "text_encoder.onnx.data")
        os.replace(tmp_model, out_dir / "text_encoder.onnx")
    return out_dir / "text_encoder.onnx"


def _check_memory(local_dir: pathlib.Path, config: object, n_chi: int, text_length: int, dtype: torch.dtype,
                  device: str | torch.device) -> None:
    """Refuse, before the encoder is built, a text length whose activations (plus the weights) cannot fit on the
    device (pid_trt.memory); the message names the largest --max-length that fits."""
    try:
        sizes = {k: int(config[k]) for k in ("hidden_size", "intermediate_size", "num_attention_heads")}
    except (KeyError, TypeError, ValueError):
        return  # an unusual config: loading the encoder says what is wrong
    size = torch.finfo(dtype).bits // 8
    budget = memory.available_bytes(device) - sum(p.stat().st_size for p in local_dir.glob("*.safetensors"))

    def need(length: int) -> int:
        return memory.text_encoder_bytes(sizes, n_chi + length - 2, 1, size)

    if need(text_length) > budget:
        best = memory.largest(lambda length: need(length) <= budget, text_length)
        raise PiDInputError(f"a text length of {text_length} needs about {memory.amount(need(text_length))} for the "
                            f"text encoder on {device}, which has {memory.amount(max(budget, 0))} free after the "
                            "weights; "
                            + (f"the largest --max-length that fits is {best}" if best >= 2 else
                               "free memory or use another device"))


def _check_weight_files(local_dir: pathlib.Path) -> None:
    """Every safetensors weight file of an encoder directory has a readable header (cheap: the data is not read)."""
    from safetensors import safe_open

    for path in sorted(local_dir.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
            raise PiDInputError(f"text encoder weights {path} are not a readable safetensors file: "
                                f"{_one_line(e, 120)}") from None


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise PiDInputError("prompts must be a non-empty list of strings")


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError(
            "caption encoding needs transformers; install it with `pip install 'pid-trt[diffusers]'`"
        ) from None
    return transformers


def _register_uncapped_sdpa(transformers) -> str:
    """Register transformers' SDPA attention (and its masks) under our own name and return that name.

    transformers 5.x refuses "sdpa" for Gemma-2 because SDPA cannot softcap; with the cap switched off that reason
    is gone, and SDPA is what upstream's pinned transformers 4.57 ran: in bf16 it reproduces upstream's golden
    embeddings (near) bit-exactly on CPU, where eager attention differs by ~1e-2 (different rounding points).
    In transformers 5.x sdpa_attention_forward raises if a softcap still reaches it, guarding the config override.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    transformers.AttentionInterface.register(_UNCAPPED_ATTENTION, sdpa_attention_forward)
    AttentionMaskInterface.register(_UNCAPPED_ATTENTION, sdpa_mask)
    return _UNCAPPED_ATTENTION


def _one_line(error: Exception, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def embed_prompts(prompts: Sequence[str], text_encoder: str | os.PathLike, out: str | os.PathLike, *,
                  max_length: int = TEXT_LENGTH, dtype: str = "bfloat16", device: str | None = None,
                  cache_dir: str | os.PathLike | None = None, use_cache: bool = True) -> tuple[torch.Tensor, int]:
    """`pid-trt embed`: encode each prompt (through the cache unless `use_cache=False`) and write `y` [B, L, D]
    float32 to the safetensors file `out`; returns y and the number of cache hits."""
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    if dtype not in dtypes:
        raise PiDInputError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_writable(out, "--out", directory=False)
    encoder = CaptionEncoder.from_pretrained(text_encoder, max_length=max_length, dtype=dtypes[dtype], device=device)
    if use_cache:
        cache = EmbeddingCache(cache_dir)
        y, hits = encoder.encode_cached(prompts, cache), cache.hits
    else:
        y, hits = encoder.encode_each(prompts), 0
    metadata = {"prompts": json.dumps(list(prompts)), "text_length": str(max_length), "encoder_dtype": dtype}
    save_safetensors_atomic({"y": y}, out, metadata)
    return y, hits

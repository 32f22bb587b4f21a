"""Complete tiny diffusers pipelines (text encoders, tokenizers, VAE) built in code and saved to a folder, so that
`DiffusionPipeline.from_pretrained(dir, local_files_only=True)` loads them like a real model directory."""
import pathlib

import pytest
import torch

from tests.tiny_pipelines import build_tiny

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "a", "photo", "of", "the", "red", "blue", "cat", "dog", "on", "grass"]


def _tokenizer(transformers, max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, pad_token="<pad>",
                                                unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _clip(transformers, hidden: int, projection: int | None = None):
    config = transformers.CLIPTextConfig(vocab_size=len(WORDS), hidden_size=hidden, intermediate_size=37,
                                         num_attention_heads=2, num_hidden_layers=2, bos_token_id=2, eos_token_id=3,
                                         pad_token_id=0, projection_dim=projection or hidden)
    return (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)


def _t5(transformers):
    return transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(WORDS), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=2, pad_token_id=0,
        eos_token_id=3, decoder_start_token_id=0))


def tiny_full_pipeline(backbone: str):
    """FluxPipeline / StableDiffusion3Pipeline / StableDiffusionXLPipeline with every component, random weights."""
    transformers = pytest.importorskip("transformers")
    pipe, _ = build_tiny(backbone)
    parts = dict(pipe.components)
    # widths chosen to fit the tiny denoisers (joint/cross attention 32, pooled 32)
    if backbone == "flux":
        parts.update(text_encoder=_clip(transformers, 32), tokenizer=_tokenizer(transformers, 77),
                     text_encoder_2=_t5(transformers), tokenizer_2=_tokenizer(transformers, 512))
    elif backbone == "sd3":
        parts.update(text_encoder=_clip(transformers, 16, 16), tokenizer=_tokenizer(transformers, 77),
                     text_encoder_2=_clip(transformers, 16, 16), tokenizer_2=_tokenizer(transformers, 77),
                     text_encoder_3=_t5(transformers), tokenizer_3=_tokenizer(transformers, 512))
    elif backbone == "sdxl":
        parts.update(text_encoder=_clip(transformers, 16), tokenizer=_tokenizer(transformers, 77),
                     text_encoder_2=_clip(transformers, 16, 32), tokenizer_2=_tokenizer(transformers, 77))
    else:
        raise ValueError(f"no full tiny pipeline for {backbone}")
    pipe = type(pipe)(**parts)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.eval()  # as from_pretrained leaves them: no dropout in the text encoders
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(backbone: str, directory: pathlib.Path) -> pathlib.Path:
    tiny_full_pipeline(backbone).save_pretrained(directory)
    return directory

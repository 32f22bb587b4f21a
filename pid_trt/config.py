"""The net configuration as a typed value, the official net definitions, and the vocabularies every layer shares.

`NetConfig` holds upstream's `PidNet` keyword arguments under upstream's names (so `net.config["txt_embed_dim"]`
and `net.config.txt_embed_dim` both work, and a config round-trips through JSON as a flat dict) and derives what
the rest of the package needs from them: pixels per latent pixel, the output size of a latent, the patch grid,
head sizes, the number of σ-gates. Facts: docs/numerics.md §1 and §3.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import pathlib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pid_trt.errors import ConfigError


def _package_version() -> str:
    try:
        return importlib.metadata.version("pid-trt")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


VERSION = _package_version()  # defined once: pyproject.toml, read from the installed package's metadata

# -- vocabularies --------------------------------------------------------------------------------------------

# Every backbone name the CLI and API accept; aliases share their base backbone's checkpoints and engines.
BACKBONES = ("flux", "flux2", "flux2-klein-4b", "flux2-klein-9b", "zimage", "zimage-turbo", "sd3", "sdxl",
             "qwenimage", "qwenimage-2512", "dinov2", "siglip")
BACKBONE_ALIASES = {"zimage": "flux", "zimage-turbo": "flux", "flux2-klein-4b": "flux2", "flux2-klein-9b": "flux2",
                    "qwenimage-2512": "qwenimage"}
RAE_BACKBONES = ("dinov2", "siglip")  # representation autoencoders: no diffusers pipeline, 2048² output only

BACKENDS = ("tensorrt", "onnxruntime", "torch")
EXPORT_PRECISIONS = ("fp32", "fp16", "bf16", "fp8")  # what an ONNX export (and so an engine) computes in
ENGINE_PRECISIONS = ("bf16", "fp16", "fp8", "fp32")  # the same set, default first
TORCH_PRECISIONS = ("fp32", "bf16")  # the torch reference: fp32, or bf16 autocast like upstream
SAMPLERS = ("student", "teacher")
DEFAULT_ENGINE_DIR = pathlib.Path("engines")  # `pid-trt build` and `engines` without --engine-dir
TINY_STRUCTURE = "V15-16"  # the built-in tiny nets' default structure: flux v1.5
MAX_SEED = 2**63 - 1  # seeds (seed + sample index included) lie in 0..MAX_SEED: torch generators take 64-bit seeds


def cache_root() -> pathlib.Path:
    """pid-trt's user cache: `$PID_TRT_CACHE`, else `$XDG_CACHE_HOME/pid-trt`, else `~/.cache/pid-trt`."""
    if root := os.environ.get("PID_TRT_CACHE"):
        return pathlib.Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(xdg) / "pid-trt"

# -- sampler defaults (docs/numerics.md §4, §5) ----------------------------------------------------------------

STUDENT_STEPS = 4
MAX_STUDENT_STEPS = 8
TEACHER_STEPS = 25  # upstream's recommended --num_steps for the undistilled teachers
MAX_TEACHER_STEPS = 1000
TEACHER_CFG = 5.0
TEACHER_STATIC_SHIFT = 6.0
V15_DYNAMIC_SHIFT = (6.0, 2048)  # (base shift, base image size) of the v1.5 teachers


def parse_size(text: str) -> tuple[int, int]:
    """An output size, width first: "WxH" (also "W×H", "W,H"), or "N" for N×N → (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×,]\s*(\d+)\s*)?", str(text))
    if not m or int(m[1]) == 0 or (m[2] is not None and int(m[2]) == 0):
        raise ConfigError(f"{text!r} is not a size: use WIDTHxHEIGHT with positive numbers, e.g. 4096x3072 "
                          "(also W,H, or N for NxN)")
    width = int(m[1])
    return width, int(m[2]) if m[2] is not None else width


# -- the net configuration -----------------------------------------------------------------------------------

# Values that select code paths no official net uses; we refuse them rather than guess upstream's behaviour.
_FIXED = {"in_channels": 3, "enable_ed": False, "lq_in_channels": 0, "lq_inject_mode": "controlnet",
          "rope_mode": "ntk_aware", "use_text_rope": True, "lq_aux_rgb_head_latent_block_idx": -1}
_CHOICES = {"lq_gate_type": ("sigma_aware_per_token", "sigma_aware_per_token_per_dim"),
            "lq_conv_padding_mode": ("zeros", "replicate"), "lq_latent_unpatchify_factor": (1, 2)}


@dataclass(frozen=True, eq=False)
class NetConfig(Mapping):
    """Upstream's `PidNet` keyword arguments (defaults: the official V1-16 net), validated on construction.

    A read-only mapping with upstream's key names, so code and files that index it like a dict keep working; it
    equals any mapping with the same items.
    """

    in_channels: int = 3
    num_groups: int = 24
    hidden_size: int = 1536
    pixel_hidden_size: int = 16
    pixel_attn_hidden_size: int = 1152
    pixel_num_groups: int = 16
    patch_depth: int = 14
    pixel_depth: int = 2
    num_text_blocks: int = 4
    patch_size: int = 16
    txt_embed_dim: int = 2304
    txt_max_length: int = 300
    use_text_rope: bool = True
    text_rope_theta: float = 10000.0
    rope_mode: str = "ntk_aware"
    rope_ref_h: int = 1024
    rope_ref_w: int = 1024
    repa_encoder_index: int = 6
    enable_ed: bool = False
    ed_compress_ratio: int = 1
    ed_depth_per_stage: int = 1
    ed_window_size: int = 2
    ed_num_heads: int | None = None
    ed_hidden_size: int | None = None
    ed_use_token_shuffle: bool = True
    lq_inject_mode: str = "controlnet"
    lq_in_channels: int = 0
    lq_latent_channels: int = 16
    lq_hidden_dim: int = 512
    lq_num_res_blocks: int = 4
    lq_latent_unpatchify_factor: int = 1
    lq_aux_rgb_head: bool = False
    lq_aux_rgb_head_latent_block_idx: int = -1
    lq_conv_padding_mode: str = "zeros"
    lq_gate_type: str = "sigma_aware_per_token_per_dim"
    lq_interval: int = 2
    zero_init_lq: bool = True
    train_lq_proj_only: bool = False
    sr_scale: int = 4
    latent_spatial_down_factor: int = 8
    pit_lq_inject: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, _FIELD_TYPES[f.name]):
                raise ConfigError(f"net config {f.name} must be {f.type}, got {json.dumps(value)[:40]}")
        for key, value in _FIXED.items():
            if getattr(self, key) != value:
                raise ConfigError(f"{key}={getattr(self, key)!r} selects a path no official PiD net uses "
                                  f"(supported: {value!r})")
        for key, options in _CHOICES.items():
            if getattr(self, key) not in options:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not supported "
                                  f"(choose one of {', '.join(map(repr, options))})")
        ratio = self.pixels_per_latent / self.lq_latent_unpatchify_factor / self.patch_size
        if ratio < 1 or ratio != int(ratio):
            raise ConfigError(f"latent-to-patch-grid ratio sr_scale*down/unpatchify/patch = {ratio:g} must be an "
                              "integer >= 1 (every official net has 2, 4 or 8)")
        if self.hidden_size % self.num_groups or self.pixel_attn_hidden_size % self.pixel_num_groups:
            raise ConfigError("hidden sizes must be divisible by their head counts")
        if self.head_dim % 4 or self.pixel_head_dim % 4:
            raise ConfigError("attention head dims must be multiples of 4 (2D RoPE interleaves two axes)")
        if self.lq_hidden_dim % 4:
            raise ConfigError("lq_hidden_dim must be a multiple of 4 (GroupNorm with 4 groups)")

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NetConfig:
        """A config from upstream's flat keyword arguments; missing keys take the official V1-16 values."""
        if isinstance(values, NetConfig):
            return values
        unknown = sorted(set(values) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown PidNet config key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> NetConfig:
        """A `--net-config` file: a JSON object of upstream PidNet keyword arguments."""
        try:
            values = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"--net-config {path} is not a readable JSON file: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"--net-config {path} must hold a JSON object of PidNet keyword arguments")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> NetConfig:
        """A copy with some keys changed (unknown keys are a ConfigError)."""
        return self.from_dict({**self, **changes})

    def to_dict(self) -> dict[str, Any]:
        """The flat dict of keyword arguments (what manifests and sidecars store)."""
        return dict(self)

    # -- mapping protocol (upstream's key names) -----------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def __eq__(self, other: object) -> bool:
        return dict(self) == dict(other) if isinstance(other, Mapping) else NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self.values()))

    # -- derived quantities --------------------------------------------------------------------------------
    @property
    def pixels_per_latent(self) -> int:
        """Output pixels per latent pixel along each axis: latent down-factor × SR scale."""
        return self.latent_spatial_down_factor * self.sr_scale

    @property
    def patches_per_latent(self) -> int:
        """Patch-grid cells per latent pixel along each axis (the latent features' grid)."""
        return self.pixels_per_latent // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_groups

    @property
    def pixel_head_dim(self) -> int:
        return self.pixel_attn_hidden_size // self.pixel_num_groups

    @property
    def text_limit(self) -> int:
        """Caption tokens the net attends over; longer embeddings are truncated."""
        return self.txt_max_length

    @property
    def n_gates(self) -> int:
        """σ-gates along the patch blocks (one every `lq_interval` blocks)."""
        return math.ceil(self.patch_depth / self.lq_interval)

    def output_size(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Output (H, W) in pixels for a latent grid (h, w)."""
        return latent_hw[0] * self.pixels_per_latent, latent_hw[1] * self.pixels_per_latent

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch-grid (rows, columns) of an output image."""
        return height // self.patch_size, width // self.patch_size


_KEYS = tuple(f.name for f in dataclasses.fields(NetConfig))
_FIELD_TYPES = typing.get_type_hints(NetConfig)


def _has_type(value: Any, annotation: Any) -> bool:
    """isinstance for the field annotations NetConfig uses (int, float, bool, str, int | None); bools are no ints."""
    if isinstance(annotation, types.UnionType):
        return any(_has_type(value, a) for a in annotation.__args__)
    if annotation is type(None):
        return value is None
    if isinstance(value, bool) or annotation is bool:
        return isinstance(value, bool) and annotation is bool
    if annotation is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, annotation)


@dataclass(frozen=True)
class NetDefinition:
    """One of the 7 distinct official denoiser definitions (docs/numerics.md §1)."""

    id: str
    overrides: dict[str, Any]
    params: int
    tensors: int

    @property
    def config(self) -> NetConfig:
        return NetConfig.from_dict(self.overrides)


_V15 = {"rope_ref_h": 2048, "rope_ref_w": 2048, "lq_hidden_dim": 1024, "lq_aux_rgb_head": True,
        "lq_conv_padding_mode": "replicate", "lq_gate_type": "sigma_aware_per_token", "pit_lq_inject": True}

NET_DEFINITIONS: dict[str, NetDefinition] = {n.id: n for n in [
    NetDefinition("V1-16", {}, 1_362_348_170, 456),
    NetDefinition("V1-F2", {"lq_latent_channels": 128, "latent_spatial_down_factor": 16}, 1_362_864_266, 456),
    NetDefinition("V1-D2", {"lq_latent_channels": 768, "latent_spatial_down_factor": 16}, 1_365_813_386, 456),
    NetDefinition("V1-SG", {"lq_latent_channels": 1152, "latent_spatial_down_factor": 16, "sr_scale": 8},
                  1_367_582_858, 456),
    NetDefinition("V1-XL", {"lq_latent_channels": 4}, 1_362_292_874, 456),
    NetDefinition("V15-16", dict(_V15), 1_401_300_163, 467),
    NetDefinition("V15-F2", {**_V15, "lq_latent_channels": 128, "latent_spatial_down_factor": 16,
                             "lq_latent_unpatchify_factor": 2}, 1_401_447_619, 467),
]}

# keys that change neither the parameters nor the forward
_NO_EFFECT = ("repa_encoder_index", "num_text_blocks", "zero_init_lq", "train_lq_proj_only")


def match_net_definition(config: Mapping[str, Any]) -> str | None:
    """The id of the official net definition a config equals (ignoring keys without effect), if any."""
    config = NetConfig.from_dict(config)
    for net in NET_DEFINITIONS.values():
        ref = net.config
        if all(config[k] == ref[k] for k in _KEYS if not k.startswith("ed_") and k not in _NO_EFFECT):
            return net.id
    return None

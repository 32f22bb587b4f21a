"""TensorRT optimization profiles over output pixels, and the per-tensor shapes they imply.

A profile is a W×H (and batch) range of *output pixels*; every engine input's shape follows from it
(latent = size / pixels-per-latent, tokens = (H/16)·(W/16), text length fixed). By default each trained
aspect bucket gets a static profile (static-shape kernels) plus one dynamic profile over the whole
trained range as a fallback.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError, PiDInputError
from pid_trt.registry import V15_EXTRA, V15_GRID, Entry

Range = tuple[int, int, int]  # (min, opt, max)
DYNAMIC_STEP = 64  # the dynamic profile's bounds are multiples of this (and of the net's pixels-per-latent)


@dataclass(frozen=True)
class Profile:
    """One optimization profile: [min, opt, max] of batch, output width and output height."""

    name: str
    kind: str  # "static" (one W×H) or "dynamic"
    batch: Range
    width: Range
    height: Range

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "batch": list(self.batch),
                "width": list(self.width), "height": list(self.height)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Profile:
        return cls(d["name"], d["kind"], tuple(d["batch"]), tuple(d["width"]), tuple(d["height"]))

    def covers(self, width: int | None = None, height: int | None = None, batch: int | None = None) -> bool:
        """Whether a run of this size fits the profile (None: any value)."""
        return all(v is None or lo <= v <= hi
                   for v, (lo, _, hi) in ((width, self.width), (height, self.height), (batch, self.batch)))

    def describe(self) -> str:
        w, h, b = self.width, self.height, self.batch
        size = f"{w[0]}x{h[0]}" if self.kind == "static" else f"{w[0]}..{w[2]} x {h[0]}..{h[2]} (opt {w[1]}x{h[1]})"
        return f"{size}, batch {b[0]}..{b[2]}"


def parse_batch(text: str) -> Range:
    """'N' → (N, N, N); 'MIN:MAX' → (MIN, MIN, MAX); 'MIN:OPT:MAX' as given."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.strip().isdigit() for p in parts):
        raise PiDInputError(f"bad batch range {text!r}: expected N, MIN:MAX or MIN:OPT:MAX, e.g. 1:1:4")
    values = [int(p) for p in parts]
    if len(values) == 1:
        values *= 3
    elif len(values) == 2:
        values.insert(1, values[0])
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise PiDInputError(f"bad batch range {text!r}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def check_size(width: int, height: int, net_config: NetConfig, entry: Entry | None) -> str | None:
    """Raise for sizes the net cannot produce; return a warning for sizes outside the trained range."""
    step = net_config.pixels_per_latent
    if width % step or height % step:
        nearest = f"{max(1, round(width / step)) * step}x{max(1, round(height / step)) * step}"
        raise PiDInputError(f"{width}x{height}: width and height must be multiples of {step} for this net "
                            f"(latent down-factor {net_config.latent_spatial_down_factor} × SR "
                            f"{net_config.sr_scale}); e.g. {nearest}")
    return entry.size_warning(width, height) if entry is not None else None


def static_profile(width: int, height: int, batch: Range) -> Profile:
    return Profile(f"{width}x{height}", "static", batch, (width,) * 3, (height,) * 3)


def dynamic_profile(sizes: Iterable[tuple[int, int]], batch: Range, net_config: NetConfig) -> Profile:
    """One profile spanning every size given; bounds on a grid of lcm(64, pixels-per-latent).

    opt is the geometric mean of min and max per axis (rounded to the grid): the middle of the range on
    a log scale, which is where TensorRT tunes the kernels of this fallback profile.
    """
    step = math.lcm(DYNAMIC_STEP, net_config.pixels_per_latent)
    sizes = list(sizes)

    def axis(values: list[int]) -> Range:
        lo = max(step, min(values) // step * step)
        hi = -(-max(values) // step) * step
        opt = min(hi, max(lo, round(math.sqrt(lo * hi) / step) * step))
        return lo, opt, hi

    return Profile("dynamic", "dynamic", batch, axis([w for w, _ in sizes]), axis([h for _, h in sizes]))


def trained_buckets(entry: Entry) -> list[tuple[int, int]]:
    """The W×H sizes that get a static profile by default.

    2k checkpoints: every preset (RAE backbones: 2048×2048 only). 2k→4k checkpoints: the smallest and largest
    bucket of each aspect ratio of the multi-resolution grid, plus upstream's 4096×4096 and 4096×3072.
    """
    if entry.fixed_size or entry.ckpt == "2k":
        return list(entry.presets())
    sizes = [s for buckets in V15_GRID.values() for s in (buckets[0], buckets[-1])] + list(V15_EXTRA)
    return list(dict.fromkeys(sizes))


def guidance_batch(batch: Range) -> Range:
    """The engine batch range for `batch` images per decode of a guided teacher: with cfg != 1 every denoise call
    runs [uncond; cond] as one batch of 2B (cond runs at B; cfg 1 at B too), so the range spans B..2B, opt at 2B."""
    lo, opt, hi = batch
    return lo, 2 * opt, 2 * hi


def plan_profiles(entry: Entry | None, net_config: NetConfig, *, shapes: Iterable[tuple[int, int]] = (),
                  dynamic: bool = False, batch: Range = (1, 1, 1)) -> tuple[list[Profile], list[str]]:
    """The profile set for a build, and warnings about sizes outside the trained range.

    No `shapes` and not `dynamic`: the default (static trained buckets + a dynamic fallback; fixed-size
    backbones: 2048×2048 only). `shapes`: one static profile each. `dynamic`: the dynamic profile over the
    trained range (widened to cover `shapes`). `batch` counts images per decode; teacher checkpoints get the
    guidance batch on top (`guidance_batch`).
    """
    shapes = list(dict.fromkeys(shapes))
    if entry is not None and entry.sampler == "teacher":
        batch = guidance_batch(batch)
    warnings = [w for w in (check_size(w, h, net_config, entry) for w, h in shapes) if w]
    if entry is None and not shapes:
        raise ConfigError("without a known backbone there is no trained size range; pass --shape WxH")
    if not shapes and not dynamic:
        statics = trained_buckets(entry)
        profiles = [static_profile(w, h, batch) for w, h in statics]
        if not entry.fixed_size:
            profiles.append(dynamic_profile(entry.presets(), batch, net_config))
        return profiles, warnings
    profiles = [static_profile(w, h, batch) for w, h in shapes]
    if dynamic:
        trained = list(entry.presets()) if entry is not None else []
        profiles.append(dynamic_profile(trained + shapes, batch, net_config))
    return profiles, warnings


def profile_set_hash(profiles: Iterable[Profile]) -> str:
    """8 hex digits identifying a profile set (part of the engine name)."""
    blob = json.dumps([p.to_json() for p in profiles], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


# symbolic dims an ONNX manifest may use, and how each follows from (batch, height, width); a dim may also
# be a multiple of one of them, written "<k>*<name>" (the exporter writes x as ["batch", 3, "64*lat_h", "64*lat_w"])
TEXT_LENGTH_DIMS = ("text_len", "txt_len")
KNOWN_DIMS = ("batch", "height", "width", "lat_h", "lat_w", "tokens") + TEXT_LENGTH_DIMS
_MULTIPLE = re.compile(r"(\d+)\s*\*\s*(\w+)")


def _dim_values(batch: int, width: int, height: int, net_config: NetConfig) -> dict[str, int]:
    step, patch = net_config.pixels_per_latent, net_config.patch_size
    values = {"batch": batch, "height": height, "width": width, "lat_h": height // step, "lat_w": width // step,
              "tokens": (height // patch) * (width // patch)}
    # the caption is padded/truncated to the net's text length, so that dim is fixed in every profile
    return values | {name: net_config.text_limit for name in TEXT_LENGTH_DIMS}


def _dim(dim: int | str, values: dict[str, int], tensor: str) -> int:
    if isinstance(dim, int):
        return dim
    m = _MULTIPLE.fullmatch(dim)
    factor, name = (int(m[1]), m[2]) if m else (1, dim)
    if name not in values:
        raise ConfigError(f"ONNX input {tensor} has symbolic dim {dim!r} that pid-trt build cannot size "
                          f"(known: {', '.join(KNOWN_DIMS)}, or k*name); re-export with pid-trt export")
    return factor * values[name]


def input_shapes(manifest_graph_io: dict[str, Any], profile: Profile,
                 net_config: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """{input name: (min shape, opt shape, max shape)} of one graph for one profile.

    `manifest_graph_io` is a graph entry of the ONNX manifest (`manifest["graphs"]["denoise"]`): its
    `inputs` list shapes of integers and symbolic dims (KNOWN_DIMS, or "<k>*<dim>").
    """
    net_config = NetConfig.from_dict(net_config)
    points = [_dim_values(profile.batch[i], profile.width[i], profile.height[i], net_config) for i in range(3)]
    return {spec["name"]: tuple(tuple(_dim(d, point, spec["name"]) for d in spec["shape"]) for point in points)
            for spec in manifest_graph_io["inputs"]}

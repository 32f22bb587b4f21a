"""Backbones × checkpoint types → official PiD net definitions, checkpoints, defaults and trained sizes.

The facts (which experiment each pair loads, trained size grids, 2kto4k → v1.5) are in docs/numerics.md §3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pid_trt.config import (
    BACKBONE_ALIASES,
    BACKBONES,
    NET_DEFINITIONS,
    RAE_BACKBONES,
    STUDENT_STEPS,
    TEACHER_CFG,
    TEACHER_STATIC_SHIFT,
    TEACHER_STEPS,
    V15_DYNAMIC_SHIFT,
    NetDefinition,
)
from pid_trt.errors import ConfigError

TEACHER_CKPT = "2kto4k_v1pt5_teacher"  # the undistilled v1.5 checkpoints (DPM-Solver++ with CFG)
CKPT_TYPES = ("2k", "2kto4k", "2kto4k_v1pt5", TEACHER_CKPT)
_CKPT_ALIASES = {"2kto4k-v1pt5": "2kto4k_v1pt5", "v1pt5": "2kto4k_v1pt5", "v1.5": "2kto4k_v1pt5",
                 "2kto4k_v15": "2kto4k_v1pt5", "4k": "2kto4k",
                 "teacher": TEACHER_CKPT, "undistilled": TEACHER_CKPT, "v1pt5_teacher": TEACHER_CKPT,
                 "v1.5-teacher": TEACHER_CKPT, "2kto4k_v1pt5_undistilled": TEACHER_CKPT,
                 "2kto4k-v1pt5-teacher": TEACHER_CKPT}

# W×H presets of the 2k checkpoints (upstream README and its 2048 table)
PRESETS_2K = ((2048, 2048), (2304, 1728), (1728, 2304), (2688, 1536), (1536, 2688), (2688, 1792), (1792, 2688))

# The v1.5 multi-resolution training grid, W×H, smallest to largest per aspect
V15_GRID: dict[str, tuple[tuple[int, int], ...]] = {
    "1:1": ((2048, 2048), (2304, 2304), (2560, 2560), (2816, 2816), (3072, 3072), (3328, 3328), (3584, 3584)),
    "4:3": ((2368, 1792), (2688, 1984), (2944, 2240), (3264, 2432), (3520, 2688), (3840, 2816), (4096, 2816)),
    "3:4": ((1792, 2368), (1984, 2688), (2240, 2944), (2432, 3264), (2688, 3520), (2816, 3840), (2816, 4096)),
    "16:9": ((2752, 1536), (3072, 1728), (3392, 1920), (3776, 2112), (4096, 2176)),
    "9:16": ((1536, 2752), (1728, 3072), (1920, 3392), (2112, 3776), (2176, 4096)),
}
# upstream's README examples, outside the grid but documented to work
V15_EXTRA = ((4096, 4096), (4096, 3072))


@dataclass(frozen=True)
class Entry:
    """A resolved (backbone, ckpt) pair."""

    backbone: str
    ckpt: str
    experiment: str
    net: NetDefinition
    requested_ckpt: str = ""
    note: str = ""
    shift: float = TEACHER_STATIC_SHIFT
    dynamic_shift: tuple[float, int] | None = None  # (base_shift, base size); teacher-style samplers only
    aliases: tuple[str, ...] = field(default=())
    sampler: str = "student"  # "student": 4-step distilled loop; "teacher": DPM-Solver++ with CFG (pid_trt.teacher)
    default_steps: int = STUDENT_STEPS
    default_cfg: float = 1.0  # 1 = no guidance (the students have none)

    @property
    def checkpoint_file(self) -> str:
        return f"checkpoints/{self.experiment}/model_ema_bf16.pth"

    @property
    def base_backbone(self) -> str:
        """The backbone whose checkpoints and engines an alias shares (zimage → flux)."""
        return BACKBONE_ALIASES.get(self.backbone, self.backbone)

    @property
    def fixed_size(self) -> bool:
        """RAE backbones produce 2048×2048 only (fixed native encoder interface)."""
        return self.backbone in RAE_BACKBONES

    def presets(self) -> tuple[tuple[int, int], ...]:
        """Trained W×H sizes: the 2k presets, or the v1.5/4K grid (plus upstream's 4K examples)."""
        if self.fixed_size:
            return ((2048, 2048),)
        if self.ckpt == "2k":
            return PRESETS_2K
        return tuple(s for sizes in V15_GRID.values() for s in sizes) + V15_EXTRA

    def trained_area(self) -> tuple[int, int]:
        sizes = self.presets()
        return min(w * h for w, h in sizes), max(w * h for w, h in sizes)

    def size_warning(self, width: int, height: int) -> str | None:
        """A message when W×H lies outside the trained range (a warning, never an error)."""
        lo, hi = self.trained_area()
        if self.fixed_size and (width, height) != (2048, 2048):
            return f"{self.backbone} was trained for 2048x2048 output only; {width}x{height} is untested"
        if not lo * 0.9 <= width * height <= hi * 1.05 or not 0.5 <= width / height <= 2.0:
            return (f"{width}x{height} is outside the trained range of {self.backbone} {self.ckpt} "
                    f"(about {math.isqrt(lo)}² to {math.isqrt(hi)}² pixels, aspect 9:16 to 16:9); quality may drop")
        return None


# (backbone, ckpt) → (experiment, net id); aliases share their target's row
_FLUX_2K = ("PiD_res2k_sr4x_official_flux_distill_4step", "V1-16")
_FLUX_V15 = ("PiD_v1pt5_res2kto4k_sr4x_official_flux_distill_4step", "V15-16")
_FLUX2_2K = ("PiD_res2k_sr4x_official_flux2_distill_4step", "V1-F2")
_FLUX2_V15 = ("PiD_v1pt5_res2kto4k_sr4x_official_flux2_distill_4step", "V15-F2")
_QWEN_V15 = ("PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_distill_4step", "V15-16")
# undistilled v1.5 teachers: the v1.5 student net definitions
_FLUX_TEACHER = ("PiD_v1pt5_res2kto4k_sr4x_official_flux_undistilled", "V15-16")
_FLUX2_TEACHER = ("PiD_v1pt5_res2kto4k_sr4x_official_flux2_undistilled", "V15-F2")
_QWEN_TEACHER = ("PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_undistilled", "V15-16")

_TABLE: dict[tuple[str, str], tuple[str, str]] = {
    ("flux", "2k"): _FLUX_2K, ("flux", "2kto4k_v1pt5"): _FLUX_V15,
    ("flux2", "2k"): _FLUX2_2K, ("flux2", "2kto4k_v1pt5"): _FLUX2_V15,
    ("sd3", "2k"): ("PiD_res2k_sr4x_official_sd3_distill_4step", "V1-16"),
    ("sd3", "2kto4k"): ("PiD_res2kto4k_sr4x_official_sd3_distill_4step", "V1-16"),
    ("sdxl", "2kto4k"): ("PiD_res2kto4k_sr4x_official_sdxl_distill_4step", "V1-XL"),
    ("qwenimage", "2kto4k_v1pt5"): _QWEN_V15,
    ("flux", TEACHER_CKPT): _FLUX_TEACHER, ("flux2", TEACHER_CKPT): _FLUX2_TEACHER,
    ("qwenimage", TEACHER_CKPT): _QWEN_TEACHER,
    ("dinov2", "2k"): ("PiD_res2k_sr4x_official_dinov2_distill_4step", "V1-D2"),
    ("siglip", "2k"): ("PiD_res2k_sr8x_official_siglip_distill_4step", "V1-SG"),
}
# upstream ships no v1 4K checkpoint for these; their only 4K checkpoint is v1.5
_V15_ONLY_4K = ("flux", "flux2", "qwenimage")


def pairs() -> list[tuple[str, str]]:
    """Every valid (backbone, ckpt) pair, aliases included."""
    out = []
    for bb in BACKBONES:
        base = BACKBONE_ALIASES.get(bb, bb)
        out += [(bb, ck) for ck in CKPT_TYPES if (base, ck) in _TABLE]
    return out


def _valid_pairs_text() -> str:
    by_bb: dict[str, list[str]] = {}
    for bb, ck in pairs():
        by_bb.setdefault(bb, []).append(ck)
    return "; ".join(f"{bb}: {', '.join(cks)}" for bb, cks in by_bb.items())


def resolve(backbone: str, ckpt: str = "2k") -> Entry:
    """Look up (backbone, ckpt). `2kto4k` for flux/flux2/zimage/qwenimage resolves to v1.5 and says so in `.note`."""
    bb = backbone.strip().lower()
    requested = ckpt.strip().lower()
    ck = _CKPT_ALIASES.get(requested, requested)
    if bb not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}")
    base = BACKBONE_ALIASES.get(bb, bb)
    note = ""
    if ck == "2kto4k" and base in _V15_ONLY_4K:
        ck = "2kto4k_v1pt5"
        note = (f"--ckpt 2kto4k for {bb} resolves to the v1.5 checkpoint {_TABLE[(base, ck)][0]} "
                "(the only 4K checkpoint upstream ships for it)")
    if (base, ck) not in _TABLE:
        raise ConfigError(f"no official PiD checkpoint for --backbone {backbone} --ckpt {ckpt}; "
                          f"valid pairs: {_valid_pairs_text()}")
    experiment, net_id = _TABLE[(base, ck)]
    dyn = {"2k": None, "2kto4k": (4.0, 1024), "2kto4k_v1pt5": V15_DYNAMIC_SHIFT, TEACHER_CKPT: V15_DYNAMIC_SHIFT}[ck]
    aliases = tuple(a for a, b in BACKBONE_ALIASES.items() if b == base)
    sampling = ({"sampler": "teacher", "default_steps": TEACHER_STEPS, "default_cfg": TEACHER_CFG}
                if ck == TEACHER_CKPT else {})
    return Entry(bb, ck, experiment, NET_DEFINITIONS[net_id], requested_ckpt=requested, note=note,
                 dynamic_shift=dyn, aliases=aliases, **sampling)


def entries() -> list[Entry]:
    return [resolve(bb, ck) for bb, ck in pairs()]


def experiments_for(net_id: str) -> list[Entry]:
    return [e for e in entries() if e.net.id == net_id and e.backbone == BACKBONE_ALIASES.get(e.backbone, e.backbone)]

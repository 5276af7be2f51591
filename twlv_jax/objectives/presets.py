"""Objective presets and the config checks that run before anything is compiled.

A preset fills in the mask and the target weights that the config leaves unset (None);
anything set explicitly wins, so `objective.preset=twlv` with `pixel.weight=0` is the
twlv objective without the pixel target.
"""

from __future__ import annotations

import dataclasses

from twlv_jax.models.teachers import CLIP_SIZES, clip_size
from twlv_jax.models.vit import SIZES
from twlv_jax.objectives.masking import KINDS, num_visible

TARGETS = ("distill", "pixel", "latent", "video_teacher")

PRESETS = {
    # TWLV-I: image-teacher distillation plus pixel and latent reconstruction.
    "twlv": dict(mask=("attention", 0.8), distill=1.0, pixel=1.0, latent=1.0),
    "umt": dict(mask=("attention", 0.8), distill=1.0),
    "videomae": dict(mask=("tube", 0.9), pixel=1.0),
    "vjepa": dict(mask=("multiblock3d", 0.9), latent=1.0),
    "none": dict(mask=(None, None)),
}


@dataclasses.dataclass(frozen=True)
class Objective:
    mask_kind: str
    mask_ratio: float
    weights: dict[str, float]          # enabled targets only (weight > 0)

    @property
    def uses_image_teacher(self) -> bool:
        return "distill" in self.weights or self.mask_kind == "attention"


def resolve(objective) -> Objective:
    """The objective config block with preset defaults filled in. Raises ValueError."""
    if objective.preset not in PRESETS:
        raise ValueError(f"objective.preset: unknown preset {objective.preset!r}; "
                         f"expected one of {sorted(PRESETS)}")
    preset = PRESETS[objective.preset]
    kind = objective.mask.kind if objective.mask.kind is not None else preset["mask"][0]
    ratio = objective.mask.ratio if objective.mask.ratio is not None else preset["mask"][1]
    weights = {}
    for name in TARGETS:
        weight = objective[name].weight
        weight = preset.get(name, 0.0) if weight is None else weight
        if weight < 0:
            raise ValueError(f"objective.{name}.weight must be >= 0, got {weight}")
        if weight > 0:
            weights[name] = float(weight)
    if not weights:
        raise ValueError("all objective weights are zero: set objective.<target>.weight > 0 for one "
                         f"of {', '.join(TARGETS)}, or choose a preset ({', '.join(sorted(PRESETS))})")
    if kind is None or ratio is None:
        raise ValueError("objective.mask.kind and objective.mask.ratio must be set when "
                         "objective.preset is 'none'")
    if kind not in KINDS:
        raise ValueError(f"objective.mask.kind: unknown mask {kind!r}; expected one of {list(KINDS)}")
    return Objective(kind, float(ratio), weights)


def teacher_image_size(config) -> int:
    """The teacher's input size: given, or the student's patch grid times the teacher's patch."""
    grid = config.model.image_size // config.model.patch
    return config.teacher.image_size or grid * clip_size(config.teacher.variant).patch


def check(config) -> list[str]:
    """Problems with the objective and teachers, each saying what to change."""
    try:
        objective = resolve(config.objective)
    except ValueError as e:
        return [str(e)]
    problems = []
    m = config.model
    grid = (m.frames // m.tubelet, m.image_size // m.patch, m.image_size // m.patch)
    total = grid[0] * grid[1] * grid[2]
    ratio = objective.mask_ratio
    visible = num_visible(objective.mask_kind, grid, ratio) if 0 <= ratio <= 1 else total * (ratio < 0)
    where = f"({objective.mask_kind} mask on a {grid} grid)"
    if visible <= 0:
        problems.append(f"objective.mask.ratio {ratio} leaves no visible tokens of {total} {where}: "
                        "lower it below 1")
    elif visible >= total:
        problems.append(f"objective.mask.ratio {ratio} masks no tokens of {total} {where}: raise it")
    if objective.uses_image_teacher:
        try:
            teacher = clip_size(config.teacher.variant)
        except ValueError as e:
            problems.append(f"teacher.variant: {e}")
        else:
            size = teacher_image_size(config)
            if size % teacher.patch or size // teacher.patch != grid[1]:
                problems.append(
                    f"teacher.image_size {size} with patch {teacher.patch} gives a "
                    f"{size // teacher.patch}x{size // teacher.patch} grid but the student has "
                    f"{grid[1]}x{grid[2]}: set teacher.image_size={grid[1] * teacher.patch} (or 0)")
    student_depth = SIZES[m.variant].depth if m.variant in SIZES else 0
    teacher_depth = {"distill": clip_size(config.teacher.variant).depth
                     if config.teacher.variant in CLIP_SIZES else 0}
    video_variant = config.objective.video_teacher.variant
    if "video_teacher" in objective.weights:
        if video_variant not in SIZES:
            problems.append(f"objective.video_teacher.variant must be one of {list(SIZES)} when its "
                            f"weight is > 0, got {video_variant!r}")
        teacher_depth["video_teacher"] = SIZES[video_variant].depth if video_variant in SIZES else 0
    for name in ("distill", "video_teacher"):
        layers, limit = config.objective[name].layers, min(student_depth, teacher_depth.get(name, 0))
        if name in objective.weights and limit and not 1 <= layers <= limit:
            problems.append(f"objective.{name}.layers must be between 1 and {limit} (the shallower "
                            f"of student and teacher), got {layers}")
    return problems

"""Objective presets and the config checks that run before anything is compiled.

A preset fills in the mask and the target weights that the config leaves unset (None);
anything set explicitly wins, so `objective.preset=twlv` with `pixel.weight=0` is the
twlv objective without the pixel target.
"""

from __future__ import annotations

import dataclasses

from twlv_jax import models
from twlv_jax.objectives import image_teacher, targets
from twlv_jax.objectives.masking import KINDS, num_visible

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
    weights: dict[str, float]          # enabled targets only (weight > 0), in registry order


def resolve(objective) -> Objective:
    """The objective config block with preset defaults filled in. Raises ValueError."""
    if objective.preset not in PRESETS:
        raise ValueError(f"objective.preset: unknown preset {objective.preset!r}; "
                         f"expected one of {sorted(PRESETS)}")
    preset = PRESETS[objective.preset]
    kind = objective.mask.kind if objective.mask.kind is not None else preset["mask"][0]
    ratio = objective.mask.ratio if objective.mask.ratio is not None else preset["mask"][1]
    weights = {}
    for name in targets.REGISTRY:
        # A config saved before a target was registered has no block for it: unset.
        weight = objective[name].weight if name in objective else None
        weight = preset.get(name, 0.0) if weight is None else weight
        if weight < 0:
            raise ValueError(f"objective.{name}.weight must be >= 0, got {weight}")
        if weight > 0:
            weights[name] = float(weight)
    if not weights:
        raise ValueError("all objective weights are zero: set objective.<target>.weight > 0 for one "
                         f"of {', '.join(targets.REGISTRY)}, or choose a preset "
                         f"({', '.join(sorted(PRESETS))})")
    if kind is None or ratio is None:
        raise ValueError("objective.mask.kind and objective.mask.ratio must be set when "
                         "objective.preset is 'none'")
    if kind not in KINDS:
        raise ValueError(f"objective.mask.kind: unknown mask {kind!r}; expected one of {list(KINDS)}")
    return Objective(kind, float(ratio), weights)


def check(config) -> list[str]:
    """Problems with the objective and teachers, each saying what to change."""
    try:
        objective = resolve(config.objective)
    except ValueError as e:
        return [str(e)]
    problems = []
    grid = models.token_grid(config.model)
    total = grid[0] * grid[1] * grid[2]
    ratio = objective.mask_ratio
    visible = num_visible(objective.mask_kind, grid, ratio) if 0 <= ratio <= 1 else total * (ratio < 0)
    where = f"({objective.mask_kind} mask on a {grid} grid)"
    if visible <= 0:
        problems.append(f"objective.mask.ratio {ratio} leaves no visible tokens of {total} {where}: "
                        "lower it below 1")
    elif visible >= total:
        problems.append(f"objective.mask.ratio {ratio} masks no tokens of {total} {where}: raise it")
    if image_teacher.layers_used(config, objective):
        problems += image_teacher.check(config, grid)
    for target in targets.enabled(objective).values():
        problems += target.check(config)
    return problems

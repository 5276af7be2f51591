"""One validation pass over a pretraining config, before anything is built or compiled.

Every problem is collected and reported together, each saying what to change.
"""

from __future__ import annotations

import textwrap

from twlv_jax.config import ConfigError, mesh_shape, parse_duration, to_steps
from twlv_jax.models import DTYPES
from twlv_jax.models.layers import IMPLEMENTATIONS, REMAT_POLICIES
from twlv_jax.models.posembed import TABLES
from twlv_jax.models.vit import SIZES
from twlv_jax.objectives import presets
from twlv_jax.parallel.sharding import RULES

DURATIONS = ("train.steps", "train.ckpt_every", "train.probe_every", "optim.warmup")
CHOICES = {
    "model.variant": list(SIZES), "model.dtype": list(DTYPES),
    "model.remat": ["none", *REMAT_POLICIES], "model.qkv_bias": ["all", "qv", "none"],
    "model.pos_embed": list(TABLES), "model.attention": list(IMPLEMENTATIONS[1:]),
    "mesh.rules": list(RULES), "train.nan_policy": ["stop", "rollback"],
}
POSITIVE = ("train.batch_size", "train.log_every", "optim.lr", "model.frames", "model.image_size",
            "model.tubelet", "model.patch", "train.keep")


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _check_model(config) -> list[str]:
    m, problems = config.model, []
    if m.frames % m.tubelet:
        problems.append(f"model.frames={m.frames} is not divisible by model.tubelet={m.tubelet}")
    if m.image_size % m.patch:
        problems.append(f"model.image_size={m.image_size} is not divisible by model.patch={m.patch}")
    if not 0 <= m.drop_path < 1:
        problems.append(f"model.drop_path must be in [0, 1), got {m.drop_path}")
    return problems


def _check_optim(config) -> list[str]:
    o, problems = config.optim, []
    if not 0 < o.b1 < 1 or not 0 < o.b2 < 1:
        problems.append(f"optim.b1 and optim.b2 must be in (0, 1), got {o.b1}, {o.b2}")
    if o.weight_decay < 0 or o.weight_decay_end < 0:
        problems.append("optim.weight_decay and optim.weight_decay_end must be >= 0")
    if not 0 < o.layer_decay <= 1:
        problems.append(f"optim.layer_decay must be in (0, 1], got {o.layer_decay}")
    if not 0 <= o.min_lr_ratio <= 1:
        problems.append(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if o.clip_norm < 0:
        problems.append(f"optim.clip_norm must be >= 0 (0 disables), got {o.clip_norm}")
    return problems


def _check_mesh_and_batch(config, num_devices: int) -> list[str]:
    try:
        data, fsdp, _ = mesh_shape(config.mesh.shape, num_devices)
    except ConfigError as e:
        return [str(e)]
    batch = config.train.batch_size
    if batch > 0 and batch % (data * fsdp):
        return [f"train.batch_size={batch} is not divisible by the data-parallel size "
                f"{data * fsdp} (mesh data={data} x fsdp={fsdp}): use a multiple of {data * fsdp}"]
    return []


def validate(config, num_devices: int) -> None:
    """Raises ConfigError listing every problem; returns None when the config can run."""
    problems = []
    for key, choices in CHOICES.items():
        if _get(config, key) not in choices:
            problems.append(f"{key}: expected one of {choices}, got {_get(config, key)!r}")
    for key in POSITIVE:
        value = _get(config, key)
        if not isinstance(value, int | float) or value <= 0:
            problems.append(f"{key} must be positive, got {value!r}")
    for key in DURATIONS:
        try:
            amount, _ = parse_duration(_get(config, key))
            if amount < 0 or (key == "train.steps" and amount == 0):
                problems.append(f"{key} must be {'positive' if key == 'train.steps' else '>= 0'}")
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if not 0 <= config.train.unsharded_limit <= 1:
        problems.append(f"train.unsharded_limit must be in [0, 1], got {config.train.unsharded_limit}")
    if problems:      # the checks below assume the basic types and choices are right
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    problems += _check_model(config) + _check_optim(config)
    problems += _check_mesh_and_batch(config, num_devices)
    problems += presets.check(config)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def teacher_warning(config) -> str | None:
    """Refuses a randomly initialised image teacher unless it is a tiny run or allowed on
    purpose; returns the loud warning to print when it is used anyway."""
    objective = presets.resolve(config.objective)
    if not objective.uses_image_teacher or config.teacher.weights:
        return None
    if config.teacher.variant != "tiny" and not config.teacher.allow_random:
        raise ConfigError(
            f"the objective uses the image teacher ({config.teacher.variant}) but "
            "teacher.weights is empty, so it would be randomly initialised and the targets "
            "meaningless. Give --config.teacher.weights=PATH (a local file), or set "
            "--config.teacher.allow_random=true for a smoke test.")
    width = 78
    lines = ["THE IMAGE TEACHER IS RANDOMLY INITIALISED", *textwrap.wrap(
        f"teacher.variant={config.teacher.variant} with no teacher.weights: distillation "
        "targets and attention masks come from random features. Fine for smoke tests; "
        "useless for real pretraining.", width - 6)]
    return "\n".join(["!" * width, *(f"!! {line:<{width - 6}} !!" for line in lines), "!" * width])


def total_steps(config, examples_per_epoch: int | None) -> tuple[int, int]:
    """(train steps, warmup steps) from the duration fields; warmup is capped at the run."""
    batch = config.train.batch_size
    steps = to_steps(config.train.steps, batch_size=batch, examples_per_epoch=examples_per_epoch)
    warmup = to_steps(config.optim.warmup, batch_size=batch, examples_per_epoch=examples_per_epoch)
    return steps, min(warmup, steps)

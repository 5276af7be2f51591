"""One validation pass over a pretraining config, before anything is built or compiled.

Every problem is collected and reported together, each saying what to change. The files
a run reads late (teacher weights, the probe set, init_from) are checked here too.
"""

from __future__ import annotations

import textwrap

from safetensors import safe_open

from twlv_jax import paths
from twlv_jax.config import ConfigError, mesh_shape, parse_duration, to_steps
from twlv_jax.models import DTYPES
from twlv_jax.models.layers import IMPLEMENTATIONS, REMAT_POLICIES
from twlv_jax.models.posembed import kinds as pos_kinds
from twlv_jax.models.vit import SIZES
from twlv_jax.objectives import hybrid, presets
from twlv_jax.parallel.sharding import RULES

DURATIONS = ("train.steps", "train.ckpt_every", "train.probe_every", "optim.warmup")
CHOICES = {
    "model.variant": list(SIZES), "model.dtype": list(DTYPES),
    "model.remat": ["none", *REMAT_POLICIES], "model.qkv_bias": ["all", "qv", "none"],
    "model.pos_embed": pos_kinds(), "model.attention": list(IMPLEMENTATIONS[1:]),
    "mesh.rules": list(RULES), "train.nan_policy": ["stop", "rollback"],
    "train.inject_nan_into": ["loss", "grads"],
}
POSITIVE = ("train.batch_size", "train.microbatches", "train.log_every", "optim.lr", "model.frames",
            "model.image_size", "model.tubelet", "model.patch", "train.keep")


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
    batch, micro = config.train.batch_size, config.train.microbatches
    if batch > 0 and batch % (data * fsdp):
        return [f"train.batch_size={batch} is not divisible by the data-parallel size "
                f"{data * fsdp} (mesh data={data} x fsdp={fsdp}): use a multiple of {data * fsdp}"]
    if batch > 0 and micro > 0 and (batch // (data * fsdp)) % micro:
        return [f"train.microbatches={micro} does not divide the per-device batch "
                f"{batch // (data * fsdp)} (train.batch_size={batch} over {data * fsdp} "
                f"data-parallel devices): use a divisor of {batch // (data * fsdp)}"]
    return []


def _check_fault_injection(config) -> list[str]:
    positions = config.train.inject_nan_batches
    if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in positions):
        return []
    return [f"train.inject_nan_batches must be data stream positions (integers >= 0) like "
            f"(7,) or 7,12, got {tuple(positions)!r}"]


def _check_weights_file(key: str, path: str) -> list[str]:
    """A teacher's weights: an existing, readable safetensors file (header and size)."""
    if not path:
        return []
    if not paths.isfile(path):
        return [f"{key}={path!r}: no such file"]
    try:
        with paths.local_copy(path) as local, safe_open(local, framework="numpy") as f:
            f.keys()
    except Exception as error:  # safetensors raises its own error types
        return [f"{key}={path!r}: not a readable safetensors file ({error})"]
    return []


def _check_probe_path(path: str) -> list[str]:
    if not path:
        return []
    missing = [n for n in ("train.csv", "val.csv") if not paths.isfile(paths.join(path, n))]
    if missing:
        return [f"train.probe_path={path!r}: expected a folder with train.csv and val.csv (as "
                f"written by `twlv data synth`); missing {', '.join(missing)}"]
    return []


def check_files(config) -> None:
    """The files a run opens late (after data start-up, state init or compilation) are
    there and readable now. Raises ConfigError listing every problem."""
    problems = []
    for key in hybrid.teacher_blocks(config).values():
        problems += _check_weights_file(f"{key}.weights", hybrid.config_block(config, key).weights)
    problems += _check_probe_path(config.train.probe_path)
    if config.init_from and not paths.exists(config.init_from):
        problems.append(f"init_from={config.init_from!r}: no such workdir or checkpoints folder")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


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
    problems += _check_fault_injection(config)
    if problems:      # the checks below assume the basic types and choices are right
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    problems += _check_model(config) + _check_optim(config)
    problems += _check_mesh_and_batch(config, num_devices)
    problems += presets.check(config)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _random_teachers(config) -> list[tuple[str, str, str]]:
    """(name, variant, config block) of every frozen teacher the objective uses without weights."""
    result = []
    for name, key in hybrid.teacher_blocks(config, presets.resolve(config.objective)).items():
        block = hybrid.config_block(config, key)
        if not block.weights:
            result.append((name.replace("_", " "), block.variant, key))
    return result


def teacher_warning(config) -> str | None:
    """Refuses a randomly initialised frozen teacher (image or video) unless it is tiny or
    allowed on purpose (teacher.allow_random); returns the loud warning to print when one
    is used anyway."""
    random = _random_teachers(config)
    for name, variant, key in random:
        if variant != "tiny" and not config.teacher.allow_random:
            raise ConfigError(
                f"the objective uses the {name} ({variant}) but {key}.weights is empty, so it "
                "would be randomly initialised and the targets meaningless. Give "
                f"--config.{key}.weights=PATH (a local file), or set "
                "--config.teacher.allow_random=true for a smoke test.")
    if not random:
        return None
    width = 78
    lines = []
    for name, variant, key in random:
        lines += [f"THE {name.upper()} IS RANDOMLY INITIALISED", *textwrap.wrap(
            f"{key}.variant={variant} with no {key}.weights: its targets"
            + (" and attention masks" if name == "image teacher" else "")
            + " come from random features. Fine for smoke tests; useless for real "
            "pretraining.", width - 6)]
    return "\n".join(["!" * width, *(f"!! {line:<{width - 6}} !!" for line in lines), "!" * width])


def total_steps(config, examples_per_epoch: int | None) -> tuple[int, int]:
    """(train steps, warmup steps) from the duration fields; warmup is capped at the run."""
    batch = config.train.batch_size
    steps = to_steps(config.train.steps, batch_size=batch, examples_per_epoch=examples_per_epoch)
    warmup = to_steps(config.optim.warmup, batch_size=batch, examples_per_epoch=examples_per_epoch)
    return steps, min(warmup, steps)

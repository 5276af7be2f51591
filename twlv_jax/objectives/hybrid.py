"""The hybrid objective: one masked student pass, every enabled target's loss, weighted sum.

`Pretrainer` holds everything that is trained (student encoder + target heads).
Teachers (image, video) and the EMA student are frozen and passed in separately. The
targets come from `objectives.targets`; nothing here names one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax import models
from twlv_jax.data.transforms import normalize
from twlv_jax.models.vit import VideoViT
from twlv_jax.objectives import image_teacher, targets
from twlv_jax.objectives.losses import constant_prediction
from twlv_jax.objectives.masking import make_mask
from twlv_jax.objectives.presets import Objective
from twlv_jax.objectives.targets import Batch, enabled


def encoder_kwargs(model_cfg) -> dict:
    """VideoViT keyword arguments from the `model` config block."""
    return dict(frames=model_cfg.frames, image_size=model_cfg.image_size,
                tubelet=model_cfg.tubelet, patch=model_cfg.patch, qkv_bias=model_cfg.qkv_bias,
                layerscale=model_cfg.layerscale, drop_path=model_cfg.drop_path,
                pos_embed=model_cfg.pos_embed, dtype=models.dtype(model_cfg.dtype),
                scan=model_cfg.scan, remat=model_cfg.remat, attention=model_cfg.attention)


def student(model_cfg, rngs: nnx.Rngs) -> VideoViT:
    s = models.SIZES[model_cfg.variant]
    return VideoViT(dim=s.dim, depth=s.depth, heads=s.heads, mlp_dim=s.mlp_dim,
                    **encoder_kwargs(model_cfg), rngs=rngs)


class Pretrainer(nnx.Module):
    """The student encoder and, under each enabled target's name, that target's head."""

    def __init__(self, config, objective: Objective, *, rngs: nnx.Rngs):
        self.student = student(config.model, rngs)
        for name, target in enabled(objective).items():
            setattr(self, name, target.head(config, self.student, rngs=rngs))


def uses_ema(objective: Objective) -> bool:
    """Whether an enabled target reads an EMA copy of the student."""
    return any(t.uses_ema for t in enabled(objective).values())


def ema_schedule(config, objective: Objective) -> tuple[float, float]:
    """(start, end) momentum of the EMA student."""
    return next(t.ema_schedule(config) for t in enabled(objective).values() if t.uses_ema)


def teachers(config, objective: Objective) -> dict[str, nnx.Module]:
    """The frozen teachers the objective needs, randomly initialised (weights load later)."""
    result = {}
    if image_teacher.layers_used(config, objective):
        result["image_teacher"] = image_teacher.build(config)
    for name, target in enabled(objective).items():
        teacher = target.teacher(config, encoder_kwargs(config.model))
        if teacher is not None:
            result[name] = teacher
    return result


def teacher_blocks(config, objective: Objective | None = None) -> dict[str, str]:
    """{teacher name: the config block that names its variant and weights} of the frozen
    teachers the objective uses, or of every teacher a target may use when None."""
    blocks = {}
    if objective is None or image_teacher.layers_used(config, objective):
        blocks["image_teacher"] = "teacher"
    candidates = enabled(objective) if objective is not None else targets.REGISTRY
    for name, target in candidates.items():
        if target.teacher_key:
            blocks[name] = target.teacher_key
    return blocks


def teacher_weight_files(config, objective: Objective) -> dict[str, str]:
    """{teacher name: its weights file ('' when none)} of the teachers the objective uses."""
    return {name: config_block(config, key).weights
            for name, key in teacher_blocks(config, objective).items()}


def config_block(config, key: str):
    """The config block at a dotted key."""
    return functools.reduce(lambda block, part: block[part], key.split("."), config)


def losses(model: Pretrainer, frozen: dict[str, nnx.Module], ema_student: VideoViT | None,
           video: jax.Array, rng: jax.Array, objective: Objective, config,
           samples: jax.Array | None = None) -> dict[str, jax.Array]:
    """Every enabled target's loss for a batch of uint8 clips (B, T, H, W, 3); `samples`
    as in `predictions`."""
    return loss_terms(predictions(model, frozen, ema_student, video, rng, objective, config,
                                  samples=samples), objective)


def loss_terms(pairs: dict[str, tuple[jax.Array, jax.Array]],
               objective: Objective) -> dict[str, jax.Array]:
    """Each target's loss from its (prediction, target)."""
    targets = enabled(objective)
    terms = {}
    for name, pair in pairs.items():
        with jax.named_scope(f"loss/{name}"):
            terms[name] = targets[name].loss(*pair)
    return terms


def baselines(pairs: dict[str, tuple[jax.Array, jax.Array]],
              objective: Objective) -> dict[str, jax.Array]:
    """Each target's trivial baseline: the loss of predicting the mean of its targets."""
    targets = enabled(objective)
    return {name: targets[name].loss(constant_prediction(target), target)
            for name, (_, target) in pairs.items()}


def predictions(model: Pretrainer, frozen: dict[str, nnx.Module], ema_student: VideoViT | None,
                video: jax.Array, rng: jax.Array, objective: Objective, config, *,
                samples: jax.Array | None = None,
                train: bool = True) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{target: (prediction, target)} of every enabled target for uint8 clips (B, T, H, W, 3).

    `samples`: the clips' indices (B,) in the global batch when `video` is a microbatch of
    it, so that each clip gets its mask in the whole batch; None: the whole batch.
    `train=False` turns stochastic depth off (held-out evaluation)."""
    targets = enabled(objective)
    student_model = model.student
    r_mask, r_drop, r_target = jax.random.split(rng, 3)
    grid = student_model.grid_of(video.shape)
    with jax.named_scope("input"):
        x = normalize(video, jnp.float32)

    attention = teacher_layers = None
    if count := image_teacher.layers_used(config, objective):
        with jax.named_scope("image_teacher"):
            attention, teacher_layers = image_teacher.features(
                frozen["image_teacher"], video, config, count, grid, student_model.tubelet)

    with jax.named_scope("mask"):
        keep, masked = make_mask(objective.mask_kind, r_mask,
                                 video.shape[0] if samples is None else samples, grid,
                                 objective.mask_ratio, attention)
    collect = sorted({i for t in targets.values()
                      for i in t.student_layers(config, student_model.depth)})
    with jax.named_scope("student"):
        out = student_model(x, keep=keep, layers=collect, rng=r_drop if train else None)

    batch = Batch(video=video, x=x, keep=keep, masked=masked, grid=grid, student=student_model,
                  tokens=out["tokens"], layers=out["layers"],
                  frozen=dict(frozen, ema_student=ema_student) if ema_student else frozen,
                  image_teacher_layers=teacher_layers, rng=r_target, config=config)
    pairs = {}
    for name, target in targets.items():
        with jax.named_scope(f"target/{name}"):
            pairs[name] = target.predict(getattr(model, name), batch)
    return pairs


def total(terms: dict[str, jax.Array], objective: Objective) -> jax.Array:
    """The weighted sum of the loss terms."""
    return sum(objective.weights[name] * value for name, value in terms.items())

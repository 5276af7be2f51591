"""Feature distillation from the image teacher (UMT, TWLV-I): the student's last K layers go
through per-layer heads (Linear then LayerNorm) and regress the teacher's last K layers on the
visible tokens, 2 - 2 cos."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax import models
from twlv_jax.models import flops
from twlv_jax.models.heads import DistillHeads
from twlv_jax.objectives.losses import cosine_loss
from twlv_jax.objectives.targets.base import Batch, Target, Tokens, last_layers


class FeatureDistill(nnx.Module):
    """Per-layer heads from the student's width to a teacher's."""

    def __init__(self, num_layers: int, student_dim: int, teacher_dim: int, *, dtype,
                 rngs: nnx.Rngs):
        self.heads = DistillHeads(num_layers, student_dim, teacher_dim, dtype=dtype, rngs=rngs)
        self.num_layers = num_layers

    def predict(self, student_layers: jax.Array, teacher_layers: jax.Array,
                keep: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(prediction, target) (L, B, K, P) for student_layers (L, B, K, D) on visible tokens
        and teacher_layers (L, B, N, P) on all."""
        target = jnp.take_along_axis(teacher_layers, keep[None, :, :, None], axis=2)   # (L, B, K, P)
        return self.heads(student_layers), jax.lax.stop_gradient(target)


def layer_limit_problem(config, name: str, teacher_depth: int) -> list[str]:
    """`objective.<name>.layers` within the shallower of student and teacher."""
    layers = config.objective[name].layers
    student_depth = models.SIZES[config.model.variant].depth if config.model.variant in models.SIZES else 0
    limit = min(student_depth, teacher_depth)
    if limit and not 1 <= layers <= limit:
        return [f"objective.{name}.layers must be between 1 and {limit} (the shallower of student "
                f"and teacher), got {layers}"]
    return []


class Distill(Target):
    name = "distill"
    loss = staticmethod(cosine_loss)
    state_keys = ("layers",)

    def check(self, config):
        variant = config.teacher.variant
        depth = models.clip_size(variant).depth if variant in models.CLIP_SIZES else 0
        return layer_limit_problem(config, self.name, depth)

    def head(self, config, student, *, rngs):
        return FeatureDistill(config.objective.distill.layers, student.dim,
                              models.clip_size(config.teacher.variant).proj_dim,
                              dtype=models.dtype(config.model.dtype), rngs=rngs)

    def student_layers(self, config, depth):
        return last_layers(depth, config.objective.distill.layers)

    def image_teacher_layers(self, config):
        return config.objective.distill.layers

    def predict(self, head, batch: Batch):
        layers = batch.student_layers(self.student_layers(batch.config, batch.student.depth))
        return head.predict(layers, batch.image_teacher_layers, batch.keep)

    def flops(self, config, tokens: Tokens):
        teacher = models.clip_size(config.teacher.variant)
        dim = models.SIZES[config.model.variant].dim
        # The teacher itself is counted once, as the shared image teacher.
        return config.objective.distill.layers * flops.linear(tokens.visible, dim, teacher.proj_dim), 0.0


TARGET = Distill()

"""Feature distillation from a frozen video encoder (e.g. a VideoMAE checkpoint): like
`distill`, with the teacher run on the whole clip and its tokens as the targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from twlv_jax import models
from twlv_jax.models import flops
from twlv_jax.objectives.losses import cosine_loss
from twlv_jax.objectives.targets.base import Batch, Target, Tokens, last_layers
from twlv_jax.objectives.targets.distill import FeatureDistill, layer_limit_problem


class VideoTeacher(Target):
    name = "video_teacher"
    loss = staticmethod(cosine_loss)
    state_keys = ("layers", "variant")
    teacher_key = "objective.video_teacher"

    def check(self, config):
        variant = config.objective.video_teacher.variant
        if variant not in models.SIZES:
            return [f"objective.video_teacher.variant must be one of {list(models.SIZES)} when its "
                    f"weight is > 0, got {variant!r}"]
        return layer_limit_problem(config, self.name, models.SIZES[variant].depth)

    def head(self, config, student, *, rngs):
        return FeatureDistill(config.objective.video_teacher.layers, student.dim,
                              models.SIZES[config.objective.video_teacher.variant].dim,
                              dtype=models.dtype(config.model.dtype), rngs=rngs)

    def student_layers(self, config, depth):
        return last_layers(depth, config.objective.video_teacher.layers)

    def teacher(self, config, encoder_kwargs):
        vt = config.objective.video_teacher
        kwargs = encoder_kwargs | dict(drop_path=0.0, remat="none", qkv_bias=vt.qkv_bias,
                                       pos_embed=vt.pos_embed)
        return models.encoder(vt.variant, seed=config.seed + 2, **kwargs)

    def predict(self, head, batch: Batch):
        teacher = batch.frozen[self.name]
        indices = last_layers(teacher.depth, batch.config.objective.video_teacher.layers)
        with jax.named_scope("teacher"):
            out = teacher(batch.x, layers=indices)
            targets = jax.lax.stop_gradient(jnp.stack([teacher.norm(out["layers"][i])
                                                       for i in indices]))      # (L, B, N, P)
        layers = batch.student_layers(self.student_layers(batch.config, batch.student.depth))
        return head.predict(layers, targets, batch.keep)

    def flops(self, config, tokens: Tokens):
        vt = config.objective.video_teacher
        dim = models.SIZES[config.model.variant].dim
        return (vt.layers * flops.linear(tokens.visible, dim, models.SIZES[vt.variant].dim),
                flops.encoder_forward(vt.variant, tokens.total, tokens.patch_dim))


TARGET = VideoTeacher()

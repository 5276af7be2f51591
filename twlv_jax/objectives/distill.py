"""Feature distillation targets: the image teacher (`distill`) and a video teacher
(`video_teacher`). The student's last K layers go through per-layer heads (Linear then
LayerNorm, UMT) and regress the teacher's last K layers on the visible tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax.models.heads import DistillHeads


def frames_to_tokens(features: jax.Array, batch: int, tubelet: int) -> jax.Array:
    """Per-frame teacher features (L, B*T, H'W', P) -> per-tubelet (L, B, N, P), averaged
    over the frames of each tubelet."""
    layers, _, hw, dim = features.shape
    x = features.reshape(layers, batch, -1, tubelet, hw, dim)      # (L, B, T', t, H'W', P)
    return x.mean(axis=3).reshape(layers, batch, -1, dim)          # (L, B, N, P)


class FeatureDistill(nnx.Module):
    """2 - 2 cos between head(student layer) and the teacher's layer, on visible tokens."""

    def __init__(self, num_layers: int, student_dim: int, teacher_dim: int, *, dtype,
                 rngs: nnx.Rngs):
        self.heads = DistillHeads(num_layers, student_dim, teacher_dim, dtype=dtype, rngs=rngs)
        self.num_layers = num_layers

    def predict(self, student_layers: jax.Array, teacher_layers: jax.Array,
                keep: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(prediction, target) (L, B, K, P) for student_layers (L, B, K, D) on visible tokens
        and teacher_layers (L, B, N, P) on all. The loss is 2 - 2 cos."""
        target = jnp.take_along_axis(teacher_layers, keep[None, :, :, None], axis=2)   # (L, B, K, P)
        return self.heads(student_layers), jax.lax.stop_gradient(target)

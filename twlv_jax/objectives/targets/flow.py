"""A motion target: each visible token regresses its own patch's velocity.

The velocity is the least-squares estimate from brightness constancy (I_t + v . grad I = 0)
between consecutive frames of the token's tubelet, over the patch's pixels and colour
channels (Lucas-Kanade), in pixels per frame at the student's input resolution; where one
direction has no gradient (a flat patch, a straight edge) that component tends to zero.
A hand-made target like MaskFeat's HOG, read from the token by a linear head. It is not
part of TWLV-I's objective; the demo adds it (README, "Quickstart").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from twlv_jax import models
from twlv_jax.models import flops
from twlv_jax.models.layers import Dense
from twlv_jax.objectives.losses import mse
from twlv_jax.objectives.targets.base import Batch, Target, Tokens

# Added to the diagonal of a patch's structure tensor: a flat patch, whose gradient is
# noise, gets a velocity of about 0.
ENERGY_FLOOR = 1e-3


def patch_velocity(video01: jax.Array, tubelet: int, patch: int) -> jax.Array:
    """(B, T, S, S, 3) in [0, 1] -> (B, N, 2 * (tubelet - 1)): per token, (vx, vy) in pixels
    per frame for each consecutive frame pair inside its tubelet, x to the right, y down."""
    x = video01.astype(jnp.float32)
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // tubelet, tubelet, h, w, c)                  # (B, T', t, H, W, 3)
    dt = x[:, :, 1:] - x[:, :, :-1]                                   # (B, T', t-1, H, W, 3)
    middle = 0.5 * (x[:, :, 1:] + x[:, :, :-1])
    dx, dy = jnp.gradient(middle, axis=4), jnp.gradient(middle, axis=3)

    def per_patch(v):                             # (B, T', t-1, H, W, 3) -> (B, T', H', W', t-1)
        v = v.reshape(b, t // tubelet, tubelet - 1, h // patch, patch, w // patch, patch, c)
        return v.sum(axis=(4, 6, 7)).transpose(0, 1, 3, 4, 2)
    # Lucas-Kanade per patch: (G + floor * I) v = -g, G the 2 x 2 gradient structure
    # tensor, g the gradient times the temporal difference, solved in closed form.
    gxx = per_patch(dx * dx) + ENERGY_FLOOR
    gyy = per_patch(dy * dy) + ENERGY_FLOOR
    gxy, gxt, gyt = per_patch(dx * dy), per_patch(dx * dt), per_patch(dy * dt)
    det = gxx * gyy - gxy * gxy
    velocity = jnp.stack([(gxy * gyt - gyy * gxt) / det, (gxy * gxt - gxx * gyt) / det], axis=-1)
    return velocity.reshape(b, -1, 2 * (tubelet - 1))                 # (B, N, 2*(t-1))


class Flow(Target):
    name = "flow"
    loss = staticmethod(mse)

    def check(self, config):
        if config.model.tubelet < 2:
            return [f"objective.flow needs model.tubelet >= 2 (a velocity between a tubelet's "
                    f"frames), got {config.model.tubelet}"]
        return []

    def head(self, config, student, *, rngs):
        return Dense(student.dim, 2 * (config.model.tubelet - 1), ("embed", None),
                     dtype=models.dtype(config.model.dtype), rngs=rngs)

    def predict(self, head, batch: Batch):
        velocity = patch_velocity(batch.video.astype(jnp.float32) / 255.0,
                                  batch.student.tubelet, batch.student.patch)
        target = jnp.take_along_axis(velocity, batch.keep[..., None], axis=1)   # (B, K, 2*(t-1))
        return head(batch.tokens), jax.lax.stop_gradient(target)

    def flops(self, config, tokens: Tokens):
        dim = models.SIZES[config.model.variant].dim
        return flops.linear(tokens.visible, dim, 2 * (config.model.tubelet - 1)), 0.0


TARGET = Flow()

"""V-JEPA's latent target: an EMA copy of the student encodes the full clip; a narrow
predictor maps the visible tokens to the layer-normed EMA features of the masked ones (L1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax.models.heads import MaskedPredictor
from twlv_jax.objectives.losses import layer_norm


def ema_momentum(step, total_steps: int, start: float, end: float):
    """Linear schedule from `start` to `end` over training (V-JEPA: 0.998 -> 1.0)."""
    frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return start + (end - start) * frac


def ema_update(ema, params, momentum):
    return jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p, ema, params)


class LatentTarget(nnx.Module):
    def __init__(self, student_dim: int, width: int, depth: int, heads: int,
                 grid: tuple[int, int, int], *, pos_embed: str, dtype, scan: bool, remat: str,
                 attention: str | None, rngs: nnx.Rngs):
        self.predictor = MaskedPredictor(student_dim, width, depth, heads, student_dim, grid,
                                         pos_embed=pos_embed, dtype=dtype, scan=scan, remat=remat,
                                         attention=attention, rngs=rngs)

    def predict(self, tokens: jax.Array, keep: jax.Array, masked: jax.Array,
                ema_tokens: jax.Array, grid) -> tuple[jax.Array, jax.Array]:
        """(prediction, target) (B, M, D) for tokens (B, K, D) visible and ema_tokens (B, N, D)
        from the EMA encoder on the full clip. The loss is their L1 distance."""
        target = layer_norm(jnp.take_along_axis(ema_tokens, masked[..., None], axis=1))
        prediction = self.predictor(tokens, keep, masked, grid)
        return prediction, jax.lax.stop_gradient(target)

"""V-JEPA's latent target: an EMA copy of the student encodes the full clip; a narrow
predictor maps the visible tokens to the layer-normed EMA features of the masked ones (L1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax import models
from twlv_jax.models import flops
from twlv_jax.models.heads import MaskedPredictor
from twlv_jax.objectives.losses import l1, layer_norm
from twlv_jax.objectives.targets.base import Batch, Target, Tokens


def ema_momentum(step, total_steps: int, start: float, end: float):
    """Linear schedule from `start` to `end` over training (V-JEPA: 0.998 -> 1.0)."""
    frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return start + (end - start) * frac


def ema_update(ema, params, momentum):
    """momentum * ema + (1 - momentum) * params, leaf by leaf."""
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


def predictor_shape(config) -> tuple[int, int, int]:
    """(width, depth, heads) of the predictor; width and depth 0 take V-JEPA's (384, 12), or
    (64, 2) for the tiny student."""
    o, tiny = config.objective.latent, config.model.variant == "tiny"
    width = o.predictor_width or (64 if tiny else 384)
    depth = o.predictor_depth or (2 if tiny else 12)
    student_heads = models.SIZES[config.model.variant].heads
    heads = student_heads if width % student_heads == 0 else max(1, width // 64)
    return width, depth, heads


class Latent(Target):
    name = "latent"
    loss = staticmethod(l1)
    state_keys = ("predictor_width", "predictor_depth")
    uses_ema = True

    def head(self, config, student, *, rngs):
        m = config.model
        width, depth, heads = predictor_shape(config)
        return LatentTarget(student.dim, width, depth, heads, student.grid, pos_embed=m.pos_embed,
                            dtype=models.dtype(m.dtype), scan=m.scan, remat=m.remat,
                            attention=m.attention, rngs=rngs)

    def predict(self, head, batch: Batch):
        with jax.named_scope("ema_student"):
            ema_tokens = jax.lax.stop_gradient(batch.frozen["ema_student"](batch.x)["tokens"])
        return head.predict(batch.tokens, batch.keep, batch.masked, ema_tokens, batch.grid)

    def ema_schedule(self, config):
        return config.objective.latent.ema_start, config.objective.latent.ema_end

    def flops(self, config, tokens: Tokens):
        width, depth, _ = predictor_shape(config)
        dim = models.SIZES[config.model.variant].dim
        n, k = tokens.total, tokens.visible
        return (flops.linear(k, dim, width) + flops.transformer(n, width, depth, 4 * width)
                + flops.linear(n - k, width, dim),
                flops.encoder_forward(config.model.variant, n, tokens.patch_dim))   # EMA targets


TARGET = Latent()

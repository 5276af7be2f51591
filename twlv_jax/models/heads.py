"""Prediction heads: the masked predictor (pixel decoder / latent predictor) and distill heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax.models import posembed, rope
from twlv_jax.models.layers import F32, Dense, LayerNorm, Transformer, matmul, param
from twlv_jax.models.vit import gather_tokens


class MaskedPredictor(nnx.Module):
    """A narrow ViT that predicts a target at masked positions from the visible tokens.

    Visible tokens are projected to `width`, mask tokens fill the positions to predict,
    both get positions (a fixed table, or with `pos_embed=rope3d` rotary positions in
    every block, as V-JEPA 2's predictor), and `depth` blocks run over the concatenation; the
    predictions for the masked positions go through a norm and a linear head. With
    `out_dim = t*p*p*3` this is VideoMAE's pixel decoder; with the encoder width and
    an L1 target it is V-JEPA's latent predictor.
    """

    def __init__(self, in_dim: int, width: int, depth: int, heads: int, out_dim: int,
                 grid: tuple[int, int, int], *, embed_bias: bool = True,
                 pos_embed: str = "sincos3d", dtype=F32, scan: bool = True, remat: str = "none",
                 attention: str | None = None, rngs: nnx.Rngs):
        self.width, self.heads, self.grid, self.pos_embed = width, heads, grid, pos_embed
        self.embed = Dense(in_dim, width, ("embed", "embed"), use_bias=embed_bias, dtype=dtype,
                           rngs=rngs)
        self.mask_token = param(rngs, (1, 1, width), (None, None, "embed"))
        self.blocks = Transformer(depth, width, heads, 4 * width, dtype=dtype, scan=scan,
                                  remat=remat, attention=attention, rngs=rngs)
        self.norm = LayerNorm(width, rngs=rngs)
        self.head = Dense(width, out_dim, ("embed", None), dtype=dtype, rngs=rngs)

    def __call__(self, visible: jax.Array, keep: jax.Array, targets: jax.Array,
                 grid: tuple[int, int, int] | None = None) -> jax.Array:
        """visible (B, K, D) at token indices keep (B, K) -> predictions (B, M, out) at targets (B, M)."""
        grid = grid or self.grid
        x = self.embed(visible)                                                    # (B, K, W)
        m = jnp.broadcast_to(self.mask_token[...], (*targets.shape, self.width))   # (B, M, W)
        positions = None
        if self.pos_embed == posembed.ROTARY:
            positions = rope.gather(rope.tables(grid, self.width // self.heads),
                                    jnp.concatenate([keep, targets], axis=1))
        else:
            table = posembed.resample_for(self.pos_embed, self.width, self.grid, grid)
            pos = jnp.broadcast_to(table.reshape(1, -1, self.width),
                                   (visible.shape[0], table.size // self.width, self.width))
            x, m = x + gather_tokens(pos, keep), m + gather_tokens(pos, targets)
        h, _ = self.blocks(jnp.concatenate([x, m], axis=1), rope=positions)
        return self.head(self.norm(h[:, keep.shape[1]:]))


class DistillHeads(nnx.Module):
    """One Linear + LayerNorm per distilled layer (UMT), mapping student width to teacher width."""

    def __init__(self, num: int, in_dim: int, out_dim: int, *, eps: float = 1e-6, dtype=F32,
                 rngs: nnx.Rngs):
        zeros, ones = nnx.initializers.zeros, nnx.initializers.ones
        self.kernel = param(rngs, (num, in_dim, out_dim), ("layers", "embed", None))
        self.bias = param(rngs, (num, out_dim), ("layers", None), zeros)
        self.scale = param(rngs, (num, out_dim), ("layers", None), ones)
        self.shift = param(rngs, (num, out_dim), ("layers", None), zeros)
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (L, B, N, D), one slice per distilled layer -> (L, B, N, out)."""
        y = matmul(x, self.kernel[...], "lbnd,lde->lbne", self.dtype)
        y = y + self.bias[...][:, None, None]
        mean = y.mean(-1, keepdims=True)
        var = jnp.square(y - mean).mean(-1, keepdims=True)
        y = (y - mean) * jax.lax.rsqrt(var + self.eps)
        return y * self.scale[...][:, None, None] + self.shift[...][:, None, None]

"""Analytic forward FLOPs of the model parts: matmuls only, 2 FLOPs per multiply-add."""

from __future__ import annotations

from twlv_jax.models.vit import SIZES


def linear(tokens: int, din: int, dout: int) -> float:
    return 2.0 * tokens * din * dout


def transformer(tokens: int, dim: int, depth: int, mlp_dim: int) -> float:
    """Forward FLOPs of `depth` blocks on `tokens` tokens: projections, MLP, attention."""
    per_layer = 2.0 * tokens * (4 * dim * dim + 2 * dim * mlp_dim) + 4.0 * tokens * tokens * dim
    return depth * per_layer


def encoder_forward(variant: str, tokens: int, patch_dim: int) -> float:
    """A VideoViT of a named size on `tokens` tokens of `patch_dim` values each."""
    s = SIZES[variant]
    return linear(tokens, patch_dim, s.dim) + transformer(tokens, s.dim, s.depth, s.mlp_dim)

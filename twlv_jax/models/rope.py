"""3-D rotary positions (`pos_embed=rope3d`), as Hugging Face `VJEPA2Model` computes them.

A head's channels are cut into runs of `axis_dims(head_dim)` = 2 * ((head_dim // 3) // 2)
channels for the token's frame, row and column index, in that order; channels after the
three runs are not rotated. Within a run of d channels, adjacent pairs (2j, 2j+1) are
rotated, and channel c uses the frequency omega[c mod d/2], omega[k] = 10000^(-k / (d/2)):
the frequency vector is tiled, not repeated per pair, exactly as V-JEPA 2's
`rotate_queries_or_keys` does (so a pair's two channels turn at different rates). Angles
are computed in float64 and rounded to float32, here and in the exported remote code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BASE = 10000.0


def axis_dims(head_dim: int) -> int:
    """Rotated channels per axis (t, h, w)."""
    return 2 * ((head_dim // 3) // 2)


def coords(grid: tuple[int, int, int]) -> np.ndarray:
    """(N, 3) integer (frame, row, column) of the tokens of `grid`, ordered (t, h, w)."""
    t, h, w = grid
    return np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"),
                    axis=-1).reshape(-1, 3)


def tables(grid: tuple[int, int, int], head_dim: int) -> np.ndarray:
    """(2, N, head_dim) float32: cos and sin of every token's angle per channel.

    Unrotated channels get cos 1 and sin 0.
    """
    d = axis_dims(head_dim)
    if d == 0:
        raise ValueError(f"rope3d needs a head width of at least 6, got {head_dim}")
    omega = 1.0 / BASE ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))   # (d/2,)
    positions = coords(grid).astype(np.float64)                               # (N, 3)
    angles = positions[:, :, None] * omega                                    # (N, 3, d/2)
    angles = np.concatenate([angles, angles], axis=-1).reshape(len(positions), 3 * d)
    cos = np.ones((len(positions), head_dim))
    sin = np.zeros((len(positions), head_dim))
    cos[:, :3 * d], sin[:, :3 * d] = np.cos(angles), np.sin(angles)
    return np.stack([cos, sin]).astype(np.float32)


def gather(table: np.ndarray, index: jax.Array | None) -> jax.Array:
    """(2, N, Dh) -> (2, B, K, Dh) at token indices `index` (B, K), or (2, 1, N, Dh) for all."""
    table = jnp.asarray(table)
    return table[:, None] if index is None else table[:, index]


def rotate(x: jax.Array, rope: jax.Array) -> jax.Array:
    """x (B, N, H, Dh) rotated by `rope` (2, B|1, N, Dh) from `gather`, in float32."""
    cos, sin = rope[0][:, :, None], rope[1][:, :, None]                       # (B, N, 1, Dh)
    x = x.astype(jnp.float32)
    pairs = x.reshape(*x.shape[:-1], -1, 2)                                   # (B, N, H, Dh/2, 2)
    turned = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    return x * cos + turned * sin

"""Position kinds: fixed sin-cos tables added to the tokens (3D separable, or VideoMAE's 1D),
with resampling, or 3-D rotary positions applied in attention (`rope.py`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """Transformer sinusoids: (len(positions), dim), sines in the first half, cosines after."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(np.asarray(positions, np.float64), omega)     # (N, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    """Separable t/h/w embedding (V-JEPA, uniform power): (T, H, W, dim) float32.

    Each axis gets 2 * ceil(dim / 6) channels; the concatenation is cut to `dim`.
    """
    t, h, w = grid
    part = 2 * math.ceil(dim / 6)
    emb_t = sincos_1d(part, np.arange(t))[:, None, None, :]          # (T, 1, 1, part)
    emb_h = sincos_1d(part, np.arange(h))[None, :, None, :]          # (1, H, 1, part)
    emb_w = sincos_1d(part, np.arange(w))[None, None, :, :]          # (1, 1, W, part)
    full = np.concatenate(np.broadcast_arrays(emb_t, emb_h, emb_w), axis=-1)
    return full[..., :dim].astype(np.float32)


def videomae_sincos(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    """VideoMAE's table over flattened (t, h, w) tokens, interleaved sin/cos: (T, H, W, dim)."""
    n = math.prod(grid)
    exponents = 2 * (np.arange(dim) // 2) / dim
    angles = np.arange(n, dtype=np.float64)[:, None] / np.power(10000, exponents)[None, :]
    table = angles.copy()
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table.reshape(*grid, dim).astype(np.float32)


TABLES = {"sincos3d": sincos_3d, "sincos1d": videomae_sincos}
ROTARY = "rope3d"   # V-JEPA 2's rotary positions: no table, q and k are rotated (rope.py)


def kinds() -> list[str]:
    """The values of `model.pos_embed`."""
    return [*TABLES, ROTARY]


def check(kind: str) -> str:
    if kind not in kinds():
        raise ValueError(f"pos_embed must be one of {kinds()}, got {kind!r}")
    return kind


def fixed(kind: str, dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    if check(kind) == ROTARY:
        raise ValueError("pos_embed=rope3d has no table: it rotates queries and keys")
    return TABLES[kind](dim, grid)


def resample(table: jax.Array, grid: tuple[int, ...]) -> jax.Array:
    """Resizes a (*grid_in, D) position table to (*grid, D) by (tri)linear interpolation."""
    grid = tuple(grid)
    if tuple(table.shape[:-1]) == grid:
        return table
    return jax.image.resize(table, (*grid, table.shape[-1]), method="linear", antialias=False)


def resample_for(kind: str, dim: int, trained_grid: tuple[int, int, int],
                 grid: tuple[int, int, int]) -> jax.Array:
    """The fixed table of a model trained at `trained_grid`, resampled to `grid`."""
    return resample(jnp.asarray(fixed(kind, dim, trained_grid)), grid)

"""Token masks for masked video modeling, jit-able with static shapes.

Every strategy returns `(keep, masked)`: int32 token indices of shape (B, K) and
(B, N - K), each sorted, partitioning range(N) per sample. Tokens are ordered
(t, h, w) over the grid (T', H', W'). K, the number of visible tokens, is fixed by the
grid and ratio, so shapes never change between steps.

Randomness is per sample: sample i of a batch draws from `fold_in(rng, i)`, where i is its
index in the global batch. `samples` is the batch size, or the global indices of the
samples at hand, so a microbatch draws exactly the masks its samples get in the whole
batch (`train.microbatches`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

KINDS = ("tube", "random", "multiblock3d", "attention")


def num_visible(kind: str, grid: tuple[int, int, int], ratio: float) -> int:
    """Visible tokens per clip for a strategy: per-frame counts for tube and attention."""
    t, h, w = grid
    if kind in ("tube", "attention"):
        return t * (h * w - int(ratio * h * w))
    return t * h * w - int(ratio * t * h * w)


def _split(order: jax.Array, num_keep: int) -> tuple[jax.Array, jax.Array]:
    """order (B, N): token indices by priority -> first num_keep visible, the rest masked."""
    keep = jnp.sort(order[:, :num_keep], axis=1).astype(jnp.int32)
    masked = jnp.sort(order[:, num_keep:], axis=1).astype(jnp.int32)
    return keep, masked


def _sample_ids(samples) -> jax.Array:
    """Global sample indices (B,) from a batch size or the indices themselves."""
    return jnp.arange(samples) if isinstance(samples, int) else samples


def _per_sample(draw, rng, samples, shape) -> jax.Array:
    """draw(key, shape) for each sample with its own key: (B, *shape)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(_sample_ids(samples))
    return jax.vmap(lambda key: draw(key, shape))(keys)


def random_mask(rng, samples, grid, ratio: float):
    """Uniformly random tokens over the whole clip (MAE)."""
    n = math.prod(grid)
    order = jnp.argsort(_per_sample(jax.random.uniform, rng, samples, (n,)), axis=1)
    return _split(order, num_visible("random", grid, ratio))


def _per_frame(scores: jax.Array, grid, ratio: float):
    """scores (B, T', H'W'): per time slot, the highest-scoring tokens stay visible."""
    t, h, w = grid
    per_frame = h * w - int(ratio * h * w)
    top = jnp.argsort(-scores, axis=-1)[..., :per_frame]                  # (B, T', k)
    keep = (top + (jnp.arange(t) * h * w)[None, :, None]).reshape(scores.shape[0], -1)  # (B, T*K)
    visible = jnp.zeros((scores.shape[0], t * h * w), bool)
    visible = visible.at[jnp.arange(scores.shape[0])[:, None], keep].set(True)
    order = jnp.argsort(~visible, axis=1, stable=True)   # visible tokens first, in index order
    return _split(order, t * per_frame)


def tube_mask(rng, samples, grid, ratio: float):
    """One random spatial mask per clip, repeated over time (VideoMAE)."""
    t, h, w = grid
    spatial = _per_sample(jax.random.uniform, rng, samples, (1, h * w))     # (B, 1, H'W')
    return _per_frame(jnp.broadcast_to(spatial, (spatial.shape[0], t, h * w)), grid, ratio)


def attention_mask(rng, samples, attention: jax.Array, grid, ratio: float):
    """UMT: per time slot, keep tokens sampled without replacement with probability
    proportional to the teacher's class-token attention (B, T', H'W')."""
    # Gumbel top-k is sampling without replacement proportional to the weights.
    gumbel = _per_sample(jax.random.gumbel, rng, samples, attention.shape[1:])
    return _per_frame(jnp.log(jnp.maximum(attention, 1e-12)) + gumbel, grid, ratio)


def _blocks(rng, samples, grid, num_blocks: int, scale: float,
            aspect: tuple[float, float]) -> jax.Array:
    """(B, H', W') union of `num_blocks` random rectangles, each covering `scale` of the frame.

    As in V-JEPA, the block size is drawn once per batch (per step, from `rng` alone) and
    the positions per sample.
    """
    _, h, w = grid
    size_rng, pos_rng = jax.random.split(rng)
    log_ratio = jax.random.uniform(size_rng, (), minval=math.log(aspect[0]),
                                   maxval=math.log(aspect[1]))
    area = scale * h * w
    bh = jnp.clip(jnp.round(jnp.sqrt(area * jnp.exp(log_ratio))), 1, h)
    bw = jnp.clip(jnp.round(jnp.sqrt(area / jnp.exp(log_ratio))), 1, w)
    corners = _per_sample(jax.random.uniform, pos_rng, samples, (2, num_blocks))   # (B, 2, blocks)
    top, left = corners[:, 0] * (h - bh + 1), corners[:, 1] * (w - bw + 1)
    top, left = jnp.floor(top)[..., None, None], jnp.floor(left)[..., None, None]
    rows = jnp.arange(h)[None, None, :, None]
    cols = jnp.arange(w)[None, None, None, :]
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return inside.any(axis=1)                                             # (B, H', W')


def multiblock3d_mask(rng, samples, grid, ratio: float, *, short=(8, 0.15), long=(2, 0.7),
                      aspect=(0.75, 1.5)):
    """V-JEPA multi-block masks spanning the whole clip in time.

    Even samples (by global index) get the short-range mask (8 blocks at scale 0.15), odd
    samples the long-range one (2 blocks at 0.7), as V-JEPA's two masks per clip. The
    visible set is the unmasked region, trimmed at random (or topped up with random
    masked tokens) to the fixed count K = N - int(ratio * N).
    """
    t, h, w = grid
    ids = _sample_ids(samples)
    batch = ids.shape[0]
    r_short, r_long, r_noise = jax.random.split(rng, 3)
    short_m = _blocks(r_short, ids, grid, short[0], short[1], aspect)
    long_m = _blocks(r_long, ids, grid, long[0], long[1], aspect)
    use_long = (ids % 2 == 1)[:, None, None]
    spatial = jnp.where(use_long, long_m, short_m).reshape(batch, 1, h * w)  # (B, 1, H*W)
    in_block = jnp.broadcast_to(spatial, (batch, t, h * w)).reshape(batch, -1)  # (B, T*H*W)
    noise = _per_sample(jax.random.uniform, r_noise, ids, in_block.shape[1:])
    order = jnp.argsort(in_block.astype(jnp.float32) + noise, axis=1)     # unmasked first
    return _split(order, num_visible("multiblock3d", grid, ratio))


def make_mask(kind: str, rng, samples, grid, ratio: float, attention: jax.Array | None = None):
    """Dispatches on the strategy name; `samples` is the batch size or the samples' global
    indices (B,); `attention` (B, T', H'W') is needed for 'attention'."""
    if kind == "tube":
        return tube_mask(rng, samples, grid, ratio)
    if kind == "random":
        return random_mask(rng, samples, grid, ratio)
    if kind == "multiblock3d":
        return multiblock3d_mask(rng, samples, grid, ratio)
    if kind == "attention":
        if attention is None:
            raise ValueError("attention masking needs the image teacher's class-token attention")
        return attention_mask(rng, samples, attention, grid, ratio)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {KINDS}")

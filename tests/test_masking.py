"""Masking strategies: ratios, coverage, determinism, attention guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twlv_jax.objectives import masking

GRID = (4, 6, 6)
N = 4 * 6 * 6


def visible_counts(keep, n):
    counts = np.zeros(n, int)
    np.add.at(counts, np.asarray(keep).ravel(), 1)
    return counts


@pytest.mark.parametrize("kind", masking.KINDS)
def test_a_microbatch_draws_the_masks_of_its_samples_in_the_whole_batch(kind):
    attention = jax.random.uniform(jax.random.key(9), (12, 4, 36))
    whole = masking.make_mask(kind, jax.random.key(4), 12, GRID, 0.8, attention)
    rows = jnp.arange(1, 12, 3)                    # every third sample, from the second
    part = masking.make_mask(kind, jax.random.key(4), rows, GRID, 0.8, attention[rows])
    for full, sub in zip(whole, part, strict=True):
        np.testing.assert_array_equal(sub, np.asarray(full)[np.asarray(rows)])


@pytest.mark.parametrize("kind,ratio,expected_visible", [
    ("tube", 0.9, 4 * (36 - 32)), ("random", 0.75, N - 108), ("multiblock3d", 0.9, N - 129),
    ("attention", 0.8, 4 * (36 - 28)),
])
def test_shapes_partition_and_ratio(kind, ratio, expected_visible):
    attention = jax.random.uniform(jax.random.key(9), (16, 4, 36))
    keep, masked = masking.make_mask(kind, jax.random.key(0), 16, GRID, ratio, attention)
    assert keep.shape == (16, expected_visible) and masked.shape == (16, N - expected_visible)
    assert keep.dtype == jnp.int32
    both = np.sort(np.concatenate([keep, masked], axis=1), axis=1)
    np.testing.assert_array_equal(both, np.tile(np.arange(N), (16, 1)))   # a partition per sample
    assert np.all(np.diff(keep, axis=1) > 0) and np.all(np.diff(masked, axis=1) > 0)
    assert masking.num_visible(kind, GRID, ratio) == expected_visible


@pytest.mark.parametrize("kind", masking.KINDS)
def test_every_position_can_be_masked_and_masks_vary(kind):
    attention = jnp.ones((64, 4, 36))
    keep, _ = masking.make_mask(kind, jax.random.key(1), 64, GRID, 0.8, attention)
    counts = visible_counts(keep, N)
    assert counts.max() < 64                       # every position masked in some sample
    assert len({tuple(k) for k in np.asarray(keep)}) > 32


@pytest.mark.parametrize("kind", masking.KINDS)
def test_deterministic_under_a_seed(kind):
    attention = jax.random.uniform(jax.random.key(2), (8, 4, 36))
    a = masking.make_mask(kind, jax.random.key(5), 8, GRID, 0.8, attention)
    b = masking.make_mask(kind, jax.random.key(5), 8, GRID, 0.8, attention)
    c = masking.make_mask(kind, jax.random.key(6), 8, GRID, 0.8, attention)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_tube_mask_is_the_same_in_every_frame():
    keep, _ = masking.tube_mask(jax.random.key(0), 4, GRID, 0.9)
    spatial = np.asarray(keep).reshape(4, 4, -1) % 36              # (B, T', per-frame)
    assert np.all(spatial == spatial[:, :1])


def test_attention_mask_keeps_high_attention_tokens_more_often():
    attention = jnp.tile(jnp.linspace(0.01, 1.0, 36)[None, None], (512, 4, 1))
    keep, _ = masking.attention_mask(jax.random.key(0), 512, attention, GRID, 0.8)
    counts = visible_counts(keep, N).reshape(4, 36).sum(0)
    low, high = counts[:12].sum(), counts[-12:].sum()
    assert high > 3 * low
    assert counts.min() < counts.max() / 5                     # low-attention tokens mostly masked
    per_frame = np.asarray(keep).reshape(512, 4, -1) // 36
    assert np.all(per_frame == np.arange(4)[None, :, None])     # 8 visible tokens in every frame


def test_multiblock_visible_tokens_come_from_outside_the_blocks():
    rng, batch = jax.random.key(3), 32
    keep, _ = masking.multiblock3d_mask(rng, batch, GRID, 0.9)
    r_short, r_long, _ = jax.random.split(rng, 3)       # as multiblock3d_mask splits it
    short = np.asarray(masking._blocks(r_short, batch, GRID, 8, 0.15, (0.75, 1.5))).reshape(batch, -1)
    long = np.asarray(masking._blocks(r_long, batch, GRID, 2, 0.7, (0.75, 1.5))).reshape(batch, -1)
    assert 0.5 < short.mean() < 0.9 and long.mean() > short.mean()
    spatial = np.asarray(keep) % 36                      # (B, K) spatial position of each token
    for i in range(batch):
        in_block = (long if i % 2 else short)[i]
        free = (~in_block).sum() * 4                     # unmasked tokens over the 4 time slots
        inside = in_block[spatial[i]].sum()
        # Visible tokens are drawn from the unmasked region first, topped up only when short.
        assert inside == max(0, keep.shape[1] - free)


def test_unknown_kind_and_missing_attention():
    with pytest.raises(ValueError, match="unknown mask kind 'grid'"):
        masking.make_mask("grid", jax.random.key(0), 2, GRID, 0.5)
    with pytest.raises(ValueError, match="needs the image teacher's class-token attention"):
        masking.make_mask("attention", jax.random.key(0), 2, GRID, 0.5)

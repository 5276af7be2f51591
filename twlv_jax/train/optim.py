"""AdamW with warmup + cosine learning rate, a weight-decay schedule, decay only on matmul
weights, global-norm clipping and optional layer-wise learning-rate decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Parameters that are weight matrices; everything else (biases, norms, mask/query tokens,
# class and position embeddings) gets no weight decay.
DECAYED = ("kernel", "qkv", "out")


def peak_lr(optim_cfg, batch_size: int) -> float:
    """optim.lr is per `optim.lr_batch` clips and scales linearly with the global batch."""
    return optim_cfg.lr * (batch_size / optim_cfg.lr_batch if optim_cfg.lr_batch else 1.0)


def lr_schedule(optim_cfg, *, batch_size: int, total_steps: int, warmup_steps: int):
    peak = peak_lr(optim_cfg, batch_size)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=max(warmup_steps, 0),
        decay_steps=max(total_steps, warmup_steps + 1), end_value=peak * optim_cfg.min_lr_ratio)


def wd_schedule(optim_cfg, total_steps: int):
    return optax.cosine_decay_schedule(
        init_value=optim_cfg.weight_decay, decay_steps=max(total_steps, 1),
        alpha=(optim_cfg.weight_decay_end / optim_cfg.weight_decay) if optim_cfg.weight_decay else 1.0)


def _last_key(path) -> str:
    key = path[-1]
    return str(getattr(key, "key", getattr(key, "name", key)))


def decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: _last_key(path) in DECAYED, params)


def layer_scales(params, depth: int, decay: float):
    """Per-parameter update scales for layer-wise lr decay: block i of the student gets
    decay**(depth - i), its patch embedding decay**(depth + 1)... counted from the heads."""

    def scale(path, x):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[:1] != ["student"]:
            return jnp.ones(())
        if keys[1:2] == ["blocks"]:                 # stacked blocks: one scale per layer
            per_layer = decay ** (depth - jnp.arange(depth, dtype=jnp.float32))
            return per_layer.reshape((depth,) + (1,) * (x.ndim - 1)) if x.ndim else per_layer
        if keys[1:2] == ["patch_embed"]:
            return jnp.asarray(decay ** (depth + 1), jnp.float32)
        return jnp.ones(())

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiplies each update leaf by a fixed array (broadcast)."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm, scaling by one multiplier instead of dividing every element:
    XLA fuses the multiplication into the moment updates where it writes out the divided
    gradients (ViT-B on a 2-core CPU: 1.2x faster optimizer update)."""

    def update(updates, state, params=None):
        scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(optim_cfg, params, *, batch_size: int, total_steps: int, warmup_steps: int,
                   depth: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (optimizer, learning-rate schedule) for the trainable `params` tree."""
    lr = lr_schedule(optim_cfg, batch_size=batch_size, total_steps=total_steps,
                     warmup_steps=warmup_steps)
    parts = []
    if optim_cfg.clip_norm > 0:
        parts.append(clip_by_global_norm(optim_cfg.clip_norm))
    parts += [optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
              optax.add_decayed_weights(wd_schedule(optim_cfg, total_steps), mask=decay_mask(params))]
    if optim_cfg.layer_decay < 1.0:
        parts.append(scale_by_tree(layer_scales(params, depth, optim_cfg.layer_decay)))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts), lr

"""Loss functions shared by the targets, computed in float32."""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(prediction.astype(jnp.float32) - target))


def l1(prediction: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(prediction.astype(jnp.float32) - target))


def constant_prediction(target: jax.Array) -> jax.Array:
    """The trivial baseline of a target (..., B, tokens, D): its mean over batch and tokens,
    broadcast back to its shape (the best constant under MSE; a collapsed representation
    makes every target equal to it)."""
    return jnp.broadcast_to(target.mean(axis=(-3, -2), keepdims=True), target.shape)


def cosine_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """mean(2 - 2 cos) between L2-normalised vectors over the last axis."""
    return jnp.mean(2.0 - 2.0 * jnp.sum(l2_normalize(prediction) * l2_normalize(target), axis=-1))


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Parameter-free LayerNorm over the last axis (V-JEPA's target normalisation)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + eps)

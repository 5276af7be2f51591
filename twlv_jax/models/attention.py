"""Memory-efficient (blockwise) attention for backends without a fused kernel.

`jax.nn.dot_product_attention(implementation='xla')` materialises the (B, H, N, N)
float32 logits and probabilities, and a layer scan keeps them for every layer until the
backward pass. Here queries go in blocks: the forward keeps only q, k, v, the output and
the log-sum-exp per query, and the backward recomputes each block's probabilities
(FlashAttention's scheme, in plain JAX).

Heads run in groups, heads-major with one transpose in and out: all B x H heads as one
group in blocks of at least `target`/2 queries, or with `one_head` one head at a time (what
`cpu_kernels.attention` does for long sequences).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

F32 = jnp.float32


def query_blocks(tokens: int, target: int = 256) -> int:
    """The most blocks that divide `tokens` with at least target/2 queries each (1 if short)."""
    if tokens <= target:
        return 1
    return max(c for c in range(1, tokens + 1) if tokens % c == 0 and tokens // c >= target // 2)


def plan(heads: int, tokens: int, target: int = 256, one_head: bool = False) -> tuple[int, int]:
    """(heads per group, query blocks) for `heads` = B x H heads of `tokens` tokens."""
    return 1 if one_head else heads, query_blocks(tokens, target)


def _split(x: jax.Array, blocks: int) -> jax.Array:
    """(G, N, ...) -> (blocks, G, N/blocks, ...)."""
    g, n = x.shape[:2]
    return jnp.moveaxis(x.reshape(g, blocks, n // blocks, *x.shape[2:]), 1, 0)


def _merge(x: jax.Array) -> jax.Array:
    """(blocks, G, n, ...) -> (G, blocks * n, ...)."""
    blocks, g, n = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape(g, blocks * n, *x.shape[3:])


def _groups(x: jax.Array, group: int) -> jax.Array:
    """(heads, ...) -> (heads / group, group, ...)."""
    return x.reshape(x.shape[0] // group, group, *x.shape[1:])


def _attend_block(q, k, v):
    """Queries (G, n, D) against all keys: (output (G, n, D) float32, lse (G, n))."""
    logits = jnp.einsum("gqd,gkd->gqk", q, k, preferred_element_type=F32)
    top = logits.max(-1, keepdims=True)
    weights = jnp.exp(logits - top)
    total = weights.sum(-1, keepdims=True)
    out = jnp.einsum("gqk,gkd->gqd", weights.astype(v.dtype), v, preferred_element_type=F32)
    return out / total, (top + jnp.log(total))[..., 0]


def _forward_group(q, k, v, blocks: int):
    out, lse = jax.lax.map(lambda qb: _attend_block(qb, k, v), _split(q, blocks))
    return _merge(out), _merge(lse)


def _backward_group(q, k, v, d_out, lse, delta, blocks: int):
    def block(carry, xs):
        dk_t, dv_t = carry                                                # (G, D, N) each
        qb, dob, qb_t, dob_t, lse_b, delta_b = xs
        logits = jnp.einsum("gqd,gkd->gqk", qb, k, preferred_element_type=F32)
        probs = jnp.exp(logits - lse_b[..., None])
        dv_t = dv_t + jnp.einsum("gdq,gqk->gdk", dob_t, probs.astype(dob.dtype),
                                 preferred_element_type=F32)
        dp = jnp.einsum("gqd,gkd->gqk", dob, v, preferred_element_type=F32)
        ds = (probs * (dp - delta_b[..., None])).astype(qb.dtype)
        dq = jnp.einsum("gqk,gkd->gqd", ds, k, preferred_element_type=F32)
        dk_t = dk_t + jnp.einsum("gdq,gqk->gdk", qb_t, ds, preferred_element_type=F32)
        return (dk_t, dv_t), dq

    # dK and dV contract over the queries. XLA's CPU backend runs a product contracting the
    # probabilities' leading axis as a float32 loop, so the accumulators are kept transposed,
    # (G, D, N), from small transposed copies of the query and gradient blocks (barriers keep
    # XLA from folding the transposes back into the products).
    q_blocks, d_out_blocks = _split(q, blocks), _split(d_out, blocks)     # (blocks, G, n, D)
    transposed = jax.lax.optimization_barrier((q_blocks.swapaxes(-1, -2),
                                               d_out_blocks.swapaxes(-1, -2)))
    zeros = jnp.zeros(k.swapaxes(-1, -2).shape, F32)
    xs = (q_blocks, d_out_blocks, *transposed, _split(lse, blocks), _split(delta, blocks))
    (dk_t, dv_t), dq = jax.lax.scan(block, (zeros, zeros), xs)
    dk, dv = (t.swapaxes(-1, -2) for t in jax.lax.optimization_barrier((dk_t, dv_t)))
    return _merge(dq), dk, dv


def _forward(q, k, v, group: int, blocks: int):
    """q, k, v: (heads, N, D)."""
    out, lse = jax.lax.map(lambda qkv: _forward_group(*qkv, blocks),
                           (_groups(q, group), _groups(k, group), _groups(v, group)))
    out, lse = out.reshape(q.shape), lse.reshape(q.shape[:2])
    return out, (q, k, v, out, lse)


def _backward(group: int, blocks: int, residuals, d_out):
    q, k, v, out, lse = residuals
    delta = jnp.sum(d_out.astype(F32) * out, -1)                          # (heads, N)
    d_out = d_out.astype(v.dtype)
    per_group = tuple(_groups(a, group) for a in (q, k, v, d_out, lse, delta))
    dq, dk, dv = jax.lax.map(lambda args: _backward_group(*args, blocks), per_group)
    return (dq.reshape(q.shape).astype(q.dtype), dk.reshape(k.shape).astype(k.dtype),
            dv.reshape(v.shape).astype(v.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attend(q, k, v, group, blocks):
    return _forward(q, k, v, group, blocks)[0]


_attend.defvjp(_forward, _backward)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, target: int = 256,
                        one_head: bool = False) -> jax.Array:
    """softmax(q kᵀ / sqrt(D)) v for (B, N, H, D) inputs, as `jax.nn.dot_product_attention`;
    the result is float32. Query blocks of at least `target`/2; `one_head`: heads one at a time."""
    b, n, h, d = q.shape
    scale = 1.0 / np.sqrt(d)
    heads_major = lambda t: t.transpose(0, 2, 1, 3).reshape(b * h, t.shape[1], d)   # (B*H, N, D)
    q, k, v = (heads_major(t) for t in ((q * scale).astype(q.dtype), k, v))
    out = _attend(q, k, v, *plan(b * h, n, target, one_head))
    return out.reshape(b, h, n, d).transpose(0, 2, 1, 3)                  # (B, N, H, D)

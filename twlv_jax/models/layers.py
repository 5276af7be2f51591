"""Transformer building blocks in Flax NNX, annotated with logical axis names.

Parameters are float32; `dtype` is the compute dtype of matmuls (bfloat16 runs with
float32 accumulation). Norms, softmax and the residual stream stay in float32.
Blocks of a `Transformer` are stacked (leading `layers` axis) and run either with
`jax.lax.scan` or a Python loop over the same parameters, optionally rematerialised.
Named scopes (`matmul`, `attention`, `layernorm`, the activation, `drop_path`,
`layer_slices`) say what kind of work each op is in profiles (`benchmarks/step_profile.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twlv_jax.models import cpu_kernels
from twlv_jax.models import rope as rotary
from twlv_jax.models.attention import blockwise_attention
from twlv_jax.parallel.sharding import constrain

F32 = jnp.float32
IMPLEMENTATIONS = (None, "auto", "blockwise", "xla", "cudnn")
INIT = nnx.initializers.truncated_normal(0.02)
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], init=INIT):
    """A float32 parameter with logical axis names (sharded later, from the names: no eager sharding)."""
    return nnx.Param(init(rngs.params(), tuple(shape), F32), out_sharding=tuple(axes),
                     eager_sharding=False)


@jax.named_scope("matmul")
def matmul(x: jax.Array, kernel: jax.Array, spec: str, dtype) -> jax.Array:
    """einsum in the compute dtype with float32 accumulation; the result is float32.

    In bfloat16 the backward matmuls run in bfloat16 too (float32 accumulation), as
    `torch.autocast` does. The product is written in bfloat16 (GPU and TPU matmuls accumulate
    in float32 regardless) and widened after: half the memory traffic. Compiled for CPUs:
    `cpu_kernels.matmul`.
    """
    if cpu_kernels.enabled():
        return cpu_kernels.matmul(x, kernel, spec, dtype)
    dtype = jnp.dtype(dtype)
    if dtype == F32:
        return jnp.einsum(spec, x.astype(F32), kernel.astype(F32), preferred_element_type=F32)
    y = jnp.einsum(spec, x.astype(dtype), kernel.astype(dtype), preferred_element_type=dtype)
    return y.astype(F32)


@jax.named_scope("attention")
def attend(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
    """softmax(q kᵀ / sqrt(D)) v of (B, N, H, D) heads by `implementation` (see `Attention`).
    Compiled for CPUs, 'auto' and 'blockwise' are `cpu_kernels.attention`."""
    if implementation in ("auto", "blockwise") and cpu_kernels.enabled():
        return cpu_kernels.attention(q, k, v)
    if implementation == "blockwise":
        return blockwise_attention(q, k, v)
    if implementation == "auto":
        gpu16 = cpu_kernels.target_platform() == "gpu" and q.dtype.itemsize == 2
        implementation = "cudnn" if gpu16 else None
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


class Dense(nnx.Module):
    """y = x W + b over the last axis; W is (din, dout) with logical names `axes`."""

    def __init__(self, din: int, dout: int, axes: tuple[str | None, str | None], *,
                 use_bias: bool = True, dtype=F32, rngs: nnx.Rngs):
        self.kernel = param(rngs, (din, dout), axes)
        self.bias = param(rngs, (dout,), axes[1:], nnx.initializers.zeros) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul(x, self.kernel[...], "...i,io->...o", self.dtype)
        return y + self.bias[...] if self.bias is not None else y


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6, *, rngs: nnx.Rngs):
        self.scale = param(rngs, (dim,), (None,), nnx.initializers.ones)
        self.bias = param(rngs, (dim,), (None,), nnx.initializers.zeros)
        self.eps = eps

    @jax.named_scope("layernorm")
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(F32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class Attention(nnx.Module):
    """Multi-head self-attention.

    qkv kernel is (D, 3, H, Dh); `qkv_bias` is 'all', 'qv' (VideoMAE: no key bias) or 'none'.
    `implementation`: 'blockwise' (memory-efficient, `attention.py`), 'xla' or 'cudnn' (through
    `jax.nn.dot_product_attention`), or 'auto': cuDNN on GPUs in 16-bit, blockwise on CPUs
    (`cpu_kernels.attention`), JAX's choice elsewhere.
    """

    def __init__(self, dim: int, heads: int, *, qkv_bias: str = "all", dtype=F32,
                 implementation: str | None = None, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        if qkv_bias not in ("all", "qv", "none"):
            raise ValueError(f"qkv_bias must be 'all', 'qv' or 'none', got {qkv_bias!r}")
        head_dim = dim // heads
        zeros = nnx.initializers.zeros
        self.qkv = param(rngs, (dim, 3, heads, head_dim), ("embed", None, "heads", "kv"))
        self.qkv_bias = (param(rngs, (3, heads, head_dim), (None, "heads", "kv"), zeros)
                         if qkv_bias == "all" else None)
        self.q_bias = param(rngs, (heads, head_dim), ("heads", "kv"), zeros) if qkv_bias == "qv" else None
        self.v_bias = param(rngs, (heads, head_dim), ("heads", "kv"), zeros) if qkv_bias == "qv" else None
        self.out = param(rngs, (heads, head_dim, dim), ("heads", "kv", "embed"))
        self.out_bias = param(rngs, (dim,), (None,), zeros)
        self.dtype = dtype
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {IMPLEMENTATIONS[1:]}, got {implementation!r}")
        self.implementation = implementation or "auto"

    def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        qkv = matmul(x, self.qkv[...], "bnd,dkhe->bnkhe", self.dtype)   # (B, N, 3, H, Dh)
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias[...]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]               # (B, N, H, Dh) each
        if self.q_bias is not None:
            q, v = q + self.q_bias[...], v + self.v_bias[...]
        names = ("batch", "tokens", "act_heads", None)
        return constrain(q, names), constrain(k, names), constrain(v, names)

    def __call__(self, x: jax.Array, rope: jax.Array | None = None) -> jax.Array:
        """x (B, N, D); `rope` (2, B|1, N, Dh): rotary positions for q and k (`rope.gather`)."""
        q, k, v = self.project_qkv(x)
        if rope is not None:
            q, k = rotary.rotate(q, rope), rotary.rotate(k, rope)
        q, k, v = (t.astype(self.dtype) for t in (q, k, v))
        y = attend(q, k, v, self.implementation)
        return matmul(y, self.out[...], "bnhe,hed->bnd", self.dtype) + self.out_bias[...]

    def cls_attention(self, x: jax.Array) -> jax.Array:
        """Attention of token 0 (the class token) over tokens 1..N-1, mean over heads: (B, N-1)."""
        q, k, _ = self.project_qkv(x)
        logits = jnp.einsum("bhe,bnhe->bhn", q[:, 0].astype(F32), k.astype(F32))
        probs = jax.nn.softmax(logits / np.sqrt(q.shape[-1]), axis=-1)   # (B, H, N)
        return probs[:, :, 1:].mean(axis=1)


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, act: str = "gelu", dtype=F32, rngs: nnx.Rngs):
        self.fc1 = Dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = Dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.fc1(x)
        with jax.named_scope(self.act):
            h = ACTIVATIONS[self.act](h)
        return self.fc2(constrain(h, ("batch", "tokens", "act_mlp")))


@jax.named_scope("drop_path")
def drop_path(x: jax.Array, rate, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth on a residual branch: drops whole samples with probability `rate`."""
    if rng is None:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0)


class Block(nnx.Module):
    """Pre-norm transformer block with optional LayerScale and stochastic depth."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, *, qkv_bias: str = "all",
                 layerscale: float = 0.0, act: str = "gelu", eps: float = 1e-6, dtype=F32,
                 attention: str | None = None, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, eps, rngs=rngs)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, dtype=dtype,
                              implementation=attention, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps, rngs=rngs)
        self.mlp = Mlp(dim, mlp_dim, act=act, dtype=dtype, rngs=rngs)
        init = nnx.initializers.constant(layerscale)
        self.gamma1 = param(rngs, (dim,), (None,), init) if layerscale else None
        self.gamma2 = param(rngs, (dim,), (None,), init) if layerscale else None

    def __call__(self, x: jax.Array, rate=0.0, rng: jax.Array | None = None,
                 rope: jax.Array | None = None) -> jax.Array:
        rngs = (None, None) if rng is None else tuple(jax.random.split(rng))
        h = self.attn(self.norm1(x), rope)
        if self.gamma1 is not None:
            h = h * self.gamma1[...]
        x = x + drop_path(h, rate, rngs[0])
        h = self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            h = h * self.gamma2[...]
        return x + drop_path(h, rate, rngs[1])


class Transformer(nnx.Module):
    """`depth` stacked blocks; `__call__` can return the outputs of chosen layers."""

    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int, *, qkv_bias: str = "all",
                 layerscale: float = 0.0, act: str = "gelu", eps: float = 1e-6,
                 drop_path: float = 0.0, dtype=F32, scan: bool = True, remat: str = "none",
                 attention: str | None = None, rngs: nnx.Rngs):
        if remat != "none" and remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {remat!r}")

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(dim, heads, mlp_dim, qkv_bias=qkv_bias, layerscale=layerscale, act=act,
                         eps=eps, dtype=dtype, attention=attention, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.depth, self.scan, self.remat = depth, scan, remat
        self.drop_rates = tuple(float(r) for r in np.linspace(0.0, drop_path, depth))

    def layer(self, index: int) -> Block:
        """Block `index` as a module of its own (a view of the stacked parameters)."""
        graphdef, stacked = nnx.split(self.blocks)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[index], stacked))

    def __call__(self, x: jax.Array, *, rng: jax.Array | None = None,
                 collect: Sequence[int] = (),
                 rope: jax.Array | None = None) -> tuple[jax.Array, dict[int, jax.Array]]:
        """Runs all blocks on x (B, N, D); returns (output, {layer index: that layer's output}).

        `rope`: rotary positions of the tokens, applied to q and k in every block.
        """
        collect = sorted({i % self.depth for i in collect})
        graphdef, stacked = nnx.split(self.blocks)
        rates = jnp.asarray(self.drop_rates, F32)
        keys = None if rng is None else jax.random.split(rng, self.depth)

        def apply(x, layer_inputs):
            params, rate, key = layer_inputs
            x = constrain(x, ("batch", "tokens", "act_embed"))
            return nnx.merge(graphdef, params)(x, rate, key, rope), None

        if self.remat != "none":
            apply = jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat])

        outputs, start = {}, 0
        for end in [*[i + 1 for i in collect], self.depth]:
            if end == start:
                continue
            segment = slice(start, end)
            with jax.named_scope("layer_slices"):
                inputs = jax.tree.map(lambda a, s=segment: a[s], (stacked, rates, keys))
            if self.scan:
                x, _ = jax.lax.scan(apply, x, inputs)
            else:
                for i in range(end - start):
                    with jax.named_scope("layer_slices"):
                        layer = jax.tree.map(lambda a, i=i: a[i], inputs)
                    x, _ = apply(x, layer)
            if end - 1 in collect:
                outputs[end - 1] = x
            start = end
        return x, outputs

"""Kernels for XLA's CPU backend, behind one switch: `enabled()`.

The model's code (`models.layers`) is plain `jnp.einsum` and `jax.nn.dot_product_attention`,
what GPUs and TPUs compile well. XLA's CPU backend compiles some of those layouts poorly, so
where the code being traced compiles for CPU devices the model takes these instead:

- `matmul`: products as one matrix product with a custom gradient;
- `attention`: blockwise attention (`models/attention.py`), long sequences one head at a time.

Same results as the plain code up to float rounding (`tests/test_models.py`); what each
buys, measured: BENCHMARKS.md, "CPU kernels".
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from twlv_jax.models.attention import blockwise_attention
from twlv_jax.parallel.sharding import current_mesh

F32 = jnp.float32
ENV = "TWLV_CPU_KERNELS"  # "0": plain code on CPUs too
LONG = 512                # tokens from which attention goes one head at a time
LONG_TARGET = 784         # query block target then


def target_platform() -> str:
    """The platform the code being traced compiles for: that of the mesh of the enclosing
    `use_rules` (compile-only TPU or GPU devices of `twlv plan` included), else JAX's default
    backend."""
    mesh = current_mesh()
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def enabled() -> bool:
    """Whether the model takes these kernels: when it compiles for CPUs, unless
    TWLV_CPU_KERNELS=0."""
    return target_platform() == "cpu" and os.environ.get(ENV, "1") != "0"


def matmul(x: jax.Array, kernel: jax.Array, spec: str, dtype) -> jax.Array:
    """`layers.matmul` for XLA's CPU backend: einsum(spec) of x and kernel cast to `dtype`,
    float32 result, through `_einsum`'s gradient."""
    dtype = jnp.dtype(dtype)
    split = _matrix_split(spec)
    if split is None:
        return _einsum(spec, dtype)(x, kernel)
    # One matrix product, x (..., C) by kernel (C, R). XLA's CPU backend copies a kernel with
    # several C or R axes, transposed, for the backward matmul; as a matrix its backward reads
    # the kernel as it is.
    lead = x.shape[:x.ndim - split]
    # float32: x with one row axis. Its weight gradient then contracts that axis in place; with
    # several row axes XLA first copies x transposed, recomputing x's producers (LayerNorm,
    # GELU) in a slow strided loop. bfloat16 keeps the row axes: XLA's in-place bf16 product is
    # slower than its bf16 kernel on the transposed copy. So do meshes of several devices: the
    # row axes carry the batch sharding, and merging them made GSPMD reshard through collective
    # permutes (XLA's in-process CPU collectives deadlocked on them).
    mesh = current_mesh()
    one_row_axis = dtype == F32 and (mesh is None or mesh.size == 1)
    rows = (int(np.prod(lead)),) if one_row_axis else lead
    y = _einsum("...i,io->...o", dtype)(
        x.reshape(*rows, -1),                                      # (rows, prod(C))
        kernel.reshape(int(np.prod(kernel.shape[:split])), -1))    # (prod(C), prod(R))
    return y.reshape(*lead, *kernel.shape[split:])


def _matrix_split(spec: str) -> int | None:
    """For einsums `x kernel -> y` that are one matrix product, x (..., C) by kernel (C, R) with
    C and R groups of axes (x's last, the kernel's first and last), the number of C axes."""
    operands, out = spec.split("->")
    lhs, rhs = operands.split(",")
    split = sum(1 for axis in rhs if axis in lhs and axis not in out)
    contracted, kept = rhs[:split], rhs[split:]
    if split and lhs.endswith(contracted) and out == lhs[:-split] + kept:
        return split
    return None


@functools.cache
def _einsum(spec: str, dtype):
    """einsum(spec) of operands cast to `dtype` with a float32 result, with a custom gradient:

    - XLA's CPU backend is fastest asking for float32 results, so the backward casts the
      incoming cotangent to `dtype` (bfloat16: without it both backward matmuls would run in
      float32);
    - the saved operands are the float32 inputs, cast again in the backward (saving `dtype`
      copies makes XLA convert whole stacked buffers in a layer scan);
    - in float32 too: left to autodiff, XLA fuses the forward's producers (LayerNorm, GELU)
      into the transposed copies the weight gradients need and recomputes them per element
      there.
    """
    operands, out = spec.split("->")
    lhs, rhs = operands.split(",")

    @jax.custom_vjp
    def einsum(a, b):
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=F32)

    def forward(a, b):
        return einsum(a, b), (a, b)

    def backward(residuals, g):
        a, b = residuals
        a16, b16, g16 = a.astype(dtype), b.astype(dtype), g.astype(dtype)
        da = jnp.einsum(f"{out},{rhs}->{lhs}", g16, b16, preferred_element_type=F32)
        db = jnp.einsum(f"{lhs},{out}->{rhs}", a16, g16, preferred_element_type=F32)
        return da.astype(a.dtype), db.astype(b.dtype)

    einsum.defvjp(forward, backward)
    return einsum


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Blockwise attention of (B, N, H, D) inputs (float32 result). Sequences of at least
    `LONG` tokens go one head at a time in query blocks of at least `LONG_TARGET`/2, so that
    a block's probabilities stay small; shorter ones run all heads at once."""
    if q.shape[1] >= LONG:
        return blockwise_attention(q, k, v, target=LONG_TARGET, one_head=True)
    return blockwise_attention(q, k, v)

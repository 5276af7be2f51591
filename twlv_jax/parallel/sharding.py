"""Logical axis rules: one table per strategy maps the model's axis names to mesh axes.

Parameters carry logical names (`embed`, `mlp`, `heads`, `kv`, `layers`, ...) as their
`out_sharding` metadata (`models.layers.param`; nothing is sharded eagerly), and
`param_shardings` turns them into NamedShardings; activations are constrained with
`constrain(x, names)`. A rule
that does not divide a dimension evenly is dropped for that array (it stays replicated
along that axis), and `unsharded_fraction` reports how much ended up replicated.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_BATCH = ("batch", ("data", "fsdp"))

RULES: dict[str, tuple[tuple[str, str | tuple[str, ...]], ...]] = {
    # Data parallel: parameters replicated, batch split over every device.
    "dp": (_BATCH,),
    # Fully sharded data parallel: every kernel split along its model-width axis.
    "fsdp": (_BATCH, ("embed", "fsdp")),
    # FSDP plus tensor parallel attention heads and MLP hidden units.
    "fsdp_tp": (_BATCH, ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                ("act_mlp", "tensor"), ("act_heads", "tensor")),
}

_CONTEXT: contextvars.ContextVar[tuple[Mesh, str] | None] = contextvars.ContextVar(
    "twlv_sharding_rules", default=None)


def rules_table(name: str) -> dict[str, tuple[str, ...]]:
    if name not in RULES:
        raise ValueError(f"mesh.rules: unknown rules {name!r}; expected one of {sorted(RULES)}")
    return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in RULES[name]}


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: str) -> P:
    """Maps per-dimension logical names to a PartitionSpec that divides `shape` evenly."""
    table = rules_table(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        axes = tuple(a for a in table.get(name, ()) if a not in used and mesh.shape[a] > 1)
        while axes and size % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _names_of(leaf_spec, ndim: int) -> tuple:
    names = tuple(leaf_spec) if leaf_spec is not None else ()
    return names + (None,) * (ndim - len(names))


def param_shardings(abstract_state, logical_specs, mesh: Mesh, rules: str):
    """NamedShardings for a pytree of arrays given matching logical PartitionSpecs."""
    return jax.tree.map(
        lambda x, spec: NamedSharding(
            mesh, logical_to_spec(_names_of(spec, len(x.shape)), x.shape, mesh, rules)),
        abstract_state, logical_specs,
        is_leaf=lambda s: isinstance(s, P))


def unsharded_fraction(abstract_state, shardings) -> float:
    """Share of parameter bytes that every device holds in full."""
    total = replicated = 0
    for x, s in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)):
        size = math.prod(x.shape) * x.dtype.itemsize
        total += size
        if s.is_fully_replicated:
            replicated += size
    return replicated / max(total, 1)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: str) -> Iterator[None]:
    """Activations traced inside this context are constrained by `rules` on `mesh`."""
    rules_table(rules)
    token = _CONTEXT.set((mesh, rules))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `use_rules`."""
    context = _CONTEXT.get()
    if context is None:
        return x
    mesh, rules = context
    spec = logical_to_spec(tuple(names) + (None,) * (x.ndim - len(names)), x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def current_mesh() -> Mesh | None:
    """The mesh of the enclosing `use_rules`; None outside it."""
    context = _CONTEXT.get()
    return None if context is None else context[0]

"""The device mesh: axes (data, fsdp, tensor), all `AxisType.Auto` (GSPMD propagation)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from twlv_jax.config import mesh_shape

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")   # the global batch is split over both


def make_mesh(shape: str | tuple[int, ...], devices=None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh from 'D,F,T' (one -1 fills the remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(shape, len(devices))
    if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
        return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.array(devices).reshape(sizes), AXES, axis_types=(AxisType.Auto,) * 3)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def microbatch_sharding(mesh: Mesh) -> NamedSharding:
    """(microbatches, batch, ...): the second dimension split as `batch_sharding` splits the first."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

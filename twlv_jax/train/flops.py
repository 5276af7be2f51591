"""Analytic model FLOPs of a train step, and the peak FLOP/s they are compared with (MFU).

Counts matmul FLOPs (2 per multiply-add) of every model the step runs: trainable parts
3x their forward (forward + backward), frozen teachers and the EMA encoder 1x. Each target
counts its own head and frozen models (`Target.flops`).
Rematerialisation is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from twlv_jax import models
from twlv_jax.models.flops import encoder_forward
from twlv_jax.objectives import image_teacher
from twlv_jax.objectives.masking import num_visible
from twlv_jax.objectives.presets import Objective
from twlv_jax.objectives.targets import Tokens, enabled

# Dense bf16 matmul peaks per chip, in FLOP/s (vendor figures).
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
         "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6 lite": 918e12}


def step_flops(config, objective: Objective) -> float:
    """Model FLOPs of one train step over the global batch."""
    m = config.model
    grid = models.token_grid(m)
    n = grid[0] * grid[1] * grid[2]
    tokens = Tokens(total=n, visible=num_visible(objective.mask_kind, grid, objective.mask_ratio),
                    patch_dim=m.tubelet * m.patch * m.patch * 3)
    trained = encoder_forward(m.variant, tokens.visible, tokens.patch_dim)
    frozen = 0.0
    if layers := image_teacher.layers_used(config, objective):
        frozen += image_teacher.forward_flops(config, layers)
    for target in enabled(objective).values():
        head, teachers = target.flops(config, tokens)
        trained, frozen = trained + head, frozen + teachers
    return config.train.batch_size * (3.0 * trained + frozen)


@functools.cache
def measured_peak(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """Matmul FLOP/s of the default device in `dtype_name` (float32 accumulation), measured."""
    dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def peak_flops(dtype_name: str) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    device = jax.devices()[0]
    kind = device.device_kind
    # TPU kinds are exact names ("TPU v5" vs "TPU v5 lite"); GPU kinds hold the model name.
    peak = PEAKS.get(kind) or next((p for name, p in PEAKS.items()
                                    if device.platform == "gpu" and name in kind), None)
    if peak:
        return peak, f"{kind} bf16 spec"
    return measured_peak(dtype_name), f"measured {dtype_name} matmul on {device.device_kind}"

"""Analytic model FLOPs of a train step, and the peak FLOP/s they are compared with (MFU).

Counts matmul FLOPs (2 per multiply-add) of every model the step runs: trainable parts
3x their forward (forward + backward), frozen teachers and the EMA encoder 1x.
Rematerialisation is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from twlv_jax.models.teachers import clip_size
from twlv_jax.models.vit import SIZES
from twlv_jax.objectives.hybrid import DECODER_WIDTH
from twlv_jax.objectives.masking import num_visible
from twlv_jax.objectives.presets import Objective, teacher_image_size

# Dense bf16 matmul peaks per chip, in FLOP/s (vendor figures).
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
         "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6 lite": 918e12}


def linear(tokens: int, din: int, dout: int) -> float:
    return 2.0 * tokens * din * dout


def transformer(tokens: int, dim: int, depth: int, mlp_dim: int) -> float:
    """Forward FLOPs of `depth` blocks on `tokens` tokens: projections, MLP, attention."""
    per_layer = 2.0 * tokens * (4 * dim * dim + 2 * dim * mlp_dim) + 4.0 * tokens * tokens * dim
    return depth * per_layer


def encoder_forward(variant: str, tokens: int, patch_dim: int) -> float:
    s = SIZES[variant]
    return linear(tokens, patch_dim, s.dim) + transformer(tokens, s.dim, s.depth, s.mlp_dim)


def step_flops(config, objective: Objective) -> float:
    """Model FLOPs of one train step over the global batch."""
    m, o = config.model, config.objective
    grid = (m.frames // m.tubelet, m.image_size // m.patch, m.image_size // m.patch)
    n = grid[0] * grid[1] * grid[2]
    k = num_visible(objective.mask_kind, grid, objective.mask_ratio)
    s, patch_dim = SIZES[m.variant], m.tubelet * m.patch * m.patch * 3
    trained = encoder_forward(m.variant, k, patch_dim)
    frozen = 0.0
    w = objective.weights
    if objective.uses_image_teacher:
        t = clip_size(config.teacher.variant)
        g = (teacher_image_size(config) // t.patch) ** 2
        layers = o.distill.layers if "distill" in w else 1
        per_frame = (linear(g, t.patch * t.patch * 3, t.dim)
                     + transformer(1 + g, t.dim, t.depth, t.mlp_dim)
                     + layers * linear(1 + g, t.dim, t.proj_dim))
        frozen += m.frames * per_frame
        if "distill" in w:
            trained += o.distill.layers * linear(k, s.dim, t.proj_dim)
    if "pixel" in w:
        width = o.pixel.decoder_width or DECODER_WIDTH[m.variant]
        targets = (n - k) - int(o.pixel.decoder_mask_ratio * (n - k))
        trained += (linear(k, s.dim, width)
                    + transformer(k + targets, width, o.pixel.decoder_depth, 4 * width)
                    + linear(targets, width, patch_dim))
    if "latent" in w:
        tiny = m.variant == "tiny"
        width = o.latent.predictor_width or (64 if tiny else 384)
        depth = o.latent.predictor_depth or (2 if tiny else 12)
        trained += (linear(k, s.dim, width) + transformer(n, width, depth, 4 * width)
                    + linear(n - k, width, s.dim))
        frozen += encoder_forward(m.variant, n, patch_dim)              # EMA targets
    if "video_teacher" in w:
        vt = SIZES[o.video_teacher.variant]
        trained += o.video_teacher.layers * linear(k, s.dim, vt.dim)
        frozen += encoder_forward(o.video_teacher.variant, n, patch_dim)
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

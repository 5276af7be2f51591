"""The frozen image teacher that targets and the attention mask share: built once, run
once per batch on every frame, its features regrouped per tubelet."""

from __future__ import annotations

import jax
from flax import nnx

from twlv_jax import models
from twlv_jax.models import flops
from twlv_jax.models.teachers import clip_size, normalize_for_clip
from twlv_jax.objectives.targets import enabled


def layers_used(config, objective) -> int:
    """How many of the teacher's last layers the step reads: the most any enabled target
    reads, at least 1 for the attention mask; 0 when nothing uses the teacher."""
    count = max([t.image_teacher_layers(config) for t in enabled(objective).values()], default=0)
    return max(count, 1) if count or objective.mask_kind == "attention" else 0


def image_size(config) -> int:
    """The teacher's input size: given, or the student's patch grid times the teacher's patch."""
    grid = config.model.image_size // config.model.patch
    return config.teacher.image_size or grid * clip_size(config.teacher.variant).patch


def build(config) -> nnx.Module:
    """The teacher at random init (its weights load from `teacher.weights`)."""
    variant = config.teacher.variant
    return models.image_teacher(variant, image_size=clip_size(variant).image_size,
                                dtype=config.model.dtype, scan=config.model.scan, seed=config.seed + 1)


def frames_to_tokens(features: jax.Array, batch: int, tubelet: int) -> jax.Array:
    """Per-frame teacher features (L, B*T, H'W', P) -> per-tubelet (L, B, N, P), averaged
    over the frames of each tubelet."""
    layers, _, hw, dim = features.shape
    x = features.reshape(layers, batch, -1, tubelet, hw, dim)      # (L, B, T', t, H'W', P)
    return x.mean(axis=3).reshape(layers, batch, -1, dim)          # (L, B, N, P)


def features(teacher: nnx.Module, video: jax.Array, config, count: int, grid,
             tubelet: int) -> tuple[jax.Array, jax.Array]:
    """(class-token attention (B, T', H'W') per tubelet, last `count` layers (L, B, N, P))
    of the teacher on uint8 clips (B, T, H, W, 3), without gradients."""
    batch = video.shape[0]
    frames = normalize_for_clip(video, image_size(config))
    out = jax.lax.stop_gradient(teacher.features(frames, count))
    # (B*T, H'W') -> (B, T', t, H'W') -> mean over each tubelet's frames: (B, T', H'W')
    attention = out["cls_attention"].reshape(batch, grid[0], tubelet, -1).mean(axis=2)
    return attention, frames_to_tokens(out["layers"], batch, tubelet)


def forward_flops(config, layers: int) -> float:
    """Forward FLOPs per clip: every frame through the tower, `layers` projections read."""
    t = clip_size(config.teacher.variant)
    g = (image_size(config) // t.patch) ** 2
    per_frame = (flops.linear(g, t.patch * t.patch * 3, t.dim)
                 + flops.transformer(1 + g, t.dim, t.depth, t.mlp_dim)
                 + layers * flops.linear(1 + g, t.dim, t.proj_dim))
    return config.model.frames * per_frame


def check(config, student_grid: tuple[int, int, int]) -> list[str]:
    """The teacher's variant is known and its patch grid equals the student's."""
    try:
        teacher = clip_size(config.teacher.variant)
    except ValueError as e:
        return [f"teacher.variant: {e}"]
    size = image_size(config)
    if size % teacher.patch or size // teacher.patch != student_grid[1]:
        return [f"teacher.image_size {size} with patch {teacher.patch} gives a "
                f"{size // teacher.patch}x{size // teacher.patch} grid but the student has "
                f"{student_grid[1]}x{student_grid[2]}: set teacher.image_size="
                f"{student_grid[1] * teacher.patch} (or 0)"]
    return []

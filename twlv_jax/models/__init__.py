"""Model family: the video encoder, its heads, and frozen teachers.

    from twlv_jax import models
    enc = models.encoder("B", frames=16, image_size=224)
    models.count_params(enc)                                   # 86.2M
    models.count_params(nnx.eval_shape(lambda: models.encoder("L")))   # no memory used

Parameters carry logical axis names and are not sharded eagerly: shardings are applied
by the caller (`twlv_jax.train.state`) from those names and a rules preset.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax.models.heads import DistillHeads, MaskedPredictor
from twlv_jax.models.teachers import CLIP_SIZES, ClipViT, clip_size
from twlv_jax.models.vit import SIZES, VideoViT, size

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = [
    "CLIP_SIZES",
    "SIZES",
    "ClipViT",
    "DistillHeads",
    "MaskedPredictor",
    "VideoViT",
    "count_params",
    "dtype",
    "encoder",
    "image_teacher",
    "token_grid",
]


def dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def token_grid(model_cfg) -> tuple[int, int, int]:
    """(T', H', W'): the student's token grid for the `model` config block."""
    side = model_cfg.image_size // model_cfg.patch
    return model_cfg.frames // model_cfg.tubelet, side, side


def encoder(size_name: str = "B", *, seed: int = 0, **overrides) -> VideoViT:
    """A VideoViT of a named size (tiny, S, B, L, H, g); keyword arguments override any field."""
    s = size(size_name)
    kwargs = dict(dim=s.dim, depth=s.depth, heads=s.heads, mlp_dim=s.mlp_dim)
    kwargs.update(overrides)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = dtype(kwargs["dtype"])
    return VideoViT(**kwargs, rngs=nnx.Rngs(seed))


def image_teacher(variant: str = "clip_b16", *, seed: int = 0, **overrides) -> ClipViT:
    """A CLIP vision tower (tiny, clip_b16, clip_l14) matching Hugging Face's layout."""
    s = clip_size(variant)
    kwargs = dict(dim=s.dim, depth=s.depth, heads=s.heads, mlp_dim=s.mlp_dim, patch=s.patch,
                  image_size=s.image_size, proj_dim=s.proj_dim)
    kwargs.update(overrides)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = dtype(kwargs["dtype"])
    return ClipViT(**kwargs, rngs=nnx.Rngs(seed))


def count_params(module: nnx.Module) -> int:
    """Number of parameters; works on abstract modules from `nnx.eval_shape`."""
    state = nnx.state(module, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))

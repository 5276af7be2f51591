"""Frozen teachers. The image teacher is a CLIP vision tower laid out like Hugging Face's
`CLIPVisionModelWithProjection` (class token, learned positions, pre-norm, post-norm,
projection), run per frame."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twlv_jax.models import posembed
from twlv_jax.models.layers import F32, Dense, LayerNorm, Transformer, param
from twlv_jax.models.vit import patchify

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


@dataclasses.dataclass(frozen=True)
class ClipSize:
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    patch: int
    image_size: int
    proj_dim: int


CLIP_SIZES = {
    "tiny": ClipSize(48, 2, 2, 192, 8, 32, 32),
    "clip_b16": ClipSize(768, 12, 12, 3072, 16, 224, 512),
    "clip_l14": ClipSize(1024, 24, 16, 4096, 14, 224, 768),
}


def clip_size(name: str) -> ClipSize:
    if name not in CLIP_SIZES:
        raise ValueError(f"unknown image teacher {name!r}; expected one of {list(CLIP_SIZES)}")
    return CLIP_SIZES[name]


class ClipViT(nnx.Module):
    """CLIP image tower. `features` returns what distillation and attention masking need."""

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_dim: int, patch: int,
                 image_size: int, proj_dim: int, eps: float = 1e-5, dtype=F32,
                 scan: bool = True, remat: str = "none", rngs: nnx.Rngs):
        self.dim, self.patch, self.image_size = dim, patch, image_size
        self.grid = image_size // patch
        self.patch_embed = Dense(patch * patch * 3, dim, (None, "embed"), use_bias=False,
                                 dtype=dtype, rngs=rngs)
        self.class_embedding = param(rngs, (dim,), ("embed",))
        self.pos_embedding = param(rngs, (1 + self.grid ** 2, dim), (None, "embed"))
        self.pre_norm = LayerNorm(dim, eps, rngs=rngs)
        self.blocks = Transformer(depth, dim, heads, mlp_dim, act="quick_gelu", eps=eps,
                                  dtype=dtype, scan=scan, remat=remat, rngs=rngs)
        self.post_norm = LayerNorm(dim, eps, rngs=rngs)
        self.proj = Dense(dim, proj_dim, ("embed", None), use_bias=False, dtype=dtype, rngs=rngs)

    def positions(self, grid: int) -> jax.Array:
        """(1 + grid², D): the class position and the patch table resampled to `grid`."""
        table = self.pos_embedding[...]
        patches = table[1:].reshape(self.grid, self.grid, self.dim)  # (G, G, D)
        patches = posembed.resample(patches, (grid, grid)).reshape(-1, self.dim)  # (g*g, D)
        return jnp.concatenate([table[:1], patches], axis=0)

    def features(self, images: jax.Array, num_layers: int) -> dict:
        """images (B, H, W, 3) normalised with CLIP stats.

        Returns {'layers': (L, B, N, P) post-normed, projected patch tokens of the last
        `num_layers` blocks; 'cls_attention': (B, N) last block's class-token attention
        over patches (mean over heads); 'embedding': (B, P) projected class token}.
        """
        b, h, _, _ = images.shape
        grid = h // self.patch
        patches = patchify(images[:, None], 1, self.patch).reshape(b, grid * grid, -1)  # (B, N, p*p*3)
        x = self.patch_embed(patches)                                        # (B, N, D)
        cls = jnp.broadcast_to(self.class_embedding[...], (b, 1, self.dim))
        x = self.pre_norm(jnp.concatenate([cls, x], axis=1) + self.positions(grid))
        depth = self.blocks.depth
        wanted = list(range(depth - num_layers, depth))
        x, outputs = self.blocks(x, collect=sorted({*wanted, depth - 2} if depth > 1 else wanted))
        last_in = outputs[depth - 2] if depth > 1 else x
        last = self.blocks.layer(depth - 1)
        cls_attention = last.attn.cls_attention(last.norm1(last_in))
        stacked = jnp.stack([outputs[i] for i in wanted])                    # (L, B, 1+N, D)
        projected = self.proj(self.post_norm(stacked))                       # (L, B, 1+N, P)
        return {"layers": projected[:, :, 1:], "cls_attention": cls_attention,
                "embedding": projected[-1, :, 0]}


def normalize_for_clip(video_uint8: jax.Array, image_size: int) -> jax.Array:
    """(B, T, H, W, 3) uint8 -> (B*T, S, S, 3) float32 frames in CLIP's normalisation."""
    b, t, h, w, c = video_uint8.shape
    frames = video_uint8.reshape(b * t, h, w, c).astype(F32) / 255.0  # (B*T, H, W, 3)
    if (h, w) != (image_size, image_size):
        frames = jax.image.resize(frames, (b * t, image_size, image_size, c), "bilinear")
    return (frames - CLIP_MEAN) / CLIP_STD

"""The video encoder: tubelet embedding, positions (sin-cos tables or 3-D rotary), a plain ViT,
pooling."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax.models import posembed, rope
from twlv_jax.models.layers import F32, Attention, Dense, LayerNorm, Mlp, Transformer, matmul, param
from twlv_jax.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class Size:
    dim: int
    depth: int
    heads: int
    mlp_dim: int


SIZES = {
    "tiny": Size(64, 2, 2, 256),
    "S": Size(384, 12, 6, 1536),
    "B": Size(768, 12, 12, 3072),
    "L": Size(1024, 24, 16, 4096),
    "H": Size(1280, 32, 16, 5120),
    "g": Size(1408, 40, 16, 6144),
}


def size(name: str) -> Size:
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; expected one of {list(SIZES)}")
    return SIZES[name]


def patchify(video: jax.Array, tubelet: int, patch: int) -> jax.Array:
    """(B, T, H, W, C) -> (B, T/t, H/p, W/p, t*p*p*C), features ordered (t, p_h, p_w, C)."""
    b, t, h, w, c = video.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(f"video of {t} frames at {h}x{w} does not split into "
                         f"{tubelet}x{patch}x{patch} tubelets")
    x = video.reshape(b, t // tubelet, tubelet, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)              # (B, T', H', W', t, p, p, C)
    return x.reshape(b, t // tubelet, h // patch, w // patch, tubelet * patch * patch * c)


def gather_tokens(x: jax.Array, index: jax.Array) -> jax.Array:
    """x (B, N, D), index (B, K) -> (B, K, D)."""
    return jnp.take_along_axis(x, index[..., None], axis=1)


class AttentivePooler(nnx.Module):
    """V-JEPA's pooler: one learned query cross-attends to the tokens, then an MLP block."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, *, dtype=F32, eps: float = 1e-6,
                 rngs: nnx.Rngs):
        self.query = param(rngs, (1, 1, dim), (None, None, "embed"))
        self.norm_q = LayerNorm(dim, eps, rngs=rngs)
        self.norm_kv = LayerNorm(dim, eps, rngs=rngs)
        self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)
        self.norm_mlp = LayerNorm(dim, eps, rngs=rngs)
        self.mlp = Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens (B, N, D) -> (B, D)."""
        attn = self.attn
        q_in = jnp.broadcast_to(self.query[...], (tokens.shape[0], 1, tokens.shape[-1]))
        q, _, _ = attn.project_qkv(self.norm_q(q_in))
        _, k, v = attn.project_qkv(self.norm_kv(tokens))
        y = jax.nn.dot_product_attention(q, k, v)                          # (B, 1, H, Dh)
        x = q_in + matmul(y, attn.out[...], "bnhe,hed->bnd", attn.dtype) + attn.out_bias[...]
        x = x + self.mlp(self.norm_mlp(x))
        return x[:, 0]


class VideoViT(nnx.Module):
    """Plain ViT over tubelets of a clip (B, T, H, W, 3) -> tokens, pooled embedding.

    With `keep` (B, K) token indices, only those tokens are embedded and processed (the
    visible-token path of masked pretraining). Tokens are ordered (t, h, w). `pos_embed`:
    sincos3d | sincos1d add a fixed table to the tokens; rope3d rotates queries and keys in
    every block (V-JEPA 2, `rope.py`).
    """

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_dim: int, frames: int = 16,
                 image_size: int = 224, tubelet: int = 2, patch: int = 16, qkv_bias: str = "all",
                 layerscale: float = 0.0, drop_path: float = 0.0, pos_embed: str = "sincos3d",
                 eps: float = 1e-6, dtype=F32, scan: bool = True, remat: str = "none",
                 attention: str | None = None, pool: str = "mean", rngs: nnx.Rngs):
        if frames % tubelet or image_size % patch:
            raise ValueError(f"{frames} frames at {image_size} px do not split into "
                             f"{tubelet}x{patch}x{patch} tubelets")
        if pool not in ("mean", "attentive"):
            raise ValueError(f"pool must be 'mean' or 'attentive', got {pool!r}")
        self.dim, self.depth, self.heads = dim, depth, heads
        self.tubelet, self.patch, self.pos_embed = tubelet, patch, posembed.check(pos_embed)
        if pos_embed == posembed.ROTARY:
            rope.tables((1, 1, 1), dim // heads)   # validates the head width early
        self.grid = (frames // tubelet, image_size // patch, image_size // patch)
        self.patch_embed = Dense(tubelet * patch * patch * 3, dim, (None, "embed"),
                                 dtype=dtype, rngs=rngs)
        self.blocks = Transformer(depth, dim, heads, mlp_dim, qkv_bias=qkv_bias,
                                  layerscale=layerscale, eps=eps, drop_path=drop_path,
                                  dtype=dtype, scan=scan, remat=remat, attention=attention,
                                  rngs=rngs)
        self.norm = LayerNorm(dim, eps, rngs=rngs)
        self.pooler = (AttentivePooler(dim, heads, mlp_dim, dtype=dtype, eps=eps, rngs=rngs)
                       if pool == "attentive" else None)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def grid_of(self, video_shape: Sequence[int]) -> tuple[int, int, int]:
        _, t, h, w, _ = video_shape
        return (t // self.tubelet, h // self.patch, w // self.patch)

    def pos_table(self, grid: tuple[int, int, int]) -> jax.Array:
        """(N, D) fixed positions for `grid`, resampled when it differs from the trained grid."""
        table = posembed.resample_for(self.pos_embed, self.dim, self.grid, grid)
        return table.reshape(-1, self.dim)

    def rope(self, grid: tuple[int, int, int], keep: jax.Array | None = None) -> jax.Array | None:
        """Rotary positions (2, B|1, N|K, Dh) of the tokens of `grid` (at `keep`), or None when
        positions are a table. Rotary positions follow the input's grid: none is resampled."""
        if self.pos_embed != posembed.ROTARY:
            return None
        return rope.gather(rope.tables(grid, self.dim // self.heads), keep)

    def embed(self, video: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """(B, T, H, W, 3) -> (B, N or K, D) tubelet embeddings plus table positions, if any."""
        grid = self.grid_of(video.shape)
        patches = patchify(video, self.tubelet, self.patch)
        patches = patches.reshape(video.shape[0], -1, patches.shape[-1])   # (B, N, t*p*p*3)
        if keep is not None:
            patches = gather_tokens(patches, keep)
        x = self.patch_embed(patches)
        if self.pos_embed == posembed.ROTARY:
            return x
        table = self.pos_table(grid)
        pos = jnp.broadcast_to(table, (video.shape[0], *table.shape))      # (B, N, D)
        return x + (pos if keep is None else gather_tokens(pos, keep))

    def __call__(self, video: jax.Array, *, keep: jax.Array | None = None,
                 layers: Sequence[int] = (), rng: jax.Array | None = None) -> dict:
        """Encodes a normalised clip.

        Returns {'tokens': (B, N|K, D) after the final norm, 'pooled': (B, D),
        'layers': {i: (B, N|K, D) output of block i, before the final norm}}.
        `rng` enables stochastic depth (training); None is deterministic.
        """
        x = constrain(self.embed(video, keep), ("batch", "tokens", "act_embed"))
        x, outputs = self.blocks(x, rng=rng, collect=layers,
                                 rope=self.rope(self.grid_of(video.shape), keep))
        tokens = self.norm(x)
        pooled = self.pooler(tokens) if self.pooler is not None else tokens.mean(axis=1)
        return {"tokens": tokens, "pooled": pooled, "layers": outputs}


"""VideoMAE's pixel target: per-tubelet normalised pixels of masked tokens, MSE.

Optional decoder masking (VideoMAEv2): only a random share of the masked tokens is
reconstructed, which makes the decoder cheaper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax import models
from twlv_jax.models import flops
from twlv_jax.models.heads import MaskedPredictor
from twlv_jax.models.vit import patchify
from twlv_jax.objectives.losses import mse
from twlv_jax.objectives.targets.base import Batch, Target, Tokens

# VideoMAE decoder widths by encoder size (tiny and g chosen by the same proportion).
DECODER_WIDTH = {"tiny": 32, "S": 192, "B": 384, "L": 512, "H": 640, "g": 704}


def pixel_targets(video01: jax.Array, tubelet: int, patch: int, normalize: bool) -> jax.Array:
    """(B, T, H, W, 3) in [0, 1] -> (B, N, t*p*p*3), each tubelet normalised per channel by its
    own mean and unbiased std (VideoMAE's `normlize_target`)."""
    b = video01.shape[0]
    x = patchify(video01.astype(jnp.float32), tubelet, patch)
    x = x.reshape(b, -1, tubelet * patch * patch, 3)               # (B, N, t*p*p, 3)
    if normalize:
        mean = x.mean(axis=2, keepdims=True)
        var = x.var(axis=2, keepdims=True, ddof=1)
        x = (x - mean) / (jnp.sqrt(var) + 1e-6)
    return x.reshape(b, x.shape[1], -1)


def decoded_count(masked: int, ratio: float) -> int:
    """How many of `masked` tokens the decoder reconstructs: all but a `ratio` share."""
    return masked - int(ratio * masked)


def decoder_targets(rng, masked: jax.Array, ratio: float) -> jax.Array:
    """A random (1 - ratio) share of each sample's masked tokens: (B, M) -> (B, M')."""
    if ratio <= 0:
        return masked
    count = decoded_count(masked.shape[1], ratio)
    order = jnp.argsort(jax.random.uniform(rng, masked.shape), axis=1)[:, :count]
    return jnp.sort(jnp.take_along_axis(masked, order, axis=1), axis=1)


class PixelTarget(nnx.Module):
    def __init__(self, student_dim: int, width: int, depth: int, heads: int,
                 grid: tuple[int, int, int], tubelet: int, patch: int, *,
                 decoder_mask_ratio: float = 0.0, norm_pix: bool = True, pos_embed: str,
                 dtype, scan: bool, remat: str, attention: str | None, rngs: nnx.Rngs):
        self.decoder = MaskedPredictor(student_dim, width, depth, heads, tubelet * patch * patch * 3,
                                       grid, embed_bias=False, pos_embed=pos_embed, dtype=dtype,
                                       scan=scan, remat=remat, attention=attention, rngs=rngs)
        self.tubelet, self.patch = tubelet, patch
        self.decoder_mask_ratio, self.norm_pix = decoder_mask_ratio, norm_pix

    def predict(self, tokens: jax.Array, keep: jax.Array, masked: jax.Array, video01: jax.Array,
                rng: jax.Array, grid) -> tuple[jax.Array, jax.Array]:
        """(prediction, target) (B, M', t*p*p*3) for tokens (B, K, D) of the visible tokens;
        video01 the clip in [0, 1]. The loss is their MSE."""
        targets = decoder_targets(rng, masked, self.decoder_mask_ratio)
        prediction = self.decoder(tokens, keep, targets, grid)
        pixels = pixel_targets(video01, self.tubelet, self.patch, self.norm_pix)
        pixels = jnp.take_along_axis(pixels, targets[..., None], axis=1)     # (B, M', t*p*p*3)
        return prediction, jax.lax.stop_gradient(pixels)


def decoder_width(config) -> int:
    """`objective.pixel.decoder_width`, or VideoMAE's width for the student's size when 0."""
    return config.objective.pixel.decoder_width or DECODER_WIDTH[config.model.variant]


class Pixel(Target):
    name = "pixel"
    loss = staticmethod(mse)
    state_keys = ("decoder_width", "decoder_depth")

    def head(self, config, student, *, rngs):
        m, o = config.model, config.objective.pixel
        width = decoder_width(config)
        return PixelTarget(student.dim, width, o.decoder_depth, max(1, width // 64), student.grid,
                           m.tubelet, m.patch, decoder_mask_ratio=o.decoder_mask_ratio,
                           norm_pix=o.norm_pix, pos_embed=m.pos_embed, dtype=models.dtype(m.dtype),
                           scan=m.scan, remat=m.remat, attention=m.attention, rngs=rngs)

    def predict(self, head, batch: Batch):
        video01 = batch.video.astype(jnp.float32) / 255.0
        return head.predict(batch.tokens, batch.keep, batch.masked, video01, batch.rng, batch.grid)

    def flops(self, config, tokens: Tokens):
        width, dim = decoder_width(config), models.SIZES[config.model.variant].dim
        decoded = decoded_count(tokens.total - tokens.visible,
                                config.objective.pixel.decoder_mask_ratio)
        return (flops.linear(tokens.visible, dim, width)
                + flops.transformer(tokens.visible + decoded, width,
                                    config.objective.pixel.decoder_depth, 4 * width)
                + flops.linear(decoded, width, tokens.patch_dim)), 0.0


TARGET = Pixel()

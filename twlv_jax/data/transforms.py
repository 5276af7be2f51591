"""Clip geometry on uint8 frames (random resized crop, centre crop, flip) and normalisation.

A crop is planned as a `Geometry`: resize the whole frame (done by libswscale while the
frame is converted to RGB), then cut a box out of it with a numpy slice. Planning it
this way converts each needed frame once, at about the output resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Geometry:
    """Resize a frame (display orientation) to (resize_h, resize_w), then keep the box at
    (top, left) of size (height, width)."""

    resize_h: int
    resize_w: int
    top: int
    left: int
    height: int
    width: int


def _box_to_geometry(top: float, left: float, box_h: float, box_w: float,
                     height: int, width: int, size: int) -> Geometry:
    """The box (in source pixels) resized to size x size, as one resize plus one slice."""
    scale_y, scale_x = size / box_h, size / box_w
    resize_h = max(size, round(height * scale_y))
    resize_w = max(size, round(width * scale_x))
    top = min(round(top * scale_y), resize_h - size)
    left = min(round(left * scale_x), resize_w - size)
    return Geometry(resize_h, resize_w, top, left, size, size)


def center_crop(height: int, width: int, *, size: int) -> Geometry:
    """Short side resized to `size`, then the central size x size square."""
    short = min(height, width)
    return _box_to_geometry((height - short) / 2, (width - short) / 2, short, short,
                            height, width, size)


def resize_short_side(height: int, width: int, *, short_side: int, even: bool = False) -> Geometry:
    """The whole frame with its short side at `short_side` (sides rounded to even if asked)."""
    scale = short_side / min(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if even:
        new_h, new_w = new_h + new_h % 2, new_w + new_w % 2
    return Geometry(new_h, new_w, 0, 0, new_h, new_w)


def random_resized_crop(height: int, width: int, *, rng: np.random.Generator, size: int,
                        scale: tuple[float, float], ratio: tuple[float, float]) -> Geometry:
    """Inception-style crop: a box covering `scale` of the area with aspect ratio (w/h) in
    `ratio`, resized to size x size. Falls back to the largest central box after 10 tries."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        box_w = round(math.sqrt(target_area * aspect))
        box_h = round(math.sqrt(target_area / aspect))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return _box_to_geometry(top, left, box_h, box_w, height, width, size)
    frame_ratio = width / height
    if frame_ratio < min(ratio):
        box_w, box_h = width, round(width / min(ratio))
    elif frame_ratio > max(ratio):
        box_w, box_h = round(height * max(ratio)), height
    else:
        box_w, box_h = width, height
    return _box_to_geometry((height - box_h) / 2, (width - box_w) / 2, box_h, box_w,
                            height, width, size)


def flip_horizontal(video: np.ndarray) -> np.ndarray:
    """Mirrors a clip left-right: (T, H, W, 3) -> (T, H, W, 3)."""
    return np.ascontiguousarray(video[:, :, ::-1])


def normalize(video_uint8, dtype=jnp.float32):
    """uint8 RGB in [0, 255] -> (x / 255 - mean) / std with ImageNet statistics, on device.

    Computed in float32 and returned in `dtype` (the model's compute dtype); any leading
    shape, channels last.
    """
    scale = 1.0 / (255.0 * jnp.asarray(IMAGENET_STD, jnp.float32))  # (3,)
    shift = jnp.asarray(IMAGENET_MEAN, jnp.float32) / jnp.asarray(IMAGENET_STD, jnp.float32)
    x = jnp.asarray(video_uint8).astype(jnp.float32)
    return (x * scale - shift).astype(dtype)

"""Label-free pretraining of a small image teacher on the frames of a video set.

The demo has no downloaded CLIP, so it trains its image teacher itself, without labels:
a contrastive (InfoNCE) objective where two random frames of the same video, each
randomly cropped, are the positive pair and the other videos of the batch the negatives.
The embedding is the teacher's mean projected patch token of its last layer, the same
tokens that distillation regresses. The result is written in this project's weights
layout and loads through `teacher.weights`.

    params, log = pretrain_image_teacher(frames_uint8, variant="tiny", steps=400)
    models.weights.save(params, "teacher.safetensors")
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from twlv_jax import models
from twlv_jax.models.teachers import CLIP_MEAN, CLIP_STD, clip_size
from twlv_jax.objectives.losses import l2_normalize


def frame_embedding(teacher: models.ClipViT, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) CLIP-normalised images -> (B, P) mean projected patch token, last layer."""
    return teacher.features(images, 1)["layers"][0].mean(axis=1)


def info_nce(a: jax.Array, b: jax.Array, temperature: float) -> jax.Array:
    """Symmetric InfoNCE between two (B, P) views; row i of `a` matches row i of `b`."""
    logits = l2_normalize(a) @ l2_normalize(b).T / temperature              # (B, B)
    labels = jnp.arange(a.shape[0])
    return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


def random_crops(rng: jax.Array, images: jax.Array, scale: tuple[float, float]) -> jax.Array:
    """Random square crops covering `scale` of each image's side, resized back: (B, S, S, 3)."""
    b, size = images.shape[0], images.shape[1]
    r_side, r_y, r_x = jax.random.split(rng, 3)
    side = jax.random.uniform(r_side, (b,), minval=scale[0], maxval=scale[1])
    top = jax.random.uniform(r_y, (b,)) * (1 - side)
    left = jax.random.uniform(r_x, (b,)) * (1 - side)

    def crop(image, s, y, x):
        scales = jnp.array([1 / s, 1 / s])
        shift = jnp.array([-y * size / s, -x * size / s])
        return jax.image.scale_and_translate(image, image.shape, (0, 1), scales, shift, "linear")

    return jax.vmap(crop)(images, side, top, left)


def jitter(rng: jax.Array, images: jax.Array, strength: float) -> jax.Array:
    """Random brightness and contrast per image (B, S, S, 3) in [0, 1]; hue is kept."""
    r_gain, r_contrast = jax.random.split(rng)
    shape = (images.shape[0], 1, 1, 1)
    gain = jax.random.uniform(r_gain, shape, minval=1 - strength, maxval=1 + strength)
    contrast = jax.random.uniform(r_contrast, shape, minval=1 - strength, maxval=1 + strength)
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    return jnp.clip((images - mean) * contrast + mean * gain, 0, 1)


def pretrain_image_teacher(clips: np.ndarray, *, variant: str = "tiny", steps: int = 400,
                           batch_size: int = 64, lr: float = 1e-3, temperature: float = 0.1,
                           crop_scale: tuple[float, float] = (0.6, 1.0), strength: float = 0.4,
                           seed: int = 0,
                           progress: bool = True) -> tuple[dict, list[float]]:
    """Trains an image teacher on uint8 clips (V, T, H, W, 3) of a video set, no labels.

    Returns (teacher parameters as a pure dict, loss every 10 steps).
    """
    size = clip_size(variant)
    teacher = models.image_teacher(variant, seed=seed)
    graphdef, params = nnx.split(teacher)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 5), steps),
                     weight_decay=0.05)
    opt = tx.init(params)
    videos = jnp.asarray(clips)
    count, frames = clips.shape[:2]

    @jax.jit
    def step(params, opt, rng):
        r_video, r_frames, r_a, r_b, r_ja, r_jb = jax.random.split(rng, 6)
        which = jax.random.choice(r_video, count, (batch_size,), replace=batch_size > count)
        pair = jax.vmap(lambda r: jax.random.choice(r, frames, (2,), replace=False))(
            jax.random.split(r_frames, batch_size))                         # (B, 2)
        views = videos[which[:, None], pair]                                # (B, 2, H, W, 3)
        images = jax.image.resize(views.astype(jnp.float32) / 255.0,
                                  (batch_size, 2, size.image_size, size.image_size, 3), "linear")

        def view(rng_crop, rng_jitter, images):
            images = jitter(rng_jitter, random_crops(rng_crop, images, crop_scale), strength)
            return (images - CLIP_MEAN) / CLIP_STD

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            a = frame_embedding(model, view(r_a, r_ja, images[:, 0]))
            b = frame_embedding(model, view(r_b, r_jb, images[:, 1]))
            return info_nce(a, b, temperature)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    key = jax.random.key(seed)
    for i in tqdm(range(steps), desc="image teacher", disable=not progress, leave=False):
        params, opt, loss = step(params, opt, jax.random.fold_in(key, i))
        if i % 10 == 0 or i == steps - 1:
            losses.append(float(loss))
    return nnx.to_pure_dict(params), losses

"""The hybrid objective: one masked student pass, every enabled target's loss, weighted sum.

`Pretrainer` holds everything that is trained (student encoder + target heads).
Teachers (image, video) and the EMA student are frozen and passed in separately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax import models
from twlv_jax.data.transforms import normalize
from twlv_jax.models.teachers import clip_size, normalize_for_clip
from twlv_jax.models.vit import VideoViT
from twlv_jax.objectives.distill import FeatureDistill, frames_to_tokens
from twlv_jax.objectives.latent import LatentTarget
from twlv_jax.objectives.losses import constant_prediction, cosine_loss, l1, mse
from twlv_jax.objectives.masking import make_mask
from twlv_jax.objectives.pixel import PixelTarget
from twlv_jax.objectives.presets import Objective, teacher_image_size

# VideoMAE decoder widths by encoder size (tiny and g chosen by the same proportion).
DECODER_WIDTH = {"tiny": 32, "S": 192, "B": 384, "L": 512, "H": 640, "g": 704}


def encoder_kwargs(model_cfg) -> dict:
    """VideoViT keyword arguments from the `model` config block."""
    return dict(frames=model_cfg.frames, image_size=model_cfg.image_size,
                tubelet=model_cfg.tubelet, patch=model_cfg.patch, qkv_bias=model_cfg.qkv_bias,
                layerscale=model_cfg.layerscale, drop_path=model_cfg.drop_path,
                pos_embed=model_cfg.pos_embed, dtype=models.dtype(model_cfg.dtype),
                scan=model_cfg.scan, remat=model_cfg.remat, attention=model_cfg.attention)


def student(model_cfg, rngs: nnx.Rngs) -> VideoViT:
    s = models.SIZES[model_cfg.variant]
    return VideoViT(dim=s.dim, depth=s.depth, heads=s.heads, mlp_dim=s.mlp_dim,
                    **encoder_kwargs(model_cfg), rngs=rngs)


class Pretrainer(nnx.Module):
    """The student encoder and the heads of the enabled targets."""

    def __init__(self, config, objective: Objective, *, rngs: nnx.Rngs):
        m, o = config.model, config.objective
        size = models.SIZES[m.variant]
        self.student = student(m, rngs)
        grid = self.student.grid
        common = dict(pos_embed=m.pos_embed, dtype=models.dtype(m.dtype), scan=m.scan,
                      remat=m.remat, attention=m.attention)
        w = objective.weights
        tiny = m.variant == "tiny"
        self.distill = (FeatureDistill(o.distill.layers, size.dim,
                                       clip_size(config.teacher.variant).proj_dim,
                                       dtype=common["dtype"], rngs=rngs)
                        if "distill" in w else None)
        width = o.pixel.decoder_width or DECODER_WIDTH[m.variant]
        self.pixel = (PixelTarget(size.dim, width, o.pixel.decoder_depth, max(1, width // 64), grid,
                                  m.tubelet, m.patch, decoder_mask_ratio=o.pixel.decoder_mask_ratio,
                                  norm_pix=o.pixel.norm_pix, rngs=rngs, **common)
                      if "pixel" in w else None)
        width = o.latent.predictor_width or (64 if tiny else 384)
        depth = o.latent.predictor_depth or (2 if tiny else 12)
        heads = size.heads if width % size.heads == 0 else max(1, width // 64)
        self.latent = (LatentTarget(size.dim, width, depth, heads, grid, rngs=rngs, **common)
                       if "latent" in w else None)
        self.video_teacher = (FeatureDistill(o.video_teacher.layers, size.dim,
                                             models.SIZES[o.video_teacher.variant].dim,
                                             dtype=common["dtype"], rngs=rngs)
                              if "video_teacher" in w else None)


def teachers(config, objective: Objective) -> dict[str, nnx.Module]:
    """The frozen teachers the objective needs, randomly initialised (weights load later)."""
    m = config.model
    result = {}
    if objective.uses_image_teacher:
        result["image_teacher"] = models.image_teacher(
            config.teacher.variant, image_size=clip_size(config.teacher.variant).image_size,
            dtype=m.dtype, scan=m.scan, seed=config.seed + 1)
    if "video_teacher" in objective.weights:
        vt = config.objective.video_teacher
        kwargs = encoder_kwargs(m) | dict(drop_path=0.0, remat="none", qkv_bias=vt.qkv_bias,
                                          pos_embed=vt.pos_embed)
        result["video_teacher"] = models.encoder(vt.variant, seed=config.seed + 2, **kwargs)
    return result


def _last(depth: int, count: int) -> list[int]:
    return list(range(depth - count, depth))


# The loss of each target between its prediction and its target.
LOSS_FNS = {"distill": cosine_loss, "pixel": mse, "latent": l1, "video_teacher": cosine_loss}


def losses(model: Pretrainer, frozen: dict[str, nnx.Module], ema_student: VideoViT | None,
           video: jax.Array, rng: jax.Array, objective: Objective, config) -> dict[str, jax.Array]:
    """Every enabled target's loss for a batch of uint8 clips (B, T, H, W, 3)."""
    return loss_terms(predictions(model, frozen, ema_student, video, rng, objective, config))


def loss_terms(pairs: dict[str, tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
    """Each target's loss from its (prediction, target)."""
    return {name: LOSS_FNS[name](*pair) for name, pair in pairs.items()}


def baselines(pairs: dict[str, tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
    """Each target's trivial baseline: the loss of predicting the mean of its targets."""
    return {name: LOSS_FNS[name](constant_prediction(target), target)
            for name, (_, target) in pairs.items()}


def predictions(model: Pretrainer, frozen: dict[str, nnx.Module], ema_student: VideoViT | None,
                video: jax.Array, rng: jax.Array, objective: Objective, config, *,
                train: bool = True) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{target: (prediction, target)} of every enabled target for uint8 clips (B, T, H, W, 3).

    `train=False` turns stochastic depth off (held-out evaluation)."""
    batch = video.shape[0]
    student_model = model.student
    r_mask, r_drop, r_decoder = jax.random.split(rng, 3)
    grid = student_model.grid_of(video.shape)
    tubelet = student_model.tubelet
    x = normalize(video, jnp.float32)

    attention = teacher_layers = None
    if objective.uses_image_teacher:
        teacher = frozen["image_teacher"]
        frames = normalize_for_clip(video, teacher_image_size(config))
        count = config.objective.distill.layers if "distill" in objective.weights else 1
        out = jax.lax.stop_gradient(teacher.features(frames, count))
        # (B*T, H'W') -> (B, T', t, H'W') -> mean over each tubelet's frames: (B, T', H'W')
        attention = out["cls_attention"].reshape(batch, grid[0], tubelet, -1).mean(axis=2)
        teacher_layers = frames_to_tokens(out["layers"], batch, tubelet)    # (L, B, N, P)

    keep, masked = make_mask(objective.mask_kind, r_mask, batch, grid, objective.mask_ratio,
                             attention)
    depth = student_model.depth
    wanted = {}
    for name in ("distill", "video_teacher"):
        if name in objective.weights:
            wanted[name] = _last(depth, config.objective[name].layers)
    collect = sorted({i for layers in wanted.values() for i in layers})
    out = student_model(x, keep=keep, layers=collect, rng=r_drop if train else None)

    def student_layers(name):
        return jnp.stack([student_model.norm(out["layers"][i]) for i in wanted[name]])

    pairs = {}
    if "distill" in objective.weights:
        pairs["distill"] = model.distill.predict(student_layers("distill"), teacher_layers, keep)
    if "pixel" in objective.weights:
        video01 = video.astype(jnp.float32) / 255.0
        pairs["pixel"] = model.pixel.predict(out["tokens"], keep, masked, video01, r_decoder, grid)
    if "latent" in objective.weights:
        ema_tokens = jax.lax.stop_gradient(ema_student(x)["tokens"])
        pairs["latent"] = model.latent.predict(out["tokens"], keep, masked, ema_tokens, grid)
    if "video_teacher" in objective.weights:
        teacher = frozen["video_teacher"]
        layers = _last(teacher.depth, config.objective.video_teacher.layers)
        t_out = teacher(x, layers=layers)
        t_layers = jax.lax.stop_gradient(jnp.stack([teacher.norm(t_out["layers"][i]) for i in layers]))
        pairs["video_teacher"] = model.video_teacher.predict(student_layers("video_teacher"),
                                                             t_layers, keep)
    return pairs


def total(terms: dict[str, jax.Array], objective: Objective) -> jax.Array:
    """The weighted sum of the loss terms."""
    return sum(objective.weights[name] * value for name, value in terms.items())

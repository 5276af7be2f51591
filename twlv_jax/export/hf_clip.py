"""Hugging Face CLIP vision tower <-> the image teacher (`ClipViT`), as a mapping table.

Reads a `model.safetensors` of `CLIPModel`, `CLIPVisionModel` or
`CLIPVisionModelWithProjection` (keys under `vision_model.` plus `visual_projection`);
text-tower keys are ignored. The table works both ways (`rules`).

| ours (ClipViT)               | Hugging Face (`{i}`: layer)                                  |
|------------------------------|--------------------------------------------------------------|
| patch_embed.kernel (pp3, D)  | vision_model.embeddings.patch_embedding.weight (D, 3, p, p)   |
| class_embedding              | vision_model.embeddings.class_embedding                      |
| pos_embedding (1+N, D)       | vision_model.embeddings.position_embedding.weight (resampled)|
| pre_norm / post_norm         | vision_model.pre_layrnorm / post_layernorm                   |
| blocks.blocks.norm1 / norm2  | vision_model.encoder.layers.{i}.layer_norm1 / layer_norm2    |
| blocks.blocks.attn.qkv, qkv_bias | ...layers.{i}.self_attn.{q,k,v}_proj.weight / .bias      |
| blocks.blocks.attn.out, out_bias | ...layers.{i}.self_attn.out_proj                         |
| blocks.blocks.mlp.fc1 / fc2  | ...layers.{i}.mlp.fc1 / fc2                                  |
| proj.kernel (D, P)           | visual_projection.weight (P, D)                              |
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open

from twlv_jax import models
from twlv_jax.export.table import Report, Rule, dense, import_params, same
from twlv_jax.models import posembed
from twlv_jax.models import weights as weightlib

PREFIX = "vision_model."
MARKER = PREFIX + "embeddings.patch_embedding.weight"
IGNORE = ("text_model.*", "text_projection.*", "logit_scale", PREFIX + "embeddings.position_ids")
B = "blocks.blocks."


def is_hf_clip(path: str) -> bool:
    """True when the safetensors file holds a Hugging Face CLIP vision tower."""
    with safe_open(path, framework="numpy") as f:
        return MARKER in list(f.keys())   # a safetensors handle, not a dict


def _patch(theirs: str) -> Rule:
    """(p*p*3, D) over (p, p, C) patches <-> Conv2d weight (D, C, p, p)."""
    def to_theirs(kernel):
        p = math.isqrt(kernel.shape[0] // 3)
        return (kernel.reshape(p, p, 3, -1).transpose(3, 2, 0, 1),)

    return Rule("patch_embed.kernel", (theirs,), to_theirs,
                lambda t, shape: t[0].transpose(2, 3, 1, 0).reshape(shape))


def resample_positions(table: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(1 + g*g, D) -> (1 + G*G, D): the class position kept, the patch grid resampled."""
    grid, new = math.isqrt(table.shape[0] - 1), math.isqrt(shape[0] - 1)
    patches = table[1:].reshape(grid, grid, -1)
    resized = np.asarray(posembed.resample(jax.numpy.asarray(patches), (new, new)))
    return np.concatenate([table[:1], resized.reshape(new * new, -1)])


def _qkv(suffix: str) -> Rule:
    """Our stacked (D, 3, H, Dh) kernel or (3, H, Dh) bias <-> q/k/v_proj weights or biases."""
    theirs = tuple(f"{PREFIX}encoder.layers.{{i}}.self_attn.{n}_proj.{suffix}" for n in "qkv")
    if suffix == "weight":
        return Rule(B + "attn.qkv", theirs,
                    lambda w: tuple(w[:, j].reshape(w.shape[0], -1).T for j in range(3)),
                    lambda t, shape: np.stack([a.T for a in t], axis=1).reshape(shape), True)
    return Rule(B + "attn.qkv_bias", theirs, lambda b: tuple(b[j].reshape(-1) for j in range(3)),
                lambda t, shape: np.stack(t).reshape(shape), True)


def rules() -> list[Rule]:
    layer = PREFIX + "encoder.layers.{i}."

    def norm(ours, theirs, layered=False):
        return [same(f"{ours}.scale", f"{theirs}.weight", layered),
                same(f"{ours}.bias", f"{theirs}.bias", layered)]

    return [_patch(MARKER),
            same("class_embedding", PREFIX + "embeddings.class_embedding"),
            Rule("pos_embedding", (PREFIX + "embeddings.position_embedding.weight",),
                 lambda a: (a,), lambda t, shape: t[0], resize=resample_positions),
            *norm("pre_norm", PREFIX + "pre_layrnorm"),
            *norm(B + "norm1", layer + "layer_norm1", True),
            _qkv("weight"), _qkv("bias"),
            dense(B + "attn.out", layer + "self_attn.out_proj.weight", True, heads_in=True),
            same(B + "attn.out_bias", layer + "self_attn.out_proj.bias", True),
            *norm(B + "norm2", layer + "layer_norm2", True),
            dense(B + "mlp.fc1.kernel", layer + "mlp.fc1.weight", True),
            same(B + "mlp.fc1.bias", layer + "mlp.fc1.bias", True),
            dense(B + "mlp.fc2.kernel", layer + "mlp.fc2.weight", True),
            same(B + "mlp.fc2.bias", layer + "mlp.fc2.bias", True),
            *norm("post_norm", PREFIX + "post_layernorm"),
            dense("proj.kernel", "visual_projection.weight")]


def _read(path: str) -> dict[str, np.ndarray]:
    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in list(f.keys())}   # a handle, not a dict


def _shapes_in_file(t: dict[str, np.ndarray], depth: int, heads: int) -> dict[str, np.ndarray]:
    """Zeros shaped like the teacher the file describes (its own width, patch, grid)."""
    dim, mlp = t[PREFIX + "embeddings.class_embedding"].shape[0], t[
        PREFIX + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    patch = t[MARKER].shape[-1]
    shapes = {"patch_embed.kernel": (patch * patch * 3, dim), "class_embedding": (dim,),
              "pos_embedding": t[PREFIX + "embeddings.position_embedding.weight"].shape,
              B + "attn.qkv": (depth, dim, 3, heads, dim // heads),
              B + "attn.qkv_bias": (depth, 3, heads, dim // heads),
              B + "attn.out": (depth, heads, dim // heads, dim), B + "attn.out_bias": (depth, dim),
              B + "mlp.fc1.kernel": (depth, dim, mlp), B + "mlp.fc1.bias": (depth, mlp),
              B + "mlp.fc2.kernel": (depth, mlp, dim), B + "mlp.fc2.bias": (depth, dim),
              "proj.kernel": (dim, t["visual_projection.weight"].shape[0])}
    for name in ("pre_norm", "post_norm"):
        shapes.update({f"{name}.scale": (dim,), f"{name}.bias": (dim,)})
    for name in ("norm1", "norm2"):
        shapes.update({f"{B}{name}.scale": (depth, dim), f"{B}{name}.bias": (depth, dim)})
    return {k: np.zeros(s, np.float32) for k, s in shapes.items()}


def _check(t: dict[str, np.ndarray], path: str, depth: int) -> None:
    missing = [k for k in (MARKER, "visual_projection.weight") if k not in t]
    if missing:
        raise ValueError(f"{path}: not a CLIP vision checkpoint with a projection; missing {missing}")
    found = sum(k.endswith("self_attn.q_proj.weight") and k.startswith(PREFIX) for k in t)
    if found != depth:
        raise ValueError(f"{path}: {found} vision layers, the teacher variant has {depth}")


def clip_params(path: str, *, depth: int, heads: int) -> dict:
    """The teacher's parameter tree (numpy, blocks stacked) from a HF CLIP safetensors file."""
    t = _read(path)
    _check(t, path, depth)
    params, _ = import_params(t, rules(), _shapes_in_file(t, depth, heads), source=path,
                              ignore=IGNORE)
    return weightlib.unflatten(params)


def import_clip(path: str, variant: str, *, allow=()) -> tuple[dict, Report]:
    """A HF CLIP file as the image teacher of `variant` (strict; positions resampled to its grid)."""
    size = models.clip_size(variant)
    t = _read(path)
    _check(t, path, size.depth)
    teacher = models.image_teacher(variant)
    like = {k: np.asarray(v) for k, v in weightlib.flatten(
        nnx.to_pure_dict(nnx.state(teacher))).items()}
    params, report = import_params(t, rules(), like, source=path, allow=allow, ignore=IGNORE)
    if report.ignored:
        report.ignored = [f"{len(report.ignored)} keys of the text tower and buffers"]
    return weightlib.unflatten(params), report

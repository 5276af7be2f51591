"""Hugging Face CLIP vision weights -> the image teacher (`ClipViT`) parameters.

Reads a `model.safetensors` of `CLIPModel`, `CLIPVisionModel` or
`CLIPVisionModelWithProjection` (keys under `vision_model.` plus `visual_projection`);
text-tower keys are ignored. Every teacher parameter must be found with the right shape.
"""

from __future__ import annotations

import numpy as np
from safetensors import safe_open

PREFIX = "vision_model."
MARKER = PREFIX + "embeddings.patch_embedding.weight"


def is_hf_clip(path: str) -> bool:
    """True when the safetensors file holds a Hugging Face CLIP vision tower."""
    with safe_open(path, framework="numpy") as f:
        return MARKER in list(f.keys())   # a safetensors handle, not a dict


def _read(path: str) -> dict[str, np.ndarray]:
    with safe_open(path, framework="numpy") as f:
        names = list(f.keys())            # a safetensors handle, not a dict
        keys = [k for k in names if k.startswith(PREFIX) or k == "visual_projection.weight"]
        return {k: f.get_tensor(k) for k in keys}


def _layer_norm(t, name):
    return {"scale": t[f"{name}.weight"], "bias": t[f"{name}.bias"]}


def _block(t, i: int, heads: int) -> dict:
    p = f"{PREFIX}encoder.layers.{i}."
    dim = t[p + "self_attn.q_proj.weight"].shape[1]
    head_dim = dim // heads
    qkv = np.stack([t[p + f"self_attn.{n}_proj.weight"].T.reshape(dim, heads, head_dim)
                    for n in "qkv"], axis=1)                                   # (D, 3, H, Dh)
    qkv_bias = np.stack([t[p + f"self_attn.{n}_proj.bias"].reshape(heads, head_dim) for n in "qkv"])
    out = t[p + "self_attn.out_proj.weight"].T.reshape(heads, head_dim, dim)  # (H, Dh, D)
    return {"attn": {"qkv": qkv, "qkv_bias": qkv_bias, "out": out,
                     "out_bias": t[p + "self_attn.out_proj.bias"]},
            "norm1": _layer_norm(t, p + "layer_norm1"), "norm2": _layer_norm(t, p + "layer_norm2"),
            "mlp": {"fc1": {"kernel": t[p + "mlp.fc1.weight"].T, "bias": t[p + "mlp.fc1.bias"]},
                    "fc2": {"kernel": t[p + "mlp.fc2.weight"].T, "bias": t[p + "mlp.fc2.bias"]}}}


def clip_params(path: str, *, depth: int, heads: int) -> dict:
    """The teacher's parameter tree (numpy, blocks stacked) from a HF CLIP safetensors file."""
    t = _read(path)
    missing = [k for k in (MARKER, "visual_projection.weight") if k not in t]
    if missing:
        raise ValueError(f"{path}: not a CLIP vision checkpoint with a projection; missing {missing}")
    found = sum(k.endswith("self_attn.q_proj.weight") for k in t)
    if found != depth:
        raise ValueError(f"{path}: {found} vision layers, the teacher variant has {depth}")
    patch = t[MARKER]                                                          # (D, C, p, p)
    blocks = [_block(t, i, heads) for i in range(depth)]
    return {
        "patch_embed": {"kernel": patch.transpose(2, 3, 1, 0).reshape(-1, patch.shape[0])},
        "class_embedding": t[PREFIX + "embeddings.class_embedding"],
        "pos_embedding": t[PREFIX + "embeddings.position_embedding.weight"],
        "pre_norm": _layer_norm(t, PREFIX + "pre_layrnorm"),
        "blocks": {"blocks": _stack(blocks)},
        "post_norm": _layer_norm(t, PREFIX + "post_layernorm"),
        "proj": {"kernel": t["visual_projection.weight"].T},
    }


def _stack(trees: list[dict]) -> dict:
    first = trees[0]
    if isinstance(first, dict):
        return {k: _stack([tree[k] for tree in trees]) for k in first}
    return np.stack(trees)

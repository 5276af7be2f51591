"""Original PyTorch checkpoints by key map: V-JEPA (facebookresearch/jepa) and UMT
(OpenGVLab/unmasked_teacher, single-modality pretraining) into our encoder, and V-JEPA's
predictor into our latent predictor.

No reference model runs here: these conversions follow the key names and shapes of those
projects' model definitions (the tests build such state dicts), and V-JEPA's stored
position tables are checked by value; docs/export.md says which conversion is verified how.
Neither stores the number of heads: it is our size's for the width, depth and MLP found
(V-JEPA's and UMT's ViT-B/L/H/g have the same).

V-JEPA `*.pth.tar` holds `encoder`, `target_encoder` (the EMA encoder its evaluations use)
and `predictor`, keys prefixed `module.backbone.`. Its `VisionTransformer` is our PyTorch
layout (`encoder_tables.torch_rules`, qkv_bias=all) plus `pos_embed` (1, N, D), a fixed 3-D
sin-cos table: with uniform_power=True (its released configs) it is our sincos3d, and the
grid is the one whose table it equals. Its predictor (`predictor_embed`, `mask_tokens.{j}`,
`predictor_pos_embed`, `predictor_blocks.{i}`, `predictor_norm`, `predictor_proj`) is our
latent predictor when its width divides into the encoder's heads (V-JEPA gives the predictor
the encoder's heads; ours does then too). Ours has one mask token: V-JEPA's `mask_tokens.1`
(its predictor's default `mask_index`) is taken.

UMT's checkpoint holds `model`: `encoder.` + our PyTorch layout with q/v biases
(qkv_bias=qv; `gamma_1`/`gamma_2` when trained with LayerScale) and VideoMAE's 1-D sin-cos
positions over its pretraining grid (8, 14, 14), not stored; `clip_decoder.*` add a sin-cos
table before their Linear + LayerNorm (ours do not), so they are ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from twlv_jax import models
from twlv_jax.export import encoder_tables, files
from twlv_jax.export.table import ConversionError, Rule
from twlv_jax.models import posembed

UMT_GRID = (8, 14, 14)   # the grid of UMT's pretraining (its position table's 1568 rows)
VJEPA_MASK_TOKEN = 1     # V-JEPA's predictor's default mask_index
LAYERSCALE = 1e-5        # the init value written for a model with LayerScale (weights load)


@dataclasses.dataclass
class Source:
    """An original checkpoint read for import: its arrays and what our model must be."""

    state: dict[str, np.ndarray]                 # external keys, prefixes stripped
    variant: str
    fields: dict                                 # our `model` fields
    encoder_rules: Callable[[set[str]], list[Rule]]
    heads: dict[str, Callable[[set[str]], list[Rule]]]   # our prefix -> its rules
    objective: str = "twlv"                      # the preset whose heads `heads` are
    objective_fields: dict = dataclasses.field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    notes: list[str] = dataclasses.field(default_factory=list)


def _variant(dim: int, depth: int, mlp: int) -> str:
    for name, s in models.SIZES.items():
        if (s.dim, s.depth, s.mlp_dim) == (dim, depth, mlp):
            return name
    known = ", ".join(f"{n} ({s.dim}/{s.depth}/{s.mlp_dim})" for n, s in models.SIZES.items())
    raise ValueError(f"no encoder size has width {dim}, depth {depth}, MLP {mlp}; sizes "
                     f"(width/depth/MLP): {known}")


def _depth(state: dict, prefix: str) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(prefix)})


def _encoder_shape(state: dict) -> tuple[str, int, int]:
    """(variant, tubelet, patch) from the arrays of a timm-layout encoder."""
    if "patch_embed.proj.weight" not in state:
        raise ConversionError("no patch_embed.proj.weight: not an encoder state dict (keys "
                              f"start {sorted(state)[:4]})")
    dim, _, tubelet, patch, _ = state["patch_embed.proj.weight"].shape     # (D, 3, t, p, p)
    variant = _variant(dim, _depth(state, "blocks."), state["blocks.0.mlp.fc1.weight"].shape[0])
    return variant, tubelet, patch


def sincos3d_grid(table: np.ndarray) -> tuple[int, int, int] | None:
    """The grid (T, S, S) whose sincos3d table (ours; V-JEPA's with uniform_power) equals
    `table` (N, D), or None."""
    n, dim = table.shape
    for side in range(1, math.isqrt(n) + 1):
        if n % (side * side) == 0:
            grid = (n // (side * side), side, side)
            if np.allclose(posembed.sincos_3d(dim, grid).reshape(n, dim), table, atol=1e-5):
                return grid
    return None


def _strip(state: dict, *prefixes: str) -> dict:
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _vjepa_predictor(state: dict, grid, heads: int) -> tuple[dict, dict, list[str], tuple]:
    """(our heads {prefix: rules}, objective fields, notes, ignored patterns) of V-JEPA's
    predictor in `state`: none when ours cannot hold it."""
    everything = ("predictor_*", "mask_tokens.*")
    if "predictor_embed.weight" not in state:
        return {}, {}, [], ()
    width, depth = state["predictor_embed.weight"].shape[0], _depth(state, "predictor_blocks.")
    tokens = _depth(state, "mask_tokens.")
    misfits = []
    if width % heads:
        misfits.append(f"width {width} does not divide into the encoder's {heads} heads")
    if state["predictor_blocks.0.mlp.fc1.weight"].shape[0] != 4 * width:
        misfits.append("an MLP other than 4 x width")
    if not tokens:
        misfits.append("no mask tokens (use_mask_tokens=False)")
    table = state["predictor_pos_embed"].reshape(-1, width)
    if sincos3d_grid(table) != grid:
        misfits.append("predictor_pos_embed is not our sincos3d table of the encoder's grid")
    if misfits:
        return {}, {}, ["predictor not imported: " + "; ".join(misfits)], everything
    token = VJEPA_MASK_TOKEN % tokens
    fields = {"latent.predictor_width": width, "latent.predictor_depth": depth}
    notes = [f"mapped: predictor_embed, mask_tokens.{token}, predictor_blocks.*, predictor_norm, "
             f"predictor_proj -> params.latent.predictor (predictor_width={width}, "
             f"predictor_depth={depth}, {heads} heads); predictor_pos_embed checked: our "
             f"sincos3d table"]
    unused = tuple(f"mask_tokens.{j}" for j in range(tokens) if j != token)
    if unused:
        notes.append(f"our predictor has one mask token: mask_tokens.{token} (V-JEPA's default "
                     f"mask_index) is used, {', '.join(unused)} not")
    rules = {"latent.predictor.": lambda names: encoder_tables.vjepa_predictor_rules(names, token)}
    return rules, fields, notes, ("predictor_pos_embed", *unused)


def read_vjepa(path: str, key: str = "target_encoder", *, predictor: bool = True) -> Source:
    """A V-JEPA checkpoint: `key` (target_encoder or encoder) and, with `predictor`, its
    predictor where ours can hold it."""
    checkpoint = files.torch_checkpoint(files.weights_file(path))
    if not isinstance(checkpoint.get(key), dict):
        found = sorted(k for k, v in checkpoint.items() if isinstance(v, dict))
        raise ValueError(f"{path}: no {key!r} state dict (found {found}); V-JEPA checkpoints "
                         "hold encoder, target_encoder and predictor")
    state = _strip(files.arrays(checkpoint[key]), "module.", "backbone.")
    if predictor and isinstance(checkpoint.get("predictor"), dict):
        state.update(_strip(files.arrays(checkpoint["predictor"]), "module.", "backbone."))
    variant, tubelet, patch = _encoder_shape(state)
    if "pos_embed" not in state:
        raise ConversionError(f"{path}: {key} has no pos_embed (V-JEPA's fixed position table)")
    grid = sincos3d_grid(state["pos_embed"].reshape(-1, state["pos_embed"].shape[-1]))
    if grid is None:
        raise ConversionError(
            f"{path}: {key}.pos_embed {tuple(state['pos_embed'].shape)} is not our sincos3d table "
            "for any grid (V-JEPA with uniform_power=False splits the width 1/2, 1/4, 1/4: our "
            "encoder cannot compute it)")
    qkv_bias = "all" if "blocks.0.attn.qkv.bias" in state else "none"
    heads = models.SIZES[variant].heads
    fields = dict(frames=grid[0] * tubelet, image_size=grid[1] * patch, patch=patch,
                  tubelet=tubelet, qkv_bias=qkv_bias, pos_embed="sincos3d", layerscale=0.0)
    heads_rules, objective, notes, ignore = _vjepa_predictor(state, grid, heads)
    notes = [f"{key} -> the student; pos_embed checked: our sincos3d table for the grid {grid}",
             f"heads are not stored: {heads}, our {variant}'s", *notes]
    return Source(state, variant, fields,
                  lambda names: encoder_tables.torch_rules(names, tubelet, patch), heads_rules,
                  objective="vjepa" if heads_rules else "twlv", objective_fields=objective,
                  ignore=("pos_embed", *ignore), notes=notes)


def read_umt(path: str, frames: int = 0, image_size: int = 0) -> Source:
    """A UMT single-modality pretraining checkpoint; `frames` and `image_size` (0: from UMT's
    pretraining grid) are the clip it was trained on."""
    checkpoint = files.torch_checkpoint(files.weights_file(path))
    state = files.arrays(checkpoint.get("model", checkpoint))
    if not any(k.startswith("encoder.") for k in state):
        raise ConversionError(f"{path}: no encoder.* keys (UMT's PretrainVisionTransformer "
                              "checkpoint holds model.encoder.*)")
    state = _strip(state, "encoder.")
    variant, tubelet, patch = _encoder_shape(state)
    qkv_bias = ("qv" if "blocks.0.attn.q_bias" in state else
                "all" if "blocks.0.attn.qkv.bias" in state else "none")
    fields = dict(frames=frames or UMT_GRID[0] * tubelet, image_size=image_size or UMT_GRID[1] * patch,
                  patch=patch, tubelet=tubelet, qkv_bias=qkv_bias, pos_embed="sincos1d",
                  layerscale=LAYERSCALE if "blocks.0.gamma_1" in state else 0.0)
    heads = models.SIZES[variant].heads
    notes = [f"positions: VideoMAE's 1-D sin-cos table (not stored) over {fields['frames']} "
             f"frames at {fields['image_size']} px" + ("" if frames or image_size else
                                                       f" (UMT's pretraining grid {UMT_GRID})"),
             f"heads are not stored: {heads}, our {variant}'s",
             "clip_decoder.* not imported: UMT adds a sin-cos table before its heads, ours "
             "do not"]
    return Source(state, variant, fields,
                  lambda names: encoder_tables.torch_rules(names, tubelet, patch), {},
                  ignore=("clip_decoder.*",), notes=notes)

"""Hugging Face `VJEPA2Model` (or `VJEPA2ForVideoClassification`) -> our encoder.

V-JEPA 2's encoder is ours with `pos_embed=rope3d` (3-D rotary positions, no position
parameter) and `qkv_bias=all` (separate query/key/value with biases; `none` without), no
LayerScale, LayerNorm epsilon 1e-6, a final norm. Its `frames_per_clip` and `crop_size`
become our `frames` and `image_size`; rotary positions follow the input's grid, so other
sizes run as they do in V-JEPA 2. The predictor, the classifier's attentive pooler and
the classifier are listed as ignored (ours has no layout for them).
"""

from __future__ import annotations

from twlv_jax.export import encoder_tables
from twlv_jax.export.table import Rule
from twlv_jax.export.videomae import check_model_type, eps_notes, variant_of

PREFIX = "vjepa2."   # VJEPA2ForVideoClassification's encoder keys
IGNORE = ("predictor.*", "pooler.*", "classifier.*")


def rules(model_cfg, names: set[str]) -> list[Rule]:
    return encoder_tables.vjepa2_rules(names, model_cfg.tubelet, model_cfg.patch)


def normalize_keys(state: dict) -> dict:
    """Keys as `VJEPA2Model` names them (no `vjepa2.` prefix)."""
    return {key.removeprefix(PREFIX): value for key, value in state.items()}


def model_fields(hf: dict) -> tuple[str, dict, list[str]]:
    """(variant, our `model` fields, notes) of a `VJEPA2Config` dict."""
    check_model_type(hf, "vjepa2")
    patch = hf.get("patch_size", 16)
    if isinstance(patch, list | tuple):
        raise ValueError(f"patch_size {patch}: our encoder's patches are square")
    dim = hf.get("hidden_size", 1024)
    variant = variant_of(dim, hf.get("num_hidden_layers", 24), hf.get("num_attention_heads", 16),
                         int(dim * hf.get("mlp_ratio", 4.0)))
    fields = dict(frames=hf.get("frames_per_clip", 64), image_size=hf.get("crop_size", 256),
                  patch=patch, tubelet=hf.get("tubelet_size", 2),
                  qkv_bias="all" if hf.get("qkv_bias", True) else "none", pos_embed="rope3d",
                  layerscale=0.0)
    return variant, fields, eps_notes(hf.get("layer_norm_eps", 1e-6))

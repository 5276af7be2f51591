"""Hugging Face `VideoMAEModel` / `VideoMAEForPreTraining` <-> our encoder.

Export is exact only for configs `VideoMAEModel` can express (`blockers` says why not):
its positions are the fixed 1-D sin-cos table over the flattened tokens (our
`pos_embed=sincos1d`), it has no LayerScale, and it takes exactly the config's frames
and size. The key has no bias: our learned key bias (qkv_bias=all) only adds a
per-query constant to the logits, which softmax ignores, so it is dropped. The model is
written with `use_mean_pooling=False` (the only form with a final LayerNorm, which ours
has) and our LayerNorm epsilon.
"""

from __future__ import annotations

import re

import numpy as np

from twlv_jax import models
from twlv_jax.export import encoder_tables
from twlv_jax.export.table import Rule

PREFIX = "videomae."
# Keys of the pretraining / classification heads: listed by an import unless loaded.
DECODER = ("decoder.*", "encoder_to_decoder.*", "mask_token")
IGNORE = (*DECODER, "position_embeddings", "fc_norm.*", "classifier.*")
# Older checkpoints (and older transformers) name the attention biases q_bias / v_bias.
RENAMES = ((re.compile(r"attention\.attention\.q_bias$"), "attention.attention.query.bias"),
           (re.compile(r"attention\.attention\.v_bias$"), "attention.attention.value.bias"))
EPS = 1e-6   # our encoder's LayerNorm epsilon


def blockers(model_cfg, names: set[str]) -> list[str]:
    """Why `VideoMAEModel` cannot compute what this encoder computes (empty: it can)."""
    reasons = []
    if model_cfg.pos_embed != "sincos1d":
        reasons.append(f"pos_embed={model_cfg.pos_embed} (VideoMAEModel has only the 1-D sin-cos "
                       "table over the flattened tokens, pos_embed=sincos1d)")
    if any(n.endswith("gamma1") for n in names):
        reasons.append("LayerScale gammas (VideoMAEModel has none)")
    if any(n.startswith("pooler.") for n in names):
        reasons.append("an attentive pooler (VideoMAEModel has none)")
    return reasons


def rules(model_cfg, names: set[str]) -> list[Rule]:
    return encoder_tables.videomae_rules(names, model_cfg.tubelet, model_cfg.patch)


def decoder_fields(hf: dict) -> tuple[dict | None, str]:
    """(our `objective.pixel` fields for the source's decoder, or None when our pixel decoder
    cannot hold it; why)."""
    width = hf.get("decoder_hidden_size", 384)
    heads, mlp = hf.get("decoder_num_attention_heads", 6), hf.get("decoder_intermediate_size", 1536)
    misfits = []
    if heads != max(1, width // 64):
        misfits.append(f"{heads} heads (ours: width // 64 = {max(1, width // 64)})")
    if mlp != 4 * width:
        misfits.append(f"MLP width {mlp} (ours: 4 x {width})")
    if not hf.get("qv_bias", hf.get("qkv_bias", True)):
        misfits.append("no query/value biases")
    if misfits:
        return None, "decoder not imported: our pixel decoder cannot hold " + ", ".join(misfits)
    fields = dict(decoder_width=width, decoder_depth=hf.get("decoder_num_hidden_layers", 4),
                  norm_pix=hf.get("norm_pix_loss", True))
    return fields, (f"mapped: encoder_to_decoder, mask_token, decoder.* -> params.pixel.decoder "
                    f"(decoder_width={width}, decoder_depth={fields['decoder_depth']}, "
                    f"norm_pix={fields['norm_pix']}; the key bias is zero); transformers gives "
                    "decoder.norm PyTorch's epsilon 1e-5, ours is 1e-6 (the original VideoMAE's)")


def decoder_rules(names: set[str]) -> list[Rule]:
    return encoder_tables.videomae_decoder_rules(names)


def hf_config(model_cfg) -> dict:
    """`VideoMAEConfig` fields of an expressible encoder."""
    s = models.SIZES[model_cfg.variant]
    return dict(image_size=model_cfg.image_size, patch_size=model_cfg.patch, num_channels=3,
                num_frames=model_cfg.frames, tubelet_size=model_cfg.tubelet, hidden_size=s.dim,
                num_hidden_layers=s.depth, num_attention_heads=s.heads,
                intermediate_size=s.mlp_dim, hidden_act="gelu", layer_norm_eps=EPS,
                qv_bias=model_cfg.qkv_bias != "none", use_mean_pooling=False)


def normalize_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys as `VideoMAEModel` names them: no `videomae.` prefix, query/value `.bias`."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix(PREFIX)
        for pattern, new in RENAMES:
            key = pattern.sub(new, key)
        out[key] = value
    return out


def variant_of(dim: int, depth: int, heads: int, mlp_dim: int) -> str:
    """Our size name with these dimensions (an import needs one)."""
    for name, s in models.SIZES.items():
        if (s.dim, s.depth, s.heads, s.mlp_dim) == (dim, depth, heads, mlp_dim):
            return name
    known = ", ".join(f"{n} ({s.dim}/{s.depth}/{s.heads}/{s.mlp_dim})"
                      for n, s in models.SIZES.items())
    raise ValueError(f"no encoder size has width {dim}, depth {depth}, {heads} heads, MLP "
                     f"{mlp_dim}; sizes (width/depth/heads/MLP): {known}")


def eps_notes(eps: float, why: str = "") -> list[str]:
    """The report's note when the source's LayerNorm epsilon is not ours (`why`: where ours
    comes from)."""
    if eps == EPS:
        return []
    return [f"the source's layer_norm_eps is {eps:g}; our encoder uses {EPS:g}{why}, so "
            "LayerNorm outputs differ very slightly"]


def check_model_type(hf: dict, model_type: str) -> None:
    """A Hugging Face config of `model_type` with the exact gelu our encoder uses."""
    if hf.get("model_type") != model_type:
        raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, "
                         f"expected {model_type!r}")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r}: our encoder uses exact gelu")


def model_fields(hf: dict) -> tuple[str, dict, list[str]]:
    """(variant, our `model` fields, notes) of a `VideoMAEConfig` dict."""
    check_model_type(hf, "videomae")
    size = hf.get("image_size", 224)
    patch = hf.get("patch_size", 16)
    if isinstance(size, list | tuple) or isinstance(patch, list | tuple):
        raise ValueError(f"image_size {size} / patch_size {patch}: our encoder is square")
    variant = variant_of(hf.get("hidden_size", 768), hf.get("num_hidden_layers", 12),
                         hf.get("num_attention_heads", 12), hf.get("intermediate_size", 3072))
    qv = hf.get("qv_bias", hf.get("qkv_bias", True))
    fields = dict(frames=hf.get("num_frames", 16), image_size=size, patch=patch,
                  tubelet=hf.get("tubelet_size", 2), qkv_bias="qv" if qv else "none",
                  pos_embed="sincos1d", layerscale=0.0)
    return variant, fields, eps_notes(hf.get("layer_norm_eps", 1e-12), " (the original VideoMAE's value)")

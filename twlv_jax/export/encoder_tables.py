"""Name maps of our video encoder (`VideoViT`): Hugging Face `VideoMAEModel`, `VJEPA2Model`
and PyTorch.

Our names are the dotted paths of the encoder's pure-dict state; blocks are stacked
(`blocks.blocks.*`, leading layers axis). The tables are built from the set of names a
config has, so a layout (qkv_bias all|qv|none, LayerScale) maps exactly what exists.

    ours (stacked over layers)   VideoMAEModel, `encoder.layer.{i}.` + ...   torch (timm layout)
    patch_embed.kernel (tpp3, D)  embeddings.patch_embeddings.projection   patch_embed.proj
    attn.qkv (D, 3, H, Dh)        attention.attention.{query,key,value}    blocks.{i}.attn.qkv
    attn.q_bias / v_bias (H, Dh)  attention.attention.query/value.bias     blocks.{i}.attn.q_bias/v_bias
    attn.qkv_bias (3, H, Dh)      query/value.bias (key bias dropped)      blocks.{i}.attn.qkv.bias
    attn.out (H, Dh, D)           attention.output.dense                   blocks.{i}.attn.proj
    norm1 / norm2                 layernorm_before / layernorm_after       blocks.{i}.norm1 / norm2
    mlp.fc1 / mlp.fc2             intermediate.dense / output.dense        blocks.{i}.mlp.fc1 / fc2
    gamma1 / gamma2               (none: not expressible)                  blocks.{i}.gamma_1 / gamma_2
    norm                          layernorm                                norm

`VJEPA2Model`'s encoder (`vjepa2_rules`, pos_embed=rope3d): `encoder.` + embeddings.
patch_embeddings.proj, layer.{i}.{norm1, attention.{query,key,value} (with biases),
attention.proj, norm2, mlp.fc1, mlp.fc2}, layernorm.

LayerNorm `scale` is `weight` on the PyTorch side; kernels (in, out) are Linear weights
(out, in); kernels with head axes are flattened to 2-D first.
"""

from __future__ import annotations

import numpy as np

from twlv_jax.export.table import Rule, dense, flat, same

B = "blocks.blocks."


def patch_rule(theirs: str, tubelet: int, patch: int) -> Rule:
    """Our dense kernel over flattened (t, p, p, C) tubelets <-> a Conv3d weight (O, C, t, p, p)."""
    def to_theirs(kernel: np.ndarray):
        out = kernel.shape[-1]
        return (kernel.reshape(tubelet, patch, patch, -1, out).transpose(4, 3, 0, 1, 2),)

    def to_ours(arrays, shape):
        return arrays[0].transpose(2, 3, 4, 1, 0).reshape(shape)   # (t, p, p, C, O) flattened

    return Rule("patch_embed.kernel", (theirs,), to_theirs, to_ours)


def _norm(ours: str, theirs: str, layered: bool) -> list[Rule]:
    return [same(f"{ours}.scale", f"{theirs}.weight", layered),
            same(f"{ours}.bias", f"{theirs}.bias", layered)]


def _linear(ours: str, theirs: str) -> list[Rule]:
    return [dense(f"{ours}.kernel", f"{theirs}.weight", True),
            same(f"{ours}.bias", f"{theirs}.bias", True)]


def _split_qkv(ours: str, theirs: tuple[str, str, str]) -> Rule:
    """(D, 3, H, Dh) <-> three Linear weights (H*Dh, D)."""
    def to_theirs(w):
        return tuple(w[:, j].reshape(w.shape[0], -1).T for j in range(3))

    def to_ours(arrays, shape):
        return np.stack([a.T for a in arrays], axis=1).reshape(shape)

    return Rule(ours, theirs, to_theirs, to_ours, layered=True)


def _qv_of_qkv_bias(ours: str, theirs: tuple[str, str]) -> Rule:
    """(3, H, Dh) <-> query and value biases; the key bias is dropped (softmax ignores it)
    and comes back as zeros."""
    def to_ours(arrays, shape):
        q, v = (a.reshape(shape[1:]) for a in arrays)
        return np.stack([q, np.zeros_like(q), v])

    return Rule(ours, theirs, lambda b: (b[0].reshape(-1), b[2].reshape(-1)), to_ours,
                layered=True)


def _videomae_layers(layer: str, names: set[str]) -> list[Rule]:
    """Our stacked blocks <-> `VideoMAELayer`s at `layer` (a key prefix with `{i}`)."""
    attn = layer + "attention."
    rules = [*_norm(B + "norm1", layer + "layernorm_before", True),
             _split_qkv(B + "attn.qkv",
                        tuple(f"{attn}attention.{n}.weight" for n in ("query", "key", "value"))),
             dense(B + "attn.out", attn + "output.dense.weight", True, heads_in=True),
             same(B + "attn.out_bias", attn + "output.dense.bias", True),
             *_norm(B + "norm2", layer + "layernorm_after", True),
             *_linear(B + "mlp.fc1", layer + "intermediate.dense"),
             *_linear(B + "mlp.fc2", layer + "output.dense")]
    if B + "attn.q_bias" in names:
        rules += [flat(B + "attn.q_bias", attn + "attention.query.bias", True),
                  flat(B + "attn.v_bias", attn + "attention.value.bias", True)]
    if B + "attn.qkv_bias" in names:
        rules.append(_qv_of_qkv_bias(B + "attn.qkv_bias", (attn + "attention.query.bias",
                                                          attn + "attention.value.bias")))
    return rules


def videomae_rules(names: set[str], tubelet: int, patch: int) -> list[Rule]:
    """Our encoder <-> `VideoMAEModel` keys (no `videomae.` prefix)."""
    return [patch_rule("embeddings.patch_embeddings.projection.weight", tubelet, patch),
            same("patch_embed.bias", "embeddings.patch_embeddings.projection.bias"),
            *_videomae_layers("encoder.layer.{i}.", names),
            *_norm("norm", "layernorm", False)]


def videomae_decoder_rules(names: set[str]) -> list[Rule]:
    """Our pixel decoder (`MaskedPredictor`) <-> the decoder of `VideoMAEForPreTraining`
    (positions are VideoMAE's fixed 1-D table on both sides, not parameters)."""
    return [dense("embed.kernel", "encoder_to_decoder.weight"),
            same("mask_token", "mask_token"),
            *_videomae_layers("decoder.decoder_layers.{i}.", names),
            *_norm("norm", "decoder.norm", False),
            dense("head.kernel", "decoder.head.weight"),
            same("head.bias", "decoder.head.bias")]


def _split_bias(ours: str, theirs: tuple[str, str, str]) -> Rule:
    """(3, H, Dh) <-> three biases (H*Dh,)."""
    return Rule(ours, theirs, lambda b: tuple(b[j].reshape(-1) for j in range(3)),
                lambda arrays, shape: np.stack(arrays).reshape(shape), layered=True)


def vjepa2_rules(names: set[str], tubelet: int, patch: int) -> list[Rule]:
    """Our encoder (pos_embed=rope3d) <-> the encoder of `VJEPA2Model` (`encoder.` keys)."""
    layer, attn = "encoder.layer.{i}.", "encoder.layer.{i}.attention."
    rules = [patch_rule("encoder.embeddings.patch_embeddings.proj.weight", tubelet, patch),
             same("patch_embed.bias", "encoder.embeddings.patch_embeddings.proj.bias"),
             *_norm(B + "norm1", layer + "norm1", True),
             _split_qkv(B + "attn.qkv", tuple(f"{attn}{n}.weight" for n in ("query", "key", "value"))),
             dense(B + "attn.out", attn + "proj.weight", True, heads_in=True),
             same(B + "attn.out_bias", attn + "proj.bias", True),
             *_norm(B + "norm2", layer + "norm2", True),
             *_linear(B + "mlp.fc1", layer + "mlp.fc1"),
             *_linear(B + "mlp.fc2", layer + "mlp.fc2"),
             *_norm("norm", "encoder.layernorm", False)]
    if B + "attn.qkv_bias" in names:
        rules.append(_split_bias(B + "attn.qkv_bias",
                                 tuple(f"{attn}{n}.bias" for n in ("query", "key", "value"))))
    return rules


def _timm_layers(blk: str, names: set[str]) -> list[Rule]:
    """Our stacked blocks <-> timm-style blocks at `blk` (a key prefix with `{i}`)."""
    rules = [*_norm(B + "norm1", blk + "norm1", True),
             dense(B + "attn.qkv", blk + "attn.qkv.weight", True),
             dense(B + "attn.out", blk + "attn.proj.weight", True, heads_in=True),
             same(B + "attn.out_bias", blk + "attn.proj.bias", True),
             *_norm(B + "norm2", blk + "norm2", True),
             *_linear(B + "mlp.fc1", blk + "mlp.fc1"),
             *_linear(B + "mlp.fc2", blk + "mlp.fc2")]
    if B + "attn.qkv_bias" in names:
        rules.append(flat(B + "attn.qkv_bias", blk + "attn.qkv.bias", True))
    if B + "attn.q_bias" in names:
        rules += [flat(B + "attn.q_bias", blk + "attn.q_bias", True),
                  flat(B + "attn.v_bias", blk + "attn.v_bias", True)]
    if B + "gamma1" in names:
        rules += [same(B + "gamma1", blk + "gamma_1", True), same(B + "gamma2", blk + "gamma_2", True)]
    return rules


def torch_rules(names: set[str], tubelet: int, patch: int) -> list[Rule]:
    """Our encoder <-> flat PyTorch names (timm / original VideoMAE and V-JEPA layout)."""
    return [patch_rule("patch_embed.proj.weight", tubelet, patch),
            same("patch_embed.bias", "patch_embed.proj.bias"),
            *_timm_layers("blocks.{i}.", names),
            *_norm("norm", "norm", False)]


def vjepa_predictor_rules(names: set[str], mask_token: int) -> list[Rule]:
    """Our latent predictor (`MaskedPredictor`) <-> V-JEPA's `VisionTransformerPredictor`,
    taking its mask token `mask_token` (positions: a fixed table on both sides)."""
    return [dense("embed.kernel", "predictor_embed.weight"),
            same("embed.bias", "predictor_embed.bias"),
            same("mask_token", f"mask_tokens.{mask_token}"),
            *_timm_layers("predictor_blocks.{i}.", names),
            *_norm("norm", "predictor_norm", False),
            dense("head.kernel", "predictor_proj.weight"),
            same("head.bias", "predictor_proj.bias")]

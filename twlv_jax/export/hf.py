"""Writing our encoder for PyTorch: a Hugging Face folder (two forms) or a flat state dict.

Forms of `twlv export hf`:
- `videomae`: `VideoMAEModel` (config.json + model.safetensors), when the config is
  exactly expressible in it (`videomae.blockers`);
- `custom`: a self-contained remote-code model (config.json with `auto_map`,
  configuration_twlv.py and modeling_twlv.py beside the weights) computing what ours
  computes, loaded with `AutoModel.from_pretrained(DIR, trust_remote_code=True)`.
Either folder also holds preprocessing.json: what the model expects as input.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

from twlv_jax import models
from twlv_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from twlv_jax.export import encoder_tables, videomae
from twlv_jax.export.table import export_params

REMOTE = os.path.join(os.path.dirname(__file__), "remote")
REMOTE_FILES = ("configuration_twlv.py", "modeling_twlv.py")
AUTO_MAP = {"AutoConfig": "configuration_twlv.TwlvVideoConfig",
            "AutoModel": "modeling_twlv.TwlvVideoModel"}


def choose_form(model_cfg, names: set[str], form: str) -> tuple[str, str]:
    """(form, why) for `form` in auto | videomae | custom; videomae when not expressible fails."""
    reasons = videomae.blockers(model_cfg, names)
    if form == "custom":
        return "custom", "asked for (--form custom)"
    if not reasons:
        why = "the config is exactly expressible as VideoMAEModel"
        if model_cfg.qkv_bias == "all":
            why += " (the learned key bias is dropped: softmax ignores a per-query constant)"
        return "videomae", why
    if form == "videomae":
        raise ValueError("VideoMAEModel cannot compute what this encoder computes: "
                         + "; ".join(reasons) + ". Use --form custom (or auto)")
    return "custom", "VideoMAEModel cannot express it: " + "; ".join(reasons)


def torch_state(model_cfg, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat PyTorch names and layouts (encoder_tables.torch_rules), float32."""
    rules = encoder_tables.torch_rules(set(params), model_cfg.tubelet, model_cfg.patch)
    return export_params(params, rules)


def custom_config(model_cfg, names: set[str]) -> dict:
    s = models.SIZES[model_cfg.variant]
    return {"model_type": "twlv_video", "architectures": ["TwlvVideoModel"], "auto_map": AUTO_MAP,
            "hidden_size": s.dim, "num_hidden_layers": s.depth, "num_attention_heads": s.heads,
            "intermediate_size": s.mlp_dim, "num_frames": model_cfg.frames,
            "image_size": model_cfg.image_size, "tubelet_size": model_cfg.tubelet,
            "patch_size": model_cfg.patch, "num_channels": 3, "qkv_bias": model_cfg.qkv_bias,
            "layerscale": any(n.endswith("gamma1") for n in names),
            "pos_embed": model_cfg.pos_embed, "layer_norm_eps": videomae.EPS, "hidden_act": "gelu",
            "torch_dtype": "float32"}


def preprocessing(model_cfg, form: str) -> dict:
    """What the exported model expects, and how `twlv embed` samples clips."""
    return {
        "form": form,
        "frames": model_cfg.frames, "image_size": model_cfg.image_size,
        "input": "pixel_values float32 (batch, frames, 3, image_size, image_size), RGB",
        "rescale": "uint8 / 255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "resize": "short side to image_size (bilinear), then the central image_size square",
        "sampling": {
            "uniform": "frames frame indices at the centres of equal segments of the whole "
                       "video: ((arange(frames) + 0.5) * num_frames / frames).astype(int)",
            "multi-clip": "clips of clip_seconds every clip_stride seconds, frames indices "
                          "spread the same way over each clip; the video embedding is the "
                          "mean of the clip embeddings"},
        "embedding": "mean of last_hidden_state over tokens" + (
            " (pooler_output)" if form == "custom" else ""),
        "tokens": "ordered (t, h, w): (frames / tubelet) x (image_size / patch)^2",
    }


def write_hf(directory: str, model_cfg, params: dict[str, np.ndarray], form: str) -> None:
    """The Hugging Face folder of `form` (see module docstring)."""
    os.makedirs(directory, exist_ok=True)
    names = set(params)
    if form == "videomae":
        state = export_params(params, videomae.rules(model_cfg, names))
        config = {"model_type": "videomae", "architectures": ["VideoMAEModel"],
                  **videomae.hf_config(model_cfg), "torch_dtype": "float32"}
    else:
        state = torch_state(model_cfg, params)
        config = custom_config(model_cfg, names)
        for name in REMOTE_FILES:
            shutil.copyfile(os.path.join(REMOTE, name), os.path.join(directory, name))
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(directory, "config.json"), config)
    _write_json(os.path.join(directory, "preprocessing.json"), preprocessing(model_cfg, form))


def write_flat(path: str, model_cfg, params: dict[str, np.ndarray], kind: str) -> None:
    """`kind` torch: a safetensors state dict; npz: the same names in a numpy archive."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = torch_state(model_cfg, params)
    if kind == "torch":
        save_file(state, path, metadata={"format": "pt"})
    else:
        np.savez(path, **state)


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")

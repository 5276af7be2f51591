"""Reading external weights: a Hugging Face folder or a single state-dict file, as numpy."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _safetensors(path: str) -> dict[str, np.ndarray]:
    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}   # noqa: SIM118 (a handle, not a dict)


def torch_checkpoint(path: str) -> dict:
    """A PyTorch checkpoint file as torch loads it (tensors only, no code run)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises its own error types
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from None


def arrays(state: dict) -> dict[str, np.ndarray]:
    """The tensors of a state dict as numpy (bfloat16 widened to float32)."""
    import torch

    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in state.items() if isinstance(v, torch.Tensor)}


def _torch_file(path: str) -> dict[str, np.ndarray]:
    state = torch_checkpoint(path)
    for key in ("model", "module", "state_dict"):      # original training checkpoints nest it
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return arrays(state)


def _index(path: str) -> dict[str, np.ndarray]:
    with open(path) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    folder = os.path.dirname(path)
    state = {}
    for shard in shards:
        state.update(_safetensors(os.path.join(folder, shard)))
    return state


def weights_file(path: str) -> str:
    """A folder's weights file (safetensors, its index, or pytorch_model.bin), or `path`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if not os.path.isdir(path):
        return path
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"{path}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")


def read_state(path: str) -> dict[str, np.ndarray]:
    """The state dict of a folder or file (.safetensors, its .index.json, .bin/.pt/.pth)."""
    file = weights_file(path)
    try:
        if file.endswith(".safetensors"):
            return _safetensors(file)
        if file.endswith(".index.json"):
            return _index(file)
        return _torch_file(file)
    except Exception as error:  # safetensors and torch raise their own error types
        raise ValueError(f"{file}: not a readable state dict ({error})") from None


def read_config(path: str) -> dict:
    """config.json of a Hugging Face folder (or of the folder holding a weights file)."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{folder}: no config.json (a Hugging Face model folder is needed)")
    with open(file) as f:
        return json.load(f)

"""Parameter files: a model's parameters as a flat safetensors file with dotted names.

Loading is strict: a missing, unexpected or mis-shaped key is an error that names it.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from twlv_jax import paths


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': x}} -> {'a.b': x}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save(params: dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """Writes a pure-dict parameter tree (host copies of every array) to `path`."""
    flat = {k: np.asarray(jax.device_get(v)) for k, v in flatten(params).items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(flat, path, metadata=metadata)


def load(path: str, like: dict, *, source: str | None = None) -> dict:
    """Reads `path` (local or in a bucket) into the structure of `like` (arrays or
    ShapeDtypeStructs), strictly. Errors name `source` (default: `path`), e.g. the bucket
    file that `path` is a local copy of."""
    source = source or path
    if not paths.isfile(path):
        raise FileNotFoundError(f"weights file {source!r} does not exist")
    try:
        with paths.local_copy(path) as local:       # safetensors reads local files only
            flat = load_file(local)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{source}: not a readable safetensors file ({e})") from None
    return match(unflatten(flat), like, source)


def match(values: dict, like: dict, source: str) -> dict:
    """`values` checked against the names and shapes of `like`, cast to its dtypes."""
    flat, expected = flatten(values), flatten(like)
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: parameter names do not match the model: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for name, ref in expected.items():
        if tuple(flat[name].shape) != tuple(ref.shape):
            raise ValueError(f"{source}: {name} has shape {tuple(flat[name].shape)}, "
                             f"the model expects {tuple(ref.shape)}")
    return unflatten({name: np.asarray(flat[name]).astype(expected[name].dtype) for name in expected})

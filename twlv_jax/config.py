"""Config helpers: config files, variant strings, CLI overrides, validation, durations.

A config file is a Python module with ``get_config(arg: str | None) -> ConfigDict``.
It is named on the command line as ``FILE[:ARG]``, e.g.
``configs/pretrain.py:variant=L,objective=twlv``; single keys are overridden with
``--config.optim.lr=3e-4``. Configs are locked: a typo is an error that names the
unknown key and the nearest valid one.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
import re
import traceback
from collections.abc import Sequence

import ml_collections
from ml_collections import config_dict

from twlv_jax import paths


class ConfigError(ValueError):
    """A config that cannot run; the message says what to change."""


# ---------------------------------------------------------------------------
# Durations: steps, epochs or examples, converted in one place.

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")
_UNITS = {
    "": "steps", "step": "steps", "steps": "steps",
    "ep": "epochs", "epoch": "epochs", "epochs": "epochs",
    "ex": "examples", "example": "examples", "examples": "examples", "clips": "examples",
}


def duration(value: int | str) -> config_dict.FieldReference:
    """A config field holding a duration: an int (steps) or '10ep', '5000ex', '300steps'."""
    return config_dict.FieldReference(value, field_type=object)


def parse_duration(value: int | float | str) -> tuple[float, str]:
    """'10ep' -> (10.0, 'epochs'); 300 -> (300.0, 'steps'). Raises ValueError on bad input."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value), "steps"
    m = _DURATION.match(str(value).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(
            f"expected a duration like 1000, '1000steps', '30ep' or '50000ex', got {value!r}")
    return float(m.group(1)), _UNITS[m.group(2)]


def to_steps(value: int | float | str, *, batch_size: int,
             examples_per_epoch: int | None = None) -> int:
    """Converts a duration to a whole number of steps at the given global batch size."""
    amount, unit = parse_duration(value)
    if unit == "steps":
        return round(amount)
    examples = amount
    if unit == "epochs":
        if not examples_per_epoch:
            raise ValueError(f"duration {value!r} is in epochs but the dataset size is unknown; "
                             "give it in steps or examples")
        examples = amount * examples_per_epoch
    return max(1, math.ceil(examples / batch_size))


# ---------------------------------------------------------------------------
# Variant strings and config files.

def _parse_literal(text: str):
    """'3e-4' -> 0.0003, 'true' -> True, '(1,2)' -> (1, 2); anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _coerce(value, like, key: str):
    """Converts a parsed override to the type of the field it replaces."""
    if like is None or value is None:
        return value
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(like, int) and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if isinstance(like, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(like, str):
        return str(value) if not isinstance(value, str) else value
    if isinstance(like, tuple | list):
        if isinstance(value, int | float | str):
            value = (value,)
        if isinstance(value, tuple | list):
            return type(like)(value)
    if isinstance(value, type(like)):
        return value
    raise ConfigError(f"{key}: expected a {type(like).__name__} like {like!r}, got {value!r}")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses 'variant=L,objective=twlv' into a ConfigDict typed by the defaults.

    Unknown names are errors that list the valid ones.
    """
    result = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        name, sep, text = item.partition("=")
        name = name.strip()
        if name not in defaults:
            raise ConfigError(f"config argument {name!r} is not known; "
                              f"valid arguments: {', '.join(sorted(defaults))}"
                              + _suggest(name, defaults))
        value = True if not sep else _parse_literal(text)
        result[name] = _coerce(value, defaults[name], f"config argument {name!r}")
    return result


def _where(path: str, error: Exception) -> str:
    """'FILE:LINE: error' for an error raised by the config file at `path`."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{path}:{error.lineno}: {error.msg}"
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    line = f":{frames[-1].lineno}" if frames else ""
    return f"{path}{line}: {type(error).__name__}: {error}"


def _exec_config(path: str, module_name: str, arg: str | None = None, *, call: bool = False):
    """Imports the config file (and calls its get_config(arg) when `call`); an error the
    file raises becomes a ConfigError that names the file and line."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        if not call:
            return module
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {path!r} has no get_config(arg) function")
        return module.get_config(arg or None)
    except ConfigError:
        raise
    except Exception as error:      # the file's own code: name the file and line
        raise ConfigError(_where(path, error)) from error


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads 'path/to/file.py[:arg]' by calling its get_config(arg); returns a locked config."""
    path, _, arg = spec.partition(":")
    config = _exec_config(path, f"_twlv_config_{abs(hash(os.path.abspath(path)))}", arg,
                          call=True)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, "
                          f"got {type(config).__name__}")
    config.lock()
    return config


def load_module(spec: str):
    """Imports the config file named in 'path[:arg]' as a module (its `get_hyper`, the
    demo's recipe, or a config that builds on another)."""
    return _exec_config(spec.partition(":")[0], "_twlv_config_module")


# ---------------------------------------------------------------------------
# Overrides: --config.a.b=value

def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All leaf keys as dotted paths."""
    keys = []
    for name in config:
        value = config[name]
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def override(config: ml_collections.ConfigDict, key: str, text: str | object) -> None:
    """Sets the dotted `key` from a command-line string (or a Python value), type-checked."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key {key!r}" + _suggest(key, flat_keys(config)))
        node = node[part]
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(f"unknown config key {key!r}" + _suggest(key, flat_keys(config)))
    current = node[leaf]
    if isinstance(current, str) and isinstance(text, str):
        node[leaf] = text           # string fields take the text as written ('1,-1,1')
        return
    value = _parse_literal(text) if isinstance(text, str) else text
    field = node.get_ref(leaf) if hasattr(node, "get_ref") else None
    if field is not None and field.get_type() is object:
        node[leaf] = value          # durations and other free-typed fields
        return
    node[leaf] = _coerce(value, current, key)


def split_cli(argv: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Separates '--config.KEY=VALUE' (or '--config.KEY VALUE') from the other arguments."""
    overrides, rest = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError(f"{arg} needs a value: {arg}=VALUE or {arg} VALUE")
                value = args[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def build(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """Loads a config file and applies overrides; the result is locked."""
    config = load(spec)
    for key, value in overrides:
        override(config, key, value)
    return config


def save(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes the config as JSON (what was resolved, to be read by people and tools)."""
    paths.makedirs(paths.dirname(paths.absolute(path)))
    with paths.open(path, "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def from_json(path: str) -> ml_collections.ConfigDict:
    """Reads a config written by `save` (e.g. from a workdir or checkpoint)."""
    with paths.open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


# ---------------------------------------------------------------------------
# Mesh shapes.

def mesh_shape(text: str | Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """'D,F,T' with at most one -1 -> sizes of the (data, fsdp, tensor) axes."""
    try:
        sizes = [int(s) for s in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ConfigError(f"mesh.shape: expected 'D,F,T' like '1,-1,1', got {text!r}") from None
    if len(sizes) != 3:
        raise ConfigError(f"mesh.shape: expected three sizes for (data, fsdp, tensor), got {text!r}")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh.shape: sizes must be positive with at most one -1, got {text!r}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh.shape {text!r}: {num_devices} devices are not divisible "
                              f"by the fixed axes ({known})")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh.shape {text!r} needs {math.prod(sizes)} devices, "
                          f"but {num_devices} are available")
    return tuple(sizes)

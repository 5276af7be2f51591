"""The sweep vocabulary of big_vision and scenic config files, and run names.

A config file may define ``get_hyper(h)`` (or ``get_hyper(h, arg)`` to see its FILE:ARGS
string) returning a list of runs, each a dict of overrides:

    def get_hyper(h):
        return h.product([h.sweep("config.optim.lr", [1e-3, 3e-4]),
                          h.sweep("config.objective.mask.ratio", [0.75, 0.9])])

Keys are ``config.<dotted key>`` (a `--config.KEY=VALUE` override) or ``arg.<name>`` (a
FILE:ARGS argument of the config file, e.g. ``arg.variant``).
"""

from __future__ import annotations

import hashlib
import itertools
import re

PREFIXES = ("config.", "arg.")
MAX_NAME = 64


class Hyper:
    """Builds lists of runs; each run is a dict {key: value}."""

    @staticmethod
    def _check(key: str) -> str:
        if not key.startswith(PREFIXES):
            raise ValueError(f"sweep key {key!r} must start with 'config.' (a config key) or "
                             "'arg.' (an argument of the config file)")
        return key

    def sweep(self, key: str, values) -> list[dict]:
        """One run per value."""
        return [{self._check(key): v} for v in values]

    def fixed(self, key: str, value, length: int = 1) -> list[dict]:
        """`length` runs with the same value (to combine with zipit or product)."""
        return [{self._check(key): value}] * length

    def product(self, sweeps) -> list[dict]:
        """Every combination of the runs of each sweep (the first varies slowest)."""
        return [_merge(combo) for combo in itertools.product(*sweeps)]

    def zipit(self, sweeps) -> list[dict]:
        """Runs side by side: the i-th run of each sweep together; all of one length."""
        sweeps = list(sweeps)
        lengths = {len(s) for s in sweeps}
        if len(lengths) > 1:
            raise ValueError(f"zipit needs sweeps of one length, got lengths {sorted(lengths)}")
        return [_merge(combo) for combo in zip(*sweeps, strict=True)]

    def chainit(self, sweeps) -> list[dict]:
        """The runs of each sweep, one sweep after the other."""
        return [dict(run) for s in sweeps for run in s]


def _merge(parts) -> dict:
    merged = {}
    for part in parts:
        clash = set(merged) & set(part)
        if clash:
            raise ValueError(f"a run sets {sorted(clash)[0]!r} twice")
        merged.update(part)
    return merged


# ---------------------------------------------------------------------------
# Names.

def format_value(value) -> str:
    """1e-3 -> '0.001', (1, 2) -> '1x2', True -> 'true', 'a/b' -> 'a-b'."""
    if isinstance(value, bool) or value is None:
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, tuple | list):
        text = "x".join(format_value(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "empty"


def short_keys(keys) -> dict[str, str]:
    """Each dotted key's shortest unambiguous form: a part of it that no other key has
    (`objective.distill.weight` -> `distill`), else its shortest unique suffix."""
    keys = sorted(set(keys))
    parts = {k: k.split(".")[1:] for k in keys}          # without config./arg.
    short = {}
    for key in keys:
        others = [p for k, p in parts.items() if k != key]
        single = [c for c in reversed(parts[key]) if not any(c in p for p in others)]
        mine = parts[key]
        unique = [".".join(mine[-n:]) for n in range(1, len(mine) + 1)
                  if not any(p[-n:] == mine[-n:] for p in others)]
        short[key] = (single or unique or [key])[0]
    return short


def _digest(run: dict) -> str:
    text = repr(sorted((k, repr(v)) for k, v in run.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_names(runs: list[dict]) -> list[str]:
    """Short, filesystem-safe, unique names that depend only on each run's overrides.

    A name lists the keys whose values differ between runs (`kind=tube_ratio=0.9`), each
    shortened as far as the sweep's keys allow (short_keys); past MAX_NAME characters, or when two runs would
    share a name, it ends in a hash of the run's overrides.
    """
    keys = list(dict.fromkeys(k for run in runs for k in run))
    varying = [k for k in keys if len({repr(run.get(k)) for run in runs}) > 1]
    short = short_keys(keys)
    names = []
    for run in runs:
        parts = [f"{short[k]}={format_value(run[k])}" for k in varying if k in run]
        name = "_".join(parts) or "base"
        if len(name) > MAX_NAME:
            name = f"{name[:MAX_NAME - 9]}-{_digest(run)}"
        names.append(name)
    counts = {n: names.count(n) for n in names}
    return [f"{n}-{_digest(run)}" if counts[n] > 1 else n for n, run in zip(names, runs, strict=True)]

"""Mapping tables: our flat parameter names <-> an external format's keys, both ways.

A `Rule` ties one of our parameters (a dotted name of the encoder's pure-dict state) to
one or more external keys, with a transform each way. Rules of stacked blocks (leading
`layers` axis) apply once per layer; `{i}` in an external key stands for the layer index.

Import is strict: `import_params` checks every external key against the shapes the
table expects (found by exporting zeros of our shapes) and stops on a missing,
unexpected or mis-shaped key unless it matches an allow-list pattern (fnmatch).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence

import numpy as np

Arrays = tuple[np.ndarray, ...]


class ConversionError(ValueError):
    """A state dict that does not fit the table; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """ours (one array) <-> theirs (one or more arrays).

    `to_theirs(ours) -> arrays`, one per external key; `to_ours(arrays, shape) -> ours`
    with `shape` our (per-layer) shape. `resize(array, shape)` (position tables) is used
    on import when an external array has another shape; the report says so.
    """

    ours: str
    theirs: tuple[str, ...]
    to_theirs: Callable[[np.ndarray], Arrays]
    to_ours: Callable[[Arrays, tuple[int, ...]], np.ndarray]
    layered: bool = False
    resize: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None


def same(name: str, theirs: str, layered: bool = False) -> Rule:
    """A rule that copies the array unchanged (LayerNorm scales, biases)."""
    return Rule(name, (theirs,), lambda a: (a,), lambda t, shape: t[0].reshape(shape), layered)


def dense(name: str, theirs: str, layered: bool = False, *, heads_in: bool = False) -> Rule:
    """Our kernel (in, out) <-> a PyTorch Linear weight (out, in).

    Kernels with head axes are flattened to 2-D first: the output side, (D, 3, H, Dh) ->
    (D, 3*H*Dh), or with `heads_in` the input side, (H, Dh, D) -> (H*Dh, D).
    """
    def to_theirs(a):
        return ((a.reshape(-1, a.shape[-1]) if heads_in else a.reshape(a.shape[0], -1)).T,)

    return Rule(name, (theirs,), to_theirs, lambda t, shape: t[0].T.reshape(shape), layered)


def flat(name: str, theirs: str, layered: bool = False) -> Rule:
    """Our (H, Dh) bias <-> a flat (H*Dh,) vector."""
    return Rule(name, (theirs,), lambda a: (a.reshape(-1),), lambda t, shape: t[0].reshape(shape),
                layered)


def prefixed(rules: Sequence[Rule], prefix: str) -> list[Rule]:
    """The rules with `prefix` before our names (a head inside the whole model's state)."""
    return [dataclasses.replace(r, ours=prefix + r.ours) for r in rules]


def _layers(rule: Rule, depth: int) -> list[tuple[int | None, tuple[str, ...]]]:
    """(layer index or None, external keys) for each application of the rule."""
    if not rule.layered:
        return [(None, rule.theirs)]
    return [(i, tuple(k.format(i=i) for k in rule.theirs)) for i in range(depth)]


def export_params(params: dict[str, np.ndarray], rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """Our flat parameters -> the external state dict (contiguous numpy arrays)."""
    names = {r.ours for r in rules}
    extra = sorted(set(params) - names)
    if extra:
        raise ConversionError(f"no mapping for our parameters {extra}")
    out = {}
    for rule in rules:
        value = np.asarray(params[rule.ours])
        depth = value.shape[0] if rule.layered else 1
        for i, keys in _layers(rule, depth):
            arrays = rule.to_theirs(value if i is None else value[i])
            out.update({k: np.ascontiguousarray(a) for k, a in zip(keys, arrays, strict=True)})
    return out


def expected_shapes(shapes: dict[str, tuple[int, ...]], rules: Sequence[Rule]) -> dict[str, tuple]:
    """External key -> the shape the table expects, for our parameters of `shapes`."""
    zeros = {r.ours: np.zeros(shapes[r.ours][1:] if r.layered else shapes[r.ours], np.float32)
             for r in rules}
    out = {}
    for rule in rules:
        depth = shapes[rule.ours][0] if rule.layered else 1
        arrays = rule.to_theirs(zeros[rule.ours])
        for _, keys in _layers(rule, depth):
            out.update({k: tuple(a.shape) for k, a in zip(keys, arrays, strict=True)})
    return out


@dataclasses.dataclass
class Report:
    """What an import found: problems (missing, unexpected, mis-shaped), and what was done."""

    source: str
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    misshaped: list[str] = dataclasses.field(default_factory=list)
    allowed: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    resampled: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    loaded: int = 0

    def problems(self) -> list[str]:
        return ([f"missing {m}" for m in self.missing] + [f"unexpected {u}" for u in self.unexpected]
                + self.misshaped)

    def lines(self) -> list[str]:
        lines = [f"source: {self.source}", f"loaded: {self.loaded} arrays"]
        lines += [f"resampled: {r}" for r in self.resampled]
        lines += [f"allowed (kept our fresh value or dropped): {a}" for a in self.allowed]
        lines += [f"ignored: {g}" for g in self.ignored]
        lines += [f"note: {n}" for n in self.notes]
        return lines

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _allowed(key: str, allow: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in allow)


def import_params(state: dict[str, np.ndarray], rules: Sequence[Rule], like: dict[str, np.ndarray],
                  *, source: str, allow: Sequence[str] = (),
                  ignore: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], Report]:
    """The external `state` as our flat parameters shaped like `like` (fresh values).

    `ignore`: patterns of external keys the format holds but our model does not use (a
    pretraining decoder): listed in the report, never an error. `allow`: patterns of keys
    whose problem is accepted: a missing or mis-shaped key keeps `like`'s value; an
    unexpected key is dropped. Any other problem raises ConversionError listing all.
    """
    report = Report(source)
    expected = expected_shapes({k: tuple(v.shape) for k, v in like.items()}, rules)
    for key in sorted(set(state) - set(expected)):
        if _allowed(key, ignore):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    out = {}
    for rule in rules:
        value = np.array(like[rule.ours], copy=True)
        depth = value.shape[0] if rule.layered else 1
        for i, keys in _layers(rule, depth):
            target = value if i is None else value[i]
            arrays = _gather(state, keys, expected, rule, target.shape, report)
            if arrays is not None:
                target[...] = rule.to_ours(arrays, target.shape).astype(value.dtype)
                report.loaded += len(keys)
        out[rule.ours] = value
    _settle(report, allow)
    return out, report


def _gather(state, keys, expected, rule: Rule, shape, report: Report) -> Arrays | None:
    """The external arrays of one rule application, or None when any is missing/mis-shaped."""
    arrays, ok = [], True
    for key in keys:
        if key not in state:
            report.missing.append(f"{key} {expected[key]}")
            ok = False
            continue
        array = np.asarray(state[key])
        if tuple(array.shape) != expected[key]:
            if rule.resize is not None and array.ndim == len(expected[key]):
                array = rule.resize(array, expected[key])
                report.resampled.append(f"{key} {tuple(state[key].shape)} -> {expected[key]}")
            else:
                report.misshaped.append(f"{key} has shape {tuple(array.shape)}, expected "
                                        f"{expected[key]}")
                ok = False
                continue
        arrays.append(array)
    return tuple(arrays) if ok else None


def _settle(report: Report, allow: Sequence[str]) -> None:
    """Moves allowed problems to `report.allowed`; raises on the rest."""
    def keep(items: list[str]) -> list[str]:
        left = []
        for item in items:
            key = item.split(" ", 1)[0]
            (report.allowed if _allowed(key, allow) else left).append(item)
        return left

    report.missing, report.unexpected = keep(report.missing), keep(report.unexpected)
    report.misshaped = keep(report.misshaped)
    problems = report.problems()
    if problems:
        shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more"
                                            if len(problems) > 12 else "")
        raise ConversionError(f"{report.source}: {len(problems)} key problem(s): {shown}. "
                              "Nothing was written; pass --allow PATTERN (fnmatch) for each "
                              "accepted one")

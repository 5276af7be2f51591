"""A config file's sweep -> runs: names, FILE:ARGS, overrides, resolved and validated configs.

Every run's config is built and validated here, before any run starts: an unknown key or
a bad value fails the whole sweep with the run's name and the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

from twlv_jax import config as cfglib
from twlv_jax.sweep.evaluate import EvalError, Evaluation, for_run
from twlv_jax.sweep.hyper import Hyper, run_names
from twlv_jax.train.validate import validate


class SweepError(ValueError):
    """A sweep that cannot run; the message names the run and what to change."""


@dataclasses.dataclass
class Run:
    """One run of a sweep: what `twlv train` is given, and what it resolves to."""

    name: str
    spec: str                            # FILE[:ARGS], the sweep's arg.* values merged in
    overrides: list[tuple[str, str]]     # (key, text): the common ones, then the run's own
    values: dict                         # the run's sweep values {key: value}
    config: object = None                # the resolved ConfigDict
    evaluation: Evaluation | None = None  # its evaluation step, when the sweep asks for one

    def cli_overrides(self) -> list[str]:
        return [f"--config.{k}={v}" for k, v in self.overrides]


def cli_text(value) -> str:
    """A Python value as `--config.K=TEXT` text that config.override reads back as it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return repr(value)


def with_args(spec: str, args: dict) -> str:
    """'f.py:a=1' + {'b': 2} -> 'f.py:a=1,b=2' (a swept argument replaces a given one)."""
    path, _, given = spec.partition(":")
    merged = dict(item.partition("=")[::2] for item in filter(None, given.split(",")))
    for name, value in args.items():
        text = cli_text(value)
        if "," in text:
            raise SweepError(f"arg.{name}={text!r}: config file arguments cannot hold commas")
        merged[name] = text
    items = [f"{k}={v}" if v else k for k, v in merged.items()]
    return f"{path}:{','.join(items)}" if items else path


def sweep_of(spec: str) -> list[dict]:
    """The runs that the config file's get_hyper(h[, arg]) declares."""
    path, _, arg = spec.partition(":")
    module = cfglib.load_module(spec)
    if not hasattr(module, "get_hyper"):
        raise SweepError(f"{path} has no get_hyper(h) function: nothing to sweep")
    takes_arg = len(inspect.signature(module.get_hyper).parameters) > 1
    try:
        runs = module.get_hyper(Hyper(), arg or None) if takes_arg else module.get_hyper(Hyper())
    except ValueError as error:
        raise SweepError(f"{path}: get_hyper: {error}") from None
    if not runs:
        raise SweepError(f"{path}: get_hyper returned no runs")
    return [dict(run) for run in runs]


def fixed_devices(shape) -> int:
    """The devices a mesh shape needs when its -1 axis takes one: the count that device
    checks use when the launcher does not name one."""
    try:
        return math.prod(max(1, int(s)) for s in str(shape).strip("()[]").split(","))
    except ValueError:
        return 1                         # validate() reports the bad shape


def build_run(name: str, spec: str, values: dict, common: list[tuple[str, str]],
              num_devices: int | None, evaluation: dict | None = None) -> Run:
    """One run, its config resolved and validated (for `num_devices`, or the mesh's fixed
    axes when None), and its evaluation step (`evaluate.requested`) resolved; SweepError
    names the run and the key."""
    args = {k[len("arg."):]: v for k, v in values.items() if k.startswith("arg.")}
    own = [(k[len("config."):], cli_text(v)) for k, v in values.items() if k.startswith("config.")]
    run = Run(name, spec, [*common, *own], values)
    try:
        run.spec = with_args(spec, args)
        run.config = cfglib.build(run.spec, run.overrides)
        validate(run.config, num_devices or fixed_devices(run.config.mesh.shape))
        if evaluation:
            run.evaluation = for_run(evaluation, run.config)
    except (cfglib.ConfigError, SweepError, EvalError) as error:
        detail = "; ".join(line.strip(" -") for line in str(error).splitlines()[1:]) or str(error)
        raise SweepError(f"run {name}: {detail}") from None
    return run


def expand(spec: str, common: list[tuple[str, str]] = (), *, num_devices: int | None,
           evaluation: dict | None = None) -> list[Run]:
    """All runs of the sweep in `spec`, each validated for `num_devices` devices, with the
    evaluation step `evaluation` (evaluate.requested) when given."""
    values = sweep_of(spec)
    names = run_names(values)
    return [build_run(n, spec, v, list(common), num_devices, evaluation)
            for n, v in zip(names, values, strict=True)]

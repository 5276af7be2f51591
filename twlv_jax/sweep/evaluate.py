"""A sweep's evaluation step: `twlv embed`, then `twlv knn` and/or `twlv probe`, on each
finished run's last checkpoint.

A sweep asks for it in its config file (or with `twlv sweep --eval knn,linear`):

    def get_sweep_eval(arg):                 # or get_sweep_eval() without FILE:ARGS
        return {"probes": ["knn", "linear"], "labels": ["label_motion"]}

    probes  any of knn (weighted k-NN) and linear (the official linear probe)
    input   a folder with train and val manifests (default: the run's train.probe_path)
    labels  label columns to score (default: `label` when the manifests have it, else
            every label column); each is embedded once per split

Results go to ROOT/NAME/eval/<INPUT>/step_<STEP>/<label>/ (the embeddings, knn_video.json,
linear_probe_video.json; INPUT is the input folder's name and a hash of its path), so a
run trained further, or another input, is evaluated anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import sys

from twlv_jax import config as cfglib
from twlv_jax import paths as pathlib
from twlv_jax.data.manifest import ManifestError, read_manifest, split_manifests

PROBES = {"knn": "knn_video.json", "linear": "linear_probe_video.json"}
KEYS = ("probes", "input", "labels")
EVAL_DIR = "eval"


class EvalError(ValueError):
    """An evaluation request that cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What one run's evaluation step does."""

    probes: tuple[str, ...]
    input: str                   # folder with train and val manifests
    labels: tuple[str, ...]


def requested(spec: str, probes_flag: str | None, input_flag: str | None) -> dict | None:
    """The sweep's evaluation request: the config file's get_sweep_eval, with --eval
    (`knn,linear` or `none`) and --eval_input taking precedence; None when none is asked."""
    module = cfglib.load_module(spec)
    request = {}
    if hasattr(module, "get_sweep_eval"):
        takes_arg = len(inspect.signature(module.get_sweep_eval).parameters) > 0
        arg = spec.partition(":")[2] or None
        request = dict((module.get_sweep_eval(arg) if takes_arg else module.get_sweep_eval()) or {})
        unknown = sorted(set(request) - set(KEYS))
        if unknown:
            raise EvalError(f"get_sweep_eval: unknown key {unknown[0]!r}; expected {', '.join(KEYS)}")
    if probes_flag is not None:
        request["probes"] = [] if probes_flag == "none" else probes_flag.split(",")
    if input_flag is not None:
        request["input"] = input_flag
    probes = [p.strip() for p in ([request["probes"]] if isinstance(request.get("probes"), str)
                                  else request.get("probes") or [])]
    bad = [p for p in probes if p not in PROBES]
    if bad:
        raise EvalError(f"evaluation probe {bad[0]!r}: expected any of {', '.join(PROBES)}")
    if not probes:
        return None
    labels = request.get("labels")
    return {"probes": tuple(dict.fromkeys(probes)), "input": request.get("input"),
            "labels": None if labels is None else tuple([labels] if isinstance(labels, str)
                                                        else labels)}


def for_run(request: dict, config) -> Evaluation:
    """The request resolved for one run: its input folder (given, else train.probe_path)
    holds train and val manifests with the labels; EvalError otherwise."""
    folder = request["input"] or config.train.probe_path
    if not folder:
        raise EvalError("the evaluation needs a folder with train and val manifests: set "
                        "train.probe_path or give --eval_input (or --eval none)")
    found = split_manifests(folder) if pathlib.isdir(folder) else {}
    if not {"train", "val"} <= set(found):
        raise EvalError(f"evaluation input {folder} must be a folder holding train and val "
                        "manifests (train.csv and val.csv, or .jsonl)")
    try:
        columns = [set(read_manifest(found[s]).labels) for s in ("train", "val")]
    except ManifestError as error:
        raise EvalError(str(error)) from None
    common = columns[0] & columns[1]
    labels = request["labels"] or (("label",) if "label" in common else tuple(sorted(common)))
    missing = [label for label in labels if label not in common]
    if missing or not labels:
        raise EvalError(f"evaluation input {folder}: no label column "
                        f"{missing[0] if missing else 'at all'!r} in both train and val "
                        f"(label columns: {', '.join(sorted(common)) or 'none'})")
    return Evaluation(request["probes"], pathlib.absolute(folder), tuple(labels))


def last_step(folder: str) -> int | None:
    """The newest checkpoint step of a run's workdir (None without one)."""
    try:
        names = pathlib.listdir(pathlib.join(folder, "checkpoints"))
    except FileNotFoundError:
        return None
    steps = [int(n) for n in names if n.isdigit()]
    return max(steps) if steps else None


def step_dir(folder: str, evaluation: Evaluation, step: int | str) -> str:
    """Where a run's evaluation at `step` on `evaluation.input` goes."""
    digest = hashlib.sha1(evaluation.input.encode()).hexdigest()[:6]
    name = f"{evaluation.input.rstrip('/' + os.sep).split('/')[-1] or 'input'}-{digest}"
    return pathlib.join(folder, EVAL_DIR, name, f"step_{step}")


def commands(folder: str, evaluation: Evaluation, step: int | str) -> list[list[str]]:
    """The `twlv` commands of one run's evaluation at checkpoint `step`, in order; a probe
    whose result is there already is left out (and a label with all of them)."""
    twlv = [sys.executable, "-m", "twlv_jax"]
    result = []
    for label in evaluation.labels:
        output = pathlib.join(step_dir(folder, evaluation, step), label)
        missing = [p for p in evaluation.probes
                   if not pathlib.isfile(pathlib.join(output, PROBES[p]))]
        if missing:
            result += [[*twlv, "embed", "--checkpoint", folder, "--step", str(step), "--input",
                        evaluation.input, "--split", split, "--label", label, "--output", output]
                       for split in ("train", "val")]
        if "knn" in missing:
            result.append([*twlv, "knn", "--embeddings", output])
        if "linear" in missing:
            result.append([*twlv, "probe", "--embeddings", output])
    return result


def scores(folder: str, evaluation: Evaluation | None) -> dict[str, float]:
    """{'eval/<probe>_<label>': top-1} of the newest checkpoint's evaluation results."""
    step = last_step(folder)
    if evaluation is None or step is None:
        return {}
    found = {}
    for label in evaluation.labels:
        for probe, name in PROBES.items():
            path = pathlib.join(step_dir(folder, evaluation, step), label, name)
            if probe in evaluation.probes and pathlib.isfile(path):
                with pathlib.open(path) as f:
                    found[f"eval/{probe}_{label}"] = float(json.load(f)["top1"])
    return found


def evaluated(folder: str, evaluation: Evaluation) -> bool:
    return len(scores(folder, evaluation)) == len(evaluation.probes) * len(evaluation.labels)

"""`twlv inspect CKPT_DIR`: what a checkpoint holds, read from its metadata alone (no
accelerators, any device count): step, config, library versions, and the array tree."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

import jax
import numpy as np

from twlv_jax.train.checkpoint import Checkpoints, resolve_dir


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


def _flatten(tree) -> dict[str, object]:
    """Dotted path -> array metadata, through dicts, lists and optimizer-state tuples."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path): leaf
            for path, leaf in leaves}


def describe(path: str, step: int | None = None, *, show_config: bool = False) -> str:
    """The text `twlv inspect` prints."""
    directory = resolve_dir(path)
    checkpoints = Checkpoints(directory, read_only=True, with_data=False)
    steps = checkpoints.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {path!r}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{directory} has no step {step}; steps: {steps}")
    meta = checkpoints.meta(step)
    flat = _flatten(checkpoints.state_metadata(step))
    config = meta["config"]
    lines = [f"checkpoint  {directory}/{step}  (steps on disk: {', '.join(map(str, steps))})",
             f"step        {meta['step']}   data batches consumed: {meta['batches']}"
             + (f"   skipped: {meta['skipped_batches']}" if meta.get("skipped_batches") else ""),
             f"run         model {config['model']['variant']}, objective {config['objective']['preset']}, "
             f"batch {config['train']['batch_size']}, steps {config['train']['steps']}, "
             f"mesh {meta['mesh']} on {meta['process_count']} process(es)",
             "versions    " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())]
    if show_config:
        lines += ["config", json.dumps(config, indent=2, sort_keys=True)]
    groups: dict[str, list[int]] = {}
    rows = []
    for name, value in sorted(flat.items()):
        shape = tuple(getattr(value, "shape", ()))
        dtype = np.dtype(getattr(value, "dtype", np.float32))
        count = math.prod(shape)
        group = name.split(".")[0]
        groups.setdefault(group, [0, 0])
        groups[group][0] += count
        groups[group][1] += count * dtype.itemsize
        rows.append(f"  {name:<60} {shape!s:<22} {dtype.name:<9} {_size(count * dtype.itemsize):>10}")
    lines.append("arrays")
    lines += rows
    lines.append("totals")
    lines += [f"  {g:<8} {n / 1e6:10.3f}M values  {_size(b):>10}" for g, (n, b) in groups.items()]
    checkpoints.close()
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twlv inspect", description=__doc__)
    parser.add_argument("path", help="a workdir, its checkpoints/ folder, or a checkpoints folder")
    parser.add_argument("--step", type=int, help="default: the latest")
    parser.add_argument("--config", action="store_true", help="also print the full resolved config")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)      # Orbax's notes on read-only use
    try:
        print(describe(args.path, args.step, show_config=args.config))
    except FileNotFoundError as error:
        print(f"twlv inspect: {error}", file=sys.stderr)
        return 2
    return 0

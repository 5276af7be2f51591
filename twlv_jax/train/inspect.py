"""`twlv inspect CKPT_DIR`: what a checkpoint holds, read from its metadata alone (no
accelerators, any device count): step, config, library versions, format version, and
the array tree.
`--verify` also reads every array and the data states, and names what is damaged."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

import numpy as np

from twlv_jax.train.checkpoint import (
    CheckpointError,
    Checkpoints,
    CorruptCheckpoint,
    flat_arrays,
    format_version,
    resolve_dir,
)


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


def _open(path: str, step: int | None) -> tuple[Checkpoints, int]:
    directory = resolve_dir(path)
    checkpoints = Checkpoints(directory, read_only=True, with_data=False)
    steps = checkpoints.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {path!r}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{directory} has no step {step}; steps: {steps}")
    return checkpoints, step


def verify(path: str, step: int | None = None) -> tuple[str, bool]:
    """(report, healthy): every array, the metadata and the data states of a step, read."""
    checkpoints, step = _open(path, step)
    problems = checkpoints.verify(step)
    where = f"{checkpoints.directory}/{step}"
    set_aside = checkpoints.corrupt()
    checkpoints.close()
    lines = [f"verify {where}: " + (f"DAMAGED, {len(problems)} problem(s)" if problems else
                                    "every array, the metadata and the data states read back")]
    lines += [f"  {p}" for p in problems[:20]]
    if len(problems) > 20:
        lines.append(f"  ... and {len(problems) - 20} more")
    if set_aside:
        lines.append(f"set aside as corrupt earlier: {', '.join(set_aside)}")
    return "\n".join(lines), not problems


def describe(path: str, step: int | None = None, *, show_config: bool = False) -> str:
    """The text `twlv inspect` prints."""
    checkpoints, step = _open(path, step)
    directory, steps = checkpoints.directory, checkpoints.all_steps()
    meta = checkpoints.checked(step, lambda: checkpoints.meta(step))
    flat = flat_arrays(checkpoints.checked(step, lambda: checkpoints.state_metadata(step)))
    config = meta["config"]
    lines = [f"checkpoint  {directory}/{step}  (steps on disk: {', '.join(map(str, steps))})",
             f"step        {meta['step']}   data batches consumed: {meta['batches']}"
             + (f"   skipped: {meta['skipped_batches']}" if meta.get("skipped_batches") else ""),
             f"run         model {config['model']['variant']}, objective {config['objective']['preset']}, "
             f"batch {config['train']['batch_size']}, steps {config['train']['steps']}, "
             f"mesh {meta['mesh']} on {meta['process_count']} process(es)",
             "versions    " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             f"format      {format_version(meta)}"
             + (" (written before checkpoint format versions)" if "format_version" not in meta else "")]
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
    parser.add_argument("--verify", action="store_true",
                        help="read every array and the data states; exit 1 when damaged")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)      # Orbax's notes on read-only use
    try:
        if args.verify:
            report, healthy = verify(args.path, args.step)
            print(report)
            return 0 if healthy else 1
        print(describe(args.path, args.step, show_config=args.config))
    except (FileNotFoundError, CorruptCheckpoint, CheckpointError) as error:
        print(f"twlv inspect: {error}" + ("; `twlv inspect --verify` names what is damaged"
                                          if isinstance(error, CorruptCheckpoint) else ""),
              file=sys.stderr)
        return 2
    return 0

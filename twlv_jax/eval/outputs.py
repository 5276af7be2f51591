"""What the evaluation verbs share: where results go, how they are written, one-line errors."""

from __future__ import annotations

import json
import sys

from twlv_jax import paths as pathlib
from twlv_jax.eval.folders import SPLITS


def output_path(output: str | None, directory: str, default_name: str) -> str:
    """`output`, or `directory/default_name`; never inside a split folder of `directory`
    (a .json there would be read back as a video)."""
    path = pathlib.absolute(output or pathlib.join(directory, default_name))
    for split in SPLITS:
        folder = pathlib.absolute(pathlib.join(directory, split))
        if pathlib.dirname(path) == folder:
            raise ValueError(f"--output {path} is inside the split folder {folder}, where every "
                             "*.json is read as a video; write it elsewhere")
    return path


def write_json(path: str, data: dict) -> None:
    pathlib.makedirs(pathlib.dirname(path) or ".")
    with pathlib.open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def fail(verb: str, error: Exception) -> int:
    """Prints `twlv VERB: message` on stderr; returns the exit status 2."""
    print(f"twlv {verb}: {error}", file=sys.stderr)
    return 2

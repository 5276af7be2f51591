"""The official TWLV-I embedding layout on disk: video ids, per-video files, the class map.

    DIR/classes.json             {label column: [class names]}, shared by every split
    DIR/<split>/<id>.json        {"annotation": int, "num_frames", "duration", ...}
    DIR/<split>/<id>_c.npy       float32 (clips, D)
    DIR/<split>/<id>_v.npy       float32 (D,), the mean of the clips

The official evaluation code lists every `*.json` in a split folder, so nothing else is
written there; files are written to a temporary folder next to it and moved in with
`os.replace`, the json last, so a json only exists once its video is complete. In a
bucket (`gs://`) each object is written in place: it appears only once uploaded whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import numpy as np

from twlv_jax import paths as pathlib
from twlv_jax.data.manifest import Manifest

CLASSES_FILE = "classes.json"


class EmbedError(ValueError):
    """An embedding run that cannot go ahead; the message says what to change."""


def video_ids(manifest: Manifest) -> list[str]:
    """One unique, stable id per row: the file's stem. Rows sharing a stem get
    `-<8 hex digits of sha1(path, start, end)>`; rows repeating the same file and window
    get `-<row>` on top."""
    stems = [os.path.splitext(os.path.basename(manifest.paths[i]))[0]
             for i in range(len(manifest))]
    shared = Counter(stems)
    ids = [stem if shared[stem] == 1 else f"{stem}-{_row_hash(manifest, i)}"
           for i, stem in enumerate(stems)]
    repeated = Counter(ids)
    return [name if repeated[name] == 1 else f"{name}-{i}" for i, name in enumerate(ids)]


def _row_hash(manifest: Manifest, index: int) -> str:
    start, end = float(manifest.starts[index]), float(manifest.ends[index])  # nan: not set
    key = f"{manifest.paths[index]}\0{start!r}\0{end!r}"
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def write_sample(split_dir: str, temp_dir: str, video_id: str, clips: np.ndarray,
                 info: dict) -> None:
    """Writes `<id>_c.npy` (clips, D), `<id>_v.npy` (D,) = the clips' mean, then `<id>.json`
    (`info`), each complete in `temp_dir` before it is moved into `split_dir`."""
    clips = np.asarray(clips, np.float32)
    if clips.ndim != 2 or not len(clips):
        raise ValueError(f"{video_id}: expected clip embeddings (clips, D), got {clips.shape}")
    video = clips.mean(axis=0, dtype=np.float64).astype(np.float32)  # (D,)
    _replace(temp_dir, split_dir, f"{video_id}_c.npy", lambda f: np.save(f, clips))
    _replace(temp_dir, split_dir, f"{video_id}_v.npy", lambda f: np.save(f, video))
    _replace(temp_dir, split_dir, f"{video_id}.json",
             lambda f: f.write(json.dumps(info).encode()))


def write_json(path: str, content: dict) -> None:
    """A JSON file written whole (pathlib.atomic_write)."""
    with pathlib.atomic_write(path) as f:
        f.write((json.dumps(content, indent=2) + "\n").encode())


def _replace(temp_dir: str, folder: str, name: str, write: Callable[[IO[bytes]], object]) -> None:
    """Writes `folder/name` through `temp_dir` (locally; in place in a bucket)."""
    if pathlib.is_remote(folder):
        with pathlib.open(pathlib.join(folder, name), "wb") as f:
            write(f)
        return
    temp = os.path.join(temp_dir, name)
    with open(temp, "wb") as f:
        write(f)
    os.replace(temp, os.path.join(folder, name))


def read_json(path: str) -> dict:
    with pathlib.open(path, encoding="utf-8") as f:
        return json.load(f)


def load_classes(path: str) -> dict[str, list[str]]:
    """{label column: [class names]} of a classes.json (entries that are not lists of
    names, such as the synthetic set's `options`, are left out)."""
    if not pathlib.isfile(path):
        raise EmbedError(f"classes file {path} does not exist")
    try:
        content = read_json(path)
    except (OSError, ValueError) as error:
        raise EmbedError(f"classes file {path} is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise EmbedError(f"classes file {path}: expected {{\"label\": [\"name\", ...]}}")
    return {k: [str(n) for n in v] for k, v in content.items() if isinstance(v, list)}


@dataclass
class Annotations:
    """The class index of every manifest row for one label column."""

    column: str | None          # None: the rows have no labels (no `annotation` written)
    values: list[int] | None    # (rows,) class indices
    names: list[str]            # class names; the class count is len(names)
    origin: str                 # where the names came from


def resolve_annotations(manifest: Manifest, column: str | None, output: str,
                        classes_path: str | None = None) -> Annotations:
    """Class indices of `column` (None: `label` when the manifest has it) under one class
    map for all splits: `classes_path`, else the map an earlier split wrote to
    output/classes.json, else a classes.json beside the manifest, else the manifest's own
    labels (a scanned folder: its sorted subfolder names; a manifest: 0 .. max label).
    The map used is written to output/classes.json.
    """
    column = _label_column(manifest, column)
    if column is None:
        return Annotations(None, None, [], "no labels")
    stored_path = pathlib.join(output, CLASSES_FILE)
    stored = load_classes(stored_path).get(column) if pathlib.isfile(stored_path) else None
    names, origin = stored, stored_path
    if classes_path:
        names, origin = _given_names(classes_path, column), classes_path
        if stored is not None and stored != names:
            raise EmbedError(f"{classes_path} lists other {column!r} classes than {stored_path} "
                             "(written by an earlier split): every split must share one class "
                             "map; use another --output or the same --classes")
    if pathlib.isdir(manifest.name):
        annotations = _folder_annotations(manifest, column, names, origin)
    else:
        annotations = _manifest_annotations(manifest, column, names, origin)
    _store(stored_path, column, annotations.names)
    return annotations


def _label_column(manifest: Manifest, column: str | None) -> str | None:
    if column is None:
        return "label" if "label" in manifest.labels else None
    if column not in manifest.labels:
        have = ", ".join(sorted(manifest.labels)) or "none"
        raise EmbedError(f"--label {column}: {manifest.name} has no such label column "
                         f"(label columns: {have})")
    return column


def _given_names(path: str, column: str) -> list[str]:
    given = load_classes(path)
    if column not in given:
        raise EmbedError(f"classes file {path} has no {column!r} entry (entries: "
                         f"{', '.join(sorted(given)) or 'none'})")
    return given[column]


def _folder_annotations(manifest: Manifest, column: str, names: list[str] | None,
                        origin: str) -> Annotations:
    """A scanned folder: each row's class is its first-level subfolder's name."""
    folder = pathlib.absolute(manifest.name)
    sep = "/" if pathlib.is_remote(folder) else os.sep
    row_names = [manifest.paths[i][len(folder.rstrip(sep)) + 1:].split(sep)[0]
                 for i in range(len(manifest))]
    if names is None:
        names, origin = sorted(set(row_names)), f"the subfolders of {folder}"
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(row_names) - set(index))
    if unknown:
        raise EmbedError(f"class folders {', '.join(unknown)} of {folder} are not in the class "
                         f"map of {origin}; give every split's classes with --classes FILE")
    return Annotations(column, [index[name] for name in row_names], list(names), origin)


def _manifest_annotations(manifest: Manifest, column: str, names: list[str] | None,
                          origin: str) -> Annotations:
    """A manifest: integer labels, checked against the class count."""
    values = manifest.labels[column]
    if names is None:
        beside = pathlib.join(pathlib.dirname(pathlib.absolute(manifest.name)), CLASSES_FILE)
        if pathlib.isfile(beside) and column in load_classes(beside):
            names, origin = load_classes(beside)[column], beside
        else:
            names = [str(i) for i in range(int(values.max()) + 1)]
            origin = f"the labels of {manifest.name} (0..{len(names) - 1})"
    bad = values[(values < 0) | (values >= len(names))]
    if len(bad):
        raise EmbedError(f"{manifest.name}: {column}={int(bad[0])} is not a class index of "
                         f"{origin} ({len(names)} classes, 0..{len(names) - 1}); give the "
                         "class list with --classes FILE")
    return Annotations(column, [int(v) for v in values], list(names), origin)


def _store(path: str, column: str, names: list[str]) -> None:
    stored = load_classes(path) if pathlib.isfile(path) else {}
    if stored.get(column) != names:
        pathlib.makedirs(pathlib.dirname(pathlib.absolute(path)))
        write_json(path, {**stored, column: names})

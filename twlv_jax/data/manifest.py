"""Manifests: lists of video (or image) files with optional labels and start/end times.

Formats (chosen by extension):
  CSV (.csv)     a header row, then one row per file: path[,label][,label_NAME...][,start,end]
  JSONL (.jsonl) one JSON object per line with the same keys
`path` is required; relative paths are relative to the manifest's folder. `label` and
every `label_NAME` column hold one integer each; `start`/`end` are seconds (empty: the
whole video). Other columns are ignored. A folder can stand in for a manifest: every
video (or image) under it, labelled by its first-level subfolder when all files sit in
subfolders.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from twlv_jax import paths as pathlib

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts",
                    ".flv", ".3gp", ".ogv", ".wmv", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
SPLIT_NAMES = ("train", "val", "validation", "test")

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest or folder that cannot be read; the message names the file and line."""


def is_label_key(key: str) -> bool:
    return key == "label" or key.startswith("label_")


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


class StringColumn:
    """Many strings in one buffer: cheap to pickle into Grain worker processes."""

    def __init__(self, strings: Iterable[str]):
        encoded = [s.encode() for s in strings]
        self._buffer = b"".join(encoded)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return self._buffer[start:int(self._ends[index])].decode()


@dataclass
class Manifest:
    """Rows of a manifest, stored by column. Paths are absolute; NaN start/end: none."""

    name: str
    paths: StringColumn
    labels: dict[str, np.ndarray]  # label column -> int32 (N,)
    starts: np.ndarray             # float64 (N,)
    ends: np.ndarray               # float64 (N,)

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, index: int) -> dict:
        """{'path', 'start', 'end', 'labels'}; start/end are None when not set."""
        start, end = float(self.starts[index]), float(self.ends[index])
        return {"path": self.paths[index],
                "start": None if math.isnan(start) else start,
                "end": None if math.isnan(end) else end,
                "labels": {k: int(v[index]) for k, v in self.labels.items()}}


def _parse_int(value, where: str, key: str) -> int:
    if value is None or value == "":
        raise ManifestError(f"{where}: {key} is empty; expected an integer class index")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ManifestError(f"{where}: {key}={value!r} is not an integer; labels must be integer "
                        "class indices (map class names to integers first)")


def _parse_seconds(value, where: str, key: str) -> float:
    if value is None or value == "":
        return math.nan
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: {key}={value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ManifestError(f"{where}: {key}={value!r} must be a non-negative number of seconds")
    return seconds


def _csv_rows(path: str) -> Iterable[tuple[int, dict]]:
    with pathlib.open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return
        header = [name.strip() for name in reader.fieldnames]
        if "path" not in header:
            raise ManifestError(f"manifest {path}: no 'path' column in the header "
                                f"(columns: {', '.join(header)}); expected a header like "
                                "'path,label'")
        reader.fieldnames = header
        for row in reader:
            if None in row:
                raise ManifestError(f"manifest {path}, line {reader.line_num}: more values "
                                    f"than the {len(header)} header columns")
            yield reader.line_num, row


def _jsonl_rows(path: str) -> Iterable[tuple[int, dict]]:
    with pathlib.open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"manifest {path}, line {line_number}: not valid JSON "
                                    f"({error.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"manifest {path}, line {line_number}: expected a JSON "
                                    f"object like {{\"path\": ...}}, got {type(row).__name__}")
            yield line_number, row


def read_manifest(path: str) -> Manifest:
    """Reads a CSV or JSONL manifest; raises ManifestError naming the file and line."""
    if not pathlib.isfile(path):
        raise ManifestError(f"manifest {path} does not exist")
    extension = os.path.splitext(path)[1].lower()
    if extension not in MANIFEST_EXTENSIONS:
        raise ManifestError(f"manifest {path}: expected a .csv or .jsonl file")
    rows = _csv_rows(path) if extension == ".csv" else _jsonl_rows(path)
    folder = pathlib.dirname(pathlib.absolute(path))
    paths, starts, ends = [], [], []
    labels: dict[str, list[int]] | None = None
    for line, row in rows:
        where = f"manifest {path}, line {line}"
        file_path = row.get("path")
        if not isinstance(file_path, str) or not file_path.strip():
            raise ManifestError(f"{where}: no 'path' value")
        keys = sorted(k for k in row if is_label_key(k))
        if labels is None:
            labels = {k: [] for k in keys}
        if keys != sorted(labels):
            raise ManifestError(f"{where}: label columns {keys} differ from the first row's "
                                f"{sorted(labels)}")
        for key in keys:
            labels[key].append(_parse_int(row[key], where, key))
        file_path = file_path.strip()
        paths.append(file_path if pathlib.is_remote(file_path)
                     else pathlib.join(folder, os.path.expanduser(file_path)))
        starts.append(_parse_seconds(row.get("start"), where, "start"))
        ends.append(_parse_seconds(row.get("end"), where, "end"))
        if ends[-1] <= starts[-1]:
            raise ManifestError(f"{where}: end ({ends[-1]}) must be after start ({starts[-1]})")
    if not paths:
        raise ManifestError(f"manifest {path} has no rows; expected a header and one row per file")
    warn_duplicates(path, paths, starts, ends)
    return _manifest(path, paths, labels or {}, starts, ends)


def warn_duplicates(name: str, paths: Sequence[str], starts: Sequence[float],
                    ends: Sequence[float]) -> int:
    """Logs a warning when rows repeat a file with the same times; returns the extra rows."""
    rows = Counter((pathlib.normpath(p), repr(s), repr(e)) for p, s, e in zip(paths, starts, ends))
    repeated = {row: n for row, n in rows.items() if n > 1}
    extra = sum(repeated.values()) - len(repeated)
    if extra:
        worst = sorted(repeated.items(), key=lambda item: -item[1])[:3]
        log.warning("manifest %s lists %d file(s) more than once (%d extra rows, sampled that "
                    "much more often): %s", name, len(repeated), extra,
                    ", ".join(f"{row[0]} x{n}" for row, n in worst))
    return extra


def _manifest(name: str, paths: Sequence[str], labels: dict[str, list[int]],
              starts: Sequence[float], ends: Sequence[float]) -> Manifest:
    return Manifest(name, StringColumn(pathlib.normpath(p) for p in paths),
                    {k: np.asarray(v, np.int32) for k, v in labels.items()},
                    np.asarray(starts, np.float64), np.asarray(ends, np.float64))


def scan_folder(folder: str, extensions: Sequence[str] = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS,
                ) -> Manifest:
    """Every file under `folder` with one of `extensions`, sorted. When all of them sit in
    first-level subfolders, `label` is the subfolder's index in sorted order."""
    root = pathlib.absolute(folder)
    found = [p for p in pathlib.walk_files(root) if p.lower().endswith(extensions)]
    if not found:
        raise ManifestError(f"folder {folder} holds no files ending in {', '.join(extensions)}")
    sep = "/" if pathlib.is_remote(root) else os.sep
    relative = [p[len(root.rstrip(sep)) + 1:] for p in found]
    classes = sorted({r.split(sep)[0] for r in relative if sep in r})
    labels = {}
    if all(sep in r for r in relative):
        index = {name: i for i, name in enumerate(classes)}
        labels = {"label": [index[r.split(sep)[0]] for r in relative]}
    nan = [math.nan] * len(found)
    return _manifest(folder, found, labels, nan, nan)


def read_manifest_or_folder(path: str, split: str | None = None) -> Manifest:
    """A manifest file; or a folder: its `split` manifest (train.csv, val.jsonl, ...) when
    it holds split manifests, else every video and image under it."""
    if not path:
        raise ManifestError("no manifest given: expected a .csv/.jsonl manifest or a folder")
    if not pathlib.isdir(path):
        return read_manifest(path)
    found = split_manifests(path)
    if not found:
        return scan_folder(path)
    if split not in found:
        raise ManifestError(f"folder {path} holds split manifests ({', '.join(sorted(found))}); "
                            f"name one as the split (got {split!r}) or give the manifest file")
    return read_manifest(found[split])


def read_splits(path: str, split: str | None = None) -> dict[str, Manifest]:
    """{split: manifest} for a tool's --input: a manifest file (split: `split`, else its
    name when that is a split name, else 'train'), a folder's split manifests (all, or
    just `split`), or a folder scanned for videos and images (split: `split` or 'train')."""
    if pathlib.isfile(path):
        stem = os.path.splitext(os.path.basename(path))[0]
        return {split or (stem if stem in SPLIT_NAMES else "train"): read_manifest(path)}
    if not pathlib.isdir(path):
        raise ManifestError(f"input {path} does not exist")
    found = split_manifests(path)
    if found:
        if split is not None and split not in found:
            raise ManifestError(f"folder {path} has no {split} manifest "
                                f"(found: {', '.join(sorted(found))})")
        return {name: read_manifest(found[name]) for name in ([split] if split else found)}
    return {split or "train": scan_folder(path)}


def split_manifests(folder: str) -> dict[str, str]:
    """Split name -> manifest path for train.csv, val.jsonl, ... directly in `folder`."""
    found = {}
    for split in SPLIT_NAMES:
        for extension in MANIFEST_EXTENSIONS:
            candidate = pathlib.join(folder, split + extension)
            if pathlib.isfile(candidate):
                found.setdefault(split, candidate)
    return found


def write_manifest(path: str, rows: Sequence[dict]) -> str:
    """Writes rows ({'path', optional 'labels', 'start', 'end', extra str columns}) as CSV.

    Paths inside the manifest's folder are written relative to it.
    """
    folder = pathlib.dirname(pathlib.absolute(path))
    pathlib.makedirs(folder)
    label_keys = sorted({k for row in rows for k in row.get("labels", {})})
    has_times = any(row.get("start") is not None or row.get("end") is not None for row in rows)
    extra = sorted({k for row in rows for k in row.get("extra", {})})
    header = ["path", *label_keys, *(["start", "end"] if has_times else []), *extra]
    sep = "/" if pathlib.is_remote(folder) else os.sep
    with pathlib.open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            file_path = pathlib.absolute(row["path"])
            if file_path.startswith(folder + sep):
                file_path = file_path[len(folder) + 1:]
            times = [_blank(row.get("start")), _blank(row.get("end"))] if has_times else []
            writer.writerow([file_path, *(row["labels"][k] for k in label_keys), *times,
                             *(row.get("extra", {}).get(k, "") for k in extra)])
    return path


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:g}"

"""Embedding folders in the official TWLV-I layout, read as the official scripts read them.

    DIR/train/<id>.json   {"annotation": int, "num_frames", "duration", clip start/end ...}
    DIR/train/<id>_c.npy  float32 (clips, D): one row per clip
    DIR/train/<id>_v.npy  float32 (D,): the video embedding (mean of the clips)
    DIR/val/...           the same

The videos of a split are the `*.json` files directly inside its folder (anything else
there is ignored, as in the official `dataset.py`); ids are sorted for a fixed order.
Only `annotation` is read from the JSON. The class count is DIR/classes.json's
(`{label column: [names]}`, written by `twlv embed`) when it names one column.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from twlv_jax import paths as pathlib

SPLITS = ("train", "val")
MODES = ("clip", "video")
CLASSES_FILE = "classes.json"


class FolderError(ValueError):
    """An embedding folder that does not follow the layout; the message names the file."""


@dataclass
class Split:
    """One split's embeddings: per video (`ids`, `labels`, `videos`) and per clip row."""

    folder: str
    ids: list[str]
    labels: np.ndarray    # int64 (V,)
    videos: np.ndarray    # float32 (V, D): the `_v.npy` rows
    clips: np.ndarray     # float32 (R, D): every video's `_c.npy` rows, in video order
    groups: np.ndarray    # int64 (R,): the video index of each clip row

    @property
    def dim(self) -> int:
        return int(self.videos.shape[1])

    def rows(self, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, labels per row, video index per row) for `clip` or `video` mode."""
        if mode == "clip":
            return self.clips, self.labels[self.groups], self.groups
        return self.videos, self.labels, np.arange(len(self.ids))


def read_split(directory: str, split: str, *, num_classes: int | None = None,
               classes_from: str = "num_classes", progress: bool = True) -> Split:
    """Reads `directory/split`; errors name the folder or file at fault. An annotation
    must be below `num_classes` (when given; `classes_from` says where it came from)."""
    folder = pathlib.join(directory, split)
    if not pathlib.isdir(folder):
        raise FolderError(f"{folder} is not a folder (expected {directory} to hold train/ and "
                          "val/ with <id>.json, <id>_c.npy, <id>_v.npy per video, as written by "
                          "`twlv embed`)")
    ids = sorted(name[:-5] for name in pathlib.listdir(folder) if name.endswith(".json"))
    if not ids:
        raise FolderError(f"{folder} holds no <id>.json files (an empty split)")
    labels, videos, clips, groups = [], [], [], []
    for index, vid in enumerate(tqdm(ids, desc=f"read {split}", unit="video", disable=not progress,
                                     leave=False)):
        base = pathlib.join(folder, vid)
        labels.append(_annotation(base + ".json", num_classes, classes_from))
        video, clip = _array(base + "_v.npy", 1), _array(base + "_c.npy", 2)
        if clip.shape[0] == 0 or clip.shape[1] != video.shape[0]:
            raise FolderError(f"{base}_c.npy: shape {clip.shape} does not match {base}_v.npy "
                              f"{video.shape} (expected (clips >= 1, {video.shape[0]}))")
        if videos and video.shape != videos[0].shape:
            raise FolderError(f"{base}_v.npy: dimension {video.shape[0]} differs from "
                              f"{videos[0].shape[0]} in {pathlib.join(folder, ids[0])}_v.npy")
        videos.append(video)
        clips.append(clip)
        groups.append(np.full(len(clip), index, np.int64))
    return Split(folder, ids, np.asarray(labels, np.int64), np.stack(videos),
                 np.concatenate(clips), np.concatenate(groups))


def read_embeddings(directory: str, *, num_classes: int | None = None,
                    progress: bool = True) -> tuple[Split, Split, int]:
    """(train, val, class count) of an embedding folder.

    The class count is `num_classes` when given, else that of DIR/classes.json (an
    annotation outside it is an error), else one more than the largest annotation.
    """
    if not pathlib.isdir(directory):
        raise FolderError(f"embedding folder {directory} does not exist")
    classes_from = "--num_classes"
    if num_classes is None:
        num_classes, classes_from = _classes_file(directory), pathlib.join(directory,
                                                                           CLASSES_FILE)
    train, val = (read_split(directory, s, num_classes=num_classes, classes_from=classes_from,
                             progress=progress) for s in SPLITS)
    if train.dim != val.dim:
        raise FolderError(f"{train.folder} has {train.dim}-d embeddings but {val.folder} has "
                          f"{val.dim}-d")
    count = num_classes or int(max(train.labels.max(), val.labels.max())) + 1
    return train, val, count


def _classes_file(directory: str) -> int | None:
    """The class count of DIR/classes.json when it holds one label column's names."""
    path = pathlib.join(directory, CLASSES_FILE)
    if not pathlib.isfile(path):
        return None
    with pathlib.open(path) as f:
        classes = json.load(f)
    if isinstance(classes, dict) and len(classes) == 1:
        names = next(iter(classes.values()))
        return len(names) if isinstance(names, list) and names else None
    return None


def _annotation(path: str, num_classes: int | None, classes_from: str) -> int:
    try:
        with pathlib.open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise FolderError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(meta, dict) or "annotation" not in meta:
        raise FolderError(f"{path}: no 'annotation' key (the video's integer class index)")
    try:
        label = int(meta["annotation"])
    except (TypeError, ValueError):
        raise FolderError(f"{path}: annotation {meta['annotation']!r} is not an integer "
                          "class index") from None
    if label < 0:
        raise FolderError(f"{path}: annotation {label} is negative")
    if num_classes is not None and label >= num_classes:
        raise FolderError(f"{path}: annotation {label} is not below the class count "
                          f"{num_classes} (from {classes_from})")
    return label


def _array(path: str, ndim: int) -> np.ndarray:
    try:
        if pathlib.is_remote(path):
            array = np.load(io.BytesIO(pathlib.read_bytes(path)))
        else:
            array = np.load(path)
    except (OSError, ValueError) as error:
        raise FolderError(f"{path}: missing or unreadable ({error})") from None
    if array.ndim != ndim:
        want = "(D,)" if ndim == 1 else "(clips, D)"
        raise FolderError(f"{path}: expected a {ndim}-d array {want}, got shape {array.shape}")
    return array.astype(np.float32, copy=False)

"""Record sources for `data.source`: manifest, tfds, images, mixture.

A source is a random-access sequence of records (`len`, `[i]`) that Grain can pickle
into worker processes. A record is a plain dict:
  name      where it came from (for logs and the quarantine list)
  path      a file to open, or None
  data      the file's bytes (TFDS), or None
  array     an already decoded image (H, W, 3) uint8 (TFDS image sets), or None
  is_image  True for a single image (made into a clip by repetition)
  start/end seconds or None
  labels    {label name: int}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twlv_jax import paths as pathlib
from twlv_jax.data import manifest as manifest_lib

FILE_SOURCES = ("manifest", "tfds", "images")  # each reads one path
SOURCES = (*FILE_SOURCES, "mixture")


class DataError(ValueError):
    """A data config or data path that cannot be used; the message says what to change."""


class ManifestSource:
    """One record per row of a manifest (or file of a folder)."""

    def __init__(self, manifest: manifest_lib.Manifest, *, images: bool = False):
        self._manifest = manifest
        self._images = images
        self.name = manifest.name
        self.label_names = tuple(sorted(manifest.labels))

    def __len__(self) -> int:
        return len(self._manifest)

    def __getitem__(self, index: int) -> dict:
        row = self._manifest.row(index)
        return {"name": row["path"], "path": row["path"], "data": None, "array": None,
                "is_image": self._images or manifest_lib.is_image_path(row["path"]),
                "start": row["start"], "end": row["end"], "labels": row["labels"]}


class TfdsSource:
    """One record per example of a TFDS split with a `video` (bytes) or `image` (bytes or
    decoded uint8) feature, read with `tfds.data_source`-style ArrayRecord access."""

    def __init__(self, path: str, split: str, *, images: bool = False):
        import tensorflow_datasets as tfds

        self.name = find_dataset_dir(path)
        builder = tfds.builder_from_directory(self.name)
        if split not in builder.info.splits:
            raise DataError(f"TFDS dataset {self.name} has no split {split!r}; splits: "
                            f"{', '.join(sorted(builder.info.splits))} (set data.split)")
        keys = set(builder.info.features.keys())
        self._media_key = "video" if "video" in keys else "image" if "image" in keys else None
        if self._media_key is None:
            raise DataError(f"TFDS dataset {self.name} has neither a 'video' nor an 'image' "
                            f"feature (features: {', '.join(sorted(keys))})")
        self.split = split
        self.label_names = tuple(sorted(k for k in keys if manifest_lib.is_label_key(k)))
        self._length = builder.info.splits[split].num_examples
        self._images = images or self._media_key == "image"
        self._examples = None  # opened lazily, in each worker process

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_examples": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        if self._examples is None:
            import tensorflow_datasets as tfds

            self._examples = tfds.builder_from_directory(self.name).as_data_source(self.split)
        example = self._examples[index]
        media = example[self._media_key]
        is_bytes = isinstance(media, bytes)
        name = example.get("name", b"")
        name = name.decode() if isinstance(name, bytes) else ""
        return {"name": f"{self.name}[{self.split}][{index}]" + (f" ({name})" if name else ""),
                "path": None, "data": media if is_bytes else None,
                "array": None if is_bytes else np.asarray(media, np.uint8),
                "is_image": bool(example.get("is_image", self._images)) or self._images,
                "start": _seconds(example.get("start")), "end": _seconds(example.get("end")),
                "labels": {k: int(example[k]) for k in self.label_names}}


def _seconds(value) -> float | None:
    return None if value is None or math.isnan(float(value)) else float(value)


@dataclass(frozen=True)
class Component:
    """One part of a mixture: a source kind, its path and its sampling weight."""

    source: str
    path: str
    weight: float


def parse_mixture(spec: str) -> list[Component]:
    """'manifest:/d/k710.csv@0.6,tfds:/d/webvid@0.3,images:/d/in1k@0.1' -> components."""
    components = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        body, at, weight_text = item.rpartition("@")
        if not at:
            body, weight_text = item, "1"
        source, colon, path = body.partition(":")
        if not colon or source not in FILE_SOURCES or not path:
            raise DataError(f"data.path mixture item {item!r}: expected SOURCE:PATH@WEIGHT with "
                            f"SOURCE one of {', '.join(FILE_SOURCES)}")
        try:
            weight = float(weight_text)
        except ValueError:
            weight = -1.0
        if not weight > 0:
            raise DataError(f"data.path mixture item {item!r}: weight {weight_text!r} must be a "
                            "positive number")
        components.append(Component(source, path, weight))
    if not components:
        raise DataError(f"data.path {spec!r}: a mixture needs at least one SOURCE:PATH@WEIGHT")
    return components


def open_source(kind: str, path: str, split: str = "train") -> ManifestSource | TfdsSource:
    """The record source for `data.source` (not 'mixture') and `data.path`."""
    if kind not in FILE_SOURCES:
        raise DataError(f"data.source: expected one of {', '.join(SOURCES)}, got {kind!r}")
    if not path:
        raise DataError("data.path is empty: set --config.data.path to a manifest (.csv or "
                        ".jsonl), a folder of videos or images, a TFDS folder, or a mixture")
    if not pathlib.exists(path):
        raise DataError(f"data.path {path!r} does not exist")
    is_tfds = pathlib.isdir(path) and _holds_tfds(path)
    try:
        if kind == "tfds" or (kind == "images" and is_tfds):
            return TfdsSource(path, split, images=kind == "images")
        if kind == "images" and pathlib.isdir(path):
            return ManifestSource(manifest_lib.scan_folder(path, manifest_lib.IMAGE_EXTENSIONS),
                                  images=True)
        return ManifestSource(manifest_lib.read_manifest_or_folder(path, split),
                              images=kind == "images")
    except (manifest_lib.ManifestError, FileNotFoundError) as error:
        raise DataError(str(error)) from None


def find_dataset_dir(path: str) -> str:
    """The folder holding dataset_info.json: `path` itself or the one under it (2 levels)."""
    if pathlib.isfile(pathlib.join(path, "dataset_info.json")):
        return path
    found = [pathlib.dirname(f) for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")
             for f in pathlib.glob(path, pattern)]
    if len(found) != 1:
        what = "no TFDS dataset" if not found else f"{len(found)} TFDS datasets"
        raise FileNotFoundError(f"{path}: {what} (a folder with dataset_info.json) found; "
                                "build one with `twlv data build`, or point at one version folder")
    return found[0]


def _holds_tfds(path: str) -> bool:
    try:
        find_dataset_dir(path)
    except FileNotFoundError:
        return False
    return True

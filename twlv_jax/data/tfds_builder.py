"""A TFDS dataset of encoded videos (and images), built and read without TensorFlow.

Each example holds the file's bytes in a `Tensor(shape=(), dtype=object)` feature
(`video`; for images the image file's bytes and `is_image=True`), the labels as int32
scalars, and metadata: source `name`, `start`/`end` seconds (NaN: none), `num_frames`,
`fps`, `duration`, coded `width`/`height`. Files are stored as they are; run
`twlv data prepare` first for short GOPs and a fixed short side.

The builder lives in this importable module so Grain workers can unpickle it (a
builder defined in `__main__` is re-registered in each worker and fails).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from twlv_jax.data import manifest as manifest_lib
from twlv_jax.data.process_pool import map_ordered
from twlv_jax.data.quarantine import Quarantine
from twlv_jax.data.video import BadVideo, probe

_BYTES = np.object_


def features(label_names: Sequence[str]) -> tfds.features.FeaturesDict:
    """The feature spec: bytes, metadata, and one int32 scalar per label."""
    spec = {
        "video": tfds.features.Tensor(shape=(), dtype=_BYTES, doc="the file's bytes"),
        "is_image": tfds.features.Tensor(shape=(), dtype=np.bool_),
        "name": tfds.features.Tensor(shape=(), dtype=_BYTES, doc="path of the source file"),
        "start": tfds.features.Tensor(shape=(), dtype=np.float32, doc="seconds; NaN: none"),
        "end": tfds.features.Tensor(shape=(), dtype=np.float32, doc="seconds; NaN: none"),
        "num_frames": tfds.features.Tensor(shape=(), dtype=np.int32),
        "fps": tfds.features.Tensor(shape=(), dtype=np.float32),
        "duration": tfds.features.Tensor(shape=(), dtype=np.float32),
        "width": tfds.features.Tensor(shape=(), dtype=np.int32),
        "height": tfds.features.Tensor(shape=(), dtype=np.int32),
    }
    spec.update({name: tfds.features.Tensor(shape=(), dtype=np.int32) for name in label_names})
    return tfds.features.FeaturesDict(spec)


class TwlvVideo(tfds.core.GeneratorBasedBuilder):
    """Builds splits from validated examples: {split: [example dict, ...]} given at init.

    Each example dict has the keys of `features()` except `video`, plus `path` (the file
    whose bytes are stored).
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, splits: dict[str, Sequence[dict]] | None = None,
                 label_names: Sequence[str] = (), **kwargs):
        self._splits = dict(splits or {})
        self._label_names = tuple(label_names)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=features(self._label_names), disable_shuffling=True,
            description="Encoded videos with labels, written by `twlv data build`.")

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {split: self._generate_examples(rows) for split, rows in self._splits.items()}

    def _generate_examples(self, rows: Sequence[dict]) -> Iterator[tuple[int, dict]]:
        for key, row in enumerate(rows):
            with open(row["path"], "rb") as f:
                data = f.read()
            example = {k: v for k, v in row.items() if k != "path"}
            yield key, {**example, "video": data}


def build(output: str, splits: dict[str, Sequence[dict]]) -> str:
    """Writes examples from `check_files` under `output` as ArrayRecord files, in order;
    returns the dataset folder."""
    label_names = sorted(k for k in next(iter(splits.values()))[0]
                         if manifest_lib.is_label_key(k))
    builder = TwlvVideo(data_dir=output, splits=splits, label_names=label_names,
                        file_format="array_record")
    with tempfile.TemporaryDirectory() as downloads:  # TFDS wants one; nothing is downloaded
        builder.download_and_prepare(download_dir=downloads)
    return str(builder.data_dir)


def _examine(row: dict) -> tuple[dict, dict | None, BadVideo | None]:
    """(row, example metadata, None) for a readable file, (row, None, error) otherwise."""
    try:
        info = probe(row["path"])
    except BadVideo as error:
        return row, None, error
    nan = float("nan")
    example = {"path": row["path"], "name": row["path"],
               "is_image": info.is_image or manifest_lib.is_image_path(row["path"]),
               "start": nan if row["start"] is None else row["start"],
               "end": nan if row["end"] is None else row["end"],
               "num_frames": info.num_frames, "fps": info.fps, "duration": info.duration,
               "width": info.width, "height": info.height, **row["labels"]}
    return row, example, None


def check_files(manifests: dict[str, manifest_lib.Manifest], quarantine: Quarantine, *,
                workers: int = 1, progress: Callable[[int], None] | None = None,
                ) -> dict[str, list[dict]]:
    """{split: examples} of the files that open and have a readable header; the others go
    to `quarantine`."""
    label_sets = {split: tuple(sorted(m.labels)) for split, m in manifests.items()}
    if len(set(label_sets.values())) > 1:
        raise manifest_lib.ManifestError(f"splits have different label columns: {label_sets}")
    splits: dict[str, list[dict]] = {}
    for split, manifest in manifests.items():
        rows = (manifest.row(i) for i in range(len(manifest)))
        splits[split] = []
        for row, example, error in map_ordered(_examine, rows, workers=workers):
            if error is not None:
                quarantine.add(row["path"], error.reason, error.detail)
            else:
                splits[split].append(example)
            if progress:
                progress(1)
    empty = [split for split, examples in splits.items() if not examples]
    if empty:
        raise manifest_lib.ManifestError(f"no readable file in split(s) {', '.join(empty)}; "
                                         f"see {quarantine.path}")
    return splits

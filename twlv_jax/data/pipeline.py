"""The Grain training pipeline and global batches on the mesh.

    source records -> per-process slice -> seeded shuffle (new order each epoch) -> repeat
      -> decode + sample + augment (RandomMap, in worker processes) -> skip bad files
      (counted, logged, quarantined; main process) -> batch (uint8)

The iterator's state is the number of records consumed plus the bad-file record, so it
is small JSON, restores the identical next batches, and does not depend on the number
of worker processes. Two passes over the process's files without one readable clip
stop with TooManyBadFiles, whatever data.max_bad_fraction allows. Worker processes
exit when their parent dies (even by kill -9), so none is left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import grain
import jax
import numpy as np

from twlv_jax.data import clips, sampling, sources
from twlv_jax.data.quarantine import Quarantine, TooManyBadFiles
from twlv_jax.data.sources import DataError
from twlv_jax.data.transforms import flip_horizontal
from twlv_jax.data.video import BadVideo

# Keys this module adds to the data config; configs that omit them get these values.
OPTIONAL_KEYS = {"read_threads": 1, "prefetch": 8}


@dataclass
class DataInfo:
    """What the training pipeline reads."""

    num_examples: int              # videos/images in the whole source (all processes)
    local_examples: int            # in this process's slice
    label_names: tuple[str, ...]   # int32 label keys in each batch
    description: str               # one line for the start-up printout
    quarantine: Quarantine         # this process's bad files (live counts)


class DecodeTrainClip(grain.transforms.RandomMap):
    """record -> {'video': uint8 (T, S, S, 3), label...: int32}, or {'bad': [name, reason,
    detail]} for a file that cannot be read (skipped later, in the main process)."""

    def __init__(self, *, frames: int, image_size: int, stride: int,
                 crop_scale: tuple[float, float], crop_ratio: tuple[float, float], flip: bool,
                 short_video: str, label_names: tuple[str, ...]):
        self.clip_options = dict(frames=frames, image_size=image_size, stride=stride,
                                 crop_scale=crop_scale, crop_ratio=crop_ratio,
                                 short_video=short_video)
        self.flip, self.label_names = flip, label_names

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        try:
            video = clips.read_train_clip(record, rng, **self.clip_options)
        except BadVideo as error:
            return {"bad": [record["name"], error.reason, error.detail]}
        if self.flip and rng.random() < 0.5:
            video = flip_horizontal(video)
        labels = {k: np.int32(record["labels"][k]) for k in self.label_names}
        return {"video": video, **labels}


def exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker start-up: a daemon thread ends this worker once its parent has gone.

    Without it a trainer killed with SIGKILL leaves its workers (each holding a decoded
    prefetch buffer) and the multiprocessing resource tracker running, parented to init.
    """
    del worker_index, worker_count
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="twlv-exit-with-parent", daemon=True).start()


class SkipBadFiles(grain.IterDataset):
    """The elements of `decoded` (an infinite MapDataset) in order, minus bad files, which
    go to `quarantine`. Decoding runs in `workers` processes (0: in this one)."""

    def __init__(self, decoded: grain.MapDataset, quarantine: Quarantine, *, workers: int,
                 read_threads: int, prefetch: int):
        super().__init__()
        self.decoded, self.quarantine = decoded, quarantine
        self.workers = workers
        self.read_options = grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=prefetch)

    def __iter__(self) -> SkipBadFilesIterator:
        return SkipBadFilesIterator(self)

    def __str__(self) -> str:
        return f"SkipBadFiles(workers={self.workers})"


class SkipBadFilesIterator(grain.DatasetIterator):
    """Iterator of SkipBadFiles; state: {'consumed': records read, 'quarantine': ...}."""

    def __init__(self, dataset: SkipBadFiles):
        super().__init__()
        self._dataset = dataset
        self._consumed = 0
        self._elements = None

    def _stream(self):
        if self._elements is None:
            rest = self._dataset.decoded[self._consumed:].to_iter_dataset(
                self._dataset.read_options)
            if self._dataset.workers:
                rest = rest.mp_prefetch(grain.MultiprocessingOptions(
                    num_workers=self._dataset.workers, per_worker_buffer_size=2),
                    worker_init_fn=exit_with_parent)
            self._elements = iter(rest)
        return self._elements

    def __next__(self) -> dict:
        quarantine = self._dataset.quarantine
        # Two passes: a run of bad records can span the end of one epoch and the start of
        # the next (each shuffled), but not two whole epochs unless every record is bad.
        for _ in range(2 * max(quarantine.total, 1)):
            element = next(self._stream())
            self._consumed += 1
            if "bad" not in element:
                return element
            quarantine.add(*element["bad"])
        raise TooManyBadFiles(f"stopping: no readable clip in {2 * quarantine.total} records "
                              f"in a row (two passes over this process's files); "
                              f"{quarantine.summary()}")

    def get_state(self) -> dict[str, Any]:
        return {"consumed": self._consumed, "quarantine": self._dataset.quarantine.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        self._consumed = int(state["consumed"])
        self._dataset.quarantine.set_state(state["quarantine"])

    def close(self) -> None:
        if self._elements is not None:
            self._elements.close()
            self._elements = None


def kill_workers() -> int:
    """Kills this process's Grain worker processes; returns how many. Closing an iterator
    waits for its workers, so one stuck in a read would hold up the close forever."""
    workers = [p for p in multiprocessing.active_children()
               if p.name.startswith("grain-process-prefetch")]
    for process in workers:
        process.kill()
    for process in workers:
        process.join(timeout=5)
    return len(workers)


def _option(data_cfg, key: str):
    """A key this module added to the data config; its default for configs without it."""
    return data_cfg.get(key, OPTIONAL_KEYS[key])


def _check_config(data_cfg, *, frames: int, image_size: int, global_batch_size: int,
                  process_count: int) -> None:
    """Clear errors for values the pipeline cannot use, before any file is read."""
    low, high = data_cfg.crop_scale
    checks = [
        (frames >= 1, f"frames must be >= 1, got {frames}"),
        (image_size >= 1, f"image_size must be >= 1, got {image_size}"),
        (data_cfg.stride >= 1, f"data.stride must be >= 1, got {data_cfg.stride}"),
        (0 < low <= high <= 1, f"data.crop_scale must be (low, high) with 0 < low <= high <= 1, "
                               f"got {tuple(data_cfg.crop_scale)}"),
        (0 < data_cfg.crop_ratio[0] <= data_cfg.crop_ratio[1],
         f"data.crop_ratio must be (low, high) with 0 < low <= high, "
         f"got {tuple(data_cfg.crop_ratio)}"),
        (data_cfg.short_video in sampling.SHORT_VIDEO_MODES,
         f"data.short_video must be one of {sampling.SHORT_VIDEO_MODES}, "
         f"got {data_cfg.short_video!r}"),
        (data_cfg.workers >= 0, f"data.workers must be >= 0, got {data_cfg.workers}"),
        (0 <= data_cfg.max_bad_fraction <= 1,
         f"data.max_bad_fraction must be in [0, 1], got {data_cfg.max_bad_fraction}"),
        (global_batch_size % process_count == 0,
         f"the global batch size {global_batch_size} must be divisible by the "
         f"{process_count} processes"),
    ]
    for ok, message in checks:
        if not ok:
            raise DataError(message)


def _components(data_cfg) -> list[tuple[sources.ManifestSource | sources.TfdsSource, float]]:
    if data_cfg.source == "mixture":
        return [(sources.open_source(c.source, c.path, data_cfg.split), c.weight)
                for c in sources.parse_mixture(data_cfg.path)]
    return [(sources.open_source(data_cfg.source, data_cfg.path, data_cfg.split), 1.0)]


def _local_records(source, *, seed: int, process_index: int,
                   process_count: int) -> grain.MapDataset:
    """This process's slice of `source`, shuffled with a new order each epoch, forever."""
    local = grain.MapDataset.source(source)[process_index::process_count]
    if len(local) == 0:
        raise DataError(f"{source.name} has {len(source)} examples, fewer than the "
                        f"{process_count} processes")
    return local.shuffle(seed=seed).repeat()


def _quarantine_file(path: str | None, process_index: int, process_count: int) -> str | None:
    """One list per process: 'bad.csv' -> 'bad.p1.csv' when there are several."""
    if not path or process_count == 1:
        return path
    stem, extension = os.path.splitext(path)
    return f"{stem}.p{process_index}{extension}"


def make_train_dataset(data_cfg, *, frames: int, image_size: int, global_batch_size: int,
                       seed: int, process_index: int = 0, process_count: int = 1,
                       quarantine_path: str | None = None) -> tuple[grain.IterDataset, DataInfo]:
    """The training pipeline as a Grain IterDataset of host-local batches, and its info."""
    _check_config(data_cfg, frames=frames, image_size=image_size,
                  global_batch_size=global_batch_size, process_count=process_count)
    components = _components(data_cfg)
    label_names = tuple(sorted(set.intersection(*(set(s.label_names) for s, _ in components))))
    parts = [_local_records(s, seed=seed + i, process_index=process_index,
                            process_count=process_count) for i, (s, _) in enumerate(components)]
    records = parts[0] if len(parts) == 1 else grain.MapDataset.mix(
        parts, [w for _, w in components])
    decoded = records.random_map(DecodeTrainClip(
        frames=frames, image_size=image_size, stride=data_cfg.stride,
        crop_scale=tuple(data_cfg.crop_scale), crop_ratio=tuple(data_cfg.crop_ratio),
        flip=data_cfg.flip, short_video=data_cfg.short_video, label_names=label_names),
        seed=seed)
    total = sum(len(s) for s, _ in components)
    local = sum(len(range(process_index, len(s), process_count)) for s, _ in components)
    quarantine = Quarantine(_quarantine_file(quarantine_path, process_index, process_count),
                            total=local, max_fraction=data_cfg.max_bad_fraction)
    dataset = SkipBadFiles(decoded, quarantine, workers=data_cfg.workers,
                           read_threads=_option(data_cfg, "read_threads"),
                           prefetch=_option(data_cfg, "prefetch"))
    dataset = dataset.batch(global_batch_size // process_count, drop_remainder=True)
    names = " + ".join(f"{s.name} ({len(s)}, weight {w:g})" for s, w in components)
    description = (f"{data_cfg.source}: {names}; process {process_index}/{process_count} reads "
                   f"{local}; labels: {', '.join(label_names) or 'none'}")
    return dataset, DataInfo(total, local, label_names, description, quarantine)


def make_train_iterator(data_cfg, *, frames: int, image_size: int, global_batch_size: int,
                        seed: int, process_index: int, process_count: int,
                        quarantine_path: str | None):
    """(iterator, info): a Grain DatasetIterator of host-local batches, forever.

    Batches are {'video': uint8 (global_batch_size // process_count, frames, image_size,
    image_size, 3), label...: int32}. The iterator checkpoints with
    grain.checkpoint.CheckpointSave/CheckpointRestore; `info.num_examples` counts the
    whole source so epochs convert to steps.
    """
    dataset, info = make_train_dataset(
        data_cfg, frames=frames, image_size=image_size, global_batch_size=global_batch_size,
        seed=seed, process_index=process_index, process_count=process_count,
        quarantine_path=quarantine_path)
    return iter(dataset), info


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict:
    """Host-local numpy batch -> global jax.Arrays sharded on the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

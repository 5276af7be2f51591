"""Deterministic reading of a labelled manifest for evaluation (embeddings, probes, k-NN).

Every readable video once, in manifest order, with `uniform` sampling (one clip of N
frames evenly spread over the video) or `multi-clip` sampling (T-second clips every Ts
seconds, N frames each, with their start/end times). Frames are resized on the short
side and centre-cropped. Unreadable videos are skipped, logged once and counted.
`iter_clip_groups` reads chosen rows a group of clips at a time, so that multi-clip
sampling of long videos runs in bounded memory (`twlv embed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grain
import numpy as np

from twlv_jax.data import clips
from twlv_jax.data import manifest as manifest_lib
from twlv_jax.data.quarantine import Quarantine
from twlv_jax.data.sources import ManifestSource
from twlv_jax.data.video import BadVideo


def eval_source(manifest_path: str, split: str | None = None) -> ManifestSource:
    """The records of a manifest file (or a folder's `split` manifest, or a folder of files)."""
    return ManifestSource(manifest_lib.read_manifest_or_folder(manifest_path, split))


@dataclass
class EvalVideo:
    """One video read for evaluation."""

    index: int                 # row in the manifest
    name: str                  # the file
    video: np.ndarray          # uint8 (clips, frames, size, size, 3); 1 clip for uniform
    clip_starts: np.ndarray    # float64 (clips,) seconds
    clip_ends: np.ndarray      # float64 (clips,) seconds
    num_frames: int            # frames in the whole video
    duration: float            # seconds
    labels: dict[str, int]


class ReadEvalVideo(grain.transforms.MapWithIndex):
    """(index, record) -> EvalVideo, or {'bad': [name, reason, detail]}."""

    def __init__(self, **clip_options):
        self.clip_options = clip_options

    def map_with_index(self, index: int, record: dict) -> EvalVideo | dict:
        try:
            read = clips.read_eval_clips(record, **self.clip_options)
        except BadVideo as error:
            return {"bad": [record["name"], error.reason, error.detail]}
        return EvalVideo(index, record["name"], read.video, read.starts, read.ends,
                         read.num_frames, read.duration, dict(record["labels"]))


def iter_eval_videos(manifest_path: str, *, frames: int, image_size: int,
                     sampling: str = "uniform", clip_seconds: float = 2.0,
                     clip_stride: float | None = None, split: str | None = None,
                     workers: int = 0, quarantine: Quarantine | None = None,
                     ) -> Iterator[EvalVideo]:
    """Every readable video of the manifest, in order, as an EvalVideo.

    `sampling` is 'uniform' or 'multi-clip' (clips of `clip_seconds` every `clip_stride`
    seconds, default back to back). Bad videos are skipped into `quarantine` (default:
    counted and logged, no list, never stops). `workers` > 0 decodes in Grain processes.
    """
    if sampling not in ("uniform", "multi-clip"):
        raise ValueError(f"sampling: expected 'uniform' or 'multi-clip', got {sampling!r}")
    source = eval_source(manifest_path, split)
    quarantine = quarantine or Quarantine(None, total=len(source), max_fraction=1.0)
    dataset = grain.MapDataset.source(source).map_with_index(ReadEvalVideo(
        frames=frames, image_size=image_size, mode=sampling, clip_seconds=clip_seconds,
        clip_stride=clip_stride)).to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                                    prefetch_buffer_size=4))
    if workers:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(dataset)
    try:
        for item in iterator:
            if isinstance(item, dict):
                quarantine.add(*item["bad"])
            else:
                yield item
    finally:
        iterator.close()


def eval_batches(manifest_path: str, *, frames: int, image_size: int, batch_size: int,
                 split: str | None = None, workers: int = 0,
                 quarantine: Quarantine | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size batches of uniform clips over a labelled manifest, in manifest order.

    Yields {'video': uint8 (B, frames, image_size, image_size, 3), label...: int32 (B,),
    'index': int32 (B,)}: `index` is the manifest row, -1 for the padding that fills the
    last batch (padded entries have zero video and label -1). Unreadable videos are
    skipped (see iter_eval_videos), so their rows never appear.
    """
    pending: list[EvalVideo] = []
    videos = iter_eval_videos(manifest_path, frames=frames, image_size=image_size,
                              split=split, workers=workers, quarantine=quarantine)
    for item in videos:
        pending.append(item)
        if len(pending) == batch_size:
            yield _stack(pending, batch_size)
            pending = []
    if pending:
        yield _stack(pending, batch_size)


def _stack(items: list[EvalVideo], batch_size: int) -> dict[str, np.ndarray]:
    """Stacks uniform clips into a batch, padding to `batch_size` with index -1."""
    video = np.zeros((batch_size, *items[0].video.shape[1:]), np.uint8)  # (B, T, S, S, 3)
    video[:len(items)] = np.stack([item.video[0] for item in items])
    batch = {"video": video, "index": np.full(batch_size, -1, np.int32)}
    batch["index"][:len(items)] = [item.index for item in items]
    for key in items[0].labels:
        batch[key] = np.full(batch_size, -1, np.int32)
        batch[key][:len(items)] = [item.labels[key] for item in items]
    return batch


@dataclass
class ClipGroup:
    """Consecutive clips of one video. A video's groups come in time order; its last one
    has `last` set. A video found bad (possibly after some groups) ends with an empty
    group that has `failed` set: its earlier groups are to be dropped."""

    index: int                 # row in the manifest
    name: str                  # the file
    video: np.ndarray          # uint8 (clips, frames, size, size, 3); clips may be 0
    clip_starts: np.ndarray    # float64 (clips,) seconds
    clip_ends: np.ndarray      # float64 (clips,) seconds
    num_frames: int            # frames in the whole video
    duration: float            # seconds
    labels: dict[str, int]
    last: bool
    failed: bool = False


def iter_clip_groups(source: ManifestSource, rows: Iterable[int], *, frames: int,
                     image_size: int, sampling: str = "uniform", clip_seconds: float = 2.0,
                     clip_stride: float | None = None, group: int = 32,
                     quarantine: Quarantine | None = None) -> Iterator[ClipGroup]:
    """The clips of the `rows` of `source`, in order, `group` clips at a time: memory for
    one group per video, however long the video (see clips.iter_eval_clips).

    Bad videos go to `quarantine` (default: counted and logged) and end with a failed group.
    """
    if sampling not in ("uniform", "multi-clip"):
        raise ValueError(f"sampling: expected 'uniform' or 'multi-clip', got {sampling!r}")
    quarantine = quarantine or Quarantine(None, total=len(source), max_fraction=1.0)
    for index in rows:
        record = source[index]
        reads = clips.iter_eval_clips(record, frames=frames, image_size=image_size, mode=sampling,
                                      clip_seconds=clip_seconds, clip_stride=clip_stride,
                                      group=group)
        try:
            previous = next(reads)
            for read in reads:  # holds one group back to know which one is last
                yield _clip_group(index, record, previous, last=False)
                previous = read
        except BadVideo as error:
            quarantine.add(record["name"], error.reason, error.detail)
            empty = np.zeros((0, frames, image_size, image_size, 3), np.uint8)
            yield ClipGroup(index, record["name"], empty, np.zeros(0), np.zeros(0), 0, 0.0,
                            dict(record["labels"]), last=True, failed=True)
            continue
        yield _clip_group(index, record, previous, last=True)


def _clip_group(index: int, record: dict, read: clips.EvalClips, *, last: bool) -> ClipGroup:
    return ClipGroup(index, record["name"], read.video, read.starts, read.ends, read.num_frames,
                     read.duration, dict(record["labels"]), last=last)

"""Re-encode a collection for fast random access (`twlv data prepare`).

Every video is decoded in full (which validates it), turned upright, resized to a fixed
short side and written as MP4 (libx264, short GOP, no audio, index at the front) with
its original frame times. Unreadable files go to a quarantine list instead. Images are
kept as they are. Manifests are rewritten next to the videos with the same labels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from twlv_jax.data import manifest as manifest_lib
from twlv_jax.data import transforms
from twlv_jax.data.encode import VideoWriter
from twlv_jax.data.process_pool import map_ordered
from twlv_jax.data.quarantine import Quarantine
from twlv_jax.data.video import BadVideo, VideoReader

_TIME_BASE = Fraction(1, 90000)  # frame times are kept to 1/90000 s


@dataclass(frozen=True)
class PrepareOptions:
    """How videos are re-encoded."""

    short_side: int = 256   # pixels; the long side keeps the aspect ratio (rounded to even)
    gop: int = 16           # frames between keyframes
    crf: int = 23           # libx264 quality (lower: better, larger)
    preset: str = "veryfast"


@dataclass
class Job:
    """One file to prepare: manifest row (with an absolute path) and output path."""

    row: dict
    output: str


def _increasing(frames):
    """Drops frames whose time does not increase (repeated timestamps keep the first)."""
    last = None
    for time, frame in frames:
        if last is None or time > last:
            last = time
            yield max(time, 0.0), frame


def transcode(source: str, output: str, options: PrepareOptions) -> int:
    """Writes `source` upright at the short side to `output`; returns frames written.
    Raises BadVideo (and leaves no output) when the source does not decode in full."""
    plan = functools.partial(transforms.resize_short_side, short_side=options.short_side,
                             even=True)
    with VideoReader(source) as reader:
        frames = _increasing(reader.iter_frames(plan))
        time, frame = next(frames)  # raises BadVideo when no frame decodes
        try:
            with VideoWriter(output, width=frame.shape[1], height=frame.shape[0],
                             fps=reader.info.fps, gop=options.gop, crf=options.crf,
                             preset=options.preset, time_base=_TIME_BASE) as writer:
                writer.write(frame, time=time)
                count = 1
                for time, frame in frames:
                    writer.write(frame, time=time)
                    count += 1
        except BaseException:
            if os.path.exists(output):
                os.remove(output)
            raise
    return count


def _run_job(job: Job, options: PrepareOptions) -> tuple[Job, int, BadVideo | None]:
    if manifest_lib.is_image_path(job.row["path"]):
        return job, 1, None
    try:
        return job, transcode(job.row["path"], job.output, options), None
    except BadVideo as error:
        return job, 0, error


def plan_jobs(manifests: dict[str, manifest_lib.Manifest], output: str) -> dict[str, list[Job]]:
    """Output paths under output/videos/, mirroring the inputs below their common folder."""
    paths = [m.paths[i] for m in manifests.values() for i in range(len(m))]
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    jobs: dict[str, list[Job]] = {}
    for split, manifest in manifests.items():
        jobs[split] = []
        for i in range(len(manifest)):
            row = manifest.row(i)
            if manifest_lib.is_image_path(row["path"]):
                target = row["path"]
            else:
                stem = os.path.splitext(os.path.relpath(row["path"], root))[0]
                target = os.path.join(output, "videos", stem + ".mp4")
            jobs[split].append(Job(row, target))
    return jobs


def prepare(manifests: dict[str, manifest_lib.Manifest], output: str, options: PrepareOptions,
            *, workers: int = 1, progress: Callable[[int], None] | None = None) -> dict:
    """Re-encodes every file of `manifests` ({split: manifest}) into `output`.

    Writes output/videos/..., one manifest per split (output/<split>.csv) and
    output/quarantine.csv; returns a summary dict (counts, paths, bytes).
    """
    jobs = plan_jobs(manifests, output)
    unique = {job.output: job for split_jobs in jobs.values() for job in split_jobs}
    quarantine_path = os.path.join(output, "quarantine.csv")
    if os.path.exists(quarantine_path):
        os.remove(quarantine_path)  # this run's list only
    quarantine = Quarantine(quarantine_path, total=len(unique), max_fraction=1.0)
    done: dict[str, int] = {}
    runner = functools.partial(_run_job, options=options)
    for job, frames, error in map_ordered(runner, unique.values(), workers=workers):
        if error is None:
            done[job.output] = frames
        else:
            quarantine.add(job.row["path"], error.reason, error.detail)
        if progress:
            progress(1)
    written = {}
    for split, split_jobs in jobs.items():
        rows = [{**job.row, "path": job.output} for job in split_jobs if job.output in done]
        if rows:
            written[split] = manifest_lib.write_manifest(os.path.join(output, f"{split}.csv"),
                                                         rows)
    return {"manifests": written, "videos": os.path.join(output, "videos"),
            "prepared": len(done), "frames": sum(done.values()),
            "bytes_in": _size(job.row["path"] for job in unique.values()),
            "bytes_out": _size(done), "quarantine": quarantine}


def _size(paths: Sequence[str] | object) -> int:
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


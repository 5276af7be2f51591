"""Records -> uint8 clips: training clips (random) and evaluation clips (deterministic)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np

from twlv_jax.data import sampling, transforms
from twlv_jax.data.transforms import Geometry
from twlv_jax.data.video import BadVideo, VideoInfo, VideoReader, image_array_clip


def _window(record: dict, info: VideoInfo) -> tuple[int, int]:
    """(first grid frame, frame count) of the record's start/end window."""
    first, count = sampling.frame_range(info.num_frames, info.fps, record["start"], record["end"])
    if count == 0:
        raise BadVideo("empty_window", f"{record['name']}: start={record['start']} "
                                       f"end={record['end']} hold no frame of a "
                                       f"{info.duration:.2f} s video")
    return first, count


def _open(record: dict) -> VideoReader:
    source = record["data"] if record["data"] is not None else record["path"]
    return VideoReader(source, name=record["name"])


@contextlib.contextmanager
def _as_bad_video(name: str):
    """FFmpeg and OS errors that escape the reader's own checks become BadVideo too."""
    try:
        yield
    except BadVideo:
        raise
    except av.FFmpegError as error:
        raise BadVideo("corrupt", f"{name}: {error}") from None
    except OSError as error:
        raise BadVideo("unreadable", f"{name}: {error}") from None


def read_train_clip(record: dict, rng: np.random.Generator, *, frames: int, image_size: int,
                    stride: int, crop_scale: tuple[float, float], crop_ratio: tuple[float, float],
                    short_video: str) -> np.ndarray:
    """A random training clip: `frames` frames at `stride` from a random start, one random
    resized crop for the whole clip -> uint8 (frames, image_size, image_size, 3).

    Images give the same frame `frames` times. Raises BadVideo.
    """
    plan = functools.partial(transforms.random_resized_crop, rng=rng, size=image_size,
                             scale=crop_scale, ratio=crop_ratio)
    if record["array"] is not None:
        return image_array_clip(record["array"], frames, plan, record["name"])
    with _as_bad_video(record["name"]), _open(record) as video:
        if record["is_image"] or video.info.is_image:
            return video.frames_at(np.zeros(frames), plan)
        first, count = _window(record, video.info)
        indices = sampling.train_indices(rng, count, frames, stride, short_video)
        return video.frames_at(sampling.indices_to_times(first, indices, video.info.fps), plan)


@dataclass
class EvalClips:
    """One video read for evaluation: clips and what is needed to write results."""

    video: np.ndarray        # uint8 (clips, frames, size, size, 3)
    starts: np.ndarray       # float64 (clips,) seconds from the start of the video
    ends: np.ndarray         # float64 (clips,)
    num_frames: int          # frames in the whole video
    duration: float          # seconds of the whole video


def _clip_indices(info: VideoInfo, start: float, end: float, frames: int) -> np.ndarray:
    """Grid indices of `frames` frames evenly spread over [start, end) seconds."""
    first, count = sampling.frame_range(info.num_frames, info.fps, start, end)
    if count == 0:  # a window shorter than one frame: the frame on screen at its start
        first, count = min(first, info.num_frames - 1), 1
    return first + sampling.uniform_indices(count, frames)


def read_eval_clips(record: dict, *, frames: int, image_size: int, mode: str = "uniform",
                    clip_seconds: float = 2.0, clip_stride: float | None = None) -> EvalClips:
    """Deterministic clips, short side resized to `image_size` and centre-cropped.

    mode 'uniform': one clip of `frames` frames evenly spread over the whole video (or
    its start/end window). mode 'multi-clip': clips of `clip_seconds` every `clip_stride`
    seconds (default: back to back), `frames` frames evenly spread over each. All clips
    are decoded at once: `iter_eval_clips` reads long videos in bounded memory.
    """
    (read,) = iter_eval_clips(record, frames=frames, image_size=image_size, mode=mode,
                              clip_seconds=clip_seconds, clip_stride=clip_stride)
    return read


def _eval_windows(record: dict, info: VideoInfo, mode: str, clip_seconds: float,
                  clip_stride: float | None) -> list[tuple[float, float]]:
    """(start, end) seconds of every evaluation clip of a video."""
    first, count = _window(record, info)
    begin, finish = first / info.fps, (first + count) / info.fps
    if mode == "uniform":
        return [(begin, finish)]
    if mode == "multi-clip":
        return [(begin + a, begin + b) for a, b in sampling.multi_clip_windows(
            finish - begin, clip_seconds, clip_stride or clip_seconds)]
    raise ValueError(f"evaluation sampling: expected 'uniform' or 'multi-clip', got {mode!r}")


def iter_eval_clips(record: dict, *, frames: int, image_size: int, mode: str = "uniform",
                    clip_seconds: float = 2.0, clip_stride: float | None = None,
                    group: int | None = None) -> Iterator[EvalClips]:
    """The clips of `read_eval_clips`, decoded and yielded `group` clips at a time (None:
    all in one), in time order; only one group is held, so a long video's multi-clip
    sampling needs memory for `group` clips, not for the whole video.

    Raises BadVideo, possibly after some groups were yielded.
    """
    if group is not None and group < 1:
        raise ValueError(f"clip group size must be >= 1, got {group}")
    plan: Callable[[int, int], Geometry] = functools.partial(transforms.center_crop,
                                                             size=image_size)
    if record["array"] is not None:
        one = image_array_clip(record["array"], frames, plan, record["name"])[None]
        yield EvalClips(one, np.zeros(1), np.zeros(1), 1, 0.0)  # video (1, T, S, S, 3)
        return
    with _as_bad_video(record["name"]), _open(record) as video:
        info = video.info
        if record["is_image"] or info.is_image:
            one = video.frames_at(np.zeros(frames), plan)[None]  # (1, T, S, S, 3)
            yield EvalClips(one, np.zeros(1), np.zeros(1), 1, 0.0)
            return
        windows = _eval_windows(record, info, mode, clip_seconds, clip_stride)
        size = group or len(windows)
        for offset in range(0, len(windows), size):
            part = windows[offset:offset + size]
            indices = np.concatenate([_clip_indices(info, a, b, frames) for a, b in part])
            video_clips = video.frames_at(indices / info.fps, plan)  # (clips * T, S, S, 3)
            video_clips = video_clips.reshape(len(part), frames, *video_clips.shape[1:])
            starts, ends = np.array(part, np.float64).T  # (clips,) each
            yield EvalClips(video_clips, starts, ends, info.num_frames, info.duration)

"""Which frames a clip uses: training clips, uniform and multi-clip evaluation.

Frames are indexed on the video's nominal frame grid (index k is shown at k / fps
seconds); the decoder then takes, for each time, the frame on screen at that time, so
variable-frame-rate videos are sampled by time, not by packet count.
"""

from __future__ import annotations

import math

import numpy as np

SHORT_VIDEO_MODES = ("loop", "pad")


def frame_range(num_frames: int, fps: float, start: float | None = None,
                end: float | None = None) -> tuple[int, int]:
    """(first, count): the grid frames shown between `start` and `end` seconds (None: the
    whole video). count is 0 when the window holds no frame."""
    first = 0 if start is None else max(0, math.ceil(start * fps - 1e-6))
    stop = num_frames if end is None else min(num_frames, math.ceil(end * fps - 1e-6))
    return first, max(0, stop - first)


def train_indices(rng: np.random.Generator, count: int, frames: int, stride: int,
                  short_video: str) -> np.ndarray:
    """`frames` indices at `stride` from a random start, within [0, count).

    When the video is shorter than the clip's span, `short_video` decides: 'loop' wraps
    around to the start (from a random start), 'pad' repeats the last frame.
    """
    span = (frames - 1) * stride + 1
    steps = stride * np.arange(frames)
    if count >= span:
        return int(rng.integers(0, count - span + 1)) + steps
    if short_video == "loop":
        return (int(rng.integers(0, count)) + steps) % count
    if short_video == "pad":
        return np.minimum(steps, count - 1)
    raise ValueError(f"data.short_video: expected one of {SHORT_VIDEO_MODES}, got {short_video!r}")


def uniform_indices(count: int, frames: int) -> np.ndarray:
    """`frames` indices evenly spread over [0, count): the centre of each of `frames` equal
    segments (indices repeat when count < frames)."""
    return ((np.arange(frames) + 0.5) * count / frames).astype(np.int64)


def multi_clip_windows(duration: float, clip_seconds: float,
                       stride_seconds: float) -> list[tuple[float, float]]:
    """(start, end) seconds of clips of `clip_seconds` every `stride_seconds`, all inside
    the video; one clip spanning the whole video when it is shorter than a clip."""
    if clip_seconds <= 0 or stride_seconds <= 0:
        raise ValueError(f"clip length and stride must be positive, got "
                         f"{clip_seconds} s and {stride_seconds} s")
    if duration <= clip_seconds:
        return [(0.0, float(duration))]
    count = math.floor((duration - clip_seconds) / stride_seconds + 1e-6) + 1
    return [(k * stride_seconds, k * stride_seconds + clip_seconds) for k in range(count)]


def indices_to_times(first: int, indices: np.ndarray, fps: float) -> np.ndarray:
    """Grid indices (relative to `first`) -> seconds from the start of the video."""
    return (first + np.asarray(indices)) / fps

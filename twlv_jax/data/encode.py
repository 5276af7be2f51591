"""Write MP4 files with PyAV (libx264), for `synth`, `prepare`, tests and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np


class VideoWriter:
    """Encodes uint8 RGB frames (H, W, 3) into an MP4 file. Use as a context manager.

    `gop` is the keyframe interval (short GOPs make random access cheap); `faststart`
    puts the index at the front; `rotation` writes display-matrix rotation metadata
    (degrees counter-clockwise); `time_base` (default 1/fps) is the unit of frame times.
    """

    def __init__(self, path: str, *, width: int, height: int, fps: float, gop: int = 16,
                 crf: int = 20, preset: str = "veryfast", pix_fmt: str = "yuv420p",
                 codec: str = "libx264", rotation: int = 0, faststart: bool = True,
                 threads: int = 1, time_base: Fraction | None = None):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        options = {"movflags": "+faststart"} if faststart else {}
        self._container = av.open(path, "w", format="mp4", container_options=options)
        try:
            rate = Fraction(fps).limit_denominator(1001)
            self._stream = self._container.add_stream(codec, rate=rate)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
            self._stream.codec_context.thread_count = threads
            self._stream.options = ({"g": str(gop), "crf": str(crf), "preset": preset}
                                    if codec == "libx264" else {"g": str(gop)})
            self._time_base = time_base or 1 / rate
            self._stream.codec_context.time_base = self._time_base
            if rotation:
                self._stream.set_display_rotation(rotation)
        except BaseException:
            self._container.close()
            raise
        self._count = 0

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self._mux(self._stream.encode())  # flush
        finally:
            self._container.close()

    def write(self, frame_rgb: np.ndarray, time: float | None = None) -> None:
        """Adds one (H, W, 3) uint8 frame; `time` (seconds) only for variable frame rates."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
        # Converting here, not inside encode(), keeps the output byte-identical run to run.
        frame = frame.reformat(format=self._stream.pix_fmt)
        frame.pts = self._count if time is None else round(time / self._time_base)
        frame.time_base = self._time_base
        self._count += 1
        self._mux(self._stream.encode(frame))

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)


def write_video(path: str, frames: np.ndarray | Sequence[np.ndarray], *, fps: float,
                **options) -> str:
    """Writes frames (T, H, W, 3) uint8 to `path` as MP4; options as for VideoWriter."""
    height, width = frames[0].shape[:2]
    with VideoWriter(path, width=width, height=height, fps=fps, **options) as writer:
        for frame in frames:
            writer.write(frame)
    return path

"""Open a video or image with PyAV and decode only the frames a clip needs.

`VideoReader` seeks to the keyframe before the first wanted time, decodes forward, and
converts to RGB (resized by libswscale) only the frames it returns. Anything that cannot
give frames raises `BadVideo` with a reason from `REASONS`, so callers can skip, count
and quarantine the file.
"""

from __future__ import annotations

import bisect
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from twlv_jax import paths as pathlib
from twlv_jax.data.transforms import Geometry

REASONS = {
    "missing": "the file does not exist",
    "unreadable": "the operating system could not read the file",
    "empty": "the file is empty (0 bytes)",
    "not_a_video": "not a video or image FFmpeg can read",
    "no_video_stream": "the container has no video stream",
    "truncated": "the file ends before the data its header describes",
    "corrupt": "the file is damaged: its header or frames do not decode",
    "empty_window": "the manifest's start/end hold no frame of the video",
}

# Containers whose first bytes we recognise: an unreadable one is damaged, not "not a video".
_SIGNATURES = ((4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (0, b"\x1a\x45\xdf\xa3"),
               (0, b"RIFF"), (0, b"FLV"), (0, b"OggS"), (0, b"\x00\x00\x01\xba"))
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe")
_SEEK_MARGIN = 0.25   # seconds of decoding a seek must skip to be worth it
_BLIND_SEEK_GAP = 2.0  # seconds: without a keyframe index, seek across larger gaps


class BadVideo(Exception):
    """A file that cannot give a clip. `reason` is a key of REASONS, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class VideoInfo:
    """What the header says about the video stream."""

    num_frames: int     # frames in the stream (1 for an image)
    fps: float          # nominal (average) frame rate; 1.0 for an image
    duration: float     # seconds (0.0 for an image)
    width: int          # coded size; the display size also depends on rotation and
    height: int         # sample aspect ratio, known once a frame is decoded
    is_image: bool


def _looks_like_container(head: bytes) -> bool:
    return any(head[offset:offset + len(magic)] == magic for offset, magic in _SIGNATURES)


def _open_container(source: str | bytes, name: str) -> tuple[av.container.InputContainer, int]:
    """Opens a path (local, or in a bucket: read whole into memory) or in-memory bytes;
    returns (container, size in bytes)."""
    if isinstance(source, str):
        if not pathlib.exists(source):
            raise BadVideo("missing", f"{name} does not exist")
        if pathlib.isdir(source):
            raise BadVideo("not_a_video", f"{name} is a folder")
        size = pathlib.getsize(source)
        target = io.BytesIO(pathlib.read_bytes(source)) if pathlib.is_remote(source) else source
    else:
        size = len(source)
        target = io.BytesIO(source)
    if size == 0:
        raise BadVideo("empty", f"{name} has 0 bytes")
    try:
        return av.open(target, metadata_errors="ignore"), size
    except av.FFmpegError as error:
        head = _head(source)
        if _looks_like_container(head):
            raise BadVideo("corrupt", f"{name}: container header unreadable ({error.strerror}); "
                                      "the file may be truncated or damaged") from None
        raise BadVideo("not_a_video", f"{name}: FFmpeg cannot read it ({error.strerror})") from None
    except OSError as error:
        raise BadVideo("unreadable", f"{name}: {error}") from None


def _head(source: str | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[:16]
    with pathlib.open(source, "rb") as f:
        return f.read(16)


def _display_rotation(degrees: float) -> int:
    """A display-matrix angle (counter-clockwise, in [-180, 180]) -> 0, 90, 180 or 270."""
    return round(degrees / 90.0) % 4 * 90


_local = threading.local()


def _reformatter() -> VideoReformatter:
    """One libswscale context cache per thread. PyAV's default (a new one per frame, with
    automatic threads) costs more than the conversion itself."""
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    return _local.reformatter


def convert_frame(frame: av.VideoFrame, geometry: Geometry, rotation: int = 0) -> np.ndarray:
    """One decoded frame -> uint8 RGB (geometry.height, geometry.width, 3), rotated upright.

    The resize runs in libswscale during the RGB conversion; the crop is a slice.
    """
    quarter_turns = rotation // 90
    if quarter_turns % 2:
        coded_w, coded_h = geometry.resize_h, geometry.resize_w
    else:
        coded_w, coded_h = geometry.resize_w, geometry.resize_h
    rgb = _reformatter().reformat(frame, width=coded_w, height=coded_h, format="rgb24",
                                  threads=1).to_ndarray()  # (h, w, 3) coded
    if quarter_turns:
        rgb = np.rot90(rgb, quarter_turns)  # (H, W, 3) display
    return rgb[geometry.top:geometry.top + geometry.height,
               geometry.left:geometry.left + geometry.width]


def image_array_clip(image: np.ndarray, frames: int, plan: Callable[[int, int], Geometry],
                     name: str = "<array>") -> np.ndarray:
    """A decoded image (H, W, 3|4|1) or (H, W) uint8 repeated into a clip (frames, h, w, 3)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]  # (H, W)
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]  # (H, W, 3): alpha dropped
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)) or 0 in image.shape:
        raise BadVideo("corrupt", f"{name}: an image array of shape {image.shape}; "
                                  "expected (H, W, 3) or (H, W)")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                       format="gray" if image.ndim == 2 else "rgb24")
    one = convert_frame(frame, plan(frame.height, frame.width))  # (h, w, 3)
    return np.repeat(one[None], frames, axis=0)  # (T, h, w, 3)


class VideoReader:
    """An open video or image; `frames_at` decodes the frames nearest to given times.

    Use as a context manager. `source` is a path or the file's bytes; `name` is used in
    error messages (default: the path). `threads` is FFmpeg's decoding threads (0: auto).
    """

    def __init__(self, source: str | bytes, *, name: str | None = None, threads: int = 1):
        self.name = name or (source if isinstance(source, str) else "<bytes>")
        self._container, size = _open_container(source, self.name)
        try:
            if not self._container.streams.video:
                kinds = sorted({s.type for s in self._container.streams}) or ["none"]
                raise BadVideo("no_video_stream",
                               f"{self.name} has no video stream (streams: {', '.join(kinds)})")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.thread_count = threads
            self._time_base = self._stream.time_base or 0
            self._start = float((self._stream.start_time or 0) * self._time_base)
            self.info = self._read_info()
            self._check_index(size)
        except BaseException:
            self._container.close()
            raise
        self.rotation = 0
        self._pixel_aspect = float(self._stream.sample_aspect_ratio or 1) or 1.0
        self._keyframes: list[float] | None = None
        self._decoded_any = False

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    # -- header -------------------------------------------------------------------------

    def _read_info(self) -> VideoInfo:
        stream = self._stream
        width, height = stream.codec_context.width, stream.codec_context.height
        if self._container.format.name in _IMAGE_FORMATS:
            return VideoInfo(1, 1.0, 0.0, width, height, True)
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)
        if stream.duration and self._time_base:
            duration = float(stream.duration * self._time_base)
        else:
            duration = (self._container.duration or 0) / av.time_base
        num_frames = stream.frames or (round(duration * fps) if fps and duration else 0)
        if not (fps and duration and num_frames):
            num_frames, duration = self._count_packets()
            fps = fps or (num_frames / duration if duration else 25.0)
        return VideoInfo(int(num_frames), fps, duration, width, height, False)

    def _count_packets(self) -> tuple[int, float]:
        """Frames and duration by reading every packet (for headers that omit them)."""
        count, last = 0, 0.0
        try:
            for packet in self._container.demux(self._stream):
                if packet.size:
                    count += 1
                    if packet.pts is not None:
                        end = (packet.pts + (packet.duration or 0)) * self._time_base
                        last = max(last, float(end) - self._start)
            self._container.seek(0)
        except av.FFmpegError as error:
            raise BadVideo("corrupt",
                           f"{self.name}: cannot read packets ({error.strerror})") from None
        if count == 0:
            raise BadVideo("corrupt", f"{self.name}: the video stream has no packets")
        return count, last

    def _check_index(self, size: int) -> None:
        """Flags a file shorter than the packets its index points to (a cut-off download)."""
        entries = self._stream.index_entries
        if not entries or self.info.is_image:
            return
        last = entries[len(entries) - 1]
        if last.pos > 0 and last.pos + last.size > size:
            raise BadVideo("truncated", f"{self.name} has {size} bytes but its index refers to "
                                        f"{last.pos + last.size}")

    # -- decoding -----------------------------------------------------------------------

    def frames_at(self, times: Sequence[float], plan: Callable[[int, int], Geometry]) -> np.ndarray:
        """The frames nearest in time to `times` (seconds from the start), as uint8
        (len(times), h, w, 3), in the order of `times`.

        `plan(height, width)` gets the upright display size of the first decoded frame
        and returns the crop geometry used for every frame.
        """
        times = np.asarray(times, dtype=np.float64)
        order = np.argsort(times, kind="stable")
        out, geometry = None, None
        previous_frame, previous_row = None, -1
        try:
            for row, frame in zip(order, self._frames_for(times[order])):
                if out is None:
                    geometry = plan(*self._display_size(frame))
                    out = np.empty((len(times), geometry.height, geometry.width, 3), np.uint8)
                if frame is previous_frame:
                    out[row] = out[previous_row]
                else:
                    out[row] = convert_frame(frame, geometry, self.rotation)
                previous_frame, previous_row = frame, row
        except av.FFmpegError as error:
            raise BadVideo("corrupt", f"{self.name}: decoding failed ({error.strerror})") from None
        return out

    def iter_frames(self, plan: Callable[[int, int], Geometry]) -> Iterator[tuple[float, np.ndarray]]:
        """Every frame in order as (seconds, uint8 (h, w, 3)), for transcoding; raises
        BadVideo when a frame does not decode or the stream yields none."""
        geometry = None
        try:
            for time, frame in self._decode():
                geometry = geometry or plan(*self._display_size(frame))
                yield time, convert_frame(frame, geometry, self.rotation)
        except av.FFmpegError as error:
            raise BadVideo("corrupt", f"{self.name}: decoding failed ({error.strerror})") from None
        if geometry is None:
            raise BadVideo("corrupt", f"{self.name}: no frame decodes")

    def _display_size(self, frame: av.VideoFrame) -> tuple[int, int]:
        """(height, width) of a frame as shown: pixel aspect applied, then rotation."""
        width = max(1, round(frame.width * self._pixel_aspect))
        if (self.rotation // 90) % 2:
            return width, frame.height
        return frame.height, width

    def _frames_for(self, targets: np.ndarray) -> Iterator[av.VideoFrame]:
        """For each sorted target time, the frame whose timestamp is nearest (ties: the
        earlier one), which is robust both to variable frame rates and to jitter."""
        decoded: Iterator[tuple[float, av.VideoFrame]] | None = None
        current = upcoming = None  # (time, frame): last one at or before the target, next one
        wanted = targets.tolist()
        for target in wanted:
            position = (upcoming or current or (None,))[0]
            if decoded is None or self._worth_seeking(position, target):
                decoded, current, upcoming = self._decode_from(target, wanted), None, None
            while True:
                if upcoming is None:
                    upcoming = next(decoded, None)
                    if upcoming is None:
                        break  # end of stream
                if upcoming[0] > target:
                    break
                current, upcoming = upcoming, None
            if current is None:
                if upcoming is None:
                    raise BadVideo("corrupt", f"{self.name}: no frame decodes at {target:.2f} s")
                yield upcoming[1]  # the video starts after the target
            elif upcoming is not None and upcoming[0] - target < target - current[0]:
                yield upcoming[1]
            elif upcoming is None and target - current[0] > 1.0 + 2 / self.info.fps:
                raise BadVideo("truncated", f"{self.name}: frames end at {current[0]:.2f} s, "
                                            f"a frame at {target:.2f} s was needed "
                                            f"(header: {self.info.duration:.2f} s)")
            else:
                yield current[1]

    def _worth_seeking(self, position: float | None, target: float) -> bool:
        """Seek when a keyframe between the decoder's position and the target lets us skip
        decoding; without a keyframe index, when the gap is large."""
        if position is None or target - position <= _SEEK_MARGIN:
            return False
        keyframes = self._keyframe_times()
        if not keyframes:
            return target - position > _BLIND_SEEK_GAP
        latest = bisect.bisect_right(keyframes, target) - 1
        return latest >= 0 and keyframes[latest] > position + _SEEK_MARGIN

    def _keyframe_times(self) -> list[float]:
        if self._keyframes is None:
            base = self._time_base
            self._keyframes = [float(e.timestamp * base) - self._start
                               for e in self._stream.index_entries if e.is_keyframe]
        return self._keyframes

    def _decode_from(self, target: float,
                     targets: list[float]) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decoded (time, frame) pairs from the keyframe at or before `target`; `targets`
        (sorted) are all the times wanted."""
        if self._decoded_any or target > _SEEK_MARGIN:
            self._seek(target)
        self._decoded_any = True
        frames = self._decode(targets)
        first = next(frames, None)
        if first is not None and first[0] > target + 0.5 / self.info.fps and target > 0:
            self._seek(0.0)  # the seek overshot (a bad index): decode from the start
            frames = self._decode(targets)
            first = next(frames, None)
        return chain([first] if first else [], frames)

    def _seek(self, seconds: float) -> None:
        timestamp = int((seconds + self._start) / self._time_base) if self._time_base else 0
        self._container.seek(timestamp, stream=self._stream, backward=True, any_frame=False)

    def _decode(self, targets: list[float] | None = None) -> Iterator[tuple[float, av.VideoFrame]]:
        """(seconds, frame) in display order from the current position. With sorted
        `targets`, non-reference frames more than 1.5 frame durations from every target
        are not decoded at all (nothing depends on them)."""
        codec = self._stream.codec_context
        time_base, reach = float(self._time_base), 1.5 / self.info.fps
        time, count = -1.0 / self.info.fps, 0
        try:
            for packet in self._container.demux(self._stream):
                if targets is not None and packet.pts is not None:
                    near = _near(targets, packet.pts * time_base - self._start, reach)
                    codec.skip_frame = "DEFAULT" if near else "NONREF"
                for frame in codec.decode(packet):
                    if frame.pts is None:
                        time += 1.0 / self.info.fps
                    else:
                        time = frame.pts * time_base - self._start
                    if count == 0:
                        self.rotation = _display_rotation(frame.rotation)
                    count += 1
                    yield time, frame
        finally:
            codec.skip_frame = "DEFAULT"


def _near(targets: list[float], time: float, reach: float) -> bool:
    """Whether a sorted list holds a value within `reach` of `time`."""
    i = bisect.bisect_left(targets, time)
    return ((i < len(targets) and targets[i] - time <= reach)
            or (i > 0 and time - targets[i - 1] <= reach))


def probe(source: str | bytes, *, name: str | None = None) -> VideoInfo:
    """The header facts of a video or image (raises BadVideo when it cannot be opened)."""
    with VideoReader(source, name=name) as reader:
        return reader.info

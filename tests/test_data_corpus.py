"""Real MP4 files for the data tests, and the corpus of bad inputs with the reason each gets.

The helpers here are imported by the other test_data_* modules.
"""

import os

import av
import numpy as np
import pytest

from twlv_jax.data import transforms
from twlv_jax.data.encode import write_video
from twlv_jax.data.video import REASONS, BadVideo, VideoReader, probe

LEVEL_BASE, LEVEL_STEP = 20, 4


def counter_frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Flat grey frames whose level encodes their index: (count, H, W, 3) uint8."""
    levels = LEVEL_BASE + LEVEL_STEP * np.arange(count)
    assert levels.max() < 256
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).astype(np.uint8)


def frame_numbers(video: np.ndarray) -> list[int]:
    """Which counter frame each frame of (T, H, W, 3) shows. libswscale's resizing
    YUV -> RGB path comes out 1-2 levels dark, hence the +1."""
    means = video.reshape(len(video), -1).mean(axis=1)
    return [round((m + 1 - LEVEL_BASE) / LEVEL_STEP) for m in means]


def write_counter_video(path: str, count: int = 30, *, height: int = 32, width: int = 48,
                        fps: float = 10, gop: int = 4, crf: int = 0, **options) -> str:
    """A counter video, lossless by default (crf 0) so frame numbers read back exactly."""
    return write_video(str(path), counter_frames(count, height, width), fps=fps, gop=gop,
                       crf=crf, **options)


def write_audio_only(path: str) -> str:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 16000
        for i in range(10):
            frame.pts = i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def write_bad_corpus(folder) -> dict[str, tuple[str, str]]:
    """One file per kind of bad input: {case: (path, expected reason)}."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    good = write_counter_video(os.path.join(folder, "source.mp4"), 30)
    with open(good, "rb") as f:
        data = f.read()
    at_end = write_counter_video(os.path.join(folder, "index_at_end.mp4"), 30, faststart=False)
    cases = {
        "missing": (os.path.join(folder, "missing.mp4"), "missing"),
        "zero_bytes": (os.path.join(folder, "zero.mp4"), "empty"),
        "text_file": (os.path.join(folder, "notes.mp4"), "not_a_video"),
        "csv_file": (os.path.join(folder, "table.csv"), "not_a_video"),
        "random_bytes": (os.path.join(folder, "noise.mp4"), "not_a_video"),
        "audio_only": (write_audio_only(os.path.join(folder, "audio.mp4")), "no_video_stream"),
        "truncated": (os.path.join(folder, "truncated.mp4"), "truncated"),
        "header_cut": (os.path.join(folder, "header_cut.mp4"), "corrupt"),
        "garbled_frames": (os.path.join(folder, "garbled.mp4"), "corrupt"),
        "folder": (os.path.join(folder, "a_folder.mp4"), "not_a_video"),
    }
    open(cases["zero_bytes"][0], "wb").close()
    with open(cases["text_file"][0], "w") as f:
        f.write("this is not a video\n" * 20)
    with open(cases["csv_file"][0], "w") as f:
        f.write("path,label\nx.mp4,1\n")
    with open(cases["random_bytes"][0], "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with open(cases["truncated"][0], "wb") as f:  # index at the front, frames cut off
        f.write(data[: len(data) // 2])
    with open(at_end, "rb") as f:
        index_at_end = f.read()
    with open(cases["header_cut"][0], "wb") as f:  # index at the end: cut away
        f.write(index_at_end[: len(index_at_end) // 2])
    with open(cases["garbled_frames"][0], "wb") as f:  # header intact, frame data random
        payload = data.find(b"mdat") + 4
        noise = np.random.default_rng(1).integers(0, 256, len(data) - payload, dtype=np.uint8)
        f.write(data[:payload] + noise.tobytes())
    os.makedirs(cases["folder"][0], exist_ok=True)
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_bad_corpus(tmp_path_factory.mktemp("bad"))


def test_every_bad_input_gets_its_reason_and_names_the_file(corpus):
    plan = lambda h, w: transforms.center_crop(h, w, size=16)
    for case, (path, reason) in corpus.items():
        with pytest.raises(BadVideo) as caught, VideoReader(path) as reader:
            reader.frames_at([0.0, 1.0, 2.5], plan)
        assert caught.value.reason == reason, (case, str(caught.value))
        assert path in caught.value.detail, case
        assert reason in REASONS


def test_bad_bytes_get_the_same_reasons_as_bad_files(corpus):
    for case in ("zero_bytes", "random_bytes", "truncated", "audio_only"):
        path, reason = corpus[case]
        with open(path, "rb") as f:
            data = f.read()
        with pytest.raises(BadVideo) as caught:
            probe(data, name=f"bytes of {case}")
        assert caught.value.reason == reason
        assert f"bytes of {case}" in caught.value.detail


def test_counter_video_round_trips_exactly_enough_to_read_frame_numbers(tmp_path):
    path = write_counter_video(tmp_path / "c.mp4", 40)
    with av.open(path) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frame_numbers(decoded) == list(range(40))
    assert probe(path).num_frames == 40

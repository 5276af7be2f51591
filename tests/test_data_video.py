"""VideoReader on real MP4s: exact frames after seeking, variable frame rate, rotation,
odd sizes and pixel formats, images."""

import functools
from fractions import Fraction

import av
import numpy as np
import pytest
from test_data_corpus import counter_frames, frame_numbers, write_counter_video

from twlv_jax.data import transforms
from twlv_jax.data.encode import VideoWriter, write_video
from twlv_jax.data.synthetic import render_video
from twlv_jax.data.video import VideoReader, image_array_clip

FULL = lambda h, w: transforms.Geometry(h, w, 0, 0, h, w)


def decode_all(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("gop", [4, 250])
def test_frames_at_equals_sequential_decoding_in_any_order(tmp_path, gop):
    path = write_counter_video(tmp_path / "v.mp4", 50, gop=gop)
    reference = decode_all(path)
    wanted = np.array([37, 3, 3, 49, 0, 20, 21, 48])
    with VideoReader(path) as reader:
        got = reader.frames_at(wanted / reader.info.fps, FULL)
    for row, index in enumerate(wanted):
        np.testing.assert_array_equal(got[row], reference[index])
    assert frame_numbers(got) == wanted.tolist()


def test_skipping_unneeded_b_frames_leaves_the_wanted_frames_exact(tmp_path):
    frames = render_video(np.random.default_rng(0), 4, 2, frames=48, size=64, distractors=3)
    path = write_video(str(tmp_path / "shapes.mp4"), frames, fps=16, gop=16, crf=23)
    with av.open(path) as container:
        pts = [p.pts for p in container.demux(video=0) if p.pts is not None]
    assert pts != sorted(pts)  # B-frames: decode order differs from display order
    reference = decode_all(path)
    wanted = np.array([1, 5, 9, 13, 30, 34, 47])
    with VideoReader(path) as reader:
        got = reader.frames_at(wanted / 16, FULL)
    np.testing.assert_array_equal(got, reference[wanted])


def test_info_reports_frames_fps_duration_and_size(tmp_path):
    path = write_counter_video(tmp_path / "v.mp4", 25, height=40, width=56, fps=12.5)
    with VideoReader(path) as reader:
        info = reader.info
    assert (info.num_frames, info.fps, info.width, info.height, info.is_image) == (
        25, 12.5, 56, 40, False)
    assert info.duration == pytest.approx(2.0)


def test_variable_frame_rate_gives_the_frame_nearest_in_time(tmp_path):
    times = np.array([0.0, 0.04, 0.3, 0.34, 0.9, 1.0, 1.5, 1.52, 1.9, 2.4])
    path = str(tmp_path / "vfr.mp4")
    with VideoWriter(path, width=48, height=32, fps=10, gop=3,
                     time_base=Fraction(1, 1000)) as writer:
        for frame, time in zip(counter_frames(len(times)), times):
            writer.write(frame, time=float(time))
    queries = np.array([0.0, 0.2, 0.31, 0.6, 1.2, 1.515, 2.0, 2.45])
    with VideoReader(path) as reader:
        got = frame_numbers(reader.frames_at(queries, FULL))
    nearest = [int(np.abs(times - q).argmin()) for q in queries]
    assert got == nearest == [0, 2, 2, 3, 5, 7, 8, 9]


def test_rotation_metadata_turns_frames_upright(tmp_path):
    coded = np.zeros((32, 64, 3), np.uint8)  # top half red, bottom half blue
    coded[:16, :, 0] = 255
    coded[16:, :, 2] = 255
    path = write_video(str(tmp_path / "rot.mp4"), [coded] * 4, fps=10, rotation=90)
    with VideoReader(path) as reader:
        frame = reader.frames_at([0.0], FULL)[0]
        assert reader.rotation == 90
    assert frame.shape == (64, 32, 3)  # display: portrait
    upright = np.rot90(coded)  # 90 degrees counter-clockwise: red on the left
    assert np.abs(frame.astype(int) - upright).mean() < 8
    assert frame[:, :12, 0].mean() > 200 and frame[:, 20:, 2].mean() > 200


@pytest.mark.parametrize("pix_fmt,width,height", [("gray", 47, 33), ("yuv444p", 65, 49),
                                                  ("yuv422p", 66, 49), ("yuv420p", 64, 36)])
def test_pixel_formats_and_odd_sizes_decode_to_rgb(tmp_path, pix_fmt, width, height):
    path = write_counter_video(tmp_path / f"{pix_fmt}.mp4", 12, height=height, width=width,
                               pix_fmt=pix_fmt)
    reference = decode_all(path)  # (T, H, W, 3) as PyAV converts them
    wanted = np.array([9, 0, 3, 6])
    with VideoReader(path) as reader:
        exact = reader.frames_at(wanted / reader.info.fps, FULL)
        cropped = reader.frames_at(wanted / reader.info.fps,
                                   functools.partial(transforms.center_crop, size=24))
    np.testing.assert_array_equal(exact, reference[wanted])
    assert cropped.shape == (4, 24, 24, 3) and cropped.dtype == np.uint8
    assert np.abs(cropped.mean(axis=(1, 2, 3)) - exact.mean(axis=(1, 2, 3))).max() <= 2


def test_random_resized_crop_is_applied_by_resize_then_slice(tmp_path):
    frames = np.zeros((4, 60, 80, 3), np.uint8)
    frames[:, :, 40:] = 200  # right half bright
    path = write_video(str(tmp_path / "halves.mp4"), frames, fps=10)
    box = transforms.Geometry(resize_h=32, resize_w=64, top=0, left=32, height=32, width=32)
    with VideoReader(path) as reader:
        right = reader.frames_at([0.0], lambda h, w: box)[0]
    assert right.shape == (32, 32, 3)
    assert right[:, 2:].mean() > 190  # only the bright half is inside the box


def test_images_become_repeated_frames(tmp_path):
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, :20] = (250, 10, 10)
    png = str(tmp_path / "red_left.png")
    av.VideoFrame.from_ndarray(image, format="rgb24").save(png)
    plan = functools.partial(transforms.center_crop, size=16)
    with VideoReader(png) as reader:
        assert reader.info.is_image and reader.info.num_frames == 1
        clip = reader.frames_at(np.zeros(5), plan)
    from_array = image_array_clip(image, 5, plan)
    assert clip.shape == from_array.shape == (5, 16, 16, 3)
    assert all(np.array_equal(clip[0], c) for c in clip)
    assert np.abs(clip.astype(int) - from_array).max() <= 2
    assert clip[0, :, :4, 0].mean() > 240 and clip[0, :, -4:, 0].mean() < 20


def test_iter_frames_yields_every_frame_with_its_time(tmp_path):
    path = write_counter_video(tmp_path / "v.mp4", 15, fps=5)
    plan = functools.partial(transforms.resize_short_side, short_side=16, even=True)
    with VideoReader(path) as reader:
        pairs = list(reader.iter_frames(plan))
    assert [round(t, 6) for t, _ in pairs] == [round(i / 5, 6) for i in range(15)]
    assert frame_numbers(np.stack([f for _, f in pairs])) == list(range(15))
    assert pairs[0][1].shape == (16, 24, 3)

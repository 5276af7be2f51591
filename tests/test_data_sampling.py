"""Clip sampling (training, uniform, multi-clip) and uint8 geometry / on-device normalisation."""

import jax.numpy as jnp
import numpy as np
import pytest

from twlv_jax.data import sampling, transforms


def test_training_clip_is_strided_from_a_random_start_inside_the_video():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        indices = sampling.train_indices(rng, 40, frames=8, stride=4, short_video="loop")
        assert np.array_equal(np.diff(indices), np.full(7, 4))
        assert indices[0] >= 0 and indices[-1] < 40
        starts.add(int(indices[0]))
    assert starts == set(range(40 - 29 + 1))  # every start that fits is drawn


def test_short_videos_loop_or_pad():
    rng = np.random.default_rng(1)
    looped = sampling.train_indices(rng, 10, frames=8, stride=2, short_video="loop")
    start = looped[0]
    assert looped.tolist() == [(start + 2 * i) % 10 for i in range(8)]
    padded = sampling.train_indices(rng, 10, frames=8, stride=2, short_video="pad")
    assert padded.tolist() == [0, 2, 4, 6, 8, 9, 9, 9]
    with pytest.raises(ValueError, match=r"data\.short_video: expected one of"):
        sampling.train_indices(rng, 10, frames=8, stride=2, short_video="wrap")


def test_uniform_takes_segment_centres_over_the_whole_video():
    assert sampling.uniform_indices(80, 8).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sampling.uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_multi_clip_windows_cover_the_video_at_the_stride():
    assert sampling.multi_clip_windows(7.0, 2.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert sampling.multi_clip_windows(3.0, 1.0, 0.5) == [
        (0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0)]
    assert sampling.multi_clip_windows(1.2, 2.0, 2.0) == [(0.0, 1.2)]
    with pytest.raises(ValueError, match="must be positive"):
        sampling.multi_clip_windows(5.0, 0.0, 1.0)


def test_frame_range_restricts_to_start_and_end_seconds():
    assert sampling.frame_range(100, 25.0) == (0, 100)
    assert sampling.frame_range(100, 25.0, 1.0, 2.0) == (25, 25)
    assert sampling.frame_range(100, 25.0, 3.9, None) == (98, 2)
    assert sampling.frame_range(100, 25.0, 5.0, 6.0) == (125, 0)  # after the end: empty


def test_random_resized_crop_stays_inside_and_respects_scale():
    rng = np.random.default_rng(0)
    height, width, size = 90, 160, 32
    for _ in range(300):
        g = transforms.random_resized_crop(height, width, rng=rng, size=size,
                                           scale=(0.3, 1.0), ratio=(0.75, 1.35))
        assert (g.height, g.width) == (size, size)
        assert 0 <= g.top <= g.resize_h - size and 0 <= g.left <= g.resize_w - size
        box_area = (height * size / g.resize_h) * (width * size / g.resize_w)
        assert 0.25 <= box_area / (height * width) <= 1.05


def test_random_resized_crop_falls_back_to_a_central_box():
    rng = np.random.default_rng(0)
    g = transforms.random_resized_crop(10, 400, rng=rng, size=16, scale=(0.9, 1.0),
                                       ratio=(1.0, 1.0))
    # no square box covers 90% of a 10 x 400 frame: the central 10 x 10 square is used
    assert (g.resize_h, g.resize_w, g.top, g.left) == (16, 640, 0, 312)


def test_center_crop_keeps_the_middle_square():
    assert transforms.center_crop(48, 64, size=24) == transforms.Geometry(24, 32, 0, 4, 24, 24)
    assert transforms.center_crop(64, 48, size=24) == transforms.Geometry(32, 24, 4, 0, 24, 24)


def test_resize_short_side_rounds_to_even_sizes():
    assert transforms.resize_short_side(33, 47, short_side=16, even=True) == \
        transforms.Geometry(16, 24, 0, 0, 16, 24)


def test_flip_mirrors_width():
    video = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    flipped = transforms.flip_horizontal(video)
    assert np.array_equal(flipped[:, :, 0], video[:, :, 3])
    assert flipped.flags["C_CONTIGUOUS"]


def test_normalize_uses_imagenet_statistics_in_the_compute_dtype():
    video = np.stack([np.zeros((2, 2, 3)), np.full((2, 2, 3), 255)]).astype(np.uint8)
    out = transforms.normalize(video, dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16 and out.shape == video.shape
    mean, std = np.array(transforms.IMAGENET_MEAN), np.array(transforms.IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(out[0, 0, 0], np.float32), -mean / std, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(out[1, 0, 0], np.float32), (1 - mean) / std, rtol=1e-2)
    exact = transforms.normalize(video)
    assert exact.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(exact[1, 1, 1]), (1 - mean) / std, rtol=1e-6)

"""Deterministic evaluation reading: uniform and multi-clip sampling, metadata, padded batches."""

import os

import numpy as np
import pytest
from test_data_corpus import write_bad_corpus
from test_data_pipeline import frame_ids, video_id, write_id_videos

from twlv_jax.data.evaluation import eval_batches, iter_eval_videos
from twlv_jax.data.manifest import write_manifest
from twlv_jax.data.quarantine import Quarantine


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory):
    """val.csv: videos 0-3, a bad file, video 4 (24 frames at 10 fps each)."""
    folder = tmp_path_factory.mktemp("eval")
    rows = write_id_videos(folder, range(5))
    bad = write_bad_corpus(folder / "bad")["zero_bytes"][0]
    rows.insert(4, {"path": bad, "labels": {"label": 9, "label_parity": 1}})
    write_manifest(os.path.join(str(folder), "val.csv"), rows)
    write_manifest(os.path.join(str(folder), "train.csv"), rows[:2])
    return str(folder)


def test_uniform_sampling_spreads_frames_over_the_whole_video(val_folder):
    videos = list(iter_eval_videos(os.path.join(val_folder, "val.csv"), frames=6,
                                   image_size=16))
    assert [v.index for v in videos] == [0, 1, 2, 3, 5]
    first = videos[0]
    assert first.video.shape == (1, 6, 16, 16, 3) and first.video.dtype == np.uint8
    assert frame_ids(first.video[0]) == [2, 6, 10, 14, 18, 22]
    assert (first.num_frames, first.duration) == (24, pytest.approx(2.4))
    assert first.clip_starts.tolist() == [0.0] and first.clip_ends.tolist() == [2.4]
    assert first.labels == {"label": 0, "label_parity": 0}
    assert [video_id(v.video[0]) for v in videos] == [0, 1, 2, 3, 4]


def test_multi_clip_sampling_keeps_clip_times(val_folder):
    video = next(iter_eval_videos(os.path.join(val_folder, "val.csv"), frames=5,
                                  image_size=16, sampling="multi-clip", clip_seconds=1.0,
                                  clip_stride=0.5))
    assert video.video.shape == (3, 5, 16, 16, 3)
    assert video.clip_starts.tolist() == [0.0, 0.5, 1.0]
    assert video.clip_ends.tolist() == [1.0, 1.5, 2.0]
    assert [frame_ids(clip) for clip in video.video] == [
        [1, 3, 5, 7, 9], [6, 8, 10, 12, 14], [11, 13, 15, 17, 19]]


def test_manifest_window_limits_evaluation_clips(tmp_path):
    rows = write_id_videos(tmp_path, [2])
    rows[0].update(start=1.0, end=2.0)
    manifest = write_manifest(str(tmp_path / "window.csv"), rows)
    video = next(iter_eval_videos(manifest, frames=5, image_size=16))
    assert frame_ids(video.video[0]) == [11, 13, 15, 17, 19]
    assert video.clip_starts.tolist() == [1.0] and video.clip_ends.tolist() == [2.0]


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_batches_pad_the_last_batch_and_skip_bad_files(val_folder, workers):
    quarantine = Quarantine(None, total=6, max_fraction=1.0)
    batches = list(eval_batches(val_folder, split="val", frames=4, image_size=16,
                                batch_size=4, workers=workers, quarantine=quarantine))
    assert len(batches) == 2
    assert batches[0]["index"].tolist() == [0, 1, 2, 3]
    assert batches[1]["index"].tolist() == [5, -1, -1, -1]
    assert batches[1]["label"].tolist() == [4, -1, -1, -1]
    assert batches[1]["label_parity"].tolist() == [0, -1, -1, -1]
    assert batches[1]["video"].shape == (4, 4, 16, 16, 3)
    assert not batches[1]["video"][1:].any()
    assert all(b[k].dtype == np.int32 for b in batches for k in ("index", "label"))
    assert quarantine.counts == {"empty": 1}


def test_eval_batches_are_deterministic(val_folder):
    def run():
        return list(eval_batches(os.path.join(val_folder, "train.csv"), frames=4,
                                 image_size=16, batch_size=2))

    first, second = run(), run()
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])

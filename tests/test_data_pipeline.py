"""The Grain training pipeline on real MP4s: batches, sampling, per-process slices, state,
worker processes, bad files, sources (manifest, TFDS, images, mixture), global arrays.

Test videos carry their identity in the pixels: red = frame index, green = video id,
blue = a horizontal ramp (so crops and flips show).
"""

import logging
import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_data_corpus import write_bad_corpus

from twlv_jax.data import pipeline
from twlv_jax.data.encode import write_video
from twlv_jax.data.manifest import read_splits, write_manifest
from twlv_jax.data.quarantine import Quarantine, TooManyBadFiles
from twlv_jax.data.tfds_builder import build, check_files

FPS = 10


def id_video(video_id: int, frames: int, height: int = 32, width: int = 48) -> np.ndarray:
    video = np.zeros((frames, height, width, 3), np.uint8)  # (T, H, W, 3)
    video[..., 0] = (20 + 8 * np.arange(frames))[:, None, None]
    video[..., 1] = 20 + 10 * video_id
    video[..., 2] = np.linspace(0, 255, width).astype(np.uint8)[None, None, :]
    return video


def frame_ids(clip: np.ndarray) -> list[int]:
    """Frame index shown by each frame of a clip (T, H, W, 3)."""
    red = clip[..., 0].reshape(len(clip), -1).mean(axis=1)
    return [round((r + 1.5 - 20) / 8) for r in red]


def video_id(clip: np.ndarray) -> int:
    return round((clip[..., 1].mean() - 20) / 10)


def write_id_videos(folder, ids, frames: int = 24) -> list[dict]:
    rows = []
    for i in ids:
        path = write_video(os.path.join(str(folder), f"v{i:02d}.mp4"), id_video(i, frames),
                           fps=FPS, gop=4, crf=0)
        rows.append({"path": path, "labels": {"label": i, "label_parity": i % 2}})
    return rows


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """12 good videos (ids 0-11) and a manifest of them."""
    folder = tmp_path_factory.mktemp("videos")
    rows = write_id_videos(folder, range(12))
    return {"folder": str(folder), "rows": rows,
            "manifest": write_manifest(os.path.join(str(folder), "train.csv"), rows)}


def data_config(path: str, **overrides) -> ml_collections.ConfigDict:
    cfg = dict(source="manifest", path=path, split="train", stride=2, crop_scale=(0.3, 1.0),
               crop_ratio=(0.75, 1.35), flip=False, short_video="loop", workers=0,
               max_bad_fraction=0.5)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def make(cfg, *, batch: int = 4, frames: int = 4, size: int = 16, seed: int = 0,
         process_index: int = 0, process_count: int = 1, quarantine_path=None):
    return pipeline.make_train_iterator(
        cfg, frames=frames, image_size=size, global_batch_size=batch, seed=seed,
        process_index=process_index, process_count=process_count,
        quarantine_path=quarantine_path)


def take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_the_promised_shapes_dtypes_and_labels(videos):
    iterator, info = make(data_config(videos["manifest"]), batch=4, frames=4, size=16)
    assert isinstance(iterator, grain.DatasetIterator)
    assert (info.num_examples, info.local_examples) == (12, 12)
    assert info.label_names == ("label", "label_parity")
    for batch in take(iterator, 3):
        assert batch["video"].shape == (4, 4, 16, 16, 3) and batch["video"].dtype == np.uint8
        assert batch["label"].dtype == np.int32 and batch["label_parity"].dtype == np.int32
        ids = [video_id(clip) for clip in batch["video"]]
        assert batch["label"].tolist() == ids  # labels travel with their video
        assert batch["label_parity"].tolist() == [i % 2 for i in ids]


def test_training_clips_are_stride_runs_from_random_starts(videos):
    iterator, _ = make(data_config(videos["manifest"], stride=3), batch=4, frames=5)
    starts = set()
    for batch in take(iterator, 6):
        for clip in batch["video"]:
            ids = frame_ids(clip)
            assert ids == [ids[0] + 3 * i for i in range(5)]
            assert 0 <= ids[0] <= 24 - 13
            starts.add(ids[0])
    assert len(starts) > 4


def test_each_epoch_is_a_new_permutation_of_the_slice(videos):
    iterator, _ = make(data_config(videos["manifest"]), batch=4)
    epochs = [[video_id(c) for b in take(iterator, 3) for c in b["video"]] for _ in range(3)]
    assert all(sorted(epoch) == list(range(12)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3


def test_same_seed_same_batches_other_seed_other_batches(videos):
    cfg = data_config(videos["manifest"])
    first, second = make(cfg, seed=3)[0], make(cfg, seed=3)[0]
    assert_same_batches(take(first, 3), take(second, 3))
    other = take(make(cfg, seed=4)[0], 1)[0]
    assert not np.array_equal(other["video"], take(make(cfg, seed=3)[0], 1)[0]["video"])


def test_process_slices_are_disjoint_and_complete(videos, tmp_path):
    seen = []
    for index in range(3):
        iterator, info = make(data_config(videos["manifest"]), batch=6, process_index=index,
                              process_count=3, quarantine_path=str(tmp_path / "bad.csv"))
        assert info.quarantine.path == str(tmp_path / f"bad.p{index}.csv")  # one per process
        assert os.path.isfile(info.quarantine.path)
        assert (info.num_examples, info.local_examples) == (12, 4)
        batches = take(iterator, 2)  # one epoch of this process: 4 clips
        assert all(b["video"].shape[0] == 2 for b in batches)
        seen.append({video_id(c) for b in batches for c in b["video"]})
    assert all(len(s) == 4 for s in seen)
    assert set.union(*seen) == set(range(12))
    assert sum(len(s) for s in seen) == 12


def test_state_restores_identical_batches_with_and_across_worker_processes(videos):
    cfg = data_config(videos["manifest"], flip=True)
    reference, _ = make(cfg, seed=7)
    take(reference, 2)
    state = reference.get_state()
    expected = take(reference, 3)
    assert state["consumed"] == 8

    cfg_workers = data_config(videos["manifest"], flip=True, workers=1)
    restored, _ = make(cfg_workers, seed=7)
    restored.set_state(state)
    assert_same_batches(take(restored, 3), expected)
    assert restored.get_state() == reference.get_state()
    restored.close()

    two_workers, _ = make(data_config(videos["manifest"], flip=True, workers=2), seed=7)
    first_five = take(two_workers, 5)
    two_workers.close()
    again, _ = make(cfg, seed=7)
    assert_same_batches(first_five, take(again, 5))


def test_iterator_checkpoints_inside_an_orbax_composite(videos, tmp_path):
    cfg = data_config(videos["manifest"])
    iterator, _ = make(cfg, seed=1)
    take(iterator, 2)
    manager = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",))
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = take(iterator, 2)

    fresh, _ = make(cfg, seed=1)
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_same_batches(take(fresh, 2), expected)
    manager.close()


def test_bad_files_are_skipped_counted_logged_once_and_listed(videos, tmp_path, caplog):
    corpus = write_bad_corpus(tmp_path / "bad")
    rows = videos["rows"][:8] + [{"path": path, "labels": {"label": 99, "label_parity": 1}}
                                 for path, _ in corpus.values()]
    manifest = write_manifest(str(tmp_path / "mixed.csv"), rows)
    quarantine_file = str(tmp_path / "quarantine.csv")
    iterator, info = make(data_config(manifest, max_bad_fraction=0.6), batch=4,
                          quarantine_path=quarantine_file)
    with caplog.at_level(logging.WARNING, logger="twlv_jax.data.quarantine"):
        batches = take(iterator, 9)  # 36 clips: about two passes over 18 files
    ids = {video_id(c) for b in batches for c in b["video"]}
    assert ids <= set(range(8)) and 99 not in {int(x) for b in batches for x in b["label"]}
    expected = {path: reason for path, reason in corpus.values()}
    assert info.quarantine.files == expected
    assert info.quarantine.counts == {
        reason: list(expected.values()).count(reason) for reason in set(expected.values())}
    assert info.quarantine.skips > len(expected)  # bad files met again in the second pass
    assert len(caplog.records) == len(expected)  # one log line per bad file
    with open(quarantine_file) as f:
        lines = f.read().splitlines()
    assert lines[0] == "path,reason,detail" and len(lines) == 1 + len(expected)
    assert {line.split(",")[0] for line in lines[1:]} == set(expected)
    assert iterator.get_state()["quarantine"]["files"] == expected


def test_too_many_bad_files_stop_the_run_with_a_clear_error(videos, tmp_path):
    corpus = write_bad_corpus(tmp_path / "bad")
    rows = videos["rows"][:4] + [{"path": path, "labels": {"label": 0, "label_parity": 0}}
                                 for path, _ in corpus.values()]
    manifest = write_manifest(str(tmp_path / "mostly_bad.csv"), rows)
    iterator, _ = make(data_config(manifest, max_bad_fraction=0.2), batch=4,
                       quarantine_path=str(tmp_path / "q.csv"))
    with pytest.raises(TooManyBadFiles) as caught:
        take(iterator, 10)
    message = str(caught.value)
    total = len(rows)
    bad_allowed = int(0.2 * total)
    assert f"{bad_allowed + 1} of {total} files unreadable" in message
    assert "data.max_bad_fraction=0.2" in message and str(tmp_path / "q.csv") in message


@pytest.mark.parametrize("mode,expected", [("pad", [0, 3, 4, 4]), ("loop", None)])
def test_short_videos_loop_or_pad(tmp_path, mode, expected):
    rows = write_id_videos(tmp_path, [5], frames=5)
    manifest = write_manifest(str(tmp_path / "short.csv"), rows)
    iterator, _ = make(data_config(manifest, stride=3, short_video=mode), batch=1)
    for batch in take(iterator, 4):
        ids = frame_ids(batch["video"][0])
        if expected is None:
            assert ids == [(ids[0] + 3 * i) % 5 for i in range(4)]
        else:
            assert ids == expected


def test_manifest_start_and_end_bound_the_clip(tmp_path):
    rows = write_id_videos(tmp_path, [1])
    rows[0].update(start=1.0, end=2.0)
    manifest = write_manifest(str(tmp_path / "window.csv"), rows)
    iterator, _ = make(data_config(manifest, stride=3), batch=2, frames=4)
    for batch in take(iterator, 3):
        for clip in batch["video"]:
            assert all(10 <= i < 20 for i in frame_ids(clip))


def test_images_become_clips_of_one_repeated_frame(tmp_path):
    import av

    image = id_video(3, 1, height=40, width=40)[0]
    png = str(tmp_path / "still.png")
    av.VideoFrame.from_ndarray(image, format="rgb24").save(png)
    manifest = write_manifest(str(tmp_path / "images.csv"), [{"path": png,
                                                              "labels": {"label": 3}}])
    for source in ("manifest", "images"):
        batch = take(make(data_config(manifest, source=source), batch=2, frames=4)[0], 1)[0]
        assert batch["video"].shape == (2, 4, 16, 16, 3)
        for clip in batch["video"]:
            assert all(np.array_equal(clip[0], frame) for frame in clip)
            assert video_id(clip) == 3


def test_tfds_source_gives_the_batches_of_the_manifest_it_was_built_from(videos, tmp_path):
    corpus = write_bad_corpus(tmp_path / "bad")
    rows = videos["rows"] + [{"path": corpus["text_file"][0],
                              "labels": {"label": 0, "label_parity": 0}}]
    with_bad = write_manifest(str(tmp_path / "train.csv"), rows)
    quarantine = Quarantine(str(tmp_path / "q.csv"), total=len(rows), max_fraction=1.0)
    splits = check_files(read_splits(with_bad), quarantine)
    assert quarantine.files == {corpus["text_file"][0]: "not_a_video"}
    build(str(tmp_path / "tfds"), splits)

    tfds_cfg = data_config(str(tmp_path / "tfds"), source="tfds", workers=1)
    from_tfds, info = make(tfds_cfg, seed=5)
    assert info.num_examples == 12 and info.label_names == ("label", "label_parity")
    from_manifest, _ = make(data_config(videos["manifest"]), seed=5)
    assert_same_batches(take(from_tfds, 3), take(from_manifest, 3))
    from_tfds.close()
    with pytest.raises(ValueError, match="has no split 'val'; splits: train"):
        make(data_config(str(tmp_path / "tfds"), source="tfds", split="val"))


def test_mixture_draws_components_by_weight(videos, tmp_path):
    second = write_manifest(str(tmp_path / "more.csv"),
                            write_id_videos(tmp_path, range(12, 16)))
    spec = f"manifest:{videos['manifest']}@3,manifest:{second}@1"
    iterator, info = make(data_config(spec, source="mixture"), batch=8)
    assert info.num_examples == 16
    ids = [video_id(c) for b in take(iterator, 5) for c in b["video"]]
    from_second = sum(i >= 12 for i in ids)
    assert abs(from_second - 10) <= 1  # 40 clips at 3:1


def test_flip_is_an_option(videos):
    def ramp_directions(flip: bool) -> set[bool]:
        iterator, _ = make(data_config(videos["manifest"], flip=flip), batch=4)
        clips = [c for b in take(iterator, 4) for c in b["video"]]
        return {bool(c[..., :4, 2].mean() < c[..., -4:, 2].mean()) for c in clips}

    assert ramp_directions(False) == {True}
    assert ramp_directions(True) == {True, False}


def test_to_global_shards_the_batch_over_the_mesh(videos):
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batch = take(make(data_config(videos["manifest"]), batch=8)[0], 1)[0]
    arrays = pipeline.to_global(batch, sharding)
    assert arrays["video"].shape == (8, 4, 16, 16, 3) and arrays["video"].sharding == sharding
    assert len(arrays["video"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(arrays["video"]), batch["video"])
    np.testing.assert_array_equal(np.asarray(arrays["label"]), batch["label"])


TWO_PROCESS_SCRIPT = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, index, manifest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=index)
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from twlv_jax.data import pipeline

cfg = ml_collections.ConfigDict(dict(
    source="manifest", path=manifest, split="train", stride=2, crop_scale=(0.3, 1.0),
    crop_ratio=(0.75, 1.35), flip=False, short_video="loop", workers=0, max_bad_fraction=0.5))
iterator, info = pipeline.make_train_iterator(
    cfg, frames=4, image_size=16, global_batch_size=4, seed=0,
    process_index=jax.process_index(), process_count=jax.process_count(), quarantine_path=None)
sharding = NamedSharding(jax.make_mesh((4,), ("data",)), PartitionSpec("data"))
local = [next(iterator) for _ in range(3)]  # 6 clips: one epoch of this process's slice
arrays = [pipeline.to_global(batch, sharding) for batch in local]
gathered = [multihost_utils.process_allgather(a["label"], tiled=True) for a in arrays]
print(json.dumps({
    "local": [int(x) for b in local for x in b["label"]],
    "shape": list(arrays[0]["video"].shape),
    "gathered": [int(x) for g in gathered for x in g],
    "num_examples": info.num_examples}))
"""


def test_two_real_processes_read_disjoint_halves_into_one_global_batch(videos):
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_SCRIPT, str(port), str(i),
                              videos["manifest"]], cwd=repo, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(2)]
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    first, second = outputs
    assert first["shape"] == second["shape"] == [4, 4, 16, 16, 3]
    assert first["num_examples"] == second["num_examples"] == 12
    assert sorted(first["local"] + second["local"]) == list(range(12))  # disjoint, complete
    assert first["gathered"] == second["gathered"]
    for step in range(3):  # the global batch is process 0's clips, then process 1's
        assert first["gathered"][4 * step:4 * step + 4] == (
            first["local"][2 * step:2 * step + 2] + second["local"][2 * step:2 * step + 2])

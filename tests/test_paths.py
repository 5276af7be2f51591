"""One path layer for local files and gs:// buckets, against an emulated Cloud Storage
(gcp-storage-emulator, in this process; gcsfs finds it through STORAGE_EMULATOR_HOST)."""

import functools
import json
import logging
import os
import socket

import numpy as np
import pytest

from twlv_jax import paths
from twlv_jax.data.manifest import read_manifest, read_manifest_or_folder, write_manifest
from twlv_jax.data.transforms import center_crop
from twlv_jax.data.video import VideoReader
from twlv_jax.eval import embed as embedlib
from twlv_jax.eval import knn as knnlib
from twlv_jax.eval.folders import read_embeddings
from twlv_jax.sweep import cli as sweep_cli

BUCKET = "twlv-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket():
    """gs://BUCKET on an emulator that lives as long as this module's tests."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://localhost:{port}"
    for name in ("gcsfs", "google.auth"):       # no credentials: said per request
        logging.getLogger(name).setLevel(logging.ERROR)
    yield f"gs://{BUCKET}"
    server.stop()
    if before is None:
        os.environ.pop("STORAGE_EMULATOR_HOST")
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = before


def _upload(local: str, remote: str) -> None:
    for root, _, files in os.walk(local):
        for name in files:
            source = os.path.join(root, name)
            with open(source, "rb") as f, paths.open(
                    paths.join(remote, os.path.relpath(source, local)), "wb") as g:
                g.write(f.read())


@pytest.fixture(params=["local", "bucket"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "f")
    return request.getfixturevalue("bucket") + f"/{request.node.originalname}"


def test_the_same_calls_work_on_local_folders_and_in_a_bucket(folder):
    inner = paths.join(folder, "a", "b")
    paths.makedirs(inner)
    with paths.open(paths.join(inner, "x.txt"), "w") as f:
        f.write("hello")
    with paths.atomic_write(paths.join(inner, "y.json")) as f:
        f.write(b"{}")
    assert paths.isdir(inner) and paths.isfile(paths.join(inner, "x.txt"))
    assert not paths.exists(paths.join(inner, "z")) and not paths.isdir(paths.join(inner, "x.txt"))
    assert sorted(paths.listdir(inner)) == ["x.txt", "y.json"]        # no temporary left
    assert paths.getsize(paths.join(inner, "x.txt")) == 5
    assert list(paths.walk_files(folder)) == [paths.join(inner, "x.txt"), paths.join(inner, "y.json")]
    assert paths.glob(folder, "*/b/*.json") == [paths.join(inner, "y.json")]
    paths.replace(paths.join(inner, "x.txt"), paths.join(folder, "x.txt"))
    assert paths.read_bytes(paths.join(folder, "x.txt")) == b"hello"
    assert paths.dirname(paths.join(inner, "y.json")) == inner
    assert paths.normpath(paths.join(inner, "..", "c")) == paths.join(folder, "a", "c")
    paths.rmtree(paths.join(folder, "a"))
    assert not paths.exists(paths.join(inner, "y.json"))
    if paths.is_remote(folder):       # a bucket has no empty folders
        assert paths.listdir(paths.join(folder, "missing")) == []
    else:
        with pytest.raises(FileNotFoundError):
            paths.listdir(paths.join(folder, "missing"))


def test_remote_paths_keep_their_scheme():
    assert paths.is_remote("gs://b/x") and not paths.is_remote("/tmp/x")
    assert paths.absolute("gs://b/x") == "gs://b/x"
    assert paths.dirname("gs://b/x/y") == "gs://b/x" and paths.dirname("gs://b/x") == "gs://b"
    assert paths.normpath("gs://b/x/../y") == "gs://b/y"
    with pytest.raises(ValueError, match="cannot be appended to"):
        paths.open("gs://b/x", "a")


def test_manifests_and_videos_in_a_bucket_read_as_local_ones(bucket, trained):
    _, videos = trained
    remote = f"{bucket}/data"
    _upload(str(videos), remote)
    local, found = read_manifest(str(videos / "val.csv")), read_manifest(f"{remote}/val.csv")
    assert found.paths[0] == f"{remote}/videos/val/000000.mp4"      # relative to the manifest
    assert [found.paths[i] for i in range(len(found))] == [
        local.paths[i].replace(str(videos), remote) for i in range(len(local))]
    assert np.array_equal(found.labels["label_motion"], local.labels["label_motion"])
    scanned = read_manifest_or_folder(f"{remote}/videos")
    assert len(scanned) == 32 and set(np.unique(scanned.labels["label"])) == {0, 1}  # train/, val/
    plan = functools.partial(center_crop, size=24)
    with VideoReader(found.paths[3], name="remote") as a, VideoReader(local.paths[3], name="local") as b:
        assert a.info == b.info
        assert np.array_equal(a.frames_at([0.0, 0.2, 0.4], plan), b.frames_at([0.0, 0.2, 0.4], plan))
    written = write_manifest(f"{remote}/copy.csv", [{"path": found.paths[0], "labels": {"label": 2}}])
    assert paths.read_bytes(written).decode().splitlines() == ["path,label", "videos/val/000000.mp4,2"]


def test_embed_and_knn_write_and_read_embeddings_in_a_bucket(bucket, trained, tmp_path, capsys):
    checkpoint, videos = trained
    remote = f"{bucket}/embed"
    _upload(str(videos), f"{remote}/data")
    with open(videos / "val.csv") as f:            # one missing video: its row goes to the list
        rows = f.read() + "videos/val/missing.mp4,0,0,0,x,E\n"
    with paths.open(f"{remote}/data/val.csv", "w") as f:
        f.write(rows)
    for output, data in ((f"{remote}/out", f"{remote}/data"), (str(tmp_path / "out"), str(videos))):
        for split in ("train", "val"):
            assert embedlib.main(["--checkpoint", checkpoint, "--input", data, "--split", split,
                                  "--output", output, "--batch_size", "8"]) == 0
        assert knnlib.main(["--embeddings", output, "--k", "5"]) == 0
    capsys.readouterr()
    in_bucket, local = (read_embeddings(o, progress=False) for o in (f"{remote}/out", str(tmp_path / "out")))
    for a, b in zip(in_bucket[:2], local[:2], strict=True):
        assert a.ids == b.ids and np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.videos, b.videos, rtol=1e-5, atol=1e-6)
    assert len(in_bucket[1].ids) == 8
    results = [json.loads(paths.read_bytes(f"{o}/knn_video.json"))
               for o in (f"{remote}/out", str(tmp_path / "out"))]
    assert results[0]["top1"] == results[1]["top1"]
    assert results[0]["embeddings"] == f"{remote}/out"
    bad = paths.read_bytes(f"{remote}/out/val_bad_files.csv").decode().splitlines()
    assert bad[0] == "path,reason,detail"
    assert bad[1].startswith(f"{remote}/data/videos/val/missing.mp4,missing,")
    # A rerun lists the videos written in the bucket and embeds none again.
    assert embedlib.main(["--checkpoint", checkpoint, "--input", f"{remote}/data", "--split", "train",
                          "--output", f"{remote}/out"]) == 0
    assert json.loads(paths.read_bytes(f"{remote}/out/embed_train.json"))["to_embed"] == 0


def test_a_sweep_in_a_bucket_is_handed_over_and_collected(bucket, tmp_path, capfd):
    spec = tmp_path / "sweep.py"
    spec.write_text("import os\nfrom twlv_jax.config import load_module\n\n"
                    "def get_config(arg=None):\n"
                    f"    return load_module({os.path.abspath('configs/pretrain.py')!r})"
                    ".get_config('variant=tiny')\n\n"
                    "def get_hyper(h):\n    return h.sweep('config.seed', [0, 1])\n")
    root = f"{bucket}/sweep"
    code = sweep_cli.main([str(spec), "--workdir", root, "--dry_run", "--launcher", "xpk",
                           "--launcher_args", "--cluster=c --tpu_type=v5litepod-8 --image=i",
                           "--config.train.steps=4"])
    out = capfd.readouterr().out
    assert code == 0 and f"--workdir\\ {root}/seed=1\\ " in out and "jax_cache" in out
    # What twlv train on the cluster leaves in the bucket: one run finished, one under way.
    for name, step in (("seed=0", 4), ("seed=1", 2)):
        with paths.open(f"{root}/{name}/metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": step, "loss": 0.5, "clips_per_s": 10.0}) + "\n")
    assert sweep_cli.main([str(spec), "--workdir", root, "--collect", "--devices", "8",
                           "--config.train.steps=4"]) == 0
    assert "2 run(s): 1 done, 1 running" in capfd.readouterr().out
    table = paths.read_bytes(f"{root}/results.csv").decode().splitlines()
    assert table[0].startswith("run,state,seed,step,loss") and table[1].startswith("seed=0,done,0,4,")
    assert "| seed=1 | running |" in paths.read_bytes(f"{root}/results.md").decode()
    code = sweep_cli.main([str(spec), "--workdir", root, "--devices", "8"])
    assert code == 2 and "local runs train in a local folder" in capfd.readouterr().err


def test_training_batches_from_a_bucket_equal_the_local_ones_with_a_worker_process(bucket, trained):
    import ml_collections

    from twlv_jax.data import pipeline

    _, videos = trained
    remote = f"{bucket}/train"
    _upload(str(videos), remote)

    def batches(path, workers):
        cfg = ml_collections.ConfigDict(dict(
            source="manifest", path=path, split="train", stride=2, crop_scale=(0.3, 1.0),
            crop_ratio=(0.75, 1.35), flip=True, short_video="loop", workers=workers,
            max_bad_fraction=0.5))
        iterator, info = pipeline.make_train_iterator(
            cfg, frames=4, image_size=16, global_batch_size=4, seed=3, process_index=0,
            process_count=1, quarantine_path=None)
        taken = [next(iterator) for _ in range(3)]
        iterator.close()
        return taken, info

    remote_batches, info = batches(f"{remote}/train.csv", workers=1)
    local_batches, _ = batches(str(videos / "train.csv"), workers=0)
    assert info.num_examples == 24
    for a, b in zip(remote_batches, local_batches, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

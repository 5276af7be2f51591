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


def _send_generations() -> None:
    """Makes the emulator's downloads carry the object's `x-goog-generation` header, as
    Cloud Storage's do: TensorStore (OCDBT's manifest, read then conditionally rewritten
    at each commit) otherwise fails with "Malformed StorageGeneration"."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    download = objects.download
    if getattr(download, "sends_generation", False):
        return

    def with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status.value < 300:
            response["x-goog-generation"] = storage.get_file_obj(
                request.params["bucket_name"], request.params["object_id"])["generation"]

    with_generation.sends_generation = True
    objects.download = with_generation            # what objects.get calls for ?alt=media
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler is download:
                handlers[method] = with_generation


@pytest.fixture(scope="module")
def bucket():
    """gs://BUCKET on an emulator that lives as long as this module's tests."""
    from gcp_storage_emulator.server import create_server

    _send_generations()
    port = _free_port()
    server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    # gcsfs (etils.epath) and TensorStore (Orbax's arrays) each read their own variable.
    variables = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update({name: f"http://localhost:{port}" for name in variables})
    for name in ("gcsfs", "google.auth"):       # no credentials: said per request
        logging.getLogger(name).setLevel(logging.ERROR)
    yield f"gs://{BUCKET}"
    server.stop()
    for name, value in before.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value


def _upload(local: str, remote: str) -> None:
    for source in paths.walk_files(local):
        paths.upload(source, paths.join(remote, os.path.relpath(source, local)))


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


def _train(data: str, workdir: str, steps: int) -> dict:
    """tests/conftest.py's tiny run, on a manifest and workdir given as (remote) paths."""
    from twlv_jax import config as cfglib
    from twlv_jax.train import loop
    config = cfglib.build("configs/pretrain.py:variant=tiny,objective=videomae", [
        ("data.path", data), ("data.workers", "0"), ("train.batch_size", "8"),
        ("train.steps", str(steps)), ("train.ckpt_every", "2"), ("train.log_every", "1")])
    return loop.run(config, workdir)


# Reading the damaged checkpoint leaves TensorStore coroutines that fail after the test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_run_trains_resumes_and_is_embedded_entirely_in_a_bucket(bucket, trained, capsys):
    from twlv_jax.train.checkpoint import Checkpoints

    _, videos = trained
    remote = f"{bucket}/run"
    _upload(str(videos), f"{remote}/data")
    workdir = f"{remote}/work"
    first = _train(f"{remote}/data/train.csv", workdir, steps=2)
    assert first["outcome"] == "done" and first["checkpoint"] == f"{workdir}/checkpoints/2"
    assert paths.isdir(f"{workdir}/checkpoints/2/state")
    assert paths.glob(workdir, "tensorboard/events.out.tfevents.*")
    # Resumed from the checkpoint in the bucket: metrics and config history rewritten whole.
    second = _train(f"{remote}/data/train.csv", workdir, steps=3)
    assert (second["start_step"], second["step"]) == (2, 3)
    with paths.open(f"{workdir}/metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
    with paths.open(f"{workdir}/config_history.jsonl") as f:
        assert [json.loads(line)["start_step"] for line in f] == [0, 2]
    assert json.loads(paths.read_bytes(f"{workdir}/config.json"))["train"]["steps"] == 3
    checkpoints = Checkpoints(f"{workdir}/checkpoints", read_only=True)
    try:
        assert checkpoints.all_steps() == [2, 3] and checkpoints.verify(3) == []
    finally:
        checkpoints.close()
    output = f"{remote}/embeddings"
    assert embedlib.main(["--checkpoint", workdir, "--input", f"{remote}/data", "--split", "val",
                          "--output", output, "--batch_size", "8"]) == 0
    capsys.readouterr()
    summary = json.loads(paths.read_bytes(f"{output}/embed_val.json"))
    assert summary["spec"]["checkpoint"] == f"{workdir}/checkpoints/3"
    assert summary["written"] == 8 and len(paths.glob(output, "val/*_v.npy")) == 8
    # A damaged checkpoint in the bucket is named, set aside, and the resume falls back.
    state = f"{workdir}/checkpoints/3/state"
    paths.remove(max(paths.walk_files(state), key=paths.getsize))
    checkpoints = Checkpoints(f"{workdir}/checkpoints", read_only=True)
    try:
        assert any(p.startswith("state.") for p in checkpoints.verify(3))
    finally:
        checkpoints.close()
    third = _train(f"{remote}/data/train.csv", workdir, steps=4)
    assert (third["start_step"], third["step"]) == (2, 4)
    assert sorted(paths.listdir(f"{workdir}/checkpoints")) == ["2", "3.corrupt", "4"]
    with paths.open(f"{workdir}/metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


def test_a_workdir_in_a_bucket_is_checked_and_its_records_kept_on_a_start_over(bucket):
    from twlv_jax.train import loop

    workdir = f"{bucket}/records"
    loop.check_workdir(workdir)
    assert paths.listdir(f"{workdir}/checkpoints") == []            # no probe object left
    with paths.open(f"{workdir}/file", "w") as f:
        f.write("x")
    with pytest.raises(loop.WorkdirError, match="is a file, not a folder"):
        loop.check_workdir(f"{workdir}/file")
    with paths.open(f"{workdir}/metrics.jsonl", "w") as f:
        f.write('{"step": 1}\n')
    with pytest.raises(loop.WorkdirError, match="--start_over"):
        loop.refuse_fresh_start(workdir, "why", start_over=False)
    loop.refuse_fresh_start(workdir, "why", start_over=True)
    kept = paths.glob(workdir, "metrics.jsonl.before-*")
    assert len(kept) == 1 and paths.read_bytes(kept[0]) == b'{"step": 1}\n'
    assert not paths.exists(f"{workdir}/metrics.jsonl") and loop.records_path(workdir) is None


def test_a_teacher_weights_file_in_a_bucket_is_checked_through_a_local_copy(bucket, tmp_path):
    from safetensors.numpy import save_file

    from twlv_jax.train.validate import _check_weights_file

    save_file({"w": np.ones((2, 3), np.float32)}, str(tmp_path / "t.safetensors"))
    good, bad = f"{bucket}/teacher/t.safetensors", f"{bucket}/teacher/bad.safetensors"
    paths.upload(str(tmp_path / "t.safetensors"), good)
    with paths.open(bad, "wb") as f:
        f.write(b"not safetensors")
    assert _check_weights_file("teacher.weights", good) == []
    assert "not a readable safetensors file" in _check_weights_file("teacher.weights", bad)[0]
    assert "no such file" in _check_weights_file("teacher.weights", f"{bucket}/teacher/none")[0]
    with paths.local_copy(good) as local:
        assert not paths.is_remote(local) and paths.read_bytes(local) == paths.read_bytes(good)
    assert not os.path.exists(local)


def test_a_run_loads_its_teacher_from_a_bucket(bucket, tmp_path):
    import jax

    from twlv_jax import config as cfglib
    from twlv_jax.models import weights as weightlib
    from twlv_jax.parallel.mesh import make_mesh
    from twlv_jax.train import state as statelib

    config = cfglib.build("configs/pretrain.py:variant=tiny,objective=umt", [("seed", "3")])
    setup = statelib.build(config, make_mesh("1,1,1", jax.devices()[:1]), total_steps=2,
                           warmup_steps=1)
    saved = statelib.init_teachers(setup, {})["image_teacher"]      # seed 3's random teacher
    weightlib.save(saved, str(tmp_path / "teacher.safetensors"))
    paths.upload(str(tmp_path / "teacher.safetensors"), f"{bucket}/w/teacher.safetensors")
    config.seed = 0                                  # a fresh init would differ from `saved`
    setup = statelib.build(config, make_mesh("1,1,1", jax.devices()[:1]), total_steps=2,
                           warmup_steps=1)
    loaded = statelib.init_teachers(setup, {"image_teacher": f"{bucket}/w/teacher.safetensors"})
    jax.tree.map(np.testing.assert_array_equal, loaded["image_teacher"], saved)

"""`twlv embed`: real MP4s, a real tiny checkpoint, files read back as the official code does."""

import glob
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import train_tiny

from twlv_jax.data import clips as clipslib
from twlv_jax.data.manifest import read_manifest, read_manifest_or_folder, write_manifest
from twlv_jax.data.sources import ManifestSource
from twlv_jax.data.synthetic import SynthOptions, write_synthetic
from twlv_jax.data.video import BadVideo
from twlv_jax.eval import embed
from twlv_jax.eval.embed_files import EmbedError, video_ids
from twlv_jax.eval.encoder import load_encoder
from twlv_jax.parallel.mesh import make_mesh

MULTI = embed.EmbedOptions(sampling="multi-clip", clip_seconds=1.0, clip_stride=0.5, batch_size=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 train + 3 val synthetic videos: 40 frames at 16 fps (2.5 s), 32 px."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(str(root), SynthOptions(train=8, val=3, frames=40, size=32))
    return root


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A tiny student trained for 2 steps."""
    return train_tiny(data, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return load_encoder(checkpoint)


def official_read(embed_dir, split):
    """What the official `Embeddings(embed_dir, split, embed_type)` reads: every *.json of
    the split folder, int(annotation), the _v (video) and _c (clip) arrays."""
    samples = []
    for path in sorted(glob.glob(os.path.join(embed_dir, split, "*.json"))):
        with open(path) as f:
            info = json.load(f)
        stem = path[:-len(".json")]
        samples.append((int(info["annotation"]), np.load(stem + "_v.npy"),
                        np.load(stem + "_c.npy"), info))
    return samples


def split_files(folder):
    return sorted(os.listdir(folder))


def test_cli_writes_the_official_layout(data, checkpoint, tmp_path, capsys):
    out = str(tmp_path / "emb")
    for split in ("train", "val"):
        assert embed.main(["--checkpoint", checkpoint, "--input", str(data / f"{split}.csv"),
                           "--output", out, "--batch_size", "4"]) == 0
    captured = capsys.readouterr()
    assert f"wrote 3 videos (3 clips, D=64) to {out}/val/ (0 were already there)\n" \
           "bad files: 0\n" \
           f"run metadata: {out}/embed_val.json; classes: {out}/classes.json (9 classes of " \
           f"'label', from {out}/classes.json)\n" in captured.out  # the train split's map
    assert f"classes: {out}/classes.json (9 classes of 'label', from {data}/classes.json)\n" \
        in captured.out
    assert "embed val: 100%" in captured.err and "video/s" in captured.err
    with open(os.path.join(out, "classes.json")) as f:
        classes = json.load(f)["label"]
    assert len(classes) == 9 and classes[0] == "red circle"
    train_rows = read_manifest(str(data / "train.csv"))
    for split, count in (("train", 8), ("val", 3)):
        samples = official_read(out, split)
        assert len(samples) == count
        dim = samples[0][1].shape[0]  # the official code reads D from the first sample
        for annotation, video, clips, info in samples:
            assert 0 <= annotation < len(classes)
            assert clips.dtype == np.float32 and clips.shape == (1, dim)
            assert video.dtype == np.float32 and video.shape == (dim,)
            np.testing.assert_allclose(video, clips.mean(0), rtol=1e-6)
            assert (info["num_frames"], info["duration"]) == (40, 2.5)
            assert (info["clip_starts"], info["clip_ends"]) == ([0.0], [2.5])
        names = split_files(os.path.join(out, split))
        stems = sorted({n.split(".")[0].removesuffix("_c").removesuffix("_v") for n in names})
        assert names == sorted(f"{s}{suffix}" for s in stems
                               for suffix in (".json", "_c.npy", "_v.npy"))
    assert [s[0] for s in official_read(out, "train")] == train_rows.labels["label"].tolist()
    assert split_files(out) == ["classes.json", "embed_train.json", "embed_val.json", "train",
                                "train_bad_files.csv", "val", "val_bad_files.csv"]
    with open(os.path.join(out, "embed_train.json")) as f:
        meta = json.load(f)
    assert meta["spec"] == {"checkpoint": os.path.join(checkpoint, "checkpoints", "2"),
                            "step": 2, "sampling": "uniform", "clip_seconds": None,
                            "clip_stride": None, "frames": 8, "image_size": 32, "label": "label"}
    assert (meta["written"], meta["clips"], meta["status"], meta["bad_files"]) == (8, 8, "done", {})


def test_multi_clip_boundaries_and_counts(data, encoder, tmp_path):
    manifest = read_manifest(str(data / "val.csv"))
    embed.embed_split(encoder, manifest, str(tmp_path / "a"), "val", MULTI, progress=False)
    (_, video, clips, info), *_ = official_read(str(tmp_path / "a"), "val")
    assert clips.shape == (4, 64) and info["num_clips"] == 4       # (2.5 - 1) / 0.5 + 1 clips
    assert info["clip_starts"] == [0.0, 0.5, 1.0, 1.5]
    assert info["clip_ends"] == [1.0, 1.5, 2.0, 2.5]
    np.testing.assert_allclose(video, clips.mean(0), rtol=1e-6)
    back_to_back = embed.EmbedOptions(sampling="multi-clip", clip_seconds=1.0, batch_size=4)
    embed.embed_split(encoder, manifest, str(tmp_path / "b"), "val", back_to_back,
                      progress=False)
    (_, _, clips, info), *_ = official_read(str(tmp_path / "b"), "val")
    assert clips.shape == (2, 64)
    assert (info["clip_starts"], info["clip_ends"]) == ([0.0, 1.0], [1.0, 2.0])


def test_chunked_multi_clip_equals_decoding_all_at_once(data, encoder, tmp_path):
    manifest = read_manifest(str(data / "val.csv"))
    record = ManifestSource(manifest)[0]
    options = dict(frames=8, image_size=32, mode="multi-clip", clip_seconds=1.0, clip_stride=0.5)
    whole = clipslib.read_eval_clips(record, **options)
    groups = list(clipslib.iter_eval_clips(record, group=3, **options))
    assert [len(g.video) for g in groups] == [3, 1]
    np.testing.assert_array_equal(np.concatenate([g.video for g in groups]), whole.video)
    np.testing.assert_array_equal(np.concatenate([g.starts for g in groups]), whole.starts)
    # batch_size 3: groups of 3 clips, and clips of two videos share a batch
    chunked = embed.EmbedOptions(sampling="multi-clip", clip_seconds=1.0, clip_stride=0.5,
                                 batch_size=3)
    embed.embed_split(encoder, manifest, str(tmp_path), "val", chunked, progress=False)
    for (_, _, clips, _), index in zip(official_read(str(tmp_path), "val"), range(3)):
        at_once = clipslib.read_eval_clips(ManifestSource(manifest)[index], **options)
        np.testing.assert_allclose(clips, encoder(at_once.video)["pooled"], atol=1e-5)


def test_eight_devices_equal_one_device(data, checkpoint, encoder, tmp_path):
    assert jax.device_count() == 8
    single = load_encoder(checkpoint, mesh=make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    manifest = read_manifest(str(data / "val.csv"))
    for name, model in (("eight", encoder), ("one", single)):
        embed.embed_split(model, manifest, str(tmp_path / name), "val", MULTI, progress=False)
    eight, one = official_read(str(tmp_path / "eight"), "val"), official_read(
        str(tmp_path / "one"), "val")
    assert len(eight) == len(one) == 3
    for a, b in zip(eight, one):
        np.testing.assert_allclose(a[2], b[2], atol=1e-5)
        np.testing.assert_allclose(a[1], b[1], atol=1e-5)


def test_interrupted_run_resumes_without_recomputing(data, encoder, tmp_path):
    manifest = read_manifest(str(data / "train.csv"))
    out = str(tmp_path)
    first = embed.embed_split(encoder, manifest, out, "train", MULTI, limit=3, progress=False)
    assert (first["written"], first["left"], first["status"]) == (3, 5, "limited")
    assert "left: 5 videos (--limit): run the same command again to continue" in \
        embed.summary_text(first)
    split = os.path.join(out, "train")
    stamps = {n: os.stat(os.path.join(split, n)).st_mtime_ns for n in os.listdir(split)}
    assert len(stamps) == 9
    # what a kill in the middle of a video leaves: its npy files without the json, temp files
    with open(os.path.join(split, "000003_c.npy"), "wb") as f:
        f.write(b"half")
    os.makedirs(os.path.join(out, ".tmp_train"), exist_ok=True)
    with open(os.path.join(out, ".tmp_train", "000004_c.npy"), "wb") as f:
        f.write(b"half")
    second = embed.embed_split(encoder, manifest, out, "train", MULTI, progress=False)
    assert (second["already"], second["written"], second["clips"]) == (3, 5, 20)
    assert {n: os.stat(os.path.join(split, n)).st_mtime_ns for n in stamps} == stamps
    assert np.load(os.path.join(split, "000003_c.npy")).shape == (4, 64)
    assert len(official_read(out, "train")) == 8 and not os.path.exists(
        os.path.join(out, ".tmp_train"))
    third = embed.embed_split(encoder, manifest, out, "train", MULTI, progress=False)
    assert (third["already"], third["written"], third["to_embed"]) == (8, 0, 0)


def test_resume_with_other_options_is_refused(data, checkpoint, encoder, tmp_path, capsys):
    manifest = read_manifest(str(data / "val.csv"))
    embed.embed_split(encoder, manifest, str(tmp_path), "val", MULTI, limit=1, progress=False)
    code = embed.main(["--checkpoint", checkpoint, "--input", str(data / "val.csv"),
                       "--output", str(tmp_path), "--sampling", "multi-clip",
                       "--clip_seconds", "1", "--clip_stride", "0.5", "--frames", "4"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"twlv embed: {tmp_path}/val holds embeddings made with frames=8 (now 4); write to "
        "another --output, or use the same checkpoint and options to complete it\n")


def write_bad_copies(data, folder):
    """A video whose last 15% of bytes are noise (its first clips decode, later ones do
    not) and a zero-byte file."""
    with open(data / "videos" / "val" / "000001.mp4", "rb") as f:
        content = f.read()
    os.makedirs(folder, exist_ok=True)
    garbled, empty = os.path.join(folder, "garbled.mp4"), os.path.join(folder, "empty.mp4")
    keep = int(len(content) * 0.85)
    noise = np.random.default_rng(1).integers(0, 256, len(content) - keep, dtype=np.uint8)
    with open(garbled, "wb") as f:
        f.write(content[:keep] + noise.tobytes())
    open(empty, "wb").close()
    return garbled, empty


def test_bad_files_are_listed_and_counted(data, encoder, tmp_path):
    garbled, empty = write_bad_copies(data, str(tmp_path / "bad"))
    good = read_manifest(str(data / "val.csv"))
    rows = [{"path": good.paths[0], "labels": {"label": 1}},
            {"path": garbled, "labels": {"label": 2}},
            {"path": empty, "labels": {"label": 3}}, {"path": good.paths[2], "labels": {"label": 4}}]
    manifest = read_manifest(write_manifest(str(tmp_path / "mixed.csv"), rows))
    options = embed.EmbedOptions(sampling="multi-clip", clip_seconds=1.0, clip_stride=0.5,
                                 batch_size=2)
    # the garbled video fails after its first group of 2 clips was read (and embedded)
    reads = clipslib.iter_eval_clips(ManifestSource(manifest)[1], frames=8, image_size=32,
                                     mode="multi-clip", clip_seconds=1.0, clip_stride=0.5,
                                     group=2)
    assert next(reads).starts.tolist() == [0.0, 0.5]
    with pytest.raises(BadVideo, match=r"^corrupt: .*garbled\.mp4: decoding failed"):
        next(reads)
    out = str(tmp_path / "emb")
    summary = embed.embed_split(encoder, manifest, out, "mixed", options, progress=False)
    assert (summary["written"], summary["clips"]) == (2, 8)
    assert summary["bad_files"] == {garbled: "corrupt", empty: "empty"}
    assert [s[0] for s in official_read(out, "mixed")] == [1, 4]
    assert split_files(os.path.join(out, "mixed")) == [
        "000000.json", "000000_c.npy", "000000_v.npy", "000002.json", "000002_c.npy",
        "000002_v.npy"]
    with open(os.path.join(out, "mixed_bad_files.csv")) as f:
        listed = f.read().splitlines()
    assert listed[0] == "path,reason,detail" and [row.split(",")[:2] for row in listed[1:]] == [
        [garbled, "corrupt"], [empty, "empty"]]
    assert f"bad files: 2, listed in {out}/mixed_bad_files.csv" in embed.summary_text(summary)


def test_a_rerun_where_every_video_left_is_bad_lists_them_and_ends(data, checkpoint, encoder,
                                                                   tmp_path, capsys):
    garbled, empty = write_bad_copies(data, str(tmp_path / "bad"))
    rows = [{"path": garbled, "labels": {"label": 2}}, {"path": empty, "labels": {"label": 3}}]
    manifest = read_manifest(write_manifest(str(tmp_path / "bad.csv"), rows))
    out = str(tmp_path / "emb")
    for _ in range(2):                       # the rerun finds only the same bad files to do
        summary = embed.embed_split(encoder, manifest, out, "bad", embed.EmbedOptions(),
                                    progress=False)
        assert (summary["written"], summary["status"]) == (0, "done")
        assert summary["bad_files"] == {garbled: "corrupt", empty: "empty"}
    assert split_files(os.path.join(out, "bad")) == []
    # The verb says so in one line when nothing of the split could be read.
    code = embed.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "bad.csv"),
                       "--output", str(tmp_path / "cli"), "--split", "bad"])
    err = capsys.readouterr().err.strip().splitlines()[-1]       # after the progress bar
    assert code == 2 and err == (f"twlv embed: no video of bad could be read: 2 of 2 files "
                                 f"unreadable; list: {tmp_path / 'cli' / 'bad_bad_files.csv'}")


def test_duplicate_stems_get_unique_stable_ids(data, tmp_path):
    train, val = read_manifest(str(data / "train.csv")), read_manifest(str(data / "val.csv"))
    rows = [{"path": train.paths[0]}, {"path": val.paths[0]}, {"path": train.paths[1]},
            {"path": train.paths[1]}]
    manifest = read_manifest(write_manifest(str(tmp_path / "dup.csv"), rows))

    def short(path):
        return hashlib.sha1(f"{path}\0nan\0nan".encode()).hexdigest()[:8]

    ids = video_ids(manifest)
    assert ids == [f"000000-{short(train.paths[0])}", f"000000-{short(val.paths[0])}",
                   f"000001-{short(train.paths[1])}-2", f"000001-{short(train.paths[1])}-3"]
    assert video_ids(read_manifest(str(tmp_path / "dup.csv"))) == ids


def link_videos(data, folder, layout):
    """A folder of class subfolders: {relative path: synthetic video} (symlinks)."""
    for relative, source in layout.items():
        os.makedirs(os.path.dirname(os.path.join(folder, relative)), exist_ok=True)
        os.symlink(data / "videos" / source, os.path.join(folder, relative))
    return str(folder)


def test_folder_splits_share_one_class_map(data, encoder, tmp_path):
    train = link_videos(data, tmp_path / "train", {"cat/a.mp4": "train/000000.mp4",
                                                   "dog/b.mp4": "train/000001.mp4"})
    val = link_videos(data, tmp_path / "val", {"dog/c.mp4": "val/000000.mp4"})
    out = str(tmp_path / "emb")
    options = embed.EmbedOptions(batch_size=4)
    for split, folder in (("train", train), ("val", val)):
        embed.embed_split(encoder, read_manifest_or_folder(folder), out, split, options,
                          progress=False)
    assert [s[0] for s in official_read(out, "train")] == [0, 1]
    assert [s[0] for s in official_read(out, "val")] == [1]          # dog, not 0
    with open(os.path.join(out, "classes.json")) as f:
        assert json.load(f) == {"label": ["cat", "dog"]}
    eel = link_videos(data, tmp_path / "test", {"eel/d.mp4": "val/000001.mp4"})
    with pytest.raises(EmbedError, match=r"^class folders eel of .*/test are not in the class "
                                         r"map of .*/emb/classes.json; give every split's "
                                         r"classes with --classes FILE$"):
        embed.embed_split(encoder, read_manifest_or_folder(eel), out, "test", options)
    flat = link_videos(data, tmp_path / "flat", {"e.mp4": "val/000002.mp4"})
    embed.embed_split(encoder, read_manifest_or_folder(flat), out, "unlabelled", options,
                      progress=False)
    with open(os.path.join(out, "unlabelled", "e.json")) as f:
        assert "annotation" not in json.load(f)


def test_label_column_and_classes_file(data, encoder, tmp_path):
    manifest = read_manifest(str(data / "val.csv"))
    out = str(tmp_path)
    embed.embed_split(encoder, manifest, out, "val", embed.EmbedOptions(label="label_motion"),
                      progress=False)
    assert [s[0] for s in official_read(out, "val")] == manifest.labels["label_motion"].tolist()
    with open(os.path.join(out, "classes.json")) as f:
        assert json.load(f) == {"label_motion": ["E", "NE", "N", "NW", "W", "SW", "S", "SE"]}
    classes = tmp_path / "two.json"
    classes.write_text(json.dumps({"label": ["x", "y"]}))
    with pytest.raises(EmbedError, match=r"^.*val.csv: label=\d is not a class index of "
                                         r".*two.json \(2 classes, 0..1\)"):
        embed.embed_split(encoder, manifest, str(tmp_path / "other"), "val",
                          embed.EmbedOptions(), classes_path=str(classes))
    with pytest.raises(EmbedError, match=r"^--label label_colour: .*val.csv has no such label "
                                         r"column \(label columns: label, label_appearance, "
                                         r"label_motion\)$"):
        embed.embed_split(encoder, manifest, out, "val", embed.EmbedOptions(label="label_colour"))


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/nowhere"], "checkpoint {tmp}/nowhere does not exist"),
    (["--input", "{tmp}/none.csv"], "input {tmp}/none.csv does not exist"),
    (["--input", "{videos}"], "--split is required when --input is a folder ({videos})"),
    (["--frames", "3"], "--frames must be a positive multiple of the checkpoint's tubelet (2), "
                        "got 3"),
    (["--sampling", "dense"], "argument --sampling: invalid choice: 'dense' (choose from "
                              "uniform, multi-clip)"),
    (["--limit", "-1"], "--limit must be >= 0, got -1"),
])
def test_errors_are_one_line_and_exit_2(data, checkpoint, tmp_path, capsys, args, message):
    values = {"tmp": str(tmp_path), "videos": str(data / "videos")}
    given = {"--checkpoint": checkpoint, "--input": str(data / "val.csv"),
             "--output": str(tmp_path / "out")}
    for flag, value in zip(args[::2], args[1::2]):
        given[flag] = value.format(**values)
    assert embed.main([item for pair in given.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.replace("'uniform', 'multi-clip'", "uniform, multi-clip") == \
        f"twlv embed: {message.format(**values)}\n"


def test_checkpoint_folder_without_steps_is_an_error(data, tmp_path, capsys):
    os.makedirs(tmp_path / "empty" / "checkpoints")
    assert embed.main(["--checkpoint", str(tmp_path / "empty"), "--input",
                       str(data / "val.csv"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"twlv embed: no checkpoint under "
                                              f"'{tmp_path}/empty'")
    shutil.rmtree(tmp_path / "empty")

"""`twlv data synth | build | prepare` on real files, through the CLI entry point."""

import csv
import filecmp
import json
import math
import os
from collections import Counter
from fractions import Fraction

import av
import numpy as np
import pytest
from test_data_corpus import counter_frames, write_bad_corpus

from twlv_jax import cli as twlv_cli
from twlv_jax.data.cli import main
from twlv_jax.data.encode import VideoWriter, write_video
from twlv_jax.data.manifest import read_manifest, write_manifest
from twlv_jax.data.sources import TfdsSource
from twlv_jax.data.synthetic import COLOURS, DIRECTIONS, SHAPES, render_video

SYNTH_ARGS = ["--train", "72", "--val", "9", "--frames", "12", "--size", "32",
              "--workers", "1"]


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synth") / "set")
    assert main(["synth", "--output", folder, *SYNTH_ARGS]) == 0
    return folder


def test_synth_writes_balanced_labelled_mp4s_and_manifests(synth_dir):
    train, val = read_rows(f"{synth_dir}/train.csv"), read_rows(f"{synth_dir}/val.csv")
    assert (len(train), len(val)) == (72, 9)
    assert list(train[0]) == ["path", "label", "label_appearance", "label_motion",
                              "appearance", "direction"]
    assert all(row["label"] == row["label_appearance"] for row in train)
    pairs = Counter((row["label_appearance"], row["label_motion"]) for row in train)
    assert len(pairs) == 72 and set(pairs.values()) == {1}  # every combination once
    with open(f"{synth_dir}/classes.json") as f:
        classes = json.load(f)
    assert classes["label_motion"] == list(DIRECTIONS) and len(classes["label_appearance"]) == 9
    path = os.path.join(synth_dir, train[0]["path"])
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert (stream.frames, stream.codec_context.width, stream.codec_context.height) == (
            12, 32, 32)
        assert float(stream.average_rate) == 16.0


def test_synth_is_deterministic_under_its_seed(synth_dir, tmp_path):
    again = str(tmp_path / "again")
    assert main(["synth", "--output", again, *SYNTH_ARGS]) == 0
    for name in ("train.csv", "val.csv", "videos/train/000005.mp4", "videos/val/000008.mp4"):
        assert filecmp.cmp(f"{synth_dir}/{name}", f"{again}/{name}", shallow=False), name
    other = str(tmp_path / "other")
    assert main(["synth", "--output", other, *SYNTH_ARGS, "--seed", "1"]) == 0
    assert not filecmp.cmp(f"{synth_dir}/videos/train/000005.mp4",
                           f"{other}/videos/train/000005.mp4", shallow=False)


@pytest.mark.parametrize("motion", range(8))
def test_synthetic_motion_label_is_the_direction_the_shape_moves(motion):
    rng = np.random.default_rng(motion)
    colour = 1  # green
    video = render_video(rng, appearance=colour, motion=motion, frames=10, size=64,
                         distractors=0)
    target = np.array(COLOURS[list(COLOURS)[colour]], float)
    mask = np.abs(video.astype(float) - target).sum(axis=-1) < 60  # (T, H, W)
    ys, xs = [np.array([np.nonzero(m)[axis].mean() for m in mask]) for axis in (0, 1)]
    angle = math.degrees(math.atan2(-(ys[-1] - ys[0]), xs[-1] - xs[0])) % 360
    assert min(abs(angle - 45 * motion), 360 - abs(angle - 45 * motion)) < 10
    assert SHAPES[colour // len(COLOURS)] == "circle"


def test_build_writes_a_tfds_dataset_and_quarantines_bad_files(synth_dir, tmp_path, capsys):
    corpus = write_bad_corpus(tmp_path / "bad")
    rows = [{"path": os.path.join(synth_dir, r["path"]),
             "labels": {k: int(v) for k, v in r.items() if k.startswith("label")}}
            for r in read_rows(f"{synth_dir}/val.csv")]
    rows += [{"path": corpus[case][0], "labels": rows[0]["labels"]}
             for case in ("zero_bytes", "audio_only", "truncated")]
    manifest = write_manifest(str(tmp_path / "val.csv"), rows)
    output = str(tmp_path / "tfds")
    assert main(["build", "--input", manifest, "--output", output, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "val: 9" in printed and "3 of 12 files unreadable" in printed
    listed = read_rows(f"{output}/quarantine.csv")
    assert {r["path"]: r["reason"] for r in listed} == {
        corpus["zero_bytes"][0]: "empty", corpus["audio_only"][0]: "no_video_stream",
        corpus["truncated"][0]: "truncated"}
    source = TfdsSource(output, "val")
    assert len(source) == 9
    assert source.label_names == ("label", "label_appearance", "label_motion")
    record = source[0]
    with open(rows[0]["path"], "rb") as f:
        assert record["data"] == f.read()  # the MP4 bytes, stored as they are
    assert record["labels"] == rows[0]["labels"] and not record["is_image"]


def test_build_splits_a_folder_with_split_manifests(synth_dir, tmp_path):
    output = str(tmp_path / "tfds")
    assert main(["build", "--input", synth_dir, "--output", output, "--workers", "2"]) == 0
    assert (len(TfdsSource(output, "train")), len(TfdsSource(output, "val"))) == (72, 9)


def test_prepare_reencodes_upright_at_the_short_side_with_short_gops(tmp_path, capsys):
    source = tmp_path / "source"
    rotated = np.zeros((8, 40, 64, 3), np.uint8)
    rotated[:, :20, :, 0] = 250  # red on top of the coded frame
    rows = [
        {"path": write_video(str(source / "rotated.mp4"), rotated, fps=8, rotation=90),
         "labels": {"label": 1}},
        {"path": write_video(str(source / "gray.mp4"), counter_frames(30, 33, 47), fps=10,
                             gop=250, pix_fmt="gray", crf=0), "labels": {"label": 2},
         "start": 0.5, "end": 2.0},
    ]
    vfr_times = [0.0, 0.1, 0.15, 0.5, 0.55, 1.2, 1.3, 2.0]
    with VideoWriter(str(source / "vfr.mp4"), width=48, height=32, fps=5,
                     time_base=Fraction(1, 1000)) as writer:
        for frame, time in zip(counter_frames(len(vfr_times)), vfr_times):
            writer.write(frame, time=time)
    rows.append({"path": str(source / "vfr.mp4"), "labels": {"label": 3}})
    still = str(source / "still.png")
    av.VideoFrame.from_ndarray(rotated[0], format="rgb24").save(still)
    rows.append({"path": still, "labels": {"label": 4}})
    corpus = write_bad_corpus(source / "bad")
    rows += [{"path": corpus[case][0], "labels": {"label": 0}}
             for case in ("random_bytes", "garbled_frames")]
    manifest = write_manifest(str(source / "train.csv"), rows)

    output = str(tmp_path / "prepared")
    assert main(["prepare", "--input", manifest, "--output", output, "--short_side", "16",
                 "--gop", "4", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 files" in printed and "2 of 6 files unreadable" in printed

    prepared = read_manifest(f"{output}/train.csv")
    assert len(prepared) == 4
    out = [prepared.row(i) for i in range(4)]
    assert [r["labels"]["label"] for r in out] == [1, 2, 3, 4]
    assert (out[1]["start"], out[1]["end"]) == (0.5, 2.0)
    assert out[3]["path"] == still  # images are kept as they are
    with av.open(out[0]["path"]) as container:  # rotated: now upright, portrait
        frames = [f for f in container.decode(video=0)]
    assert (frames[0].width, frames[0].height, frames[0].rotation) == (16, 26, 0)
    assert frames[0].to_ndarray(format="rgb24")[:, :6, 0].mean() > 200  # red on the left
    with av.open(out[1]["path"]) as container:
        stream = container.streams.video[0]
        keyframes = [e.timestamp * stream.time_base for e in stream.index_entries
                     if e.is_keyframe]
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert max(np.diff([float(k) for k in keyframes])) <= 0.4 + 1e-6  # <= 4 frames apart
    assert decoded.shape == (30, 16, 24, 3)
    steps = np.diff(decoded.reshape(30, -1).mean(axis=1))
    assert steps.min() > 2 and steps.max() < 7  # every frame kept once, in order
    with av.open(out[2]["path"]) as container:
        times = [round(f.time, 3) for f in container.decode(video=0)]
    assert times == vfr_times
    assert {r["path"]: r["reason"] for r in read_rows(f"{output}/quarantine.csv")} == {
        corpus["random_bytes"][0]: "not_a_video", corpus["garbled_frames"][0]: "corrupt"}
    assert not os.path.exists(os.path.join(output, "videos", "bad", "garbled.mp4"))


def test_each_verb_has_help_and_bad_input_is_a_clear_error(tmp_path, capsys):
    for verb in ("synth", "build", "prepare"):
        with pytest.raises(SystemExit) as caught:
            main([verb, "--help"])
        assert caught.value.code == 0
        assert "--output" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        twlv_cli.main(["data", "--help"])
    assert "synth" in capsys.readouterr().out
    missing = str(tmp_path / "nowhere")
    assert main(["build", "--input", missing, "--output", str(tmp_path / "o")]) == 2
    assert f"twlv data build: error: input {missing} does not exist" in capsys.readouterr().err
    assert main(["synth", "--output", str(tmp_path / "s"), "--frames", "1", "--size", "33"]) == 2
    assert ("synthetic set: frames must be >= 2, got 1; size must be an even number of pixels "
            ">= 16, got 33") in capsys.readouterr().err

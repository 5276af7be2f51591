"""Manifests (CSV, JSONL, folders), mixture specs, and the errors bad data paths give."""

import json
import os
import re

import ml_collections
import pytest

from twlv_jax.data import pipeline
from twlv_jax.data.manifest import (
    ManifestError,
    read_manifest,
    read_manifest_or_folder,
    read_splits,
    scan_folder,
    write_manifest,
)
from twlv_jax.data.sources import DataError, open_source, parse_mixture


def write_text(path, text: str) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def data_config(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(source="manifest", path="", split="train", stride=2, crop_scale=(0.3, 1.0),
               crop_ratio=(0.75, 1.35), flip=False, short_video="loop", workers=0,
               max_bad_fraction=0.5)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def test_csv_manifest_rows_labels_times_and_relative_paths(tmp_path):
    path = write_text(tmp_path / "lists" / "train.csv",
                      "path,label,label_motion,start,end,comment\n"
                      "../videos/a.mp4,3,7,,,first\n"
                      "/abs/b.mp4,0,1,1.5,4,\n")
    manifest = read_manifest(path)
    assert len(manifest) == 2
    assert manifest.row(0) == {"path": str(tmp_path / "videos" / "a.mp4"), "start": None,
                               "end": None, "labels": {"label": 3, "label_motion": 7}}
    assert manifest.row(1) == {"path": "/abs/b.mp4", "start": 1.5, "end": 4.0,
                               "labels": {"label": 0, "label_motion": 1}}


def test_jsonl_manifest_matches_csv(tmp_path):
    rows = [{"path": "a.mp4", "label": 2}, {"path": "b.mp4", "label": 5, "start": 0.5}]
    path = write_text(tmp_path / "m.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    manifest = read_manifest(path)
    assert [manifest.row(i)["labels"]["label"] for i in range(2)] == [2, 5]
    assert manifest.row(1)["start"] == 0.5 and manifest.row(0)["start"] is None


def test_write_then_read_round_trips(tmp_path):
    rows = [{"path": str(tmp_path / "v" / "a.mp4"), "labels": {"label": 1}, "start": 2.0,
             "end": None}, {"path": "/else/b.mp4", "labels": {"label": 4}}]
    path = write_manifest(str(tmp_path / "out.csv"), rows)
    with open(path) as f:
        assert f.read().splitlines() == ["path,label,start,end", "v/a.mp4,1,2,",
                                         "/else/b.mp4,4,,"]
    manifest = read_manifest(path)
    assert manifest.row(0)["path"] == rows[0]["path"] and manifest.row(0)["start"] == 2.0


@pytest.mark.parametrize("name,text,message", [
    ("nopath.csv", "file,label\na.mp4,1\n", "no 'path' column in the header"),
    ("blank.csv", "path,label\na.mp4,1\n,2\n", "line 3: no 'path' value"),
    ("word.csv", "path,label\na.mp4,cat\n", "line 2: label='cat' is not an integer"),
    ("float.csv", "path,label\na.mp4,1.5\n", "line 2: label='1.5' is not an integer"),
    ("empty_label.csv", "path,label_motion\na.mp4,\n", "line 2: label_motion is empty"),
    ("time.csv", "path,start\na.mp4,soon\n", "line 2: start='soon' is not a number"),
    ("order.csv", "path,start,end\na.mp4,3,2\n", "line 2: end (2.0) must be after start"),
    ("extra.csv", "path,label\na.mp4,1,9\n", "line 2: more values than the 2 header"),
    ("header_only.csv", "path,label\n", "has no rows"),
    ("bad.jsonl", '{"path": "a.mp4"}\n{"path": \n', "line 2: not valid JSON"),
    ("list.jsonl", '["a.mp4", 1]\n', "line 1: expected a JSON object"),
    ("boolean.jsonl", '{"path": "a.mp4", "label": true}\n', "label=True is not an integer"),
    ("mixed.jsonl", '{"path": "a.mp4", "label": 1}\n{"path": "b.mp4"}\n',
     "line 2: label columns [] differ"),
    ("notes.txt", "path\na.mp4\n", "expected a .csv or .jsonl file"),
])
def test_malformed_manifests_name_the_file_line_and_problem(tmp_path, name, text, message):
    path = write_text(tmp_path / name, text)
    with pytest.raises(ManifestError, match=re.escape(message)) as caught:
        read_manifest(path)
    assert path in str(caught.value)


def test_folder_is_scanned_with_labels_from_subfolders(tmp_path):
    for name in ("dogs/b.mp4", "cats/a.mp4", "cats/c.MOV", "cats/readme.txt"):
        write_text(tmp_path / "clips" / name, "x")
    manifest = scan_folder(str(tmp_path / "clips"))
    rows = [manifest.row(i) for i in range(len(manifest))]
    assert [(os.path.basename(r["path"]), r["labels"]["label"]) for r in rows] == [
        ("a.mp4", 0), ("c.MOV", 0), ("b.mp4", 1)]
    write_text(tmp_path / "flat" / "a.mp4", "x")
    assert scan_folder(str(tmp_path / "flat")).labels == {}
    with pytest.raises(ManifestError, match="holds no files ending in"):
        scan_folder(str(tmp_path / "clips" / "cats"), (".png",))


def test_folder_with_split_manifests_needs_the_split(tmp_path):
    write_text(tmp_path / "train.csv", "path,label\na.mp4,1\n")
    write_text(tmp_path / "val.csv", "path,label\nb.mp4,2\nc.mp4,3\n")
    assert len(read_manifest_or_folder(str(tmp_path), "val")) == 2
    with pytest.raises(ManifestError, match=r"holds split manifests \(train, val\)"):
        read_manifest_or_folder(str(tmp_path), "test")
    splits = read_splits(str(tmp_path))
    assert {k: len(v) for k, v in splits.items()} == {"train": 1, "val": 2}
    assert list(read_splits(str(tmp_path / "val.csv"))) == ["val"]


def test_mixture_spec_parses_and_rejects_bad_items():
    assert [(c.source, c.path, c.weight) for c in parse_mixture(
        "manifest:/d/k.csv@0.6, images:/d/in1k@0.4,tfds:/d/w")] == [
        ("manifest", "/d/k.csv", 0.6), ("images", "/d/in1k", 0.4), ("tfds", "/d/w", 1.0)]
    with pytest.raises(DataError, match="expected SOURCE:PATH@WEIGHT"):
        parse_mixture("videos:/d/k.csv@1")
    with pytest.raises(DataError, match="weight '-2' must be a positive number"):
        parse_mixture("manifest:/d/k.csv@-2")
    with pytest.raises(DataError, match="needs at least one"):
        parse_mixture(" , ")


def test_data_path_errors_name_the_key_and_the_path(tmp_path):
    def make(**overrides):
        return pipeline.make_train_iterator(
            data_config(**overrides), frames=4, image_size=16, global_batch_size=2, seed=0,
            process_index=0, process_count=1, quarantine_path=None)

    with pytest.raises(DataError, match=r"data\.path is empty: set --config\.data\.path"):
        make(path="")
    with pytest.raises(DataError, match=re.escape(f"data.path '{tmp_path}/nope.csv' does not")):
        make(path=str(tmp_path / "nope.csv"))
    bad = write_text(tmp_path / "bad.csv", "path,label\na.mp4,x\n")
    with pytest.raises(DataError, match=re.escape(f"manifest {bad}, line 2: label='x'")):
        make(path=bad)
    with pytest.raises(DataError, match=r"data\.source: expected one of manifest, tfds"):
        make(source="youtube", path=bad)
    with pytest.raises(DataError, match="no TFDS dataset"):
        make(source="tfds", path=str(tmp_path))
    with pytest.raises(DataError, match=r"data\.crop_scale must be \(low, high\)"):
        make(path=bad, crop_scale=(0.5, 1.5))
    with pytest.raises(DataError, match=r"data\.short_video must be one of"):
        make(path=bad, short_video="wrap")
    with pytest.raises(DataError, match="global batch size 3 must be divisible by the 2"):
        pipeline.make_train_iterator(data_config(path=bad), frames=4, image_size=16,
                                     global_batch_size=3, seed=0, process_index=0,
                                     process_count=2, quarantine_path=None)


def test_open_source_reads_images_folders_as_images(tmp_path):
    write_text(tmp_path / "imgs" / "cat" / "1.png", "x")
    write_text(tmp_path / "imgs" / "dog" / "2.jpg", "x")
    write_text(tmp_path / "imgs" / "dog" / "clip.mp4", "x")
    source = open_source("images", str(tmp_path / "imgs"))
    assert len(source) == 2 and source.label_names == ("label",)
    assert source[1]["is_image"] and source[1]["labels"] == {"label": 1}

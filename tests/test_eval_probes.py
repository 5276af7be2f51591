"""k-NN, linear and attentive probes: numbers against plain references and scikit-learn,
embedding folders read as the official code reads them, the CLIs end to end."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from twlv_jax.eval import knn, probes
from twlv_jax.eval.attentive_probe import attentive_probe
from twlv_jax.eval.folders import FolderError, read_embeddings, read_split
from twlv_jax.eval.linear_probe import linear_probe, official_schedule, predict_proba

DIM, CLASSES = 16, 4


def blobs(count, *, noise=1.0, seed=0, dim=DIM, classes=CLASSES):
    """(x (count, dim), y (count,)): Gaussian classes around fixed random centres."""
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, count)
    return (centres[y] + noise * rng.normal(size=(count, dim))).astype(np.float32), y


def clip_videos(videos, *, seed, noise=1.0):
    """Per video 1-4 clips around a video point: (clips (R, D), labels (V,), groups (R,))."""
    rng = np.random.default_rng(seed)
    points, labels = blobs(videos, noise=noise, seed=seed)
    counts = rng.integers(1, 5, videos)
    groups = np.repeat(np.arange(videos), counts)
    clips = points[groups] + 0.5 * rng.normal(size=(len(groups), DIM)).astype(np.float32)
    return clips.astype(np.float32), labels, groups


def write_split(folder, clips, labels, groups, *, extra=True):
    """The official layout: <id>.json, <id>_c.npy (clips, D), <id>_v.npy (D,) per video."""
    os.makedirs(folder, exist_ok=True)
    for video, label in enumerate(labels):
        rows = clips[groups == video]
        name = os.path.join(folder, f"vid{video:04d}")
        with open(name + ".json", "w") as f:
            json.dump({"annotation": int(label), "num_frames": 48, "duration": 2.0,
                       "clip_starts": [0.0] * len(rows), "clip_ends": [2.0] * len(rows)}, f)
        np.save(name + "_c.npy", rows)
        np.save(name + "_v.npy", rows.mean(0))
    if extra:  # not a video: only *.json names videos
        with open(os.path.join(folder, "notes.txt"), "w") as f:
            f.write("not a video\n")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "emb"
    for split, (videos, seed) in {"train": (60, 0), "val": (30, 1)}.items():
        write_split(root / split, *clip_videos(videos, seed=seed, noise=1.6))
    return root


def reference_knn(bank, bank_labels, queries, query_groups, *, k, t, classes):
    """The official `knn_predict`, one query at a time; clip scores summed per video."""
    def unit(v):
        return v / np.linalg.norm(v)
    predictions = []
    for video in np.unique(query_groups):
        total = np.zeros(classes)
        for q in queries[query_groups == video]:
            sims = np.array([unit(q) @ unit(b) for b in bank])
            for i in np.argsort(-sims)[:k]:
                total[bank_labels[i]] += np.exp(sims[i] / t)
        predictions.append(total.argmax())
    return np.array(predictions)


@pytest.mark.parametrize("mode,k", [("video", 200), ("video", 5), ("clip", 200), ("clip", 7)])
def test_knn_cli_matches_the_reference(folder, mode, k, capsys):
    train, val = read_split(str(folder), "train"), read_split(str(folder), "val")
    bank, bank_labels, _ = train.rows(mode)
    queries, _, groups = val.rows(mode)
    expected = np.mean(reference_knn(bank, bank_labels, queries, groups, k=k, t=0.1,
                                     classes=CLASSES) == val.labels)
    assert 0.3 < expected < 1.0      # a test that can fail either way
    assert knn.main(["--embeddings", str(folder), "--mode", mode, "--k", str(k)]) == 0
    result = json.loads((folder / f"knn_{mode}.json").read_text())
    assert result["top1"] == pytest.approx(expected)
    assert (result["videos"], result["bank_size"]) == (30, len(bank))
    assert (f"k-NN top-1: {100 * expected:.2f}% ({round(expected * 30)}/30 val videos)"
            in capsys.readouterr().out)


def test_knn_scores_are_the_weighted_votes():
    bank, bank_labels = blobs(50, seed=0)
    queries = blobs(7, seed=1)[0].astype(np.float64)
    bank = bank.astype(np.float64)
    scores = knn.knn_scores(bank, bank_labels, queries, num_classes=CLASSES, k=10,
                            temperature=0.1)
    unit_b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    for q, row in zip(queries, scores):
        sims = unit_b @ (q / np.linalg.norm(q))
        top = np.argsort(-sims)[:10]
        expected = np.bincount(bank_labels[top], np.exp(sims[top] / 0.1), CLASSES)
        np.testing.assert_allclose(row, expected, rtol=1e-10)


def test_folders_read_only_json_named_videos(folder):
    np.save(folder / "train" / "orphan_c.npy", np.zeros((2, DIM), np.float32))
    train, val, classes = read_embeddings(str(folder), progress=False)
    assert train.ids == [f"vid{i:04d}" for i in range(60)] and classes == CLASSES
    assert len(val.ids) == 30 and val.labels.dtype == np.int64
    (folder / "classes.json").write_text(json.dumps({"label": list("abcdef")}))
    assert read_embeddings(str(folder), progress=False)[2] == 6   # `twlv embed`'s class map
    assert train.clips.shape[0] == len(train.groups) and train.videos.shape == (60, DIM)
    np.testing.assert_allclose(train.videos[3], train.clips[train.groups == 3].mean(0),
                               rtol=1e-6)


def test_folder_errors_name_the_file(folder):
    path = folder / "val" / "vid0002.json"
    path.write_text(json.dumps({"num_frames": 48}))
    with pytest.raises(FolderError, match=re.escape(
            f"{path}: no 'annotation' key (the video's integer class index)")):
        read_embeddings(str(folder), progress=False)
    path.write_text(json.dumps({"annotation": 4}))
    with pytest.raises(FolderError, match=re.escape(
            f"{path}: annotation 4 is not below the class count 4 (from --num_classes)")):
        read_embeddings(str(folder), num_classes=4, progress=False)
    (folder / "classes.json").write_text(json.dumps({"label": ["a", "b", "c", "d"]}))
    with pytest.raises(FolderError, match=re.escape(
            f"{path}: annotation 4 is not below the class count 4 (from "
            f"{folder / 'classes.json'})")):
        read_embeddings(str(folder), progress=False)
    path.write_text(json.dumps({"annotation": 0}))
    path = folder / "val" / "vid0003_v.npy"
    np.save(path, np.zeros((1, DIM), np.float32))
    with pytest.raises(FolderError, match=re.escape(
            f"{path}: expected a 1-d array (D,), got shape (1, 16)")):
        read_embeddings(str(folder), progress=False)


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    done = subprocess.run([sys.executable, "-m", "twlv_jax", "knn", "--embeddings", str(missing)],
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (
        2, f"twlv knn: embedding folder {missing} does not exist\n")
    (tmp_path / "emb" / "train").mkdir(parents=True)
    (tmp_path / "emb" / "val").mkdir()
    for main, verb in ((knn.main, "knn"), (probes.main, "probe")):
        assert main(["--embeddings", str(tmp_path / "emb")]) == 2
        assert capsys.readouterr().err == (f"twlv {verb}: {tmp_path / 'emb' / 'train'} holds "
                                           "no <id>.json files (an empty split)\n")


def test_output_inside_a_split_folder_is_refused(folder, capsys):
    inside = folder / "val" / "result.json"
    assert knn.main(["--embeddings", str(folder), "--output", str(inside)]) == 2
    assert capsys.readouterr().err == (
        f"twlv knn: --output {inside} is inside the split folder {folder / 'val'}, where every "
        "*.json is read as a video; write it elsewhere\n")


def test_official_schedule_warms_up_then_follows_a_cosine():
    schedule = official_schedule(1e-3, 10, 110)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(9)) == pytest.approx(1e-3)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(5e-4)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)


def test_linear_probe_agrees_with_logistic_regression():
    train_x, train_y = blobs(400, noise=1.4, seed=0)
    val_x, val_y = blobs(200, noise=1.4, seed=1)
    ours = linear_probe(train_x, train_y, val_x, val_y, batch_size=32, progress=False)
    reference = LogisticRegression(max_iter=2000).fit(train_x, train_y).score(val_x, val_y)
    assert 0.75 < reference < 0.98
    assert abs(ours["top1"] - reference) < 0.04
    assert len(ours["loss"]) == 150 and ours["loss"][-1] < ours["loss"][0]
    assert [h["epoch"] for h in ours["history"]] == list(range(10, 151, 10))
    again = linear_probe(train_x, train_y, val_x, val_y, batch_size=32, progress=False)
    assert again["loss"] == ours["loss"]
    np.testing.assert_array_equal(again["params"]["w"], ours["params"]["w"])


def test_linear_probe_separable_and_random_labels():
    train_x, train_y = blobs(300, noise=0.3, seed=0)
    val_x, val_y = blobs(200, noise=0.3, seed=1)
    assert linear_probe(train_x, train_y, val_x, val_y, epochs=30, warmup_epochs=3,
                        batch_size=16, progress=False)["top1"] == 1.0
    shuffled = np.random.default_rng(5).permutation(train_y)
    chance = linear_probe(train_x, shuffled, val_x, val_y, epochs=30, warmup_epochs=3,
                          batch_size=16, progress=False)["top1"]
    assert abs(chance - 1 / CLASSES) < 0.12


def test_linear_probe_clip_mode_averages_the_softmax_over_a_videos_clips():
    train_x, train_labels, train_groups = clip_videos(200, seed=0)
    val_x, val_labels, val_groups = clip_videos(100, seed=1)
    result = linear_probe(train_x, train_labels[train_groups], val_x, val_labels[val_groups],
                          train_groups=train_groups, val_groups=val_groups, epochs=40,
                          warmup_epochs=4, batch_size=16, progress=False)
    probs = predict_proba(result["params"], val_x)
    mean = np.stack([probs[val_groups == v].mean(0) for v in range(100)])
    assert result["top1"] == np.mean(mean.argmax(1) == val_labels)
    assert result["top1"] > 0.7 and result["steps_per_epoch"] == 200 // 16
    with pytest.raises(ValueError, match="rows of the same video carry different labels"):
        linear_probe(train_x, np.arange(len(train_x)) % CLASSES, val_x,
                     val_labels[val_groups], train_groups=train_groups, progress=False)


def test_probe_cli_prints_and_writes_the_library_result(folder, capsys):
    assert probes.main(["--embeddings", str(folder), "--mode", "clip", "--epochs", "20",
                        "--warmup_epochs", "2", "--batch_size", "32", "--seed", "3"]) == 0
    result = json.loads((folder / "linear_probe_clip.json").read_text())
    train, val = read_split(str(folder), "train"), read_split(str(folder), "val")
    x, y, g = train.rows("clip")
    vx, vy, vg = val.rows("clip")
    expected = linear_probe(x, y, vx, vy, train_groups=g, val_groups=vg, epochs=20,
                            warmup_epochs=2, batch_size=32, seed=3, progress=False)
    assert result["top1"] == expected["top1"] and result["loss"] == expected["loss"]
    assert (result["mode"], result["videos"], result["steps_per_epoch"]) == ("clip", 30, 1)
    printed = capsys.readouterr().out
    assert f"linear probe top-1: {100 * result['top1']:.2f}% " in printed
    assert f"wrote {folder / 'linear_probe_clip.json'}" in printed


def marked_tokens(count, *, tokens=12, seed=0):
    """One marked token carries the class; the others carry random classes' centres, so
    the mean over tokens says little about the class and attention must find the mark."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(CLASSES, DIM))
    mark = np.random.default_rng(98).normal(size=DIM)
    y = rng.integers(0, CLASSES, count)
    x = centres[rng.integers(0, CLASSES, (count, tokens))] + 0.3 * rng.normal(
        size=(count, tokens, DIM))
    where = rng.integers(0, tokens, count)
    x[np.arange(count), where] = 3 * mark + centres[y]
    return x.astype(np.float32), y


def test_attentive_probe_finds_the_informative_token():
    train_x, train_y = marked_tokens(400, seed=0)
    val_x, val_y = marked_tokens(100, seed=1)
    result = attentive_probe(train_x, train_y, val_x, val_y, heads=2, batch_size=16,
                             progress=False)
    mean_pooled = linear_probe(train_x.mean(1), train_y, val_x.mean(1), val_y, epochs=30,
                               warmup_epochs=3, batch_size=16, progress=False)["top1"]
    assert result["top1"] > 0.9 and mean_pooled < 0.6
    assert result["loss"][-1] < 0.1 < result["loss"][0]
    short = {"heads": 2, "epochs": 2, "batch_size": 16, "progress": False}
    first = attentive_probe(train_x[:64], train_y[:64], val_x, val_y, **short)
    assert attentive_probe(train_x[:64], train_y[:64], val_x, val_y, **short) == first


def test_attentive_probe_cli_end_to_end(trained, capsys):
    run, videos = trained
    assert probes.main(["--attentive", "--checkpoint", str(run), "--input", str(videos),
                        "--label", "label_motion", "--epochs", "3", "--batch_size", "8"]) == 0
    output = videos / "attentive_probe_label_motion.json"
    result = json.loads(output.read_text())
    assert (result["probe"], result["label"], result["videos"], result["step"]) == (
        "attentive", "label_motion", 8, 2)
    assert (result["heads"], result["steps_per_epoch"], len(result["loss"])) == (2, 3, 3)
    printed = capsys.readouterr().out
    assert f"attentive probe top-1: {100 * result['top1']:.2f}% " in printed
    assert f"wrote {output}" in printed


def test_attentive_probe_cli_errors(trained, tmp_path, capsys):
    run, videos = trained
    (tmp_path / "train.csv").write_text((videos / "train.csv").read_text())
    assert probes.main(["--attentive", "--checkpoint", str(run), "--input", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"twlv probe: --input {tmp_path} must be a folder holding train and val manifests "
        "(train.csv and val.csv, or .jsonl)\n")
    assert probes.main(["--attentive", "--checkpoint", str(run), "--input", str(videos),
                        "--label", "label_colour"]) == 2
    assert capsys.readouterr().err == (
        f"twlv probe: {videos / 'train.csv'} has no label column 'label_colour' (label "
        "columns: label, label_appearance, label_motion)\n")

"""Forward vs time-reversed separability: numpy LDA against scikit-learn, real encoders
that are order-free and order-aware, and `twlv motion` end to end on a real checkpoint."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import cross_val_score

from twlv_jax import models
from twlv_jax.data.transforms import normalize
from twlv_jax.eval import motion
from twlv_jax.eval.lda import fit_lda, ledoit_wolf, pair_folds, paired_cv, pca
from twlv_jax.models import posembed


def shifted_pairs(count=40, dim=16, shift=0.3, seed=0):
    """Per-video appearance (large) plus a direction offset +shift / -shift (small)."""
    rng = np.random.default_rng(seed)
    base = 3 * rng.normal(size=(count, dim))
    direction = shift * rng.normal(size=dim)
    return (base + direction + 0.5 * rng.normal(size=(count, dim)),
            base - direction + 0.5 * rng.normal(size=(count, dim)))


def sk_lda():
    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")


def test_ledoit_wolf_and_lda_match_scikit_learn():
    forward, backward = shifted_pairs()
    np.testing.assert_allclose(ledoit_wolf(forward), sk_ledoit_wolf(forward)[0], rtol=1e-10)
    x, y = np.concatenate([forward, backward]), np.repeat([0, 1], len(forward))
    w, b = fit_lda(x, y)
    np.testing.assert_allclose(x @ w + b, sk_lda().fit(x, y).decision_function(x), rtol=1e-8,
                               atol=1e-8)


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_separability_matches_cross_val_score_on_the_same_folds(shift):
    forward, backward = shifted_pairs(shift=shift)
    count = len(forward)
    folds = [(np.setdiff1d(np.arange(2 * count), np.r_[test, test + count]),
              np.r_[test, test + count]) for test in pair_folds(count, 5, seed=3)]
    x, y = np.concatenate([forward, backward]), np.repeat([0, 1], count)
    reference = cross_val_score(sk_lda(), x, y, cv=folds).mean()
    ours = motion.separability(forward, backward, folds=5, seed=3)
    assert abs(ours - reference) < 0.02
    assert (ours > 0.9) == (shift == 1.0)


def test_folds_keep_a_videos_two_embeddings_together():
    folds = pair_folds(23, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    # Identical pairs: only a leak of a video's twin into training could beat chance.
    same = np.random.default_rng(1).normal(size=(30, 8))
    accuracy, scores = paired_cv(same, same.copy(), folds=5)
    assert accuracy == 0.5 and scores.shape == (60,)
    with pytest.raises(ValueError, match="5-fold cross-validation needs folds >= 2 and at "
                                         "least 5 videos, got 3"):
        motion.separability(same[:3], same[:3])


def test_pca_matches_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA
    x = np.random.default_rng(0).normal(size=(50, 6)) * np.arange(1, 7)
    ours, ref = pca(x), PCA(2).fit_transform(x)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-8)


def moving_squares(count, frames=4, size=16, seed=0):
    """A square of a random colour crossing left to right at a random height over noise."""
    rng = np.random.default_rng(seed)
    video = rng.integers(60, 120, (count, 1, size, size, 3)).repeat(frames, 1).astype(np.uint8)
    for i in range(count):
        row, colour = rng.integers(0, size - 5), rng.integers(150, 256, 3)
        for t in range(frames):
            col = t * (size - 5) // (frames - 1)
            video[i, t, row:row + 5, col:col + 5] = colour
    return video


def spatial_only(dim, grid):
    """sincos3d of the first frame repeated over time: positions without a time component."""
    return np.broadcast_to(posembed.sincos_3d(dim, (1, *grid[1:])), (*grid, dim)).copy()


def forward_and_reversed(model, video):
    embed = jax.jit(lambda v: model(normalize(v, jnp.float32))["pooled"])
    return np.asarray(embed(video)), np.asarray(embed(motion.reverse(video)))


def test_order_free_encoder_is_at_chance_and_order_aware_encoder_separates(monkeypatch):
    """Random-init tiny ViTs. Tubelet 1 with positions that ignore time is permutation-
    equivariant over frames, so mean pooling cannot see direction; the default tubelet of
    2 frames sees the order inside each tubelet. (Tubelet 1 with sincos3d positions is not
    separable at random init, ~0.56: the time positions alone give no common direction.)"""
    monkeypatch.setitem(posembed.TABLES, "spatial", spatial_only)
    video = moving_squares(40)
    blind = models.encoder("tiny", frames=4, image_size=16, patch=8, tubelet=1,
                           pos_embed="spatial", scan=False)
    forward, backward = forward_and_reversed(blind, video)
    np.testing.assert_allclose(forward, backward, atol=1e-5)
    assert motion.separability(forward, backward) < 0.65
    seeing = models.encoder("tiny", frames=4, image_size=16, patch=8, scan=False)
    forward, backward = forward_and_reversed(seeing, video)
    assert np.abs(forward - backward).max() > 1e-3
    assert motion.separability(forward, backward) > 0.9


def test_motion_cli_writes_plots_report_and_numbers(trained, tmp_path, capsys):
    run, videos = trained
    out = tmp_path / "motion"
    assert motion.main(["--checkpoint", str(run), "--input", str(videos), "--output", str(out),
                        "--label", "label_motion", "--folds", "4"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "motion.json").read_text())
    saved = np.load(out / "embeddings.npz")
    assert saved["forward"].shape == saved["reversed"].shape == (8, 64)
    assert sorted(saved.files) == ["forward", "label_motion", "lda_scores", "reversed"]
    assert result["separability"] == motion.separability(saved["forward"], saved["reversed"],
                                                         folds=4)
    assert result["mean_cosine"] == pytest.approx(
        motion.mean_cosine(saved["forward"], saved["reversed"]))
    assert (result["videos"], result["step"], result["split"], result["labels"]) == (
        8, 2, "val", ["label_motion"])
    assert (f"forward vs reversed: LDA accuracy {result['separability']:.3f} (4-fold CV, "
            "chance 0.5)") in printed
    report = (out / "report.md").read_text()
    assert f"| LDA accuracy, 4-fold CV (chance 0.5) | {result['separability']:.3f} |" in report
    for image in ("lda_histogram.png", "embeddings.png"):
        assert f"]({image})" in report
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_motion_cli_errors_are_one_line(trained, tmp_path, capsys):
    run, videos = trained
    missing = tmp_path / "nothing"
    assert motion.main(["--checkpoint", str(run), "--input", str(missing),
                        "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"twlv motion: input {missing} does not exist\n"
    assert motion.main(["--checkpoint", str(run), "--input", str(videos), "--output",
                        str(tmp_path / "o"), "--label", "label_colour"]) == 2
    assert capsys.readouterr().err == (
        f"twlv motion: {videos / 'val.csv'} has no label column 'label_colour' (label columns: label, "
        "label_appearance, label_motion)\n")
    assert not os.path.exists(tmp_path / "o")

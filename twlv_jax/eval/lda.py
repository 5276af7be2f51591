"""Two-class linear discriminant analysis and PCA in numpy, for the motion analysis.

`fit_lda` matches scikit-learn's `LinearDiscriminantAnalysis(solver='lsqr',
shrinkage='auto')`: each class's covariance is Ledoit-Wolf shrunk on standardised
features, the pooled covariance weights them by the class priors.
"""

from __future__ import annotations

import numpy as np


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance (D, D) of samples x (N, D) (centred here)."""
    x = x - x.mean(0)
    n, p = x.shape
    cov = x.T @ x / n                                                # (D, D) empirical
    mu = np.trace(cov) / p
    x2 = x ** 2
    beta = ((x2.T @ x2).sum() / n - (cov ** 2).sum()) / (p * n)
    delta = ((cov ** 2).sum() - 2 * mu * np.trace(cov) + p * mu ** 2) / p
    shrinkage = 0.0 if beta == 0 else min(beta, delta) / delta
    return (1 - shrinkage) * cov + shrinkage * mu * np.eye(p)


def _class_cov(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf on standardised features, scaled back (scikit-learn's `_cov`, 'auto')."""
    scale = x.std(0)
    scale[scale == 0] = 1.0
    return scale[:, None] * ledoit_wolf(x / scale) * scale[None, :]


def fit_lda(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(w (D,), b): class 1 where x @ w + b > 0; x (N, D), y (N,) in {0, 1}."""
    x, y = np.asarray(x, np.float64), np.asarray(y)
    priors = np.array([np.mean(y == 0), np.mean(y == 1)])
    means = np.stack([x[y == c].mean(0) for c in (0, 1)])           # (2, D)
    cov = sum(priors[c] * _class_cov(x[y == c]) for c in (0, 1))
    coef = np.linalg.lstsq(cov, means.T, rcond=None)[0].T            # (2, D)
    intercept = -0.5 * np.sum(means * coef, axis=1) + np.log(priors)
    return coef[1] - coef[0], float(intercept[1] - intercept[0])


def pair_folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """Pair indices 0..count-1 shuffled under `seed` and split into `folds` near-equal folds."""
    if count < folds or folds < 2:
        raise ValueError(f"{folds}-fold cross-validation needs folds >= 2 and at least {folds} "
                         f"videos, got {count}")
    return np.array_split(np.random.default_rng(seed).permutation(count), folds)


def paired_cv(first: np.ndarray, second: np.ndarray, *, folds: int = 5,
              seed: int = 0) -> tuple[float, np.ndarray]:
    """Cross-validated LDA of first (N, D) (class 0) against second (N, D) (class 1).

    Row i of both is one pair (a video forward and reversed) and stays in one fold.
    Returns (accuracy, out-of-fold decision values (2N,): first's rows, then second's).
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f"expected two (N, D) arrays of one shape, got {first.shape} and "
                         f"{second.shape}")
    count = len(first)
    x = np.concatenate([first, second])                              # (2N, D)
    y = np.repeat([0, 1], count)
    scores = np.zeros(2 * count)
    for test in pair_folds(count, folds, seed):
        rows = np.concatenate([test, test + count])                 # both members of each pair
        train = np.setdiff1d(np.arange(2 * count), rows)
        w, b = fit_lda(x[train], y[train])
        scores[rows] = x[rows] @ w + b
    return float(np.mean((scores > 0) == y)), scores


def pca(x: np.ndarray, components: int = 2) -> np.ndarray:
    """Projection (N, components) of x (N, D) on its leading principal axes."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:components].T

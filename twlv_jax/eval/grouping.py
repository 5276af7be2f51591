"""Rows (clips) to videos: pooling per-row scores by the video index of each row."""

from __future__ import annotations

import numpy as np


def pool_by_group(values: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, *,
                  reduce: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """(values (G, C), labels (G,)) per video from per-row values (R, C) and labels (R,).

    `groups` (R,) is the video of each row (any integers; videos are ordered by it); None
    means one row per video. `reduce` is 'sum' or 'mean'. A video's rows must share a label.
    """
    values, labels = np.asarray(values), np.asarray(labels)
    if groups is None:
        return values, labels
    ids, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    video_labels = labels[first]
    if np.any(video_labels[inverse] != labels):
        bad = ids[np.unique(inverse[video_labels[inverse] != labels])][:5]
        raise ValueError(f"rows of the same video carry different labels (videos {bad.tolist()})")
    pooled = np.zeros((len(ids), values.shape[1]), values.dtype)     # (G, C)
    np.add.at(pooled, inverse, values)
    if reduce == "mean":
        pooled /= np.bincount(inverse, minlength=len(ids))[:, None]
    return pooled, video_labels

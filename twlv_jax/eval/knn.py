"""Weighted k-NN classification of embeddings, as in the official TWLV-I evaluation code
(cosine similarity, top-k neighbours, votes weighted by exp(similarity / temperature))."""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_scores(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, *,
               num_classes: int, k: int = 200, temperature: float = 0.1) -> np.ndarray:
    """Class scores (Q, C): each query's k most similar bank entries vote for their labels."""
    similarity = normalize(queries) @ normalize(bank).T                  # (Q, Nb)
    k = min(k, bank.shape[0])
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]              # (Q, k)
    weights = np.exp(np.take_along_axis(similarity, top, axis=1) / temperature)
    scores = np.zeros((queries.shape[0], num_classes))
    np.add.at(scores, (np.arange(queries.shape[0])[:, None], bank_labels[top]), weights)
    return scores


def knn_accuracy(bank, bank_labels, queries, query_labels, *, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Top-1 accuracy of weighted k-NN."""
    num_classes = int(max(np.max(bank_labels), np.max(query_labels))) + 1
    scores = knn_scores(bank, np.asarray(bank_labels), queries, num_classes=num_classes, k=k,
                        temperature=temperature)
    return float(np.mean(scores.argmax(1) == np.asarray(query_labels)))

"""Weighted k-NN classification of embeddings, as in the official TWLV-I evaluation code
(`knn/main.py`: cosine similarity, top-k neighbours, votes weighted by exp(similarity / t)).

    twlv knn --embeddings DIR [--mode clip|video] [--k 200] [--temperature 0.1]

`video` mode: the bank is the train `_v.npy` embeddings, each val video one query.
`clip` mode: every train clip is a bank entry (with its video's label); every val clip
queries the bank and a video's class scores are the sum of its clips' scores.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm import tqdm

from twlv_jax import paths as pathlib
from twlv_jax.eval.folders import MODES, read_embeddings
from twlv_jax.eval.grouping import pool_by_group
from twlv_jax.eval.outputs import fail, output_path, write_json

CHUNK = 1024  # queries per similarity block


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_scores(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, *,
               num_classes: int, k: int = 200, temperature: float = 0.1,
               progress: bool = False) -> np.ndarray:
    """Class scores (Q, C): each query's k most similar bank entries vote for their labels."""
    bank, bank_labels = normalize(bank), np.asarray(bank_labels)
    k = min(k, bank.shape[0])
    scores = np.zeros((queries.shape[0], num_classes))
    starts = range(0, queries.shape[0], CHUNK)
    for start in tqdm(starts, desc="k-NN", unit="block", disable=not progress, leave=False):
        similarity = normalize(queries[start:start + CHUNK]) @ bank.T          # (q, Nb)
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]               # (q, k)
        weights = np.exp(np.take_along_axis(similarity, top, axis=1) / temperature)
        rows = np.arange(start, start + len(top))[:, None]
        np.add.at(scores, (rows, bank_labels[top]), weights)
    return scores


def knn_accuracy(bank, bank_labels, queries, query_labels, *, k: int = 200,
                 temperature: float = 0.1, query_groups: np.ndarray | None = None,
                 num_classes: int | None = None) -> float:
    """Top-1 accuracy of weighted k-NN.

    With `query_groups` (the video of each query row), a video's scores are the sum of its
    rows' scores and accuracy is over videos (the official clip mode).
    """
    num_classes = num_classes or int(max(np.max(bank_labels), np.max(query_labels))) + 1
    scores = knn_scores(bank, np.asarray(bank_labels), queries, num_classes=num_classes, k=k,
                        temperature=temperature, progress=len(queries) > CHUNK)
    scores, labels = pool_by_group(scores, np.asarray(query_labels), query_groups)
    return float(np.mean(scores.argmax(1) == labels))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twlv knn", description=__doc__.split("\n\n")[0])
    p.add_argument("--embeddings", required=True, help="folder with train/ and val/")
    p.add_argument("--mode", choices=MODES, default="video",
                   help="video: _v.npy embeddings; clip: every clip votes (default video)")
    p.add_argument("--k", type=int, default=200, help="neighbours (default 200)")
    p.add_argument("--temperature", type=float, default=0.1, help="vote weight exp(s/t)")
    p.add_argument("--num_classes", type=int, default=None,
                   help="class count (default: largest annotation + 1)")
    p.add_argument("--output", default=None, help="result JSON (default DIR/knn_<mode>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.k < 1 or args.temperature <= 0:
            raise ValueError(f"--k must be >= 1 and --temperature > 0, got {args.k} and "
                             f"{args.temperature}")
        output = output_path(args.output, args.embeddings, f"knn_{args.mode}.json")
        print(f"k-NN ({args.mode} mode, k={args.k}, t={args.temperature}) on {args.embeddings}")
        train, val, num_classes = read_embeddings(args.embeddings, num_classes=args.num_classes)
    except (ValueError, OSError) as error:
        return fail("knn", error)
    bank, bank_labels, _ = train.rows(args.mode)
    queries, query_labels, groups = val.rows(args.mode)
    print(f"bank: {len(bank)} {args.mode}s of {len(train.ids)} train videos, queries: "
          f"{len(queries)} {args.mode}s of {len(val.ids)} val videos, {num_classes} classes, "
          f"D={train.dim}")
    top1 = knn_accuracy(bank, bank_labels, queries, query_labels, k=args.k,
                        temperature=args.temperature, query_groups=groups,
                        num_classes=num_classes)
    correct = round(top1 * len(val.ids))
    print(f"k-NN top-1: {100 * top1:.2f}% ({correct}/{len(val.ids)} val videos)")
    write_json(output, {"top1": top1, "correct": correct, "videos": len(val.ids),
                        "mode": args.mode, "k": args.k, "temperature": args.temperature,
                        "num_classes": num_classes, "bank_size": len(bank),
                        "train_videos": len(train.ids), "dim": train.dim,
                        "embeddings": pathlib.absolute(args.embeddings)})
    print(f"wrote {output}")
    return 0

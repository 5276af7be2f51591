"""`twlv motion`: does the encoder see the direction of time? (TWLV-I §2.7.2)

    twlv motion --checkpoint CKPT --input MANIFEST_OR_FOLDER --output DIR [--label COLUMN ...]

Each video's uniform clip is embedded forward and time-reversed (frame axis flipped).
Appearance is the same in both, so only encoded motion direction can tell them apart.
The number is the cross-validated accuracy of a two-class LDA (forward vs reversed;
folds keep a video's two embeddings together): 0.5 is blind to direction, 1.0 fully
separates. Writes DIR/lda_histogram.png (out-of-fold LDA projections), DIR/embeddings.png
(PCA of the forward embeddings coloured by each label column, and forward vs reversed),
DIR/embeddings.npz, DIR/motion.json and DIR/report.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from twlv_jax.eval.lda import paired_cv, pca
from twlv_jax.eval.outputs import fail, write_json


def reverse(video: np.ndarray) -> np.ndarray:
    """Clips (B, T, H, W, 3) played backwards: the frame axis flipped."""
    return video[:, ::-1]


def separability(forward: np.ndarray, reversed: np.ndarray, *, folds: int = 5,
                 seed: int = 0) -> float:
    """Cross-validated LDA accuracy of forward (N, D) vs reversed (N, D) embeddings."""
    return paired_cv(forward, reversed, folds=folds, seed=seed)[0]


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dots = np.sum(a * b, axis=1)
    return float(np.mean(dots / np.maximum(np.linalg.norm(a, axis=1) *
                                           np.linalg.norm(b, axis=1), 1e-12)))


def embed_both(encoder, manifest: str, *, split: str | None, batch_size: int):
    """(forward (N, D), reversed (N, D), {label column: (N,)}) of the manifest's videos."""
    from twlv_jax.eval.labelled import labelled_batches
    forward, backward, labels = [], [], {}
    for video, valid, columns in labelled_batches(encoder, manifest, split=split,
                                                  batch_size=batch_size, desc="embed"):
        pooled = encoder(np.concatenate([video, reverse(video)]))["pooled"]  # (2B, D)
        forward.append(pooled[:len(video)][valid])
        backward.append(pooled[len(video):][valid])
        for name, values in columns.items():
            labels.setdefault(name, []).append(values)
    if not forward:
        raise ValueError(f"{manifest}: no readable videos")
    return (np.concatenate(forward), np.concatenate(backward),
            {k: np.concatenate(v) for k, v in labels.items()})


def plot_histogram(scores: np.ndarray, count: int, accuracy: float, path: str) -> None:
    """Out-of-fold LDA projections (2N,): the first `count` forward, the rest reversed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 4)))
    ax.hist(scores[:count], bins=bins, alpha=0.6, label="forward")
    ax.hist(scores[count:], bins=bins, alpha=0.6, label="reversed")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="LDA projection (held-out folds)", ylabel="embeddings",
           title=f"forward vs reversed: CV accuracy {accuracy:.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_embeddings(forward: np.ndarray, reversed: np.ndarray, labels: dict[str, np.ndarray],
                    path: str) -> None:
    """PCA scatter: forward embeddings coloured by each label column; forward vs reversed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    count = len(forward)
    both = pca(np.concatenate([forward, reversed]))                  # (2N, 2)
    panels = len(labels) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4), squeeze=False)
    points = pca(forward)                                            # (N, 2)
    for ax, (name, values) in zip(axes[0], labels.items()):
        scatter = ax.scatter(points[:, 0], points[:, 1], c=values, cmap="tab10", s=14)
        ax.legend(*scatter.legend_elements(), title=name, fontsize=7, loc="best")
        ax.set(title=f"forward, by {name}", xlabel="PC 1", ylabel="PC 2")
    ax = axes[0][-1]
    ax.scatter(both[:count, 0], both[:count, 1], s=14, alpha=0.7, label="forward")
    ax.scatter(both[count:, 0], both[count:, 1], s=14, alpha=0.7, label="reversed")
    ax.set(title="forward vs reversed", xlabel="PC 1", ylabel="PC 2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(result: dict) -> str:
    """The markdown of DIR/report.md."""
    return "\n".join([
        "# Motion direction: forward vs time-reversed clips", "",
        f"- checkpoint: `{result['checkpoint']}` (step {result['step']})",
        f"- input: `{result['input']}`" + (f" (split {result['split']})" if result['split'] else ""),
        f"- videos: {result['videos']}, embedding width {result['dim']}", "",
        "| measure | value |", "|---|---|",
        f"| LDA accuracy, {result['folds']}-fold CV (chance 0.5) | {result['separability']:.3f} |",
        f"| mean cosine(forward, reversed) | {result['mean_cosine']:.4f} |", "",
        "Each video is embedded as it is and with its frames in reverse order. Appearance "
        "is identical, so a separable pair of sets means the encoder encodes the direction "
        "of motion (TWLV-I §2.7.2). Folds keep a video's two embeddings together.", "",
        "![LDA projection, forward vs reversed](lda_histogram.png)", "",
        "![PCA of the embeddings](embeddings.png)", ""])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twlv motion", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a workdir, its checkpoints/ or a step")
    p.add_argument("--input", required=True, help="a labelled manifest, or a folder")
    p.add_argument("--output", required=True, help="folder for the plots, report and JSON")
    p.add_argument("--split", default="val",
                   help="manifest of a folder holding split manifests (default val)")
    p.add_argument("--label", nargs="+", default=None,
                   help="label columns to colour the PCA plot by (default: all)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--batch_size", type=int, default=16, help="videos per encoder call")
    p.add_argument("--seed", type=int, default=0, help="fold assignment")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from twlv_jax.eval.encoder import load_encoder
    from twlv_jax.eval.labelled import label_columns
    try:
        if not os.path.exists(args.input):
            raise FileNotFoundError(f"input {args.input} does not exist")
        columns = label_columns(args.input, args.split, args.label or [])
        encoder = load_encoder(args.checkpoint)
        print(f"motion: {encoder.source} (step {encoder.step}) on {args.input}, forward and "
              f"time-reversed uniform clips of {encoder.frames} frames")
        forward, backward, labels = embed_both(encoder, args.input, split=args.split,
                                               batch_size=args.batch_size)
        labels = {k: labels[k] for k in (args.label or columns)}
        accuracy, scores = paired_cv(forward, backward, folds=args.folds, seed=args.seed)
    except (ValueError, OSError) as error:
        return fail("motion", error)
    os.makedirs(args.output, exist_ok=True)
    from twlv_jax.data.manifest import split_manifests
    split = args.split if os.path.isdir(args.input) and split_manifests(args.input) else None
    result = {"separability": accuracy, "mean_cosine": mean_cosine(forward, backward),
              "folds": args.folds, "seed": args.seed, "videos": len(forward),
              "dim": int(forward.shape[1]), "checkpoint": encoder.source, "step": encoder.step,
              "input": os.path.abspath(args.input), "split": split, "labels": sorted(labels)}
    files = {name: os.path.join(args.output, name) for name in
             ("lda_histogram.png", "embeddings.png", "embeddings.npz", "motion.json",
              "report.md")}
    plot_histogram(scores, len(forward), accuracy, files["lda_histogram.png"])
    plot_embeddings(forward, backward, labels, files["embeddings.png"])
    np.savez(files["embeddings.npz"], forward=forward, reversed=backward, lda_scores=scores,
             **labels)
    write_json(files["motion.json"], result)
    with open(files["report.md"], "w") as f:
        f.write(report(result))
    print(f"forward vs reversed: LDA accuracy {accuracy:.3f} ({args.folds}-fold CV, chance 0.5), "
          f"mean cosine {result['mean_cosine']:.4f}, {len(forward)} videos")
    print("wrote " + ", ".join(files.values()))
    return 0

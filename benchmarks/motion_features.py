"""How much of the demo set's motion label hand-made clip features carry, pooled as the
demo's probes see an embedding.

    .venv/bin/python benchmarks/motion_features.py [--data runs/demo_data] [--config configs/demo.py]

Each feature is computed from the same uint8 clips the demo probes (the recipe's frames and
resolution, uniform sampling) and scored exactly as the demo scores an encoder: the linear
probe and k-NN on the val split, for the appearance and the motion label. The features:

- *pooled frame difference*: each tubelet's last-minus-first frame, averaged over all
  tubelets (what the README's `frame_difference` target asks each token to carry);
- *pooled flow target*: the `flow` target (each token's patch velocity, Lucas-Kanade),
  averaged over all tokens (2 numbers per frame pair of a tubelet);
- *mean position*: the shape's centroid (pixels far from the frame's median), averaged
  over the frames (2 numbers): where, not where to;
- *trajectory*: the centroid in every frame (2 x frames numbers).

Writes benchmarks/results/motion_features.md and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "motion_features.md")


def pooled_frame_difference(clips: np.ndarray, tubelet: int, patch: int) -> np.ndarray:
    """(N, T, S, S, 3) -> (N, patch*patch*3): tubelet frame differences averaged over tubelets."""
    from twlv_jax.models.vit import patchify
    pixels = patchify(clips.astype(np.float32) / 255.0, tubelet, patch)   # (N, T', H', W', t*p*p*3)
    frames = pixels.reshape(len(clips), -1, tubelet, patch * patch * 3)    # (N, N', t, p*p*3)
    return (frames[:, :, -1] - frames[:, :, 0]).mean(axis=1)


def pooled_flow(clips: np.ndarray, tubelet: int, patch: int) -> np.ndarray:
    """(N, 2 * (tubelet - 1)): the `flow` target of every token, averaged over tokens."""
    from twlv_jax.objectives.targets.flow import patch_velocity
    return np.asarray(patch_velocity(clips.astype(np.float32) / 255.0, tubelet, patch)).mean(axis=1)


def centroids(clips: np.ndarray) -> np.ndarray:
    """(N, T, 2): per frame, the centroid of the pixels' distance from the frame's median."""
    x = clips.astype(np.float32)
    weight = np.abs(x - np.median(x, axis=(2, 3), keepdims=True)).sum(-1)   # (N, T, S, S)
    ys, xs = np.mgrid[0:x.shape[2], 0:x.shape[3]]
    total = weight.sum(axis=(2, 3)) + 1e-6
    return np.stack([(weight * xs).sum((2, 3)) / total, (weight * ys).sum((2, 3)) / total], -1)


FEATURES = {
    "pooled frame difference": pooled_frame_difference,
    "pooled flow target": pooled_flow,
    "mean position": lambda c, t, p: centroids(c).mean(axis=1),
    "trajectory": lambda c, t, p: centroids(c).reshape(len(c), -1),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "runs", "demo_data"))
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.py"))
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()
    sys.path.insert(0, ROOT)
    import jax

    from twlv_jax import demo

    recipe, config, clips, labels = demo.probe_set(args.data, args.config)
    m = config.model
    rows = {}
    for name, feature in FEATURES.items():
        values = {split: feature(clips[split], m.tubelet, m.patch) for split in clips}
        rows[f"{name} ({values['train'].shape[1]})"] = demo.score(
            values["train"], values["val"], labels, probe_batch=recipe.PROBE_BATCH)
        print(name, rows[f"{name} ({values['train'].shape[1]})"], flush=True)
    text = (f"# Hand-made features on the demo's set\n\n`benchmarks/motion_features.py` on "
            f"JAX {jax.__version__}: "
            f"{len(clips['train'])} train and {len(clips['val'])} val videos of "
            f"`{os.path.relpath(args.config, ROOT)}`, {m.frames} frames at {m.image_size} px; "
            f"val top-1, scored as `twlv demo` scores an encoder (feature dimensions in "
            f"brackets).\n\n{demo.table(rows, demo.chance(labels['val']))}\n")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

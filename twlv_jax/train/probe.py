"""Online k-NN probe: embed a small labelled set with the current student and report
k-NN top-1 accuracy for every label column (e.g. appearance and motion)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twlv_jax.data.evaluation import eval_batches
from twlv_jax.data.transforms import normalize
from twlv_jax.eval.knn import knn_accuracy
from twlv_jax.parallel.mesh import replicated
from twlv_jax.parallel.sharding import use_rules
from twlv_jax.train.state import Setup

BATCH = 16


def _manifests(path: str) -> tuple[str, str]:
    train, val = os.path.join(path, "train.csv"), os.path.join(path, "val.csv")
    if not (os.path.isfile(train) and os.path.isfile(val)):
        raise FileNotFoundError(f"train.probe_path: expected a folder with train.csv and val.csv "
                                f"(as written by `twlv data synth`), got {path!r}")
    return train, val


class KnnProbe:
    """Decodes the probe set once; each call embeds it (mean-pooled tokens) and runs k-NN."""

    def __init__(self, path: str, setup: Setup, *, k: int = 20):
        m = setup.config.model
        self.k, self.setup = k, setup
        self.splits = {}
        for split, manifest in zip(("train", "val"), _manifests(path)):
            batches = list(eval_batches(manifest, frames=m.frames, image_size=m.image_size,
                                        batch_size=BATCH))
            if not batches:
                raise ValueError(f"train.probe_path: no readable videos in {manifest}")
            self.splits[split] = batches
        self.labels = [k for k in self.splits["train"][0] if k not in ("video", "index")]
        self.replicated = whole = replicated(setup.mesh)

        def embed(student_params, video):
            student = nnx.merge(setup.student_def, student_params)
            return student(normalize(video, jnp.float32))["pooled"]

        self.embed = jax.jit(embed, in_shardings=(setup.state_shardings["params"]["student"],
                                                  whole), out_shardings=whole)

    def _features(self, params, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feats, labels = [], {name: [] for name in self.labels}
        with use_rules(self.setup.mesh, self.setup.config.mesh.rules):
            for batch in self.splits[split]:
                valid = batch["index"] >= 0
                # Every process holds the whole probe batch: a replicated global array.
                video = jax.make_array_from_process_local_data(self.replicated, batch["video"])
                feats.append(np.asarray(self.embed(params, video).addressable_data(0))[valid])
                for name in self.labels:
                    labels[name].append(batch[name][valid])
        return np.concatenate(feats), {k: np.concatenate(v) for k, v in labels.items()}

    def __call__(self, state: dict) -> dict[str, float]:
        student = state["params"]["student"]
        bank, bank_labels = self._features(student, "train")
        queries, query_labels = self._features(student, "val")
        return {f"probe/knn_{name}": knn_accuracy(bank, bank_labels[name], queries,
                                                  query_labels[name], k=self.k)
                for name in self.labels}

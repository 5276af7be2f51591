"""Online probe: embed a small labelled set with the current student and report k-NN
top-1 accuracy for every label column (e.g. appearance and motion), and each target's
loss on the held-out (val) clips next to its trivial baseline."""

from __future__ import annotations

import os

import jax
import numpy as np

from twlv_jax.data.evaluation import eval_batches
from twlv_jax.eval.encoder import Encoder
from twlv_jax.eval.knn import knn_accuracy
from twlv_jax.parallel.mesh import batch_sharding
from twlv_jax.train.state import Setup
from twlv_jax.train.step import jit_eval

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
        abstract = setup.abstract_state["params"]["student"]
        self.encoder = Encoder(setup.student_def, abstract,
                               setup.state_shardings["params"]["student"], setup.config,
                               setup.mesh)
        self.evaluate = jit_eval(setup)

    def _features(self, params, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feats, labels = [], {name: [] for name in self.labels}
        for batch in self.splits[split]:
            valid = batch["index"] >= 0
            feats.append(self.encoder(batch["video"], params=params)["pooled"][valid])
            for name in self.labels:
                labels[name].append(batch[name][valid])
        return np.concatenate(feats), {k: np.concatenate(v) for k, v in labels.items()}

    def held_out(self, state: dict, teachers: dict) -> dict[str, float]:
        """Mean loss of each target on the full val batches, and its trivial baseline.

        Batch i is masked from seed i at every call, so the numbers are comparable over
        training. Empty when no val batch is full or the batch does not split over the mesh.
        """
        mesh = self.setup.mesh
        if BATCH % (mesh.shape["data"] * mesh.shape["fsdp"]):
            return {}
        sharding = batch_sharding(mesh)
        totals: dict[str, float] = {}
        full = [b for b in self.splits["val"] if (b["index"] >= 0).all()]
        for seed, batch in enumerate(full):
            # Every process holds the whole batch; each places its own devices' shards.
            video = jax.make_array_from_callback(batch["video"].shape, sharding,
                                                 lambda index, v=batch["video"]: v[index])
            terms, baselines = self.evaluate(state, teachers, video, np.int32(seed))
            for prefix, values in (("heldout", terms), ("baseline", baselines)):
                for name, value in values.items():
                    key = f"probe/{prefix}_{name}"
                    totals[key] = totals.get(key, 0.0) + float(value) / len(full)
        return totals

    def __call__(self, state: dict, teachers: dict) -> dict[str, float]:
        student = state["params"]["student"]
        bank, bank_labels = self._features(student, "train")
        queries, query_labels = self._features(student, "val")
        scores = {f"probe/knn_{name}": knn_accuracy(bank, bank_labels[name], queries,
                                                    query_labels[name], k=self.k)
                  for name in self.labels}
        return scores | self.held_out(state, teachers)

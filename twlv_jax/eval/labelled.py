"""Labelled videos of a manifest as fixed-size uniform-clip batches for a frozen encoder."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from twlv_jax.data.evaluation import eval_batches, eval_source
from twlv_jax.data.manifest import read_manifest_or_folder
from twlv_jax.eval.encoder import Encoder

NOT_LABELS = ("video", "index")


def labelled_batches(encoder: Encoder, manifest: str, *, split: str | None, batch_size: int,
                     desc: str) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """(video uint8 (B, T, H, W, 3), valid (B,) bool, {label column: int (b,)} of the valid
    rows) per batch, in manifest order, with a progress bar. The last batch is padded:
    call the encoder on all B rows (one compiled shape) and keep the `valid` ones."""
    total = len(eval_source(manifest, split))
    with tqdm(total=total, desc=desc, unit="video") as bar:
        for batch in eval_batches(manifest, frames=encoder.frames, image_size=encoder.image_size,
                                  batch_size=batch_size, split=split):
            valid = batch["index"] >= 0
            bar.update(int(valid.sum()))
            yield batch["video"], valid, {k: v[valid] for k, v in batch.items()
                                          if k not in NOT_LABELS}


def label_columns(manifest: str, split: str | None, required: Iterable[str] = ()) -> list[str]:
    """The manifest's label columns (read before any decoding); a clear error naming the
    manifest file when one of `required` is missing."""
    found = read_manifest_or_folder(manifest, split)
    for column in required:
        if column not in found.labels:
            names = ", ".join(sorted(found.labels)) or "none"
            raise ValueError(f"{found.name} has no label column {column!r} (label columns: "
                             f"{names})")
    return sorted(found.labels)

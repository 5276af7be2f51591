"""`twlv probe`: the official linear probe on embedding folders, or an attentive probe
trained on a frozen checkpoint's patch tokens.

    twlv probe --embeddings DIR [--mode clip|video]
    twlv probe --attentive --checkpoint CKPT --input FOLDER [--label COLUMN]

The linear probe reads DIR/train and DIR/val (`twlv embed` output); see
`linear_probe.py` for the protocol. The attentive probe embeds the labelled videos of
FOLDER's train and val manifests once (uniform clips, tokens kept in memory), then
trains the probe on the frozen tokens; see `attentive_probe.py`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from twlv_jax import paths as pathlib
from twlv_jax.eval.folders import MODES, read_embeddings
from twlv_jax.eval.outputs import fail, output_path, write_json

LINEAR = {"epochs": 150, "warmup_epochs": 10, "lr": 1e-3, "batch_size": 1024}
ATTENTIVE = {"epochs": 20, "warmup_epochs": 0, "lr": 1e-3, "batch_size": 256}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twlv probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--embeddings", help="linear: folder with train/ and val/ embeddings")
    p.add_argument("--mode", choices=MODES, default="video",
                   help="linear: video (_v.npy) or clip (train on clips, average the softmax)")
    p.add_argument("--num_classes", type=int, default=None,
                   help="class count (default: largest label + 1)")
    p.add_argument("--attentive", action="store_true", help="attentive probe on patch tokens")
    p.add_argument("--checkpoint", help="attentive: a workdir, its checkpoints/ or a step folder")
    p.add_argument("--input", help="attentive: folder with train and val manifests")
    p.add_argument("--label", default="label", help="attentive: label column (default label)")
    p.add_argument("--embed_batch", type=int, default=16, help="attentive: clips per encoder call")
    p.add_argument("--weight_decay", type=float, default=1e-5, help="attentive: AdamW decay")
    p.add_argument("--epochs", type=int, help="default 150 linear, 20 attentive")
    p.add_argument("--warmup_epochs", type=int, help="default 10 linear, 0 attentive")
    p.add_argument("--lr", type=float, help="default 1e-3")
    p.add_argument("--batch_size", type=int, help="default 1024 linear, 256 attentive")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="result JSON (default DIR/linear_probe_<mode>.json, or "
                                    "FOLDER/attentive_probe_<label>.json)")
    return p


def _settings(args, defaults: dict) -> dict:
    settings = {k: defaults[k] if getattr(args, k) is None else getattr(args, k)
                for k in defaults}
    if settings["epochs"] < 1 or settings["batch_size"] < 1 or settings["warmup_epochs"] < 0:
        raise ValueError(f"--epochs and --batch_size must be >= 1 and --warmup_epochs >= 0, "
                         f"got {settings}")
    return settings


def _linear(args) -> dict:
    from twlv_jax.eval.linear_probe import linear_probe
    if not args.embeddings:
        raise ValueError("the linear probe needs --embeddings DIR (or use --attentive)")
    settings = _settings(args, LINEAR)
    output = output_path(args.output, args.embeddings, f"linear_probe_{args.mode}.json")
    print(f"linear probe ({args.mode} mode) on {args.embeddings}: " +
          ", ".join(f"{k} {v}" for k, v in settings.items()))
    train, val, num_classes = read_embeddings(args.embeddings, num_classes=args.num_classes)
    train_x, train_y, train_groups = train.rows(args.mode)
    val_x, val_y, val_groups = val.rows(args.mode)
    print(f"train: {len(train.ids)} videos ({len(train_x)} rows), val: {len(val.ids)} videos "
          f"({len(val_x)} rows), {num_classes} classes, D={train.dim}")
    clip = args.mode == "clip"
    result = linear_probe(train_x, train_y, val_x, val_y, **settings, seed=args.seed,
                          train_groups=train_groups if clip else None,
                          val_groups=val_groups if clip else None, num_classes=num_classes)
    for entry in result["history"]:
        print(f"epoch {entry['epoch']}/{settings['epochs']}: val top-1 {100 * entry['top1']:.2f}%")
    result.pop("params")
    return {"output": output, "probe": "linear", "mode": args.mode, "videos": len(val.ids),
            "embeddings": pathlib.absolute(args.embeddings), **result}


def _embed_tokens(encoder, folder: str, split: str, label: str, batch: int):
    """(tokens (N, T, D), labels (N,)) of a split's readable videos."""
    from twlv_jax.eval.labelled import labelled_batches
    tokens, labels = [], []
    for video, valid, columns in labelled_batches(encoder, folder, split=split, batch_size=batch,
                                                  desc=f"embed {split}"):
        tokens.append(encoder(video, tokens=True)["tokens"][valid])
        labels.append(columns[label])
    if not tokens:
        raise ValueError(f"{folder} ({split}): no readable videos")
    return np.concatenate(tokens), np.concatenate(labels)


def _attentive(args) -> dict:
    from twlv_jax.data.manifest import split_manifests
    from twlv_jax.eval.attentive_probe import attentive_probe
    from twlv_jax.eval.encoder import load_encoder
    from twlv_jax.eval.labelled import label_columns
    from twlv_jax.models import size
    if not (args.checkpoint and args.input):
        raise ValueError("the attentive probe needs --checkpoint CKPT and --input FOLDER")
    found = split_manifests(args.input) if os.path.isdir(args.input) else {}
    if not {"train", "val"} <= set(found):
        raise ValueError(f"--input {args.input} must be a folder holding train and val "
                         "manifests (train.csv and val.csv, or .jsonl)")
    settings = _settings(args, ATTENTIVE)
    output = output_path(args.output, args.input, f"attentive_probe_{args.label}.json")
    for split in ("train", "val"):
        label_columns(args.input, split, [args.label])
    encoder = load_encoder(args.checkpoint)
    heads = size(encoder.config.model.variant).heads
    print(f"attentive probe of {encoder.source} (step {encoder.step}, D={encoder.dim}, "
          f"{heads} heads) on {args.input}, label {args.label!r}: " +
          ", ".join(f"{k} {v}" for k, v in settings.items()))
    train_tokens, train_y = _embed_tokens(encoder, args.input, "train", args.label,
                                          args.embed_batch)
    val_tokens, val_y = _embed_tokens(encoder, args.input, "val", args.label, args.embed_batch)
    print(f"tokens: train {train_tokens.shape}, val {val_tokens.shape}")
    result = attentive_probe(train_tokens, train_y, val_tokens, val_y, heads=heads, **settings,
                             weight_decay=args.weight_decay, seed=args.seed,
                             num_classes=args.num_classes)
    return {"output": output, "probe": "attentive", "label": args.label, "videos": len(val_y),
            "checkpoint": encoder.source, "step": encoder.step,
            "input": os.path.abspath(args.input), **result}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = _attentive(args) if args.attentive else _linear(args)
    except (ValueError, OSError) as error:
        return fail("probe", error)
    output = result.pop("output")
    correct = round(result["top1"] * result["videos"])
    print(f"{result['probe']} probe top-1: {100 * result['top1']:.2f}% "
          f"({correct}/{result['videos']} val videos)")
    write_json(output, result)
    print(f"wrote {output}")
    return 0

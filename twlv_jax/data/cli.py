"""`twlv data synth | build | prepare`: make, package and re-encode video collections."""

from __future__ import annotations

import argparse
import os
import sys

from absl import flags

from twlv_jax.data.manifest import ManifestError

_DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twlv data", description="Video data tools. Nothing is downloaded.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    synth = verbs.add_parser(
        "synth", help="write the synthetic moving-shapes video set (MP4 + manifests)",
        description="Writes DIR/videos/{train,val}/*.mp4, DIR/train.csv, DIR/val.csv and "
                    "DIR/classes.json. Labels: label_appearance (shape x colour, 9), "
                    "label_motion (8 directions); label = label_appearance.")
    from twlv_jax.data.synthetic import SynthOptions
    defaults = SynthOptions()
    synth.add_argument("--output", required=True, metavar="DIR")
    synth.add_argument("--train", type=int, default=defaults.train, help="training videos")
    synth.add_argument("--val", type=int, default=defaults.val, help="validation videos")
    synth.add_argument("--frames", type=int, default=defaults.frames, help="frames per video")
    synth.add_argument("--size", type=int, default=defaults.size, help="width = height, px")
    synth.add_argument("--fps", type=float, default=defaults.fps)
    synth.add_argument("--distractors", type=int, default=defaults.distractors,
                       help="small shapes moving in random directions")
    synth.add_argument("--texture", type=float, default=defaults.texture,
                       help="background texture contrast (0: flat)")
    synth.add_argument("--grey", action="store_true", help="grey background instead of a tint")
    synth.add_argument("--noise", type=float, default=defaults.noise,
                       help="per-pixel noise std, uint8 levels")
    synth.add_argument("--radius", type=float, default=defaults.radius,
                       help="size of the large shape, share of the frame")
    synth.add_argument("--travel", type=float, default=defaults.travel,
                       help="distance it moves over the video, share of the frame")
    synth.add_argument("--seed", type=int, default=defaults.seed)
    synth.add_argument("--workers", type=int, default=_DEFAULT_WORKERS, help="processes")

    build = verbs.add_parser(
        "build", help="package a manifest or folder as a TFDS ArrayRecord dataset (no TF)",
        description="Checks every file, lists unreadable ones in DIR/quarantine.csv, and "
                    "writes the rest (file bytes + labels + metadata) as a TFDS dataset "
                    "under DIR, read with data.source=tfds and data.path=DIR.")
    build.add_argument("--input", required=True, metavar="MANIFEST_OR_FOLDER")
    build.add_argument("--output", required=True, metavar="DIR")
    build.add_argument("--split", default=None,
                       help="split name (default: the manifest's name if it is train/val/"
                            "validation/test, else train; a folder's split manifests all)")
    build.add_argument("--workers", type=int, default=_DEFAULT_WORKERS, help="processes")

    prepare = verbs.add_parser(
        "prepare", help="re-encode to a fixed short side and short GOP, validating every file",
        description="Decodes every video in full, writes it upright at --short_side px with "
                    "a keyframe every --gop frames to DIR/videos/, rewrites the manifests "
                    "(DIR/<split>.csv) and lists unreadable files in DIR/quarantine.csv.")
    from twlv_jax.data.prepare import PrepareOptions
    options = PrepareOptions()
    prepare.add_argument("--input", required=True, metavar="MANIFEST_OR_FOLDER")
    prepare.add_argument("--output", required=True, metavar="DIR")
    prepare.add_argument("--split", default=None, help="as for build")
    prepare.add_argument("--short_side", type=int, default=options.short_side, help="px")
    prepare.add_argument("--gop", type=int, default=options.gop, help="frames per keyframe")
    prepare.add_argument("--crf", type=int, default=options.crf, help="libx264 quality")
    prepare.add_argument("--workers", type=int, default=_DEFAULT_WORKERS, help="processes")
    return parser


def _progress(total: int, unit: str, description: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=description, dynamic_ncols=True)


def _synth(args) -> None:
    from twlv_jax.data.synthetic import SynthOptions, write_synthetic

    options = SynthOptions(train=args.train, val=args.val, frames=args.frames, size=args.size,
                           fps=args.fps, distractors=args.distractors, texture=args.texture,
                           grey=args.grey, noise=args.noise, radius=args.radius,
                           travel=args.travel, seed=args.seed)
    print(f"writing {options.train} + {options.val} synthetic videos ({options.frames} frames, "
          f"{options.size}x{options.size} px, {options.fps:g} fps, seed {options.seed}) "
          f"to {args.output}")
    with _progress(options.train + options.val, "video", "synth") as bar:
        written = write_synthetic(args.output, options, workers=args.workers,
                                  progress=bar.update)
    manifests = ", ".join(f"{written[split]} ({count} rows)" for split, count in
                          (("train", options.train), ("val", options.val)) if split in written)
    print(f"wrote {written['videos']}/, {manifests}, {written['classes']}")


def _build(args) -> None:
    from twlv_jax.data.manifest import read_splits
    from twlv_jax.data.quarantine import Quarantine
    from twlv_jax.data.tfds_builder import build, check_files

    manifests = read_splits(args.input, args.split)
    total = sum(len(m) for m in manifests.values())
    print(f"building a TFDS dataset from {args.input} "
          f"({', '.join(f'{k}: {len(v)}' for k, v in manifests.items())}) into {args.output}")
    quarantine = Quarantine(_fresh(os.path.join(args.output, "quarantine.csv")), total=total,
                            max_fraction=1.0)
    with _progress(total, "file", "check") as bar:
        splits = check_files(manifests, quarantine, workers=args.workers, progress=bar.update)
    dataset = build(args.output, splits)
    size = sum(os.path.getsize(e["path"]) for examples in splits.values() for e in examples)
    print(f"wrote {dataset} ({', '.join(f'{k}: {len(v)}' for k, v in splits.items())}; "
          f"{size / 1e6:.1f} MB of files)\nquarantine: {quarantine.summary()}\n"
          f"read it with --config.data.source=tfds --config.data.path={args.output}")


def _fresh(path: str) -> str:
    """`path`, with a list left by an earlier run removed."""
    if os.path.exists(path):
        os.remove(path)
    return path


def _prepare(args) -> None:
    from twlv_jax.data.manifest import read_splits
    from twlv_jax.data.prepare import PrepareOptions, prepare

    manifests = read_splits(args.input, args.split)
    options = PrepareOptions(short_side=args.short_side, gop=args.gop, crf=args.crf)
    total = len({m.paths[i] for m in manifests.values() for i in range(len(m))})
    print(f"re-encoding {total} files from {args.input} to {args.output} (short side "
          f"{options.short_side} px, keyframe every {options.gop} frames, crf {options.crf}, "
          f"{args.workers} processes)")
    with _progress(total, "file", "prepare") as bar:
        summary = prepare(manifests, args.output, options, workers=args.workers,
                          progress=bar.update)
    manifests_text = ", ".join(summary["manifests"].values()) or "none (nothing readable)"
    print(f"wrote {summary['prepared']} files ({summary['frames']} frames, "
          f"{summary['bytes_in'] / 1e6:.1f} MB -> {summary['bytes_out'] / 1e6:.1f} MB) "
          f"under {summary['videos']}/\nmanifests: {manifests_text}\n"
          f"quarantine: {summary['quarantine'].summary()}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `twlv data`; returns the exit status."""
    flags.FLAGS.mark_as_parsed()  # Grain and worker processes read absl flags
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        {"synth": _synth, "build": _build, "prepare": _prepare}[args.verb](args)
    except (ManifestError, FileNotFoundError, ValueError) as error:
        print(f"twlv data {args.verb}: error: {error}", file=sys.stderr)
        return 2
    return 0

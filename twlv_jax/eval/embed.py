"""`twlv embed`: a trained student's embeddings of a manifest, in the official TWLV-I layout.

    twlv embed --checkpoint runs/demo --input data/train.csv --output emb/uniform
    twlv embed --checkpoint runs/demo --input data/val.csv --output emb/multi-clip \\
        --sampling multi-clip --clip_seconds 2 --clip_stride 1

Per video: DIR/<split>/<id>.json, <id>_c.npy (clips, D), <id>_v.npy (D,) (see
embed_files). Videos are read a group of clips at a time in a background thread
(evaluation.iter_clip_groups), clips of consecutive videos are packed into fixed-size
batches that the Encoder splits over the devices, and each finished video is written at
once; a rerun skips videos whose json exists. Bad files are listed, never fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from twlv_jax import paths as pathlib
from twlv_jax.data.evaluation import ClipGroup, iter_clip_groups
from twlv_jax.data.manifest import Manifest, ManifestError, read_manifest_or_folder
from twlv_jax.data.quarantine import Quarantine, TooManyBadFiles
from twlv_jax.data.sources import ManifestSource
from twlv_jax.eval import embed_files
from twlv_jax.eval.embed_files import EmbedError

PREFETCH_GROUPS = 4  # clip groups decoded ahead of the model


@dataclass(frozen=True)
class EmbedOptions:
    """How clips are taken from each video."""

    sampling: str = "uniform"           # uniform | multi-clip
    clip_seconds: float = 2.0           # multi-clip: clip length
    clip_stride: float | None = None    # multi-clip: seconds between clip starts (None: length)
    frames: int | None = None           # frames per clip (None: the checkpoint's)
    batch_size: int = 32                # clips per model call (and per decoded group)
    label: str | None = None            # label column for `annotation` (None: `label`)


# -- batching -------------------------------------------------------------------------


def embed_groups(encoder, groups: Iterable[ClipGroup],
                 batch_size: int) -> Iterator[tuple[ClipGroup, np.ndarray]]:
    """(group, float32 (clips, D)) for every group, in order. Clips of consecutive groups
    share batches of exactly `batch_size` clips (the last zero-padded): one compiled shape."""
    pending: deque[tuple[ClipGroup, list[np.ndarray]]] = deque()  # groups not yet all embedded
    batch: list[tuple[list[np.ndarray], np.ndarray]] = []          # (parts of, uint8 clips)
    filled = 0
    for group in groups:
        pending.append((group, []))
        clips = group.video  # (clips, T, S, S, 3)
        while len(clips):
            take = min(batch_size - filled, len(clips))
            batch.append((pending[-1][1], clips[:take]))
            filled, clips = filled + take, clips[take:]
            if filled == batch_size:
                _run_batch(encoder, batch, batch_size)
                batch, filled = [], 0
        yield from _completed(pending, encoder.dim)
    if batch:
        _run_batch(encoder, batch, batch_size)
    yield from _completed(pending, encoder.dim)


def _run_batch(encoder, batch: list[tuple[list[np.ndarray], np.ndarray]],
               batch_size: int) -> None:
    """Embeds the clips of `batch` and appends each piece's embeddings to its parts list."""
    first = batch[0][1]
    video = np.zeros((batch_size, *first.shape[1:]), np.uint8)  # (B, T, S, S, 3)
    video[:sum(len(clips) for _, clips in batch)] = np.concatenate([c for _, c in batch])
    pooled = encoder(video)["pooled"]  # (B, D)
    offset = 0
    for parts, clips in batch:
        parts.append(pooled[offset:offset + len(clips)])
        offset += len(clips)


def _completed(pending: deque, dim: int) -> Iterator[tuple[ClipGroup, np.ndarray]]:
    """Pops the groups at the head of `pending` whose clips are all embedded."""
    while pending and sum(map(len, pending[0][1])) == len(pending[0][0].video):
        group, parts = pending.popleft()
        yield group, np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


@dataclass
class VideoEmbedding:
    """All clips of one video, embedded; `clips` is None for a video found bad."""

    group: ClipGroup            # its last group (index, name, labels, num_frames, duration)
    clips: np.ndarray | None    # float32 (clips, D)
    starts: np.ndarray          # float64 (clips,)
    ends: np.ndarray            # float64 (clips,)


def whole_videos(embedded: Iterable[tuple[ClipGroup, np.ndarray]]) -> Iterator[VideoEmbedding]:
    """Joins the embedded groups of each video (they come in order)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for group, clips in embedded:
        if group.failed:
            parts = []
            yield VideoEmbedding(group, None, group.clip_starts, group.clip_ends)
            continue
        parts.append((clips, group.clip_starts, group.clip_ends))
        if group.last:
            clips_nd, starts, ends = (np.concatenate(p) for p in zip(*parts))
            parts = []
            yield VideoEmbedding(group, clips_nd, starts, ends)


def prefetch(items: Iterator, ahead: int) -> Iterator:
    """`items`, produced in a background thread up to `ahead` items early (so decoding
    overlaps the model; PyAV releases the GIL while decoding)."""
    end = object()
    pool = ThreadPoolExecutor(1, thread_name_prefix="twlv-embed-read")
    try:
        futures = deque(pool.submit(next, items, end) for _ in range(ahead))
        while (item := futures.popleft().result()) is not end:
            futures.append(pool.submit(next, items, end))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        items.close()


# -- one split ------------------------------------------------------------------------


def embed_split(encoder, manifest: Manifest, output: str, split: str, options: EmbedOptions,
                *, classes_path: str | None = None, limit: int | None = None,
                progress: bool = True) -> dict:
    """Embeds the rows of `manifest` not yet in output/<split>/ (at most `limit` of them)
    and writes output/embed_<split>.json; returns the run's summary (see `summary_text`)."""
    frames = options.frames or encoder.frames
    _check_options(encoder, options, frames, split)
    split_dir = pathlib.join(output, split)
    pathlib.makedirs(split_dir)
    annotations = embed_files.resolve_annotations(manifest, options.label, output, classes_path)
    spec = {"checkpoint": encoder.source, "step": encoder.step, "sampling": options.sampling,
            "clip_seconds": options.clip_seconds if options.sampling == "multi-clip" else None,
            "clip_stride": _stride(options), "frames": frames,
            "image_size": encoder.image_size, "label": annotations.column}
    meta_path = pathlib.join(output, f"embed_{split}.json")
    ids = embed_files.video_ids(manifest)
    written = set(pathlib.listdir(split_dir))
    done = {i for i, name in enumerate(ids) if name + ".json" in written}
    _check_resume(meta_path, spec, split_dir, bool(done))
    todo = [i for i in range(len(ids)) if i not in done]
    left = todo[limit:] if limit is not None else []
    todo = todo[:limit]
    summary = {"spec": spec, "input": manifest.name, "split": split, "split_dir": split_dir,
               "dim": encoder.dim, "rows": len(ids), "already": len(done), "to_embed": len(todo),
               "written": 0, "clips": 0, "left": len(left), "bad_files": {},
               "bad_files_csv": pathlib.join(output, f"{split}_bad_files.csv"),
               "classes": pathlib.join(output, embed_files.CLASSES_FILE) if annotations.column
               else None, "num_classes": len(annotations.names),
               "classes_from": annotations.origin, "metadata": meta_path,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running"}
    embed_files.write_json(meta_path, summary)
    if progress:
        print(plan_text(summary), flush=True)
    quarantine = Quarantine(summary["bad_files_csv"], total=max(len(todo), 1), max_fraction=1.0)
    # Raised only once every video left was unreadable: each is listed, as any bad one.
    with contextlib.suppress(TooManyBadFiles):
        _write_videos(encoder, manifest, todo, ids, annotations, options, frames, quarantine,
                      summary, progress)
    summary.update(bad_files=dict(quarantine.files), finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                   status="done" if not left else "limited")
    embed_files.write_json(meta_path, summary)
    return summary


def _write_videos(encoder, manifest: Manifest, todo: list[int], ids: list[str],
                  annotations: embed_files.Annotations, options: EmbedOptions, frames: int,
                  quarantine: Quarantine, summary: dict, progress: bool) -> None:
    """Reads, embeds and writes the `todo` rows; counts into `summary`."""
    from tqdm import tqdm

    temp_dir = pathlib.join(pathlib.dirname(summary["split_dir"]), f".tmp_{summary['split']}")
    if not pathlib.is_remote(temp_dir):     # objects in a bucket are written in place
        shutil.rmtree(temp_dir, ignore_errors=True)  # what an interrupted run left
        os.makedirs(temp_dir)
    groups = iter_clip_groups(ManifestSource(manifest), todo, frames=frames,
                              image_size=encoder.image_size, sampling=options.sampling,
                              clip_seconds=options.clip_seconds, clip_stride=_stride(options),
                              group=options.batch_size, quarantine=quarantine)
    embedded = embed_groups(encoder, prefetch(groups, PREFETCH_GROUPS), options.batch_size)
    with tqdm(total=len(todo), unit="video", desc=f"embed {summary['split']}",
              dynamic_ncols=True, disable=not progress) as bar:
        for video in whole_videos(embedded):
            if video.clips is not None:
                index = video.group.index
                embed_files.write_sample(summary["split_dir"], temp_dir, ids[index], video.clips,
                                         _video_info(video, annotations))
                summary["written"] += 1
                summary["clips"] += len(video.clips)
            bar.update(1)
            bar.set_postfix(clips=summary["clips"], bad=len(quarantine.files))
    pathlib.rmtree(temp_dir)


def _video_info(video: VideoEmbedding, annotations: embed_files.Annotations) -> dict:
    """The per-video json: what the official code reads (`annotation`, `num_frames`,
    `duration`), the clips' times and the source file."""
    info = {}
    if annotations.values is not None:
        info["annotation"] = annotations.values[video.group.index]
    info.update(num_frames=video.group.num_frames, duration=video.group.duration,
                num_clips=len(video.clips), clip_starts=video.starts.tolist(),
                clip_ends=video.ends.tolist(), path=video.group.name)
    return info


def _stride(options: EmbedOptions) -> float | None:
    if options.sampling != "multi-clip":
        return None
    return options.clip_stride or options.clip_seconds


def _check_options(encoder, options: EmbedOptions, frames: int, split: str) -> None:
    tubelet = int(encoder.config.model.tubelet)
    problems = [text for ok, text in (
        (options.sampling in ("uniform", "multi-clip"),
         f"--sampling must be uniform or multi-clip, got {options.sampling!r}"),
        (options.clip_seconds > 0, f"--clip_seconds must be positive, got {options.clip_seconds}"),
        (options.clip_stride is None or options.clip_stride > 0,
         f"--clip_stride must be positive, got {options.clip_stride}"),
        (frames >= tubelet and frames % tubelet == 0,
         f"--frames must be a positive multiple of the checkpoint's tubelet ({tubelet}), "
         f"got {frames}"),
        (options.batch_size >= 1, f"--batch_size must be >= 1, got {options.batch_size}"),
        (split not in ("", ".", "..") and os.sep not in split,
         f"--split must be a plain folder name, got {split!r}"),
    ) if not ok]
    if problems:
        raise EmbedError("; ".join(problems))


def _check_resume(meta_path: str, spec: dict, split_dir: str, has_videos: bool) -> None:
    """A split folder holding videos may only be completed with the same checkpoint and
    sampling that wrote them."""
    if not has_videos or not pathlib.isfile(meta_path):
        return
    before = embed_files.read_json(meta_path).get("spec", {})
    changed = [f"{k}={before.get(k)!r} (now {v!r})" for k, v in spec.items()
               if before.get(k) != v]
    if changed:
        raise EmbedError(f"{split_dir} holds embeddings made with {', '.join(changed)}; "
                         "write to another --output, or use the same checkpoint and options "
                         "to complete it")


# -- text -----------------------------------------------------------------------------


def _sampling_text(spec: dict) -> str:
    size = f"{spec['frames']} frames at {spec['image_size']} px"
    if spec["sampling"] == "uniform":
        return f"uniform, {size}"
    return (f"multi-clip, {spec['clip_seconds']:g} s clips every {spec['clip_stride']:g} s, "
            f"{size} each")


def plan_text(summary: dict) -> str:
    """What a run is about to do."""
    spec = summary["spec"]
    return (f"embedding {summary['to_embed']} of {summary['rows']} videos of "
            f"{summary['input']} ({_sampling_text(spec)}) with {spec['checkpoint']} "
            f"(step {spec['step']}, D={summary['dim']}) into {summary['split_dir']}/ "
            f"({summary['already']} already there)")


def summary_text(summary: dict) -> str:
    """What a run wrote where."""
    bad = summary["bad_files"]
    lines = [f"wrote {summary['written']} videos ({summary['clips']} clips, "
             f"D={summary['dim']}) to {summary['split_dir']}/ ({summary['already']} were "
             f"already there)",
             f"bad files: {len(bad)}" + (f", listed in {summary['bad_files_csv']}" if bad else "")]
    if summary["left"]:
        lines.append(f"left: {summary['left']} videos (--limit): run the same command again "
                     "to continue")
    classes = (f"{summary['classes']} ({summary['num_classes']} classes of "
               f"{summary['spec']['label']!r}, from {summary['classes_from']})"
               if summary["classes"] else "none (no labels)")
    lines.append(f"run metadata: {summary['metadata']}; classes: {classes}")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise EmbedError(message)


def _parser() -> argparse.ArgumentParser:
    defaults = EmbedOptions()
    parser = _Parser(prog="twlv embed", description=(
        "Embeds every video of a manifest (or folder) with a trained student and writes "
        "the official TWLV-I layout: DIR/<split>/<id>.json, <id>_c.npy, <id>_v.npy. "
        "Reruns skip videos already written. See docs/embed.md."))
    parser.add_argument("--checkpoint", required=True, metavar="CKPT_DIR",
                        help="a workdir of `twlv train`, its checkpoints/ folder, or a step folder")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--input", required=True, metavar="MANIFEST_OR_FOLDER")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--split", default=None,
                        help="output folder name (default: the manifest's stem; required for "
                             "a folder); for a folder of split manifests, which one to read")
    parser.add_argument("--sampling", default=defaults.sampling, choices=("uniform", "multi-clip"))
    parser.add_argument("--clip_seconds", type=float, default=defaults.clip_seconds,
                        help="multi-clip: seconds per clip")
    parser.add_argument("--clip_stride", type=float, default=None,
                        help="multi-clip: seconds between clip starts (default: clip_seconds)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per clip (default: the checkpoint's model.frames)")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size,
                        help="clips per model call, split over the devices")
    parser.add_argument("--label", default=None, metavar="COLUMN",
                        help="label column that becomes `annotation` (default: label)")
    parser.add_argument("--classes", default=None, metavar="FILE",
                        help="classes.json ({column: [names]}) shared by every split")
    parser.add_argument("--limit", type=int, default=None,
                        help="embed at most this many videos in this run")
    return parser


def _split_name(args) -> str:
    if args.split:
        return args.split
    if pathlib.isdir(args.input):
        raise EmbedError(f"--split is required when --input is a folder ({args.input})")
    return os.path.splitext(os.path.basename(args.input))[0]


def _run(args) -> int:
    from twlv_jax.eval.encoder import load_encoder

    if args.limit is not None and args.limit < 0:
        raise EmbedError(f"--limit must be >= 0, got {args.limit}")
    if not pathlib.exists(args.input):
        raise EmbedError(f"input {args.input} does not exist")
    if not pathlib.exists(args.checkpoint):
        raise EmbedError(f"checkpoint {args.checkpoint} does not exist")
    split = _split_name(args)
    manifest = read_manifest_or_folder(args.input, args.split)
    encoder = load_encoder(args.checkpoint, step=args.step)
    options = EmbedOptions(args.sampling, args.clip_seconds, args.clip_stride, args.frames,
                           args.batch_size, args.label)
    summary = embed_split(encoder, manifest, args.output, split, options,
                          classes_path=args.classes, limit=args.limit)
    print(summary_text(summary))
    if summary["bad_files"] and not summary["already"] + summary["written"]:
        raise EmbedError(f"no video of {split} could be read: {len(summary['bad_files'])} of "
                         f"{summary['to_embed']} files unreadable; list: {summary['bad_files_csv']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `twlv embed`; returns the exit status (2: bad arguments or inputs)."""
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    try:
        return _run(_parser().parse_args(sys.argv[1:] if argv is None else argv))
    except (EmbedError, ManifestError, FileNotFoundError) as error:
        print(f"twlv embed: {error}", file=sys.stderr)
        return 2


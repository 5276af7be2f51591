"""Data pipeline throughput: seek-and-decode-what-is-needed vs decode-everything, the
training pipeline at the tiny and S shapes, and the data-wait share of real training runs.

    .venv/bin/python benchmarks/data.py [--seconds 9] [--rounds 3] [--videos 4]

Writes benchmarks/results/data.md and prints it. Test videos are written here: 10 s,
25 fps, 256 x 256 moving shapes (the synthetic renderer), encoded once with a 16-frame
GOP (what `twlv data prepare` writes) and once with a 250-frame GOP (a typical camera or
web file). A clip is 16 frames at stride 4 with a random resized crop to 224 px. Last,
`twlv train` runs the tiny and S configs on these files and the share of the step spent
waiting for data is read from their metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import av
import grain
import ml_collections
import numpy as np
from absl import flags

from twlv_jax.data import pipeline, sampling, transforms
from twlv_jax.data.encode import write_video
from twlv_jax.data.manifest import write_manifest
from twlv_jax.data.quarantine import Quarantine
from twlv_jax.data.sources import open_source
from twlv_jax.data.synthetic import SynthOptions, render_video, write_synthetic
from twlv_jax.data.video import convert_frame

CLIP = dict(frames=16, image_size=224, stride=4, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.35),
            short_video="loop")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "data.md")
# (name, videos, config argument, extra overrides, steps, log_every) of the data-wait runs.
TRAIN_RUNS = (
    ("tiny, twlv objective", "synth", "variant=tiny", (), 200, 20),
    ("tiny, twlv objective", "synth", "variant=tiny", ("--config.data.workers=0",), 200, 20),
    ("tiny, twlv objective", "gop16", "variant=tiny", (), 200, 20),
    ("S, videomae objective, bfloat16", "gop16", "variant=S,objective=videomae",
     ("--config.train.batch_size=4", "--config.optim.warmup=2"), 12, 3),
)
VIDEOS = {"synth": "synthetic 64-px demo set", "gop16": "10-s 256-px videos (GOP 16)"}


class NaiveDecodeClip(grain.transforms.RandomMap):
    """The naive way: decode every frame to RGB, then pick the clip's frames and crop.

    `pyav_defaults`: convert with `frame.to_ndarray(format="rgb24")` as loaders usually do
    (a new libswscale context per frame, automatic threads); otherwise convert exactly as
    the pipeline does, so the comparison isolates seeking and converting only the clip.
    """

    def __init__(self, pyav_defaults: bool):
        self.pyav_defaults = pyav_defaults

    def _rgb(self, frame: av.VideoFrame, geometry: transforms.Geometry) -> np.ndarray:
        if not self.pyav_defaults:
            return convert_frame(frame, geometry)
        g = geometry
        resized = frame.to_ndarray(width=g.resize_w, height=g.resize_h, format="rgb24")
        return resized[g.top:g.top + g.height, g.left:g.left + g.width]

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        with av.open(record["path"]) as container:
            frames = [self._rgb(f, transforms.Geometry(f.height, f.width, 0, 0, f.height,
                                                       f.width))
                      for f in container.decode(video=0)]  # (H, W, 3) each
        indices = sampling.train_indices(rng, len(frames), CLIP["frames"], CLIP["stride"],
                                         CLIP["short_video"])
        height, width = frames[0].shape[:2]
        crop = transforms.random_resized_crop(height, width, rng=rng, size=CLIP["image_size"],
                                              scale=CLIP["crop_scale"], ratio=CLIP["crop_ratio"])
        clip = [self._rgb(av.VideoFrame.from_ndarray(frames[i], format="rgb24"), crop)
                for i in indices]
        return {"video": np.stack(clip)}  # (T, S, S, 3)


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line),
                     platform.processor())
    return (f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
            f"Python {platform.python_version()}, PyAV {av.__version__} "
            f"(FFmpeg {av.ffmpeg_version_info}), Grain {grain.__version__}")


def write_videos(folder: str, count: int, gop: int) -> str:
    """`count` 10-second 256-px videos with a keyframe every `gop` frames; their manifest."""
    rows = []
    for i in range(count):
        path = os.path.join(folder, f"gop{gop}", f"{i}.mp4")
        if not os.path.exists(path):
            frames = render_video(np.random.default_rng(i), i % 9, i % 8, frames=250, size=256,
                                  distractors=3)
            write_video(path, frames, fps=25, gop=gop, crf=23)
        rows.append({"path": path, "labels": {"label": i}})
    return write_manifest(os.path.join(folder, f"gop{gop}.csv"), rows)


def measure(transform: grain.transforms.RandomMap, manifest: str, workers: int,
            seconds: float) -> np.ndarray:
    """[clips, wall seconds, CPU seconds of this process] of decode + sample + augment
    through Grain, after warm-up."""
    source = open_source("manifest", manifest)
    decoded = grain.MapDataset.source(source).shuffle(seed=0).repeat().random_map(transform,
                                                                                  seed=0)
    stream = pipeline.SkipBadFiles(decoded, Quarantine(None, total=len(source), max_fraction=0),
                                   workers=workers, read_threads=1, prefetch=4)
    iterator = iter(stream)
    for _ in range(max(2, 2 * workers)):  # worker start and first decodes
        next(iterator)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    result = np.array([count, time.perf_counter() - start, time.process_time() - cpu])
    iterator.close()
    return result


def pipeline_clips_per_second(path: str, *, frames: int, image_size: int, batch: int,
                              workers: int, seconds: float) -> float:
    """Clips per second of make_train_iterator (batched) at a training shape."""
    cfg = ml_collections.ConfigDict(dict(
        source="manifest", path=path, split="train", stride=4, crop_scale=(0.3, 1.0),
        crop_ratio=(0.75, 1.35), flip=False, short_video="loop", workers=workers,
        read_threads=1, prefetch=8, max_bad_fraction=0.01))
    iterator, _ = pipeline.make_train_iterator(
        cfg, frames=frames, image_size=image_size, global_batch_size=batch, seed=0,
        process_index=0, process_count=1, quarantine_path=None)
    next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += len(next(iterator)["video"])
    rate = count / (time.perf_counter() - start)
    iterator.close()
    return rate


def train_data_wait(manifest: str, config_arg: str, overrides: tuple[str, ...], steps: int,
                    log_every: int, workdir: str) -> dict[str, float]:
    """Runs `twlv train` and averages clips/s, step time and data-wait share over its
    metrics.jsonl rows after the first (which holds the first steps after compiling)."""
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "twlv_jax", "train", "--workdir", workdir,
               "--config", f"{os.path.join(ROOT, 'configs', 'pretrain.py')}:{config_arg}",
               f"--config.data.path={manifest}", f"--config.train.steps={steps}",
               f"--config.train.log_every={log_every}", f"--config.train.ckpt_every={steps}",
               *overrides]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if "data_wait" in row][1:]
    return {key: float(np.mean([row[key] for row in rows]))
            for key in ("clips_per_s", "step_s", "data_wait")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=9.0,
                        help="per method and setting, split over the rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--videos", type=int, default=4, help="10-second videos per GOP")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                          "twlv_data_bench"))
    args = parser.parse_args(argv)
    flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags
    header = machine()
    print(f"machine: {header}\nwriting test videos to {args.workdir} ...", flush=True)
    short_gop = write_videos(args.workdir, args.videos, gop=16)
    long_gop = write_videos(args.workdir, args.videos, gop=250)
    synth = os.path.join(args.workdir, "synth")
    if not os.path.exists(os.path.join(synth, "train.csv")):
        write_synthetic(synth, SynthOptions(train=64, val=0), workers=2)

    methods = (pipeline.DecodeTrainClip(flip=False, label_names=(), **CLIP),
               NaiveDecodeClip(False), NaiveDecodeClip(True))
    rows = []
    for manifest, gop in ((short_gop, 16), (long_gop, 250)):
        for workers in (0, 1, 2):
            totals = np.zeros((len(methods), 3))  # per method: clips, wall s, CPU s
            for _ in range(args.rounds):  # interleaved, so load changes hit all alike
                for i, method in enumerate(methods):
                    totals[i] += measure(method, manifest, workers, args.seconds / args.rounds)
            rates = totals[:, 0] / totals[:, 1]
            cpu_ms = 1000 * totals[:, 2] / totals[:, 0]
            rows.append((gop, workers, rates, cpu_ms))
            print(f"GOP {gop}, {workers} workers: ours {rates[0]:.1f}, naive {rates[1]:.1f}, "
                  f"naive with PyAV defaults {rates[2]:.1f} clips/s", flush=True)
    shapes = [("tiny: 8 x 32 px, 10-s 256-px videos (GOP 16)", short_gop, 8, 32, 32),
              ("tiny: 8 x 32 px, synthetic 64-px demo set", os.path.join(synth, "train.csv"),
               8, 32, 32),
              ("S: 16 x 224 px, 10-s 256-px videos (GOP 16)", short_gop, 16, 224, 8)]
    shape_rows = []
    for name, path, frames, size, batch in shapes:
        rate = pipeline_clips_per_second(path, frames=frames, image_size=size, batch=batch,
                                         workers=2, seconds=args.seconds / 2)
        shape_rows.append((name, batch, rate))
        print(f"{name}: {rate:.1f} clips/s", flush=True)
    wait_rows = []
    manifests = {"synth": os.path.join(synth, "train.csv"), "gop16": short_gop}
    for name, videos, config_arg, overrides, steps, log_every in TRAIN_RUNS:
        result = train_data_wait(manifests[videos], config_arg, overrides, steps, log_every,
                                 os.path.join(args.workdir, "train_run"))
        wait_rows.append((name, VIDEOS[videos], config_arg, overrides, result))
        print(f"twlv train {name}: {result['clips_per_s']:.1f} clips/s, data wait "
              f"{result['data_wait']:.0%} of the step", flush=True)
    write_report(header, rows, shape_rows, wait_rows, args)
    return 0


def write_report(header: str, rows, shape_rows, wait_rows, args) -> None:
    lines = [
        "# Data pipeline throughput", "",
        f"Machine: {header}.", "",
        f"`benchmarks/data.py --seconds {args.seconds:g} --rounds {args.rounds} --videos "
        f"{args.videos}`: {args.videos} videos of 10 s at 25 fps, 256 x 256 px (synthetic "
        "moving shapes), libx264 crf 23. A clip is 16 frames at stride 4 with a random "
        "resized crop to 224 px, uint8. *ours*: seek to the keyframe before the clip, "
        "decode up to its last frame (skipping non-reference frames far from the clip's "
        "frames), convert only the clip's frames (resized in libswscale). *naive*: decode "
        "every frame to RGB, then pick and crop, converting like ours (one cached "
        "libswscale context, one thread). *naive, PyAV defaults*: the same with "
        "`frame.to_ndarray(format='rgb24')`, as video loaders usually write it. All run "
        "through the same Grain map (workers = Grain worker processes; 0 decodes in the "
        f"main process), in {args.rounds} interleaved rounds.", "",
        "Clips per second, wall clock (higher is better):", "",
        "| GOP (frames) | workers | ours | naive | naive, PyAV defaults | ours / naive | "
        "ours / naive, PyAV defaults |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {gop} | {w} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} | {r[0] / r[1]:.1f}x | "
              f"{r[0] / r[2]:.1f}x |" for gop, w, r, _ in rows]
    lines += [
        "", "CPU milliseconds per clip with 0 workers (all work in the measured process; "
        "less sensitive to other jobs on the machine):", "",
        "| GOP (frames) | ours | naive | naive, PyAV defaults | naive / ours | "
        "naive, PyAV defaults / ours |", "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {gop} | {c[0]:.1f} | {c[1]:.1f} | {c[2]:.1f} | {c[1] / c[0]:.1f}x | "
              f"{c[2] / c[0]:.1f}x |" for gop, w, _, c in rows if w == 0]
    lines += [
        "", "Training pipeline (`make_train_iterator`: shuffle, decode, sample, crop, skip "
        "bad files, batch) with data.workers=2, data.stride=4:", "",
        "| shape | batch | clips/s |", "|---|---:|---:|",
    ]
    lines += [f"| {name} | {batch} | {rate:.1f} |" for name, batch, rate in shape_rows]
    lines += [
        "", "Data wait in real training runs: `twlv train --config configs/pretrain.py:ARG` "
        "with the config's data settings (data.workers=2), "
        "averaged over the logged intervals after the first. Data wait is the share of wall "
        "time the devices sat idle waiting for the next batch (the loop's wait after the last "
        "dispatched step had finished). Trainer and Grain workers share the same cores.", "",
        "| run | videos | ARG and overrides | step (s) | clips/s | data wait |",
        "|---|---|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {videos} | `{' '.join((arg, *overrides))}` | {r['step_s']:.3f} | "
              f"{r['clips_per_s']:.1f} | {r['data_wait']:.0%} |"
              for name, videos, arg, overrides, r in wait_rows]
    lines += ["", "The machine is shared; wall-clock numbers move with its load (shown above).",
              ""]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    print("\n" + text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

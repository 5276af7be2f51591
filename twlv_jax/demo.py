r"""`twlv demo`: pretraining that learns, shown end to end on the built-in synthetic set.

    twlv demo --workdir runs/demo [--data runs/demo_data] [--config configs/demo.py]

1. writes the synthetic set (labelled MP4s; reused when written with the same options);
2. trains the image teacher on the train videos' frames without labels (InfoNCE,
   `twlv_jax.train.teacher`) and saves its weights;
3. pretrains the student with the recipe's objective (TWLV's distill + pixel + latent,
   distilling that teacher, plus the `flow` motion target) and with each single target
   at the same budget;
4. embeds the labelled train and val videos with each student, the same encoder at
   random init, and the teacher's frame-averaged features (trained and random);
5. scores each with the linear probe and k-NN on the val split, for the appearance and
   the motion label, and each pretraining run's loss on the val clips against each
   target's trivial baseline; prints the tables and writes them to WORKDIR/results.md
   (and results.json);
6. writes the main student's val embeddings in the official layout (`twlv embed`).

The recipe (data, teacher, student, runs) is `configs/demo.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import shutil
import time

import jax
import numpy as np
from absl import flags
from flax import nnx

from twlv_jax import config as cfglib
from twlv_jax import models
from twlv_jax.data.evaluation import eval_batches
from twlv_jax.data.synthetic import SynthOptions, write_synthetic
from twlv_jax.eval import embed as embedlib
from twlv_jax.eval.encoder import Encoder, load_encoder, random_encoder
from twlv_jax.eval.knn import knn_accuracy
from twlv_jax.eval.linear_probe import linear_probe
from twlv_jax.eval.outputs import fail
from twlv_jax.models import weights as weightlib
from twlv_jax.models.teachers import normalize_for_clip
from twlv_jax.objectives import image_teacher
from twlv_jax.train import loop
from twlv_jax.train.teacher import frame_embedding, pretrain_image_teacher

log = logging.getLogger("twlv.demo")
LABELS = ("label_appearance", "label_motion")


def labelled_clips(manifest: str, frames: int, image_size: int) -> tuple[np.ndarray, dict]:
    """Every video's uniform clip, uint8 (N, T, S, S, 3), and its labels {column: (N,)}."""
    videos, labels = [], {name: [] for name in LABELS}
    for batch in eval_batches(manifest, frames=frames, image_size=image_size, batch_size=32):
        valid = batch["index"] >= 0
        videos.append(batch["video"][valid])
        for name in LABELS:
            labels[name].append(batch[name][valid])
    return np.concatenate(videos), {k: np.concatenate(v) for k, v in labels.items()}


def encoder_features(encoder: Encoder, clips: np.ndarray, batch: int = 64) -> np.ndarray:
    """Pooled embeddings (N, D) of uint8 clips."""
    return np.concatenate([encoder(clips[i:i + batch])["pooled"]
                           for i in range(0, len(clips), batch)])


@functools.cache
def _teacher_embedding(variant: str, image_size: int):
    """jit(params, uint8 clips (B, T, H, W, 3)) -> (B, P) frame embeddings averaged per clip;
    one compiled function per teacher variant and size, whatever its parameters."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.image_teacher(variant)))

    @jax.jit
    def embed(params, video):
        teacher = nnx.merge(graphdef, params)
        frames = frame_embedding(teacher, normalize_for_clip(video, image_size))  # (B*T, P)
        return frames.reshape(video.shape[0], video.shape[1], -1).mean(axis=1)  # (B, P)
    return embed


def teacher_features(variant: str, params: dict, clips: np.ndarray, image_size: int,
                     batch: int = 64) -> np.ndarray:
    """The image teacher's embedding of every frame, averaged over each clip's frames: (N, P)."""
    embed = _teacher_embedding(variant, image_size)
    return np.concatenate([np.asarray(embed(params, clips[i:i + batch]))
                           for i in range(0, len(clips), batch)])


def standardize(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features scaled by the train split's per-dimension mean and std (what MAE's linear
    probe does with a BatchNorm without affine parameters before the linear layer)."""
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return (train - mean) / std, (val - mean) / std


def score(train: np.ndarray, val: np.ndarray, labels: dict, *, probe_batch: int) -> dict:
    """Val top-1 of the linear probe (the official optimizer and schedule on standardised
    features) and of k-NN (official: cosine, k=200, t=0.1) for each label."""
    result = {}
    scaled_train, scaled_val = standardize(train, val)
    for name in LABELS:
        short = name.removeprefix("label_")
        train_y, val_y = labels["train"][name], labels["val"][name]
        result[f"linear_{short}"] = linear_probe(scaled_train, train_y, scaled_val, val_y,
                                                 batch_size=probe_batch, progress=False)["top1"]
        result[f"knn_{short}"] = knn_accuracy(train, train_y, val, val_y)
    return result


def write_data(path: str, options: SynthOptions) -> None:
    """The synthetic set at `path`, written unless the same options already wrote it.

    A synthetic set written with other options (an earlier recipe) is replaced; a folder
    holding anything else is refused.
    """
    classes = os.path.join(path, "classes.json")
    if os.path.isfile(classes):
        with open(classes) as f:
            written = json.load(f).get("options")
        if written == dataclasses.asdict(options):
            log.info("data: %s (already written)", path)
            return
        if written is None:
            raise ValueError(f"--data {path} holds something other than the synthetic set; "
                             "pass another folder")
        log.info("data: %s holds the synthetic set of other options; writing it anew", path)
        shutil.rmtree(os.path.join(path, "videos"), ignore_errors=True)
    elif os.path.isdir(path) and os.listdir(path):
        raise ValueError(f"--data {path} is not empty and holds no synthetic set; pass another "
                         "folder")
    start = time.perf_counter()
    write_synthetic(path, options, workers=max(1, min(4, os.cpu_count() or 1)))
    log.info("data: wrote %d + %d videos to %s in %.0f s", options.train, options.val, path,
             time.perf_counter() - start)


def train_teacher(workdir: str, clips: np.ndarray, recipe: dict) -> tuple[str, dict, dict]:
    """(weights file, trained params, random-init params) of the demo's image teacher."""
    variant = recipe["variant"]
    random_params = nnx.to_pure_dict(nnx.state(models.image_teacher(variant, seed=recipe["seed"])))
    start = time.perf_counter()
    params, losses = pretrain_image_teacher(
        clips, variant=variant, steps=recipe["steps"], batch_size=recipe["batch_size"],
        lr=recipe["lr"], temperature=recipe["temperature"], seed=recipe["seed"])
    path = os.path.join(workdir, "teacher", "teacher.safetensors")
    weightlib.save(params, path, metadata={"variant": variant, "objective": "InfoNCE on frames"})
    log.info("teacher: %d steps in %.0f s, InfoNCE %.3f -> %.3f; weights %s", recipe["steps"],
             time.perf_counter() - start, losses[0], losses[-1], path)
    return path, params, random_params


def pretrain(name: str, config, workdir: str) -> dict:
    """One `twlv train` run; returns {target: (held-out loss, baseline)} on the val clips
    at the end (from the online probe), with the step-0 values under 'step 0'."""
    start = time.perf_counter()
    summary = loop.run(config, workdir)
    log.info("%s: %d steps in %.0f s, %.0f clips/s", name, summary["step"],
             time.perf_counter() - start, summary["last_metrics"].get("clips_per_s", 0))
    held_out = {}
    for when, scores in (("end", summary["probe"]), ("step 0", summary["probe_baseline"])):
        for key, value in scores.items():
            if key.startswith("probe/heldout_"):
                target = key.removeprefix("probe/heldout_")
                held_out.setdefault(target, {})[when] = (value, scores[f"probe/baseline_{target}"])
    return held_out


def held_out_table(runs: dict[str, dict]) -> str:
    """Each run's loss on the val clips per target: at step 0 and at the end, with the
    trivial baseline (predicting the mean of the targets) at the end."""
    lines = ["| run | target | step 0 | end | baseline | end / baseline |", "|---|---|---:|---:|---:|---:|"]
    for run, targets in runs.items():
        for target, values in targets.items():
            (first, _), (last, baseline) = values["step 0"], values["end"]
            lines.append(f"| {run} | {target} | {first:.4f} | {last:.4f} | {baseline:.4f} | "
                         f"{last / baseline:.2f} |")
    return "\n".join(lines)


def table(rows: dict[str, dict], chance: dict[str, float]) -> str:
    """The results as a markdown table, one row per model."""
    columns = [("linear_appearance", "linear app."), ("knn_appearance", "k-NN app."),
               ("linear_motion", "linear motion"), ("knn_motion", "k-NN motion")]
    lines = ["| model | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, result in rows.items():
        cells = [f"{result[key]:.3f}" if key in result else "" for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| chance (most frequent class) | "
                 + " | ".join(f"{chance[key]:.3f}" for key, _ in columns) + " |")
    return "\n".join(lines)


def probe_set(data: str, config_spec: str) -> tuple[object, object, dict, dict]:
    """(recipe module, its config, {split: uint8 clips}, {split: labels}) of the labelled
    train and val videos the demo probes, written first unless already there."""
    recipe = cfglib.load_module(config_spec.split(":", 1)[0])
    write_data(data, SynthOptions(**recipe.SYNTH))
    config = cfglib.build(config_spec, [("data.path", os.path.join(data, "train.csv"))])
    clips, labels = {}, {}
    for split in ("train", "val"):
        clips[split], labels[split] = labelled_clips(os.path.join(data, f"{split}.csv"),
                                                     config.model.frames, config.model.image_size)
    return recipe, config, clips, labels


def run_demo(workdir: str, data: str, config_spec: str) -> dict:
    """Everything above; returns {'rows': {model: scores}, 'chance': ..., 'files': ...}."""
    recipe, base, clips, labels = probe_set(data, config_spec)
    m = base.model
    log.info("probe set: %d train and %d val videos, %d frames at %d px", len(clips["train"]),
             len(clips["val"]), m.frames, m.image_size)
    probe_batch = recipe.PROBE_BATCH
    rows: dict[str, dict] = {}
    held_out: dict[str, dict] = {}

    teacher_path, trained, random_init = train_teacher(workdir, clips["train"], recipe.TEACHER)
    variant, size = recipe.TEACHER["variant"], image_teacher.image_size(base)
    for name, params in (("image teacher, frame average", trained),
                         ("image teacher at random init", random_init)):
        features = {s: teacher_features(variant, params, clips[s], size) for s in clips}
        rows[name] = score(features["train"], features["val"], labels, probe_batch=probe_batch)

    for name, overrides in recipe.RUNS.items():
        config = cfglib.build(config_spec, [("data.path", os.path.join(data, "train.csv")),
                                            ("train.probe_path", data),
                                            ("teacher.weights", teacher_path), *overrides])
        if not rows.get("student at random init"):
            rows["student at random init"] = score_encoder(random_encoder(config), clips, labels,
                                                           probe_batch)
        held_out[name] = pretrain(name, config, os.path.join(workdir, name))
        rows[f"student: {name}"] = score_encoder(load_encoder(os.path.join(workdir, name)),
                                                 clips, labels, probe_batch)
    main_run = next(iter(recipe.RUNS))
    embeddings = os.path.join(workdir, "embeddings")
    code = embedlib.main(["--checkpoint", os.path.join(workdir, main_run), "--input",
                          os.path.join(data, "val.csv"), "--output", embeddings, "--label",
                          "label_motion", "--split", "val"])
    if code:
        raise ValueError(f"twlv embed of {main_run} failed (exit status {code})")
    return {"rows": rows, "chance": chance(labels["val"]), "held_out": held_out,
            "embeddings": embeddings,
            "main_run": os.path.join(workdir, main_run)}


def score_encoder(encoder: Encoder, clips: dict, labels: dict, probe_batch: int) -> dict:
    """`score` of a student encoder's pooled embeddings."""
    features = {split: encoder_features(encoder, clips[split]) for split in clips}
    return score(features["train"], features["val"], labels, probe_batch=probe_batch)


def chance(val_labels: dict) -> dict[str, float]:
    """Accuracy of always answering the most frequent val class, per label and probe."""
    result = {}
    for name in LABELS:
        top = np.bincount(val_labels[name]).max() / len(val_labels[name])
        short = name.removeprefix("label_")
        result[f"linear_{short}"] = result[f"knn_{short}"] = float(top)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twlv demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo", help="output folder (emptied first)")
    parser.add_argument("--data", default="runs/demo_data", help="the synthetic set's folder")
    parser.add_argument("--config", default="configs/demo.py", help="the recipe")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "jax", "orbax", "twlv.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    flags.FLAGS.mark_as_parsed()        # Grain's worker processes read absl flags
    start = time.perf_counter()
    try:
        if os.path.isdir(args.workdir):
            shutil.rmtree(args.workdir)
        result = run_demo(os.path.abspath(args.workdir), args.data, args.config)
    except (ValueError, FileNotFoundError) as error:
        return fail("demo", error)
    text = (f"val top-1 of each model's embeddings:\n\n{table(result['rows'], result['chance'])}"
            f"\n\nloss on the val clips (fixed masks) against each target's trivial baseline:"
            f"\n\n{held_out_table(result['held_out'])}")
    minutes = (time.perf_counter() - start) / 60
    report = (f"# twlv demo\n\n{minutes:.1f} min on {jax.device_count()} "
              f"{jax.devices()[0].platform} device(s).\n\n{text}\n")
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"\n{text}\n\n  results    : {os.path.join(args.workdir, 'results.md')}\n"
          f"  main run   : {result['main_run']}\n  embeddings : {result['embeddings']} "
          "(official TWLV-I layout)")
    return 0

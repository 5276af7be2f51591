"""The synthetic moving-shapes video set (`twlv data synth`).

Each video shows one large shape moving in a straight line over a textured background,
with small distractor shapes drifting in random directions. Two labels per video:
  label_appearance  shape x colour of the large shape (3 x 3 = 9 classes)
  label_motion      its direction, one of 8 (E, NE, N, NW, W, SW, S, SE)
`label` repeats label_appearance. Neither label can be read off one pixel: colours
recur in distractors and texture, shapes need their outline, direction needs time.
Videos are MP4 (libx264, short GOP); everything is deterministic under the seed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from twlv_jax.data.encode import write_video
from twlv_jax.data.manifest import write_manifest
from twlv_jax.data.process_pool import map_ordered

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 45, 40), "green": (45, 185, 65), "blue": (50, 85, 230)}
DIRECTIONS = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")  # counter-clockwise from east
APPEARANCES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)


@dataclass(frozen=True)
class SynthOptions:
    """Sizes of the synthetic set; the defaults write in a few seconds on 2 cores."""

    train: int = 360       # videos in train.csv
    val: int = 90          # videos in val.csv
    frames: int = 40       # frames per video
    size: int = 64         # width and height in pixels
    fps: float = 16.0      # frames per second (40 frames: 2.5 s)
    distractors: int = 3   # small shapes moving in random directions
    texture: float = 1.0   # contrast of the background texture (0: a flat colour)
    grey: bool = False     # a grey background (one level for all channels) instead of a tint
    noise: float = 3.0     # std of the per-pixel noise, in uint8 levels
    radius: float = 0.16   # size of the large shape, as a share of the frame
    travel: float = 0.45   # distance it moves over the video, as a share of the frame
    seed: int = 0


def _shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape centred at the origin (image axes)."""
    if shape == "circle":
        distance = np.hypot(dx, dy) - radius
    elif shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * radius
    else:  # an upward triangle with circumradius `radius`
        slopes = np.maximum(0.866 * dx - 0.5 * dy, -0.866 * dx - 0.5 * dy)
        distance = np.maximum(dy, slopes) - 0.5 * radius
    return np.clip(0.5 - distance, 0.0, 1.0)


def _background(rng: np.random.Generator, size: int, contrast: float, grey: bool) -> np.ndarray:
    """A smooth random texture in muted colours: (size, size, 3) float."""
    y, x = np.mgrid[0:size, 0:size] / size
    texture = np.zeros((size, size))
    for _ in range(3):
        angle, frequency, phase = rng.uniform(0, math.pi), rng.uniform(2, 7), rng.uniform(0, 6.3)
        texture += np.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle))
                          + phase)
    tint = np.full(3, rng.uniform(70, 170)) if grey else rng.uniform(70, 170, size=3)
    return tint + 22 * contrast * texture[..., None] * rng.uniform(0.5, 1.0, size=3)  # (H, W, 3)


def _paint(canvas: np.ndarray, shape: str, colour: np.ndarray, centres: np.ndarray,
           radius: float) -> None:
    """Draws a shape at one centre per frame: canvas (T, H, W, 3), centres (T, 2) as (x, y)."""
    size = canvas.shape[1]
    grid = np.arange(size) + 0.5
    dx = grid[None, None, :] - centres[:, 0, None, None]  # (T, 1, W)
    dy = grid[None, :, None] - centres[:, 1, None, None]  # (T, H, 1)
    alpha = _shape_alpha(shape, dx, dy, radius)[..., None]  # (T, H, W, 1)
    canvas *= 1 - alpha
    canvas += alpha * colour


def render_video(rng: np.random.Generator, appearance: int, motion: int, *, frames: int,
                 size: int, distractors: int, texture: float = 1.0, noise: float = 3.0,
                 radius: float = 0.16, travel: float = 0.45, grey: bool = False) -> np.ndarray:
    """One video of the set: uint8 (frames, size, size, 3)."""
    shape, colour_name = SHAPES[appearance // len(COLOURS)], list(COLOURS)[appearance % len(COLOURS)]
    canvas = np.repeat(_background(rng, size, texture, grey)[None], frames, axis=0)  # (T, H, W, 3)
    t = np.arange(frames)[:, None] / max(frames - 1, 1)  # (T, 1) in [0, 1]
    for _ in range(distractors):
        start = rng.uniform(0, size, size=2)
        velocity = rng.normal(size=2) * size * 0.3
        centres = (start + t * velocity) % size  # wraps around the frame
        colour = np.array(list(COLOURS.values())[rng.integers(len(COLOURS))], float)
        _paint(canvas, SHAPES[rng.integers(len(SHAPES))], colour + rng.normal(0, 12, 3),
               centres, 0.07 * size)
    radius = radius * size
    angle = motion * math.pi / 4
    step = np.array([math.cos(angle), -math.sin(angle)]) * travel * size  # y points down
    low, high = radius + 1 - np.minimum(step, 0), size - radius - 1 - np.maximum(step, 0)
    centres = rng.uniform(low, high) + t * step  # (T, 2), inside the frame throughout
    colour = np.array(COLOURS[colour_name], float) + rng.normal(0, 10, 3)
    _paint(canvas, shape, colour, centres, radius)
    canvas += rng.normal(0, noise, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def colour_ramps(rng: np.random.Generator, count: int, *, frames: int, size: int,
                 drift: float = 0.02) -> np.ndarray:
    """Clips of linear colour ramps at random angles, drifting slowly: uint8 (count, T, S, S, 3).

    A learnable set for masked modeling: every tubelet is predictable from any visible
    one (two colours, one direction), unlike textures of random phase where predicting
    zero is the best a masked model can do.
    """
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5                    # (S, S) each
    angle = rng.uniform(0, 2 * math.pi, (count, 1, 1, 1))
    t = np.arange(frames)[None, :, None, None] - frames / 2                 # (1, T, 1, 1)
    ramp = np.clip(0.5 + 0.6 * (x * np.cos(angle) + y * np.sin(angle)) + drift * t, 0, 1)
    # Colours far apart in every channel, so a tubelet's ramp spans many uint8 levels.
    low = rng.uniform(0, 90, (count, 1, 1, 1, 3))
    high = rng.uniform(165, 255, (count, 1, 1, 1, 3))
    swap = rng.random((count, 1, 1, 1, 3)) < 0.5
    low, high = np.where(swap, high, low), np.where(swap, low, high)
    return np.round(low + (high - low) * ramp[..., None]).astype(np.uint8)  # (N, T, S, S, 3)


def _check(options: SynthOptions) -> None:
    problems = [text for ok, text in (
        (options.train >= 1, f"train must be >= 1 video, got {options.train}"),
        (options.val >= 0, f"val must be >= 0 videos, got {options.val}"),
        (options.frames >= 2, f"frames must be >= 2, got {options.frames}"),
        (options.size >= 16 and options.size % 2 == 0,
         f"size must be an even number of pixels >= 16, got {options.size}"),
        (options.fps > 0, f"fps must be positive, got {options.fps}"),
        (options.distractors >= 0, f"distractors must be >= 0, got {options.distractors}"),
        (options.texture >= 0, f"texture must be >= 0, got {options.texture}"),
        (options.noise >= 0, f"noise must be >= 0, got {options.noise}"),
        (options.radius > 0 and 2 * (options.radius * options.size + 1)
         + options.travel * options.size <= options.size,
         f"radius {options.radius} and travel {options.travel}: the shape must stay inside "
         f"the {options.size}-px frame (2 * (radius * size + 1) + travel * size <= size)"),
    ) if not ok]
    if problems:
        raise ValueError("synthetic set: " + "; ".join(problems))


def _labels(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """Balanced (appearance, motion) pairs: every combination once per block of 72."""
    combos = len(APPEARANCES) * len(DIRECTIONS)
    order = np.concatenate([rng.permutation(combos) for _ in range(-(-count // combos))]
                           or [np.zeros(0, np.int64)])
    return [(int(c) // len(DIRECTIONS), int(c) % len(DIRECTIONS)) for c in order[:count]]


def _write_one(job: tuple) -> dict:
    """Renders and encodes one video; returns its manifest row."""
    path, appearance, motion, options, video_seed = job
    rng = np.random.default_rng(video_seed)
    frames = render_video(rng, appearance, motion, frames=options.frames, size=options.size,
                          distractors=options.distractors, texture=options.texture,
                          noise=options.noise, radius=options.radius, travel=options.travel,
                          grey=options.grey)
    write_video(path, frames, fps=options.fps, gop=8, crf=18, threads=1)
    return {"path": path,
            "labels": {"label": appearance, "label_appearance": appearance,
                       "label_motion": motion},
            "extra": {"appearance": APPEARANCES[appearance], "direction": DIRECTIONS[motion]}}


def write_synthetic(output: str, options: SynthOptions | None = None, *, workers: int = 1,
                    progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """Writes videos under output/videos/{train,val}/, then train.csv, val.csv (when val
    > 0) and classes.json in `output`. Returns {name: path} of what was written."""
    options = options or SynthOptions()
    _check(options)
    jobs = []
    for split_id, (split, count) in enumerate((("train", options.train), ("val", options.val))):
        rng = np.random.default_rng([options.seed, split_id])
        for index, (appearance, motion) in enumerate(_labels(rng, count)):
            path = os.path.join(output, "videos", split, f"{index:06d}.mp4")
            jobs.append((split, (path, appearance, motion, options,
                                 [options.seed, split_id, index])))
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    for (split, _), row in zip(jobs, map_ordered(_write_one, [job for _, job in jobs],
                                                 workers=workers)):
        rows[split].append(row)
        if progress:
            progress(1)
    written = {split: write_manifest(os.path.join(output, f"{split}.csv"), rows[split])
               for split in rows if rows[split]}
    classes = os.path.join(output, "classes.json")
    with open(classes, "w") as f:
        json.dump({"label": list(APPEARANCES), "label_appearance": list(APPEARANCES),
                   "label_motion": list(DIRECTIONS), "options": asdict(options)}, f, indent=2)
        f.write("\n")
    return {**written, "classes": classes, "videos": os.path.join(output, "videos")}


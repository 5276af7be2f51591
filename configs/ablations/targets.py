r"""Ablation: which reconstruction targets (each alone, each pair, all three).

    twlv sweep configs/ablations/targets.py:setting=cpu --workdir runs/abl_targets \
        --config.data.path=runs/demo_data/train.csv --config.train.probe_path=runs/demo_data
    twlv sweep configs/ablations/targets.py:setting=paper --workdir gs://BUCKET/abl_targets \
        --launcher xpk --launcher_args="--cluster=C --tpu_type=v5p-128 --image=IMG" \
        --config.data.path=/data/k710/train.csv --config.teacher.weights=/weights/clip_b16.safetensors

7 runs: distill, pixel, latent; the three pairs; all three (the TWLV-I objective). The
mask stays the preset's (attention, 0.8) in every run, so only the targets change.
"""

import itertools
import os

from twlv_jax.config import load_module

TARGETS = ("distill", "pixel", "latent")


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "base.py")).get_config(arg)


def get_hyper(h):
    subsets = [s for n in (1, 2, 3) for s in itertools.combinations(TARGETS, n)]
    return h.zipit([h.sweep(f"config.objective.{t}.weight", [float(t in s) for s in subsets])
                    for t in TARGETS])

r"""Ablation: the weights of the three targets around 1:1:1.

    twlv sweep configs/ablations/target_weights.py:setting=cpu --workdir runs/abl_weights \
        --config.data.path=runs/demo_data/train.csv --config.train.probe_path=runs/demo_data

7 runs: all weights 1, then each target's weight at 0.5 and at 2 with the others at 1.
"""

import os

from twlv_jax.config import load_module

TARGETS = ("distill", "pixel", "latent")
SCALES = (0.5, 2.0)


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "base.py")).get_config(arg)


def get_hyper(h):
    rows = [(1.0, 1.0, 1.0)] + [tuple(s if i == j else 1.0 for j in range(3))
                                for i in range(3) for s in SCALES]
    return h.zipit([h.sweep(f"config.objective.{t}.weight", [r[i] for r in rows])
                    for i, t in enumerate(TARGETS)])

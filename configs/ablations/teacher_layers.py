r"""Ablation: how many of the image teacher's last layers the student distills.

    twlv sweep configs/ablations/teacher_layers.py:setting=cpu --workdir runs/abl_layers \
        --config.data.path=runs/demo_data/train.csv --config.train.probe_path=runs/demo_data

cpu: 1 and 2 (the tiny teacher has 2 layers); paper: 1, 2, 4 and 6 of CLIP-B/16's 12
(UMT distills the last 6).
"""

import os

from twlv_jax.config import load_module, parse_arg

LAYERS = {"cpu": (1, 2), "paper": (1, 2, 4, 6)}


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "base.py")).get_config(arg)


def get_hyper(h, arg=None):
    setting = parse_arg(arg, setting="cpu", objective="twlv").setting
    return h.sweep("config.objective.distill.layers", LAYERS[setting])

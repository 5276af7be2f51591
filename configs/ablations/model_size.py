r"""Ablation: the student's size with the same objective, data and schedule.

    twlv sweep configs/ablations/model_size.py:setting=cpu --workdir runs/abl_size \
        --config.data.path=runs/demo_data/train.csv --config.train.probe_path=runs/demo_data

cpu: tiny (2 layers, width 64) and S (12 layers, width 384); paper: B (86M) and L (307M).
"""

import os

from twlv_jax.config import load_module, parse_arg

SIZES = {"cpu": ("tiny", "S"), "paper": ("B", "L")}


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "base.py")).get_config(arg)


def get_hyper(h, arg=None):
    setting = parse_arg(arg, setting="cpu", objective="twlv").setting
    return h.sweep("config.model.variant", SIZES[setting])

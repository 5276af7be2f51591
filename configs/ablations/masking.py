r"""Ablation: mask kind x mask ratio, with the TWLV-I targets.

    twlv sweep configs/ablations/masking.py:setting=cpu --workdir runs/abl_masking \
        --config.data.path=runs/demo_data/train.csv --config.train.probe_path=runs/demo_data

12 runs: tube, random, multiblock3d and attention (UMT's, from the image teacher's
attention) masks, each at ratios 0.75, 0.8 and 0.9.
"""

import os

from twlv_jax.config import load_module

KINDS = ("tube", "random", "multiblock3d", "attention")
RATIOS = (0.75, 0.8, 0.9)


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "base.py")).get_config(arg)


def get_hyper(h):
    return h.product([h.sweep("config.objective.mask.kind", KINDS),
                      h.sweep("config.objective.mask.ratio", RATIOS)])

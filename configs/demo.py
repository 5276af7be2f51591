r"""The demo: a tiny TWLV-I pretraining run on the built-in synthetic video set.

    make demo        # writes synthetic MP4s, then:
    twlv train --config configs/demo.py --workdir runs/demo \
        --config.data.path=runs/demo_data/train.csv

Runs in a few minutes on a 2-core CPU.
"""

import os

from twlv_jax.config import load_module


def get_config(arg=None):
    pretrain = load_module(os.path.join(os.path.dirname(__file__), "pretrain.py"))
    c = pretrain.get_config(",".join(filter(None, ["variant=tiny", arg])))
    c.train.steps = 120
    c.train.log_every = 10
    c.train.ckpt_every = 60
    c.data.workers = 1
    return c

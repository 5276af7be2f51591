r"""The base of every TWLV-I ablation: configs/pretrain.py at a CPU-sized or the paper's setting.

    twlv train --config configs/ablations/base.py:setting=cpu --workdir runs/abl_base \
        --config.data.path=runs/demo_data/train.csv --config.train.probe_path=runs/demo_data

Arguments: `setting` (cpu | paper), `objective` (a preset of configs/pretrain.py).
- cpu: the tiny student (8 frames at 32 px, 2 layers) and the tiny random image teacher,
  batch 8, 300 steps, the online k-NN probe every 100 steps when train.probe_path is set;
  a run takes minutes on a laptop's CPU.
- paper: ViT-B/16, 16 frames at 224 px, global batch 2048, the CLIP-B/16 image teacher
  (give --config.teacher.weights), 800 epochs, the probe every 50 epochs: the recipe of
  configs/pretrain.py, which the ablations vary one factor of at a time.
"""

import os

from twlv_jax.config import ConfigError, load_module, parse_arg

SETTINGS = ("cpu", "paper")


def get_config(arg=None):
    arg = parse_arg(arg, setting="cpu", objective="twlv")
    if arg.setting not in SETTINGS:
        raise ConfigError(f"setting: expected one of {SETTINGS}, got {arg.setting!r}")
    pretrain = load_module(os.path.join(os.path.dirname(__file__), os.pardir, "pretrain.py"))
    cpu = arg.setting == "cpu"
    c = pretrain.get_config(f"variant={'tiny' if cpu else 'B'},objective={arg.objective}")
    if cpu:
        c.train.steps = 300
        c.train.ckpt_every = 100
        c.train.probe_every = 100
        c.data.workers = 1
    else:
        c.train.probe_every = "50ep"
    return c

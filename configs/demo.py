r"""The demo's recipe: a tiny TWLV-I pretraining that learns in a few CPU minutes.

    make demo        # = twlv demo --workdir runs/demo --data runs/demo_data
    twlv train --config configs/demo.py --workdir runs/demo_twlv \
        --config.data.path=runs/demo_data/train.csv --config.teacher.weights=TEACHER

`twlv demo` reads SYNTH (the synthetic set), TEACHER (its label-free image teacher),
RUNS (the pretraining runs, the first is the main one) and PROBE_BATCH from here, and
`get_config` for the student. See the README's demo section for what each choice does.
"""

import os

from twlv_jax.config import load_module

# One large shape crossing a flat grey background, no distractors: at 32 px and 8 x 8
# patches a tiny model sees the shape's outline, and within each 2-frame tubelet its
# displacement (about 2 px between the frames a clip samples).
SYNTH = dict(train=480, val=160, frames=40, size=64, distractors=0, texture=0.0, noise=1.0,
             radius=0.2, travel=0.55, grey=True)

# The image teacher: InfoNCE on pairs of frames of one video (no labels), tiny CLIP layout.
TEACHER = dict(variant="tiny", steps=400, batch_size=64, lr=1e-3, temperature=0.1, seed=1)

# name -> overrides; every run has the same steps, batch and schedule.
TARGETS = ("distill", "pixel", "latent", "flow")
RUNS = {
    "twlv + flow": [],
    **{f"{name} only": [(f"objective.{other}.weight", "0") for other in TARGETS if other != name]
       for name in ("pixel", "latent", "distill", "flow")},
}

# The linear probe's batch: the official 1024 is one step per epoch on 480 videos.
PROBE_BATCH = 64


def get_config(arg=None):
    pretrain = load_module(os.path.join(os.path.dirname(__file__), "pretrain.py"))
    c = pretrain.get_config(",".join(filter(None, ["variant=tiny", arg])))
    # Random tubelets masked (not tubes): a masked tubelet's neighbours in time are visible,
    # and one-block heads leave the motion between them for the encoder to represent.
    c.objective.mask.kind = "random"
    c.objective.mask.ratio = 0.75
    c.objective.pixel.decoder_depth = 1
    c.objective.latent.predictor_depth = 1
    # The demo's teacher (trained in seconds, without labels) and the EMA targets of a
    # tiny student are weak guides: weigh them at a quarter of the pixel target.
    c.objective.distill.weight = 0.25
    c.objective.latent.weight = 0.25
    # The motion target (not in TWLV-I): each visible token regresses its patch's velocity.
    # No other target moved the motion probes of this tiny student (README, Quickstart).
    c.objective.flow.weight = 8.0
    c.train.steps = 1000
    c.train.batch_size = 32
    c.train.log_every = 50
    c.train.ckpt_every = 500
    c.data.workers = 1
    return c

r"""TWLV-I pretraining: masked video modeling with diversified reconstruction targets.

    twlv train --config configs/pretrain.py:variant=B,objective=twlv \
        --workdir /tmp/twlv_b --config.data.path=/data/k710/manifest.csv

Arguments after the colon: `variant` (tiny|S|B|L|H|g), `objective` (a preset: twlv,
umt, videomae, vjepa), `frames`, `res`. `variant=tiny` is a CPU-sized model for smoke
runs and tests (8 frames at 32 px, random tiny teacher allowed).
"""

from ml_collections import ConfigDict, config_dict

from twlv_jax.config import duration, parse_arg
from twlv_jax.objectives.targets import add_config_blocks

TINY = "tiny"


def get_config(arg=None):
    arg = parse_arg(arg, variant="B", objective="twlv", frames=0, res=0)
    tiny = arg.variant == TINY
    c = ConfigDict()
    c.seed = 0
    c.init_from = ""            # params-only init from a checkpoint or workdir
    c.init_strict = True        # a param missing from init_from (or mis-shaped) is an error

    c.model = ConfigDict(dict(
        variant=arg.variant,
        frames=arg.frames or (8 if tiny else 16),
        image_size=arg.res or (32 if tiny else 224),
        tubelet=2,
        patch=8 if tiny else 16,
        dtype="float32" if tiny else "bfloat16",   # compute dtype; params stay float32
        scan=True,
        remat="none" if tiny else "full",          # none | full | dots | dots_no_batch
        drop_path=0.0 if tiny else 0.1,
        qkv_bias="all",                            # all | qv (VideoMAE) | none
        layerscale=0.0,                            # 0 disables; 1e-5 is a usual init
        pos_embed="sincos3d",                      # sincos3d | sincos1d (VideoMAE) | rope3d (V-JEPA 2)
        attention="auto",                          # auto (cudnn on GPUs, blockwise on CPUs) | xla
    ))

    c.teacher = ConfigDict(dict(
        variant=TINY if tiny else "clip_b16",      # tiny | clip_b16 | clip_l14
        weights="",                                # local file with the teacher's weights
        image_size=0,                              # 0: student's grid x teacher patch
        allow_random=False,                        # only with tiny, or set on purpose
    ))

    c.objective = ConfigDict(dict(
        preset=arg.objective,                      # twlv | umt | videomae | vjepa | none
        # Anything left None below is filled in from the preset.
        mask=ConfigDict(dict(
            kind=config_dict.placeholder(str),     # tube | random | multiblock3d | attention
            ratio=config_dict.placeholder(float),
        )),
        distill=ConfigDict(dict(weight=config_dict.placeholder(float), layers=2 if tiny else 6)),
        pixel=ConfigDict(dict(
            weight=config_dict.placeholder(float),
            decoder_width=0,                       # 0: VideoMAE's width for the variant
            decoder_depth=4,
            decoder_mask_ratio=0.0,                # VideoMAEv2 dual masking: share of masked tokens dropped
            norm_pix=True,
        )),
        latent=ConfigDict(dict(
            weight=config_dict.placeholder(float),
            predictor_width=0,                     # 0: 384 (64 for tiny)
            predictor_depth=0,                     # 0: 12 (2 for tiny)
            ema_start=0.998,
            ema_end=1.0,
        )),
        video_teacher=ConfigDict(dict(
            weight=config_dict.placeholder(float),
            layers=2 if tiny else 4,
            variant="",                            # an encoder size, e.g. B
            qkv_bias="qv",                         # its layout; VideoMAE: qv and sincos1d
            pos_embed="sincos1d",
            weights="",                            # local file
        )),
    ))
    add_config_blocks(c.objective, tiny)           # targets registered beyond the four above

    c.optim = ConfigDict(dict(
        lr=1e-3 if tiny else 1.5e-4,  # per `lr_batch` clips; scaled linearly with train.batch_size
        lr_batch=0 if tiny else 256,  # 0 disables scaling
        warmup=duration(20 if tiny else "40ep"),
        min_lr_ratio=0.01,          # cosine ends at lr * min_lr_ratio
        b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.05,
        weight_decay_end=0.05,      # cosine schedule from weight_decay to this
        clip_norm=1.0,              # 0 disables clipping
        layer_decay=1.0,            # < 1 enables layer-wise lr decay
    ))

    c.train = ConfigDict(dict(
        steps=duration(200 if tiny else "800ep"),
        batch_size=8 if tiny else 2048,            # global, in clips
        microbatches=1,                            # > 1: gradient accumulation in one step
        log_every=10 if tiny else 50,
        ckpt_every=duration(100 if tiny else 2000),
        keep=3,                                    # checkpoints kept
        nan_policy="stop",                         # stop | rollback
        nan_retries=3,
        probe_every=duration(0),                   # online k-NN probe; 0 disables
        probe_path="",                             # folder with train.csv + val.csv (labelled)
        probe_k=20,                                # neighbours of the online k-NN probe
        unsharded_limit=0.05,                      # max share of param bytes left unsharded (fsdp)
        inject_nan_batches=(),                     # fault injection: stream positions that give NaN
        inject_nan_into="loss",                    # loss (the loss terms) | grads (also gradients)
    ))

    c.mesh = ConfigDict(dict(
        shape="1,-1,1",             # sizes of (data, fsdp, tensor); -1 takes the remaining devices
        rules="fsdp",               # dp | fsdp | fsdp_tp
    ))

    c.data = ConfigDict(dict(
        source="manifest",          # manifest | tfds | images | mixture (docs/data.md)
        path="",                    # manifest file or folder, TFDS dir, image folder, or
                                    # mixture spec 'manifest:a.csv@0.7,images:dir@0.3'
        split="train",              # TFDS split, or which manifest of a folder (train.csv)
        stride=4,                   # frame stride of training clips
        crop_scale=(0.3, 1.0),      # random resized crop: share of the frame's area
        crop_ratio=(0.75, 1.35),    # random resized crop: aspect ratio (w / h) range
        flip=False,                 # off: labels may carry direction
        short_video="loop",         # loop | pad: videos shorter than a clip's span
        workers=2,                  # Grain worker processes (0: decode in the main one)
        read_threads=1,             # decoding threads in each process
        prefetch=8,                 # clips each process decodes ahead
        max_bad_fraction=0.01,      # stop when more of the videos than this are unreadable
    ))
    return c

"""The student encoder as plain arrays: read from a checkpoint, run in float32, written back.

`read` goes through `eval.encoder.load_encoder`, the one public loader of checkpoints;
`write` makes a checkpoint that it (and `twlv train --config.init_from`) reads: an Orbax
step folder `DIR/checkpoints/0/` with `state.params.student` (and any imported target
head beside it, e.g. `state.params.pixel.decoder`) and `meta.config`.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from twlv_jax import config as cfglib
from twlv_jax.data.transforms import normalize
from twlv_jax.eval.encoder import load_encoder
from twlv_jax.models import weights as weightlib
from twlv_jax.objectives.hybrid import Pretrainer
from twlv_jax.objectives.hybrid import student as build_student
from twlv_jax.objectives.presets import resolve
from twlv_jax.train.checkpoint import FORMAT_VERSION, Checkpoints, versions

PRETRAIN_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pretrain.py")


def read(path: str) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray]]:
    """(run config, flat float32 student parameters) of a checkpoint."""
    encoder = load_encoder(path)
    params = jax.tree.map(np.asarray, jax.device_get(encoder.params))
    return encoder.config, weightlib.flatten(params)


def float32_config(config) -> ml_collections.ConfigDict:
    """A copy of the run config whose student computes in float32."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.dtype = "float32"
    return config


def forward(config, params: dict[str, np.ndarray], video_uint8: np.ndarray) -> dict[str, np.ndarray]:
    """Our student on uint8 clips (B, T, H, W, 3) in float32: {'tokens', 'pooled'}."""
    model_cfg = float32_config(config).model
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_student(model_cfg, nnx.Rngs(0))))
    tree = weightlib.unflatten({k: jax.numpy.asarray(v) for k, v in params.items()})

    @jax.jit
    def run(tree, video):
        out = nnx.merge(graphdef, tree)(normalize(video))
        return {"tokens": out["tokens"], "pooled": out["pooled"]}

    return jax.tree.map(np.asarray, run(tree, video_uint8))


def _flat(module: nnx.Module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in weightlib.flatten(nnx.to_pure_dict(nnx.state(module))).items()}


def fresh(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Freshly initialised flat student parameters of a config (the import's fallback)."""
    return _flat(build_student(float32_config(config).model, nnx.Rngs(seed)))


def fresh_model(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Freshly initialised flat parameters of the student (`student.*`, as `fresh`) and the
    config's target heads (`pixel.decoder.*`, ...)."""
    return _flat(Pretrainer(float32_config(config), resolve(config.objective), rngs=nnx.Rngs(seed)))


def make_config(variant: str, model: dict, objective: str = "twlv",
                heads: dict | None = None) -> ml_collections.ConfigDict:
    """configs/pretrain.py for `variant` and the `objective` preset with the `model` fields
    and the `objective` fields of `heads` (e.g. {"pixel.decoder_width": 384}) set: what a
    checkpoint stores."""
    return cfglib.build(f"{os.path.abspath(PRETRAIN_CONFIG)}:variant={variant},objective={objective}",
                        [(f"model.{k}", v) for k, v in model.items()]
                        + [(f"objective.{k}", v) for k, v in (heads or {}).items()])


def write(directory: str, config, params: dict[str, np.ndarray], *, source: str,
          heads: dict[str, np.ndarray] | None = None) -> str:
    """An Orbax checkpoint (step 0) of the student (flat `params`) and any `heads` (flat names
    under the whole model, e.g. `pixel.decoder.norm.scale`); returns its step folder."""
    checkpoints = Checkpoints(os.path.join(directory, "checkpoints"), with_data=False)
    try:
        if checkpoints.all_steps():
            raise FileExistsError(f"{directory} already holds a checkpoint; choose a new folder")
        meta = {"step": 0, "batches": 0, "skipped_batches": [], "config": config.to_dict(),
                "versions": versions(), "process_count": 1, "mesh": {}, "imported_from": source,
                "format_version": FORMAT_VERSION}
        state = {"params": weightlib.unflatten({**{f"student.{k}": v for k, v in params.items()},
                                                **(heads or {})})}
        checkpoints.manager.save(0, force=True, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)))
        checkpoints.wait()
    finally:
        checkpoints.close()
    return os.path.join(checkpoints.directory, "0")

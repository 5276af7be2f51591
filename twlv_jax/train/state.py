"""Abstract train state, its shardings, and sharded initialisation.

The train state is a plain dict of arrays:
    {'step': int32[], 'rng': uint32[2], 'params': {...}, 'opt': optax state, 'ema': {...}?}
`params` holds the student and the target heads; `ema` (latent target only) the EMA
student. Frozen teachers live outside the state: they are never updated or checkpointed
with the optimizer, and take no gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from twlv_jax import models, paths
from twlv_jax.config import ConfigError
from twlv_jax.export import hf_clip
from twlv_jax.models import weights as weightlib
from twlv_jax.objectives import hybrid
from twlv_jax.objectives.presets import Objective, resolve
from twlv_jax.parallel import sharding
from twlv_jax.parallel.mesh import replicated
from twlv_jax.train.optim import make_optimizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything static about a run: graph definitions, shapes, shardings, optimizer."""

    config: object
    objective: Objective
    mesh: Mesh
    model_def: nnx.GraphDef
    student_def: nnx.GraphDef
    teacher_defs: dict
    abstract_state: dict          # ShapeDtypeStructs
    state_shardings: dict
    abstract_teachers: dict
    teacher_shardings: dict
    tx: optax.GradientTransformation
    lr: optax.Schedule
    total_steps: int


def _split(module: nnx.Module):
    graphdef, state = nnx.split(module)
    specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    return graphdef, nnx.to_pure_dict(state), specs


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def build(config, mesh: Mesh, *, total_steps: int, warmup_steps: int) -> Setup:
    """Abstract init (no memory used) and shardings from the logical axis rules."""
    objective = resolve(config.objective)
    rules = config.mesh.rules
    model = nnx.eval_shape(lambda: hybrid.Pretrainer(config, objective, rngs=nnx.Rngs(config.seed)))
    model_def, params, specs = _split(model)
    student_def = nnx.graphdef(model.student)
    param_sh = sharding.param_shardings(params, specs, mesh, rules)
    tx, lr = make_optimizer(config.optim, params, batch_size=config.train.batch_size,
                            total_steps=total_steps, warmup_steps=warmup_steps,
                            depth=models.SIZES[config.model.variant].depth)
    opt = jax.eval_shape(tx.init, params)
    whole = replicated(mesh)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt, param_sh,
                                   transform_non_params=lambda _: whole)
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32),
                "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
                "params": params, "opt": opt}
    shardings = {"step": whole, "rng": whole, "params": param_sh, "opt": opt_sh}
    if hybrid.uses_ema(objective):
        abstract["ema"], shardings["ema"] = params["student"], param_sh["student"]

    teacher_defs, abstract_teachers, teacher_sh = {}, {}, {}
    for name, teacher in nnx.eval_shape(lambda: hybrid.teachers(config, objective)).items():
        teacher_defs[name], abstract_teachers[name], t_specs = _split(teacher)
        teacher_sh[name] = sharding.param_shardings(abstract_teachers[name], t_specs, mesh, rules)
    return Setup(config, objective, mesh, model_def, student_def, teacher_defs,
                 _abstract(abstract, shardings), shardings,
                 _abstract(abstract_teachers, teacher_sh), teacher_sh, tx, lr, total_steps)


def init_state(setup: Setup) -> dict:
    """A fresh train state, created directly in its shards (never whole on one device)."""
    config, objective = setup.config, setup.objective

    def init():
        model = hybrid.Pretrainer(config, objective, rngs=nnx.Rngs(config.seed))
        params = nnx.to_pure_dict(nnx.state(model))
        state = {"step": jnp.zeros((), jnp.int32),
                 "rng": jax.random.key_data(jax.random.key(config.seed + 1000)),
                 "params": params, "opt": setup.tx.init(params)}
        if "ema" in setup.abstract_state:
            state["ema"] = jax.tree.map(jnp.copy, params["student"])
        return state

    return jax.jit(init, out_shardings=setup.state_shardings)()


def init_teachers(setup: Setup, weight_files: dict[str, str]) -> dict:
    """The frozen teachers, sharded: loaded from `weight_files[name]` when given, else random."""
    config, objective = setup.config, setup.objective
    result = {}
    for name, abstract in setup.abstract_teachers.items():
        shardings = setup.teacher_shardings[name]
        path = weight_files.get(name)
        if path:
            values = _teacher_values(name, path, abstract, config)
            # Every process reads the file; each places only its own devices' shards.
            result[name] = jax.tree.map(
                lambda v, s: jax.make_array_from_callback(v.shape, s, lambda index, v=v: v[index]),
                values, shardings)
            log.info("%s: loaded %s", name, path)
        else:
            init = lambda name=name: nnx.to_pure_dict(nnx.state(
                hybrid.teachers(config, objective)[name]))
            result[name] = jax.jit(init, out_shardings=shardings)()
    return result


def _teacher_values(name: str, path: str, abstract: dict, config) -> dict:
    """A teacher's weights from our own safetensors layout, or from Hugging Face CLIP."""
    # One local copy of a file in a bucket serves both readers (safetensors reads local files).
    copy = paths.local_copy(path) if paths.isfile(path) else contextlib.nullcontext(path)
    with copy as local:
        if name == "image_teacher" and os.path.isfile(local) and hf_clip.is_hf_clip(local):
            size = models.clip_size(config.teacher.variant)
            return weightlib.match(hf_clip.clip_params(local, depth=size.depth, heads=size.heads),
                                   abstract, path)
        return weightlib.load(local, abstract, source=path)


def unsharded_check(setup: Setup, limit: float) -> float:
    """Fails when more than `limit` of parameter bytes would be replicated under fsdp."""
    params, shardings = setup.abstract_state["params"], setup.state_shardings["params"]
    fraction = sharding.unsharded_fraction(params, shardings)
    fsdp = setup.mesh.shape["fsdp"] * setup.mesh.shape["tensor"]
    if setup.config.mesh.rules != "dp" and fsdp > 1 and fraction > limit:
        flat = weightlib.flatten(params)
        flat_sh = weightlib.flatten(shardings)
        largest = sorted((k for k in flat if flat_sh[k].is_fully_replicated),
                         key=lambda k: -np.prod(flat[k].shape))[:3]
        raise ConfigError(
            f"{fraction:.1%} of parameter bytes are unsharded under mesh.rules="
            f"{setup.config.mesh.rules!r} (limit train.unsharded_limit={limit:.0%}); largest "
            f"replicated: {', '.join(f'{k} {tuple(flat[k].shape)}' for k in largest)}. Their "
            f"dimensions do not divide the mesh axes {dict(setup.mesh.shape)}: change the mesh "
            f"shape or the model width")
    return fraction

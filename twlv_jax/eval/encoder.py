"""A trained student encoder for inference: the one way to get embeddings out of a run.

    enc = load_encoder("runs/demo")                  # a workdir, its checkpoints/ or one step
    out = enc(video_uint8)                           # (B, T, H, W, 3) -> {'pooled': (B, D)}
    out = enc(video_uint8, tokens=True)              # also 'tokens': (B, N, D)

`load_encoder` reads only the student's parameters and the run's config from an Orbax
checkpoint (no optimizer state, no heads, no teachers are built). The online probe of
the train loop uses the same class on the live train-state parameters. The batch is
split over the devices (padded to a multiple of their count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from twlv_jax import paths as pathlib
from twlv_jax.data.transforms import normalize
from twlv_jax.objectives.hybrid import student as build_student
from twlv_jax.parallel import sharding
from twlv_jax.parallel.mesh import batch_sharding, make_mesh, replicated
from twlv_jax.train.checkpoint import Checkpoints, resolve_dir


def abstract_student(config) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, abstract params, logical partition specs) of a run config's student."""
    module = nnx.eval_shape(lambda: build_student(config.model, nnx.Rngs(0)))
    graphdef, state = nnx.split(module)
    return (graphdef, nnx.to_pure_dict(state),
            nnx.to_pure_dict(nnx.get_partition_spec(state)))


class Encoder:
    """A student encoder with its parameters on a mesh; call it on uint8 clips."""

    def __init__(self, graphdef: nnx.GraphDef, params: dict, param_shardings, config, mesh: Mesh,
                 *, step: int | None = None, source: str = ""):
        self.graphdef, self.params, self.config, self.mesh = graphdef, params, config, mesh
        self.rules = config.mesh.rules
        self.step, self.source = step, source
        self._dp = mesh.shape["data"] * mesh.shape["fsdp"]
        # Inputs and outputs split over the devices; with several processes each holds the
        # whole batch (a replicated global array).
        self._batch = batch_sharding(mesh) if jax.process_count() == 1 else replicated(mesh)
        self._compiled = {}
        self._param_shardings = param_shardings

    @property
    def dim(self) -> int:
        return int(self.params["norm"]["scale"].shape[-1])

    @property
    def frames(self) -> int:
        return int(self.config.model.frames)

    @property
    def image_size(self) -> int:
        return int(self.config.model.image_size)

    def _function(self, tokens: bool):
        if tokens not in self._compiled:
            def embed(params, video):
                model = nnx.merge(self.graphdef, params)
                out = model(normalize(video, jnp.float32))
                result = {"pooled": out["pooled"].astype(jnp.float32)}
                if tokens:
                    result["tokens"] = out["tokens"].astype(jnp.float32)
                return result
            self._compiled[tokens] = jax.jit(embed, in_shardings=(self._param_shardings,
                                                                  self._batch),
                                             out_shardings=self._batch)
        return self._compiled[tokens]

    def __call__(self, video: np.ndarray, *, tokens: bool = False,
                 params: dict | None = None) -> dict[str, np.ndarray]:
        """uint8 clips (B, T, H, W, 3) -> {'pooled': float32 (B, D)[, 'tokens': (B, N, D)]}.

        `params` replaces the encoder's own (same structure and shardings): the train
        loop's online probe passes the live student parameters.
        """
        video = np.asarray(video)
        if video.dtype != np.uint8 or video.ndim != 5:
            raise ValueError(f"Encoder expects uint8 clips (B, T, H, W, 3), got {video.dtype} "
                             f"{video.shape}")
        count = video.shape[0]
        padded = -(-count // self._dp) * self._dp
        if padded != count:
            video = np.concatenate([video, np.zeros((padded - count, *video.shape[1:]),
                                                    np.uint8)])
        with sharding.use_rules(self.mesh, self.rules):
            array = jax.make_array_from_process_local_data(self._batch, video)
            result = self._function(tokens)(self.params if params is None else params, array)
        if jax.process_count() == 1:
            return {k: np.asarray(v)[:count] for k, v in result.items()}
        return {k: np.asarray(v.addressable_data(0))[:count] for k, v in result.items()}


def load_encoder(path: str, *, step: int | None = None, mesh: Mesh | None = None,
                 rules: str = "dp") -> Encoder:
    """The student of a checkpoint (a workdir, its checkpoints/ folder, or a step folder).

    Reads the run's config from the checkpoint and only the student's parameters; the
    default mesh puts every device on the data axis with parameters replicated (`dp`).
    """
    directory, step = _locate(path, step)
    checkpoints = Checkpoints(directory, read_only=True, with_data=False)
    try:
        steps = checkpoints.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint under {path!r} (expected a workdir of "
                                    "`twlv train`, its checkpoints/ folder, or a step folder)")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise FileNotFoundError(f"{directory} has no step {step}; steps on disk: {steps}")
        config, mesh, graphdef, abstract, shardings = _placed_student(
            ml_collections.ConfigDict(checkpoints.meta(step)["config"]), mesh, rules)
        target = {"params": {"student": jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)}}
        restored = checkpoints.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                target, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
    finally:
        checkpoints.close()
    params = restored["state"]["params"]["student"]
    return Encoder(graphdef, params, shardings, config, mesh, step=step,
                   source=pathlib.join(directory, str(step)))


def random_encoder(config, *, mesh: Mesh | None = None, rules: str = "dp") -> Encoder:
    """The student of a run config at its random init: the parameters `twlv train` starts
    from with the same seed (the baseline that pretraining must beat)."""
    config, mesh, graphdef, _, shardings = _placed_student(config, mesh, rules)
    init = lambda: nnx.to_pure_dict(nnx.state(build_student(config.model,
                                                            nnx.Rngs(config.seed))))
    params = jax.jit(init, out_shardings=shardings)()
    return Encoder(graphdef, params, shardings, config, mesh, step=0, source="random init")


def _placed_student(config, mesh: Mesh | None, rules: str):
    """(a copy of the run config with `mesh.rules` set, the mesh, and the student's
    graphdef, abstract params and their shardings); the default mesh puts every device on
    the data axis."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.rules = rules
    mesh = mesh or make_mesh((-1, 1, 1))
    graphdef, abstract, specs = abstract_student(config)
    return config, mesh, graphdef, abstract, sharding.param_shardings(abstract, specs, mesh,
                                                                      rules)


def _locate(path: str, step: int | None) -> tuple[str, int | None]:
    """A step folder (`.../checkpoints/120`) names its step; otherwise the folder itself."""
    path = pathlib.absolute(path)
    if not pathlib.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    name = path.rstrip("/").split("/")[-1]
    if name.isdigit() and pathlib.isdir(pathlib.join(path, "state")):
        return pathlib.dirname(path.rstrip("/")), int(name) if step is None else step
    return resolve_dir(path), step

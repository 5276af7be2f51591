"""Orbax checkpoints: the train state, every process's data-iterator state, and metadata.

    WORKDIR/checkpoints/<step>/state/   params, optimizer state, EMA, step, RNG (sharded arrays)
                              data/    process_<i>-of-<n>.json, the Grain iterator states
                              meta/    resolved config, library versions, data position

Saves are asynchronous; a save interrupted mid-write leaves a temporary directory
that Orbax ignores, so the previous checkpoint is used. Restores take target shardings,
so a checkpoint restores onto any mesh or device count.
"""

from __future__ import annotations

import importlib.metadata
import os

import grain
import orbax.checkpoint as ocp

from twlv_jax.models import weights as weightlib

VERSIONED = ("twlv-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def versions() -> dict[str, str]:
    result = {}
    for name in VERSIONED:
        try:
            result[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            result[name] = "not installed"
    return result


def _handlers(with_data: bool):
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    if with_data:
        handlers["data"] = grain.checkpoint.CheckpointHandler()
    return handlers


def resolve_dir(path: str) -> str:
    """A workdir, its checkpoints/ folder, or a checkpoints folder -> the checkpoints folder."""
    inner = os.path.join(path, "checkpoints")
    return inner if os.path.isdir(inner) else path


class Checkpoints:
    """The run's CheckpointManager."""

    def __init__(self, directory: str, *, keep: int | None = None, read_only: bool = False,
                 with_data: bool = True):
        self.directory = directory = os.path.abspath(directory)   # Orbax needs absolute paths
        handlers = _handlers(with_data)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               read_only=read_only, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_names=tuple(handlers), item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict, data_iterator, meta: dict) -> None:
        """Starts an asynchronous save of everything needed to resume at `step`."""
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, abstract_state: dict, data_iterator) -> tuple[dict, dict]:
        """(state on the target shardings, meta); `data_iterator` is restored in place."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def state_metadata(self, step: int):
        """The saved state's tree of array metadata (shape, dtype); needs no devices."""
        metadata = self.manager.item_metadata(step)["state"]
        return getattr(metadata, "tree", metadata)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_params(path: str, abstract_params: dict, *, strict: bool = True) -> tuple[dict, list[str]]:
    """Params only from the latest checkpoint under `path`, onto the abstract's shardings.

    Strict: a parameter the model has but the checkpoint lacks, or with another shape, is
    an error naming it. Not strict: such parameters are left out of the result (they keep
    their fresh init) and listed in the returned report. Checkpoint entries the model does
    not have are ignored.
    """
    directory = resolve_dir(path)
    checkpoints = Checkpoints(directory, read_only=True, with_data=False)
    step = checkpoints.latest_step()
    if step is None:
        raise FileNotFoundError(f"init_from: no checkpoint found under {path!r}")
    saved = weightlib.flatten(checkpoints.state_metadata(step).get("params", {}))
    expected = weightlib.flatten(abstract_params)
    problems = {}                                   # parameter name -> what is wrong
    for name, ref in expected.items():
        if name not in saved:
            problems[name] = f"params.{name} is missing from the checkpoint"
        elif tuple(saved[name].shape) != tuple(ref.shape):
            problems[name] = (f"params.{name} has shape {tuple(saved[name].shape)} in the "
                              f"checkpoint, the model expects {tuple(ref.shape)}")
    messages = list(problems.values())
    if problems and strict:
        raise ValueError(f"init_from {directory} (step {step}): " + "; ".join(messages[:8])
                         + (f"; and {len(messages) - 8} more" if len(messages) > 8 else "")
                         + ". Set init_strict=false to keep fresh values for these.")
    target = weightlib.unflatten({k: v for k, v in expected.items() if k not in problems})
    restored = checkpoints.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore({"params": target}, partial_restore=True,
                                     restore_args=ocp.checkpoint_utils.construct_restore_args(
                                         {"params": target}))))
    checkpoints.close()
    report = [f"loaded {len(expected) - len(problems)} of {len(expected)} parameter arrays "
              f"from {directory} step {step}", *messages]
    return restored["state"]["params"], report


def merge_params(fresh: dict, loaded: dict) -> dict:
    """`fresh` with every array present in `loaded` replaced by it."""
    flat = weightlib.flatten(fresh)
    flat.update(weightlib.flatten(loaded))
    return weightlib.unflatten(flat)

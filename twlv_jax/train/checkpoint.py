"""Orbax checkpoints: the train state, every process's data-iterator state, and metadata.

    WORKDIR/checkpoints/<step>/state/   params, optimizer state, EMA, step, RNG (sharded arrays)
                              data/    process_<i>-of-<n>.json, the Grain iterator states
                              meta/    resolved config, library versions, data position

Saves are asynchronous; a save interrupted mid-write leaves a temporary directory
that Orbax ignores, so the previous checkpoint is used. Each save first checks that the
folder takes a file, so a folder that turned read-only stops the run at once instead of
Orbax waiting minutes. Restores take target shardings, so a checkpoint restores onto any
mesh or device count.

A checkpoint that cannot be read back (a truncated or missing array file, damaged
metadata, an empty step folder) is renamed `<step>.corrupt` so it is never retried, and
the run falls back to the newest intact one (`restore_latest`). `verify` reads every
array of a step and names what is damaged (`twlv inspect --verify`).

Format versions: `meta` holds `format_version` (FORMAT_VERSION when written). Raise it
whenever what is saved changes (the state's array tree, the items, the meta keys that
are read back), and read older versions here, converting them as they are read. Every
read of `meta` checks it: a newer version than this code knows is a FormatError.

    1  before format versions (no `format_version` in meta); read as version 2
    2  `format_version` in meta; otherwise as version 1
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import logging
import sys
import tempfile
import uuid
from collections.abc import Callable

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from twlv_jax import paths
from twlv_jax.models import weights as weightlib
from twlv_jax.objectives import presets, targets

log = logging.getLogger(__name__)

# What shapes the train state: a change to any of these between a checkpoint and the
# resumed run is an error (the arrays would not fit). Patterns over the resolved config's
# dotted keys; `objective.targets`, `optim.clipping` and `optim.layer_scaling` are derived
# (the enabled targets, clip_norm > 0, layer_decay < 1). Every other change is allowed,
# listed as a warning and kept in WORKDIR/config_history.jsonl.
STATE_KEYS = (
    "model.*",                              # but not COMPUTE_ONLY below
    "objective.targets",                    # and each target's own `Target.state_keys`
    "teacher.variant",
    "optim.clipping", "optim.layer_scaling",
)
COMPUTE_ONLY = ("model.dtype", "model.remat", "model.attention", "model.drop_path")


def _flat_config(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _derived(config: dict) -> dict[str, object]:
    """The derived STATE_KEYS of a resolved config (a dict, as saved in a checkpoint)."""
    objective = presets.resolve(ml_collections.ConfigDict(config["objective"]))
    return {"objective.targets": sorted(objective.weights),
            "optim.clipping": config["optim"]["clip_norm"] > 0,
            "optim.layer_scaling": config["optim"]["layer_decay"] < 1}


def shapes_state(key: str) -> bool:
    """Whether a config key is one of STATE_KEYS or a key a target says shapes its head."""
    declared = {f"objective.{name}.{part}" for name, target in targets.REGISTRY.items()
                for part in target.state_keys}
    return key not in COMPUTE_ONLY and (
        key in declared or any(fnmatch.fnmatchcase(key, p) for p in STATE_KEYS))


def config_changes(saved: dict, current: dict) -> tuple[dict, dict]:
    """({key: (saved, current)} of changes that shape the state, {...} of the others)."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current, default=str))
    old = {**_flat_config(saved), **_derived(saved)}
    new = {**_flat_config(current), **_derived(current)}
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)}
    structural = {k: v for k, v in changed.items() if shapes_state(k)}
    return structural, {k: v for k, v in changed.items() if k not in structural}


VERSIONED = ("twlv-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def versions() -> dict[str, str]:
    result = {}
    for name in VERSIONED:
        try:
            result[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            result[name] = "not installed"
    return result


FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the folder and why."""


class FormatError(CheckpointError):
    """A checkpoint's format version is newer than this code reads."""


def format_version(meta: dict) -> int:
    """The format version of a checkpoint's meta (1: written before versions existed)."""
    return meta.get("format_version", 1)


def check_format(meta: dict, where: str) -> None:
    """Raises FormatError when the checkpoint at `where` is newer than FORMAT_VERSION."""
    version = format_version(meta)
    if version > FORMAT_VERSION:
        raise FormatError(f"checkpoint {where} has format version {version}, but this twlv-jax "
                          f"reads versions up to {FORMAT_VERSION}: read it with the newer "
                          "twlv-jax that wrote it")


class CorruptCheckpoint(RuntimeError):
    """A step on disk cannot be read back; the message says which step and why."""


def flat_arrays(tree) -> dict[str, object]:
    """Dotted path -> array (or array metadata), through dicts, lists and optimizer tuples."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path): leaf
            for path, leaf in leaves if hasattr(leaf, "shape")}


def structure_mismatch(saved: dict, expected: dict) -> list[str]:
    """How the arrays of a saved state (metadata) differ from the run's abstract state."""
    saved, expected = flat_arrays(saved), flat_arrays(expected)
    problems = [f"{k}: in the checkpoint, not in this run's state"
                for k in sorted(set(saved) - set(expected))]
    problems += [f"{k}: in this run's state, not in the checkpoint"
                 for k in sorted(set(expected) - set(saved))]
    problems += [f"{k}: shape {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} in this run"
                 for k, v in sorted(expected.items())
                 if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    return problems


def _reason(error: BaseException) -> str:
    """One line for why reading failed: the innermost cause, whose message names the array
    and file (TensorStore's outer messages run to pages and name neither)."""
    while error.__cause__ is not None or (error.__context__ is not None
                                          and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    text = str(error).strip().split(". See full TensorStore details")[0]
    return f"{type(error).__name__}: {(text.splitlines() or [''])[0][:300]}"


def check_writable(directory: str) -> None:
    """Raises CheckpointError unless `directory` exists (or can be made) and takes a file.

    Orbax would instead wait minutes for a step folder it cannot create. In a bucket a
    probe object is written and removed."""
    try:
        paths.makedirs(directory)
        if paths.is_remote(directory):
            probe = paths.join(directory, f".write-check-{uuid.uuid4().hex}")
            with paths.open(probe, "wb") as f:
                f.write(b"")
            paths.remove(probe)
        else:
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
                pass
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoints to {directory}: "
                              f"{error.strerror or error} ({error.filename})") from None


def _drop_closed_loop_errors(previous):
    """An unraisable-exception hook that drops Orbax's 'Event loop is closed' errors.

    A failed restore leaves TensorStore callbacks that fire after Orbax's event loop has
    closed; each would print a traceback (dozens per damaged checkpoint)."""
    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_errors = True
    return hook


def _handlers(with_data: bool):
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    if with_data:
        handlers["data"] = grain.checkpoint.CheckpointHandler()
    return handlers


def resolve_dir(path: str) -> str:
    """A workdir, its checkpoints/ folder, or a checkpoints folder -> the checkpoints folder."""
    inner = paths.join(path, "checkpoints")
    return inner if paths.isdir(inner) else path


class Checkpoints:
    """The run's CheckpointManager."""

    def __init__(self, directory: str, *, keep: int | None = None, read_only: bool = False,
                 with_data: bool = True):
        self.directory = directory = paths.absolute(directory)   # Orbax needs absolute paths
        if not getattr(sys.unraisablehook, "drops_closed_loop_errors", False):
            sys.unraisablehook = _drop_closed_loop_errors(sys.unraisablehook)
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
        check_writable(self.directory)
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave({**meta, "format_version": FORMAT_VERSION})))

    def restore(self, step: int, abstract_state: dict, data_iterator) -> tuple[dict, dict]:
        """(state on the target shardings, meta); `data_iterator` is restored in place."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: dict, data_iterator,
                       check: Callable[[int, dict], None] = lambda step, meta: None,
                       ) -> tuple[int, dict, dict] | None:
        """(step, state, meta) of the newest checkpoint that reads back whole, or None.

        `check(step, meta)` runs on each candidate's metadata before its arrays are read
        (it raises to refuse the checkpoint, e.g. after a config change). Steps that cannot
        be read are logged, renamed `<step>.corrupt` and skipped.
        """
        for step in reversed(self.all_steps()):
            try:
                meta = self.checked(step, lambda s=step: self.meta(s))
                check(step, meta)
                problems = structure_mismatch(self.checked(step, lambda s=step: self.state_metadata(s)),
                                              abstract_state)
                if problems:
                    raise ValueError(f"checkpoint {self.directory}/{step} holds another state "
                                     f"structure than this run builds: {'; '.join(problems[:6])}"
                                     + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
                state, _ = self.checked(step, lambda s=step: self.restore(s, abstract_state,
                                                                        data_iterator))
                return step, state, meta
            except CorruptCheckpoint as error:
                log.error("%s; falling back to an older checkpoint. It was moved to %s",
                          error, self.set_aside(step))
        return None

    def checked(self, step: int, read: Callable[[], object]):
        """`read()`, with any failure but a FormatError turned into CorruptCheckpoint naming
        the step (a newer format is not damage: that checkpoint must not be set aside)."""
        try:
            return read()
        except FormatError:
            raise
        except Exception as error:  # Orbax and TensorStore raise many types
            raise CorruptCheckpoint(f"checkpoint {self.directory}/{step} is corrupt "
                                    f"({_reason(error)})") from error

    def set_aside(self, step: int) -> str:
        """Renames a step's folder to `<step>.corrupt` (Orbax ignores it; in a bucket its
        objects are copied, then deleted); returns the new path."""
        source = paths.join(self.directory, str(step))
        target, n = f"{source}.corrupt", 1
        while paths.exists(target):
            n += 1
            target = f"{source}.corrupt{n}"
        if jax.process_index() == 0:
            paths.replace(source, target)
        self.manager.reload()
        return target

    def corrupt(self) -> list[str]:
        """Step folders set aside as corrupt."""
        return sorted(n for n in paths.listdir(self.directory) if ".corrupt" in n) \
            if paths.isdir(self.directory) else []

    def verify(self, step: int) -> list[str]:
        """Reads every array, the metadata and the data states of `step`; what is damaged."""
        problems = []
        for name, read in (("meta", lambda: self.meta(step)),
                           ("data", lambda: self._data_states(step))):
            try:
                read()
            except FormatError:
                raise
            except Exception as error:  # Orbax raises many types
                problems.append(f"{name}: {_reason(error)}")
        try:
            metadata = self.state_metadata(step)
        except Exception as error:  # Orbax raises many types
            return [*problems, f"state: array metadata unreadable ({_reason(error)})"]
        try:
            self._read_arrays(step, metadata)
            return problems
        except Exception as error:  # Orbax and TensorStore raise many types
            failure = _reason(error)
        named = self._damaged(step, list(flat_arrays(metadata)))   # outside the except: own causes
        return problems + ([f"state.{name}: {why}" for name, why in named] or [f"state: {failure}"])

    def _damaged(self, step: int, names: list[str]) -> list[tuple[str, str]]:
        """(array, why) for each saved array that TensorStore cannot read, each read on its
        own from Orbax's layout (a zarr array per dotted name in one OCDBT store)."""
        state = paths.join(self.directory, str(step), "state")
        base = f"{state}/" if paths.is_remote(state) else f"file://{state}/"
        context, damaged = ts.Context(), []
        for name in names:
            spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base, "path": name + "/"}}
            try:
                ts.open(spec, open=True, context=context).result().read().result()
            except Exception as error:  # TensorStore raises ValueError and others
                damaged.append((name, _reason(error)))
        return damaged

    def _data_states(self, step: int) -> None:
        folder = paths.join(self.directory, str(step), "data")
        files = [f for f in paths.listdir(folder) if f.endswith(".json")]
        if not files:
            raise FileNotFoundError(f"no iterator state in {folder}")
        for name in files:
            with paths.open(paths.join(folder, name)) as f:
                json.load(f)

    def _read_arrays(self, step: int, metadata) -> None:
        """Reads every saved array into host memory (and drops them), as a restore would."""
        tree = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), metadata,
                            is_leaf=lambda x: hasattr(x, "shape"))
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(tree, restore_args=args)))

    def meta(self, step: int) -> dict:
        """The step's metadata; a FormatError when its format is newer than this code's."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        check_format(meta, f"{self.directory}/{step}")
        return meta

    def state_metadata(self, step: int):
        """The saved state's tree of array metadata (shape, dtype); needs no devices."""
        metadata = self.manager.item_metadata(step)["state"]
        if metadata is None:
            raise FileNotFoundError(f"no state in {self.directory}/{step}")
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
    checkpoints.meta(step)                          # a FormatError when it is too new
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

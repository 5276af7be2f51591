"""`twlv train`: one pretraining run, as a narrative.

    config -> validate -> mesh -> data -> abstract state + shardings -> restore or init
           -> compile -> steps (metrics, checkpoints, probe) -> final checkpoint -> summary

Resume order: this workdir's newest intact checkpoint (reusing a workdir resumes; a
corrupt one is set aside), then `init_from` (params only), then a fresh init. A fresh
start over another run's records (metrics.jsonl without a checkpoint) needs
--start_over. Resuming with a config change that shapes the state is an error; other
changes are warned about and kept in config_history.jsonl. SIGTERM/SIGINT at any phase
(also while waiting for data) saves the current step and exits cleanly. A non-finite
loss stops the run or rolls back to the last good checkpoint and skips the batch
(`train.nan_policy`). docs/reliability.md lists each fault and what the run does.

Each phase returns what it builds. `Run` holds what is built once and only read after
(config, checkpoints, data stream, static setup); the train state and its `Position`
(step, batches drawn, batches to skip) are passed to `train` and returned by it, and a
rollback returns the restored pair.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from twlv_jax import config as cfglib
from twlv_jax import paths
from twlv_jax.data import pipeline
from twlv_jax.data.quarantine import TooManyBadFiles
from twlv_jax.objectives import hybrid
from twlv_jax.parallel.mesh import batch_sharding, make_mesh
from twlv_jax.train import checkpoint as ckptlib
from twlv_jax.train import distributed, flops
from twlv_jax.train import state as statelib
from twlv_jax.train import step as steplib
from twlv_jax.train.metrics import MetricsWriter, Throughput
from twlv_jax.train.preemption import Interrupted, StopRequest
from twlv_jax.train.probe import KnnProbe
from twlv_jax.train.validate import check_files, teacher_warning, total_steps, validate

log = logging.getLogger("twlv.train")


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN or infinite and the policy says stop."""


class WorkdirError(RuntimeError):
    """The workdir cannot take this run: not writable, or another run's records are there."""


@dataclasses.dataclass(frozen=True)
class Stream:
    """The training data: the Grain iterator, what it reads, and its state at the start."""

    iterator: object
    info: object
    start: dict                          # iterator state before the first batch


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run is: its step and its place in the data stream (saved in each checkpoint)."""

    step: int = 0                        # host copy of state['step'] (no device sync per step)
    batches: int = 0                     # batches drawn from the data stream so far
    skipped: tuple[int, ...] = ()        # stream positions to skip (they gave a non-finite loss)


@dataclasses.dataclass(frozen=True)
class Run:
    """What the phases below read and never change: built once, before the first step."""

    config: object
    workdir: str
    stop: StopRequest
    checkpoints: ckptlib.Checkpoints
    stream: Stream
    setup: statelib.Setup
    start_over: bool = False             # a fresh start over earlier records is allowed

    @property
    def is_chief(self) -> bool:
        return jax.process_index() == 0


class Restored(NamedTuple):
    """What `restore_or_init` produced."""

    state: dict
    position: Position
    how: str                             # for the log
    config_changes: dict                 # key -> (saved, now): changes since the checkpoint


# ---------------------------------------------------------------------------
# Phases.

def check_config(config, workdir: str) -> None:
    """Every check that needs nothing built: the config, the files it names, the workdir."""
    validate(config, jax.device_count())
    check_files(config)
    warning = teacher_warning(config)
    if warning:
        log.warning("\n%s", warning)
    check_workdir(workdir)


def check_workdir(workdir: str) -> None:
    """The workdir and its checkpoints folder exist (or can be made) and take files."""
    if paths.exists(workdir) and not paths.isdir(workdir):
        raise WorkdirError(f"workdir {workdir} is a file, not a folder")
    try:
        paths.makedirs(workdir)
    except OSError as error:
        raise WorkdirError(f"cannot create the workdir {workdir}: {error.strerror} "
                           f"({error.filename})") from None
    for folder in (workdir, paths.join(workdir, "checkpoints")):
        try:
            ckptlib.check_writable(folder)
        except ckptlib.CheckpointError as error:
            raise WorkdirError(str(error).replace("cannot write checkpoints to",
                                                  "cannot write to")) from None


def records_path(workdir: str) -> str | None:
    """WORKDIR/metrics.jsonl when it holds records of an earlier run."""
    path = paths.join(workdir, "metrics.jsonl")
    if paths.isfile(path):
        with paths.open(path) as f:
            if any(line.strip() for line in f):
                return path
    return None


def refuse_fresh_start(workdir: str, why: str, *, start_over: bool) -> None:
    """A fresh start would overwrite earlier records: an error, or with start_over, the
    records are moved aside (metrics.jsonl -> metrics.jsonl.before-<time>)."""
    path = records_path(workdir)
    if path is None:
        return
    if not start_over:
        raise WorkdirError(
            f"{workdir} holds an earlier run's records ({path}) but {why}; refusing to "
            "start fresh over them. Use a new workdir, or pass --start_over to start a new run "
            "here (the old metrics are kept beside it)")
    kept = f"{path}.before-{time.strftime('%Y%m%d-%H%M%S')}"
    paths.replace(path, kept)
    log.warning("--start_over: %s; starting fresh, earlier metrics kept as %s", why, kept)


def start_data(config, workdir: str) -> Stream:
    c = config
    iterator, info = pipeline.make_train_iterator(
        c.data, frames=c.model.frames, image_size=c.model.image_size,
        global_batch_size=c.train.batch_size, seed=c.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        quarantine_path=paths.join(workdir, "quarantine.csv"))
    log.info("data: %s", info.description)
    return Stream(iterator, info, iterator.get_state())


def build_state(config, mesh, stream: Stream) -> statelib.Setup:
    steps, warmup = total_steps(config, stream.info.num_examples)
    setup = statelib.build(config, mesh, total_steps=steps, warmup_steps=warmup)
    fraction = statelib.unsharded_check(setup, config.train.unsharded_limit)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state["params"]))
    replicated = f", {fraction:.1%} of their bytes replicated" if jax.device_count() > 1 else ""
    log.info("model: %s student + heads, %.2fM trainable parameters%s; %d steps (%d warmup) at "
             "batch %d", config.model.variant, params / 1e6, replicated, steps, warmup,
             config.train.batch_size)
    return setup


def check_resume(config, directory: str, step: int, meta: dict) -> dict:
    """Refuses a checkpoint whose config differs in what shapes the state (one error
    listing every such key); returns the other changes, {key: (saved, now)}."""
    structural, other = ckptlib.config_changes(meta["config"], config.to_dict())
    if structural:
        raise cfglib.ConfigError(
            f"cannot resume from {directory}/{step}: the config changed in what "
            "shapes the train state (checkpoint.STATE_KEYS):\n  - "
            + "\n  - ".join(f"{k}: {old!r} in the checkpoint, {new!r} now"
                            for k, (old, new) in structural.items())
            + "\nUse the checkpoint's values, or a new workdir (init_from=<this workdir> "
              "starts a new run from its weights).")
    return other


def restore_or_init(run: Run) -> Restored:
    """Newest intact checkpoint of this workdir, else init_from (params only), else fresh."""
    c, checkpoints = run.config, run.checkpoints
    had_checkpoints = bool(checkpoints.all_steps())
    found = checkpoints.restore_latest(
        run.setup.abstract_state, run.stream.iterator,
        check=lambda step, meta: check_resume(c, checkpoints.directory, step, meta))
    if found is not None:
        step, state, meta = found
        position = Position(step, meta["batches"], tuple(meta.get("skipped_batches", [])))
        version, current = ckptlib.format_version(meta), ckptlib.FORMAT_VERSION
        upgrade = (f" (checkpoint format {version}, read as format {current}; new checkpoints "
                   f"are format {current})") if version < current else ""
        return Restored(state, position, f"resumed from {checkpoints.directory} step {step}{upgrade}",
                        check_resume(c, checkpoints.directory, step, meta))
    if had_checkpoints:
        refuse_fresh_start(run.workdir, "every checkpoint is corrupt (set aside: "
                           f"{', '.join(checkpoints.corrupt())})", start_over=run.start_over)
    run.stream.iterator.set_state(run.stream.start)
    state = statelib.init_state(run.setup)
    if not c.init_from:
        return Restored(state, Position(), "fresh init", {})
    loaded, report = ckptlib.load_params(c.init_from, run.setup.abstract_state["params"],
                                         strict=c.init_strict)
    state["params"] = ckptlib.merge_params(state["params"], loaded)
    if "ema" in state:
        state["ema"] = jax.tree.map(jnp.copy, state["params"]["student"])
    return Restored(state, Position(), "init_from: " + "; ".join(report), {})


def compile_step(run: Run, state: dict, teachers: dict):
    """Ahead-of-time compilation of the train step; logs time and per-device memory."""
    setup, c = run.setup, run.config
    video = jax.ShapeDtypeStruct(
        (c.train.batch_size, c.model.frames, c.model.image_size, c.model.image_size, 3), jnp.uint8,
        sharding=batch_sharding(setup.mesh))
    start = time.perf_counter()
    compiled = steplib.jit_train_step(setup).lower(state, teachers, video, 0.0).compile()
    memory = compiled.memory_analysis()
    in_use = ""
    if memory is not None:
        gib = (memory.argument_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / 2**30
        in_use = f", {gib:.2f} GiB per device"
    log.info("compiled the train step in %.1f s%s", time.perf_counter() - start, in_use)
    return compiled


def save(run: Run, state: dict, position: Position) -> None:
    meta = {"step": position.step, "batches": position.batches,
            "skipped_batches": list(position.skipped),
            "config": run.config.to_dict(), "versions": ckptlib.versions(),
            "process_count": jax.process_count(), "mesh": dict(run.setup.mesh.shape)}
    run.checkpoints.save(position.step, state, run.stream.iterator, meta)


# ---------------------------------------------------------------------------
# Steps.

def wait_for_batch(run: Run) -> dict | None:
    """The data stream's next batch; None when a stop signal came while waiting for it
    (the stream is then put back where it was, so a checkpoint resumes right)."""
    data = run.stream.iterator
    if jax.process_count() > 1:            # processes agree on stops between steps only
        return next(data)
    before = data.get_state()
    try:
        with run.stop.interruptible():
            return next(data)
    except Interrupted:
        pipeline.kill_workers()            # the wait may be on a stuck worker
        data.set_state(before)
        return None


def next_batch(run: Run, position: Position, timer: Throughput) -> tuple[dict | None, Position]:
    """The stream's next batch that is not to be skipped (None when a stop signal came
    while waiting for data), and the position with every batch drawn counted."""
    batches = position.batches
    while True:
        start = time.perf_counter()
        batch = wait_for_batch(run)
        if batch is not None:
            timer.waited(start, time.perf_counter())
            batches += 1
        if batch is None or batches - 1 not in position.skipped:
            return batch, dataclasses.replace(position, batches=batches)
        log.warning("skipping batch %d of the data stream (it gave a non-finite loss)", batches - 1)


def first_fault(pending: list[tuple[int, int, dict]]) -> tuple[int, int, str, dict] | None:
    """(step, stream position of its batch, message, metrics) of the first non-finite step
    in `pending` ((step, stream position, metrics) each), if any."""
    for step, drawn, metrics in pending:
        values = {k: float(v) for k, v in metrics.items()}
        bad = [k for k in values if k.startswith("loss") and not math.isfinite(values[k])]
        if bad or not math.isfinite(values["grad_norm"]):
            terms = [k for k in bad if k != "loss"] or bad or ["grad_norm"]
            message = (f"step {step}: non-finite {', '.join(terms)} "
                       f"(loss {values['loss']}, grad_norm {values['grad_norm']})")
            return step, drawn, message, values
    return None


def handle_fault(run: Run, fault, rollbacks: int, skipped: tuple[int, ...],
                 writer: MetricsWriter) -> tuple[dict, Position]:
    """Stops (NonFiniteError), or rolls back to the last good checkpoint: its state, and
    its position with the bad batch (and those in `skipped`) marked to be skipped.
    `rollbacks`: how many were done before this one."""
    _, bad, message, _ = fault
    c = run.config.train
    run.checkpoints.wait()
    latest = run.checkpoints.latest_step()
    kept = f"the last good checkpoint is step {latest}" if latest is not None else "no checkpoint yet"
    if c.nan_policy == "stop":
        raise NonFiniteError(f"{message}; stopping ({kept}).")
    if rollbacks >= c.nan_retries:
        raise NonFiniteError(f"{message}; {rollbacks} rollbacks already (train.nan_retries="
                             f"{c.nan_retries}), stopping ({kept}).")
    state, position, how, _ = restore_or_init(run)
    position = dataclasses.replace(
        position, skipped=tuple(sorted(set(position.skipped) | set(skipped) | {bad})))
    writer.rewind(position.step)
    log.warning("%s; rollback %d/%d: %s, will skip batch %d of the data stream", message,
                rollbacks + 1, c.nan_retries, how, bad)
    return state, position


def log_step(run: Run, step: int, metrics: dict, writer: MetricsWriter, timer: Throughput,
             perf: dict) -> None:
    """Writes a step's metrics, with throughput, when it is a logging step."""
    if step % run.config.train.log_every == 0 or step == run.setup.total_steps:
        scalars = {k: float(v) for k, v in metrics.items()}
        scalars.update(timer.report(run.config.train.batch_size, perf["flops"], perf["peak"]))
        writer.write(step, scalars)


def train(run: Run, state: dict, position: Position, teachers: dict, compiled,
          probe: KnnProbe | None, writer: MetricsWriter, perf: dict) -> tuple[dict, Position, str]:
    """Runs steps to the end: the last state, its position, and 'done' or the name of the
    signal that stopped it."""
    c = run.config.train
    total = run.setup.total_steps
    examples = run.stream.info.num_examples
    ckpt_every = cfglib.to_steps(c.ckpt_every, batch_size=c.batch_size, examples_per_epoch=examples)
    probe_every = cfglib.to_steps(c.probe_every, batch_size=c.batch_size,
                                  examples_per_epoch=examples) if probe else 0
    sharding = batch_sharding(run.setup.mesh)
    pending = []                                            # (step, stream position, metrics)
    rollbacks = 0
    # Across processes, agreeing on a stop is a collective: do it only every log_every steps.
    check_every = 1 if jax.process_count() == 1 else c.log_every
    with Throughput() as timer:
        while position.step < total:
            if position.step % check_every == 0 and (signal := preempted(run)):
                return state, position, signal
            batch, position = next_batch(run, position, timer)
            if batch is None:
                return state, position, preempted(run)
            drawn = position.batches - 1                    # this batch's place in the stream
            video = pipeline.to_global({"video": batch["video"]}, sharding)["video"]
            poison = np.float32(np.nan if drawn in c.inject_nan_batches else 0.0)
            state, metrics = compiled(state, teachers, video, poison)
            position = dataclasses.replace(position, step=position.step + 1)
            step = position.step
            timer.dispatched(metrics["loss"])
            pending.append((step, drawn, metrics))
            writer.advance()
            due_ckpt = ckpt_every and step % ckpt_every == 0
            due_probe = probe_every and step % probe_every == 0
            if not (step % c.log_every == 0 or due_ckpt or due_probe or step == total):
                continue
            fault = first_fault(pending)
            if fault:
                pending.clear()
                state, position = handle_fault(run, fault, rollbacks, position.skipped, writer)
                rollbacks += 1
                timer.reset()
                continue
            log_step(run, step, metrics, writer, timer, perf)
            pending.clear()
            if due_ckpt:
                save(run, state, position)
                writer.sync()
            if due_probe:
                run_probe(probe, state, teachers, step, writer)
        return state, position, "done"


def run_probe(probe: KnnProbe, state: dict, teachers: dict, step: int,
              writer: MetricsWriter) -> dict:
    """The probe's scores at `step`, also written to the metrics."""
    scores = probe(state, teachers)
    writer.write_probe(step, scores)
    return scores


# ---------------------------------------------------------------------------
# The run.

def run(config, workdir: str, *, start_over: bool = False) -> dict:
    """Trains (or resumes) in `workdir`; returns a summary of what was done and written.

    `start_over` allows a fresh start in a workdir that holds an earlier run's records
    but no intact checkpoint (they are moved aside)."""
    workdir = paths.absolute(workdir)
    stop = StopRequest().install()
    try:
        return _run(config, workdir, stop, start_over)
    finally:
        stop.uninstall()


def preempted(run: Run) -> str | None:
    """The signal that asked this run (on any process) to stop, if any."""
    if run.stop.requested():
        return run.stop.signal_name or "a signal on another process"
    return None


def performance(run: Run) -> dict:
    """Model FLOPs per step and the peak FLOP/s of the devices, for MFU."""
    c = run.config
    peak, source = flops.peak_flops(c.model.dtype)
    if jax.devices()[0].platform != "cpu":      # CPU "devices" share one machine's cores
        peak *= jax.device_count()
    perf = {"flops": flops.step_flops(c, run.setup.objective), "peak": peak}
    log.info("%.3g model FLOPs per step; peak %.3g FLOP/s (%s)", perf["flops"], peak, source)
    return perf


def record_config(run: Run, start_step: int, changes: dict) -> None:
    """Writes config.json (the config now) and appends it to config_history.jsonl with
    the `changes` since the checkpoint, so no earlier config is lost."""
    path = paths.join(run.workdir, "config.json")
    history = paths.join(run.workdir, "config_history.jsonl")
    entries = []
    if paths.isfile(path) and not paths.isfile(history):   # a workdir from before history
        with paths.open(path) as f:
            entries.append({"start_step": None, "config": json.load(f)})
    entries.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "start_step": start_step,
                    "changes": {k: list(v) for k, v in changes.items()},
                    "config": run.config.to_dict()})
    paths.append(history, "".join(json.dumps(e, default=str) + "\n" for e in entries))
    cfglib.save(run.config, path)


def summarize(run: Run, outcome: str, start_step: int, step: int, writer: MetricsWriter | None,
              baseline: dict) -> dict:
    """The summary `run` returns."""
    quarantine = run.stream.info.quarantine
    probed = writer.last_probe if writer else None
    return {"outcome": outcome, "start_step": start_step, "step": step,
            "total_steps": run.setup.total_steps, "last_metrics": writer.last if writer else {},
            "probe": probed[1] if probed else {}, "probe_baseline": baseline,
            "checkpoint": paths.join(run.checkpoints.directory, str(step)),
            "bad_files": quarantine.summary() if quarantine.files else ""}


def _run(config, workdir: str, stop: StopRequest, start_over: bool) -> dict:
    check_config(config, workdir)
    checkpoints = ckptlib.Checkpoints(paths.join(workdir, "checkpoints"), keep=config.train.keep)
    try:
        steps = checkpoints.all_steps()
        if not steps:
            refuse_fresh_start(workdir, "it has no checkpoint to resume from", start_over=start_over)
        else:                    # a config that cannot resume fails before anything is built
            with contextlib.suppress(ckptlib.CorruptCheckpoint):   # restore sets it aside
                meta = checkpoints.checked(steps[-1], lambda: checkpoints.meta(steps[-1]))
                check_resume(config, checkpoints.directory, steps[-1], meta)
        return _start_and_train(config, workdir, stop, checkpoints, start_over)
    finally:
        checkpoints.close()


def _start_and_train(config, workdir: str, stop: StopRequest, checkpoints: ckptlib.Checkpoints,
                     start_over: bool) -> dict:
    c = config
    mesh = make_mesh(c.mesh.shape)
    log.info("mesh: %s over %d devices (%s), %d process(es); rules %s", dict(mesh.shape),
             jax.device_count(), jax.devices()[0].device_kind, jax.process_count(), c.mesh.rules)
    stream = start_data(c, workdir)
    setup = build_state(c, mesh, stream)
    run = Run(c, workdir, stop, checkpoints, stream, setup, start_over)
    state, position, how, changes = restore_or_init(run)
    log.info("state: %s", how)
    if changes:
        log.warning("resuming with a changed config (both kept in config_history.jsonl): %s",
                    "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
    start_step = position.step
    if start_step >= setup.total_steps:
        return summarize(run, "nothing to do", start_step, start_step, None, {})
    teachers = statelib.init_teachers(setup, hybrid.teacher_weight_files(c, setup.objective))
    if run.is_chief:
        record_config(run, start_step, changes)
    baseline = {}
    writer = MetricsWriter(workdir, enabled=run.is_chief, start_step=start_step,
                           total_steps=setup.total_steps)
    try:
        outcome = preempted(run)
        if outcome is None:
            compiled, perf = compile_step(run, state, teachers), performance(run)
            probe = KnnProbe(c.train.probe_path, setup, k=c.train.probe_k) if c.train.probe_path else None
            if probe and start_step == 0:                # the untrained baseline
                baseline = run_probe(probe, state, teachers, 0, writer)
            outcome = preempted(run)
            if outcome is None:
                state, position, outcome = train(run, state, position, teachers, compiled, probe,
                                                 writer, perf)
            if probe and outcome == "done" and (writer.last_probe or (None,))[0] != position.step:
                run_probe(probe, state, teachers, position.step, writer)
        if checkpoints.latest_step() != position.step:
            save(run, state, position)
        checkpoints.wait()
    finally:
        writer.close()
    return summarize(run, outcome, start_step, position.step, writer, baseline)


def summary_text(summary: dict, workdir: str) -> str:
    m = summary["last_metrics"]
    if summary["outcome"] == "nothing to do":
        return (f"twlv train: nothing to do: the checkpoint is at step {summary['step']} and "
                f"train.steps gives {summary['total_steps']} steps; raise train.steps to train "
                f"on\n  checkpoint : {summary['checkpoint']}")
    how = "finished" if summary["outcome"] == "done" else f"stopped by {summary['outcome']}"
    lines = [f"twlv train: {how} at step {summary['step']}/{summary['total_steps']} "
             f"(started at {summary['start_step']})"]
    if "loss" in m:
        terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("loss/"))
        lines.append(f"  last loss {m['loss']:.4f} ({terms}); {m.get('clips_per_s', 0):.1f} clips/s")
    for key, value in summary["probe"].items():
        before = summary["probe_baseline"].get(key)
        lines.append(f"  {key}: {value:.3f}" + (f" (step 0: {before:.3f})" if before is not None else ""))
    lines += [f"  checkpoint : {summary['checkpoint']}",
              f"  metrics    : {paths.join(workdir, 'metrics.jsonl')}",
              f"  TensorBoard: {paths.join(workdir, 'tensorboard')}",
              f"  config     : {paths.join(workdir, 'config.json')}"]
    if summary["bad_files"]:
        lines.append(f"  bad files  : {summary['bad_files']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        overrides, rest = cfglib.split_cli(argv)
    except cfglib.ConfigError as error:
        print(f"twlv train: {error}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="twlv train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any config key can be overridden: --config.optim.lr=3e-4")
    parser.add_argument("--config", required=True, help="FILE[:ARGS], e.g. configs/pretrain.py:variant=B")
    parser.add_argument("--workdir", required=True, help="output folder; reusing it resumes")
    parser.add_argument("--start_over", action="store_true",
                        help="start fresh in a workdir that holds an earlier run's metrics but no "
                             "intact checkpoint (the old metrics are kept beside the new)")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, or auto (TPU pods, SLURM)")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    parser.add_argument("--init_timeout", type=float, default=300.0,
                        help="seconds to wait for the coordinator (default 300)")
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "jax", "orbax"):          # their INFO lines drown the run's own
        logging.getLogger(noisy).setLevel(logging.WARNING)
    flags.FLAGS.mark_as_parsed()        # Grain's worker processes read absl flags
    try:
        config = cfglib.build(args.config, overrides)
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               timeout=args.init_timeout)
        summary = run(config, args.workdir, start_over=args.start_over)
    except (ValueError, FileNotFoundError, TooManyBadFiles, NonFiniteError, WorkdirError,
            ckptlib.CheckpointError, distributed.DistributedError) as error:
        # bad input, a workdir or folder that cannot take the run, or a stop the run chose
        print(f"twlv train: {error}", file=sys.stderr)
        return 3 if isinstance(error, NonFiniteError) else 2
    if jax.process_index() == 0:
        print(summary_text(summary, args.workdir))
    return 0

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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from twlv_jax import config as cfglib
from twlv_jax.data import pipeline
from twlv_jax.data.quarantine import TooManyBadFiles
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


@dataclasses.dataclass
class Run:
    """The pieces of a run that the phases below build and share."""

    config: object
    workdir: str
    stop: StopRequest
    setup: statelib.Setup | None = None
    data: object = None                  # the Grain iterator
    data_info: object = None
    initial_data_state: dict | None = None
    checkpoints: ckptlib.Checkpoints | None = None
    state: dict | None = None
    step: int = 0                        # host copy of state['step'] (no device sync per step)
    teachers: dict | None = None
    batches: int = 0                     # batches drawn from the data stream so far
    skipped: list[int] = dataclasses.field(default_factory=list)   # stream positions to skip
    rollbacks: int = 0
    probe_scores: tuple[int, dict] | None = None   # (step, scores) of the last probe
    start_over: bool = False             # a fresh start over earlier records is allowed
    config_changes: dict = dataclasses.field(default_factory=dict)  # key -> (saved, now)

    @property
    def is_chief(self) -> bool:
        return jax.process_index() == 0


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
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir} is a file, not a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"cannot create the workdir {workdir}: {error.strerror} "
                           f"({error.filename})") from None
    for folder in (workdir, os.path.join(workdir, "checkpoints")):
        try:
            ckptlib.check_writable(folder)
        except ckptlib.CheckpointError as error:
            raise WorkdirError(str(error).replace("cannot write checkpoints to",
                                                  "cannot write to")) from None


def records_path(workdir: str) -> str | None:
    """WORKDIR/metrics.jsonl when it holds records of an earlier run."""
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            if any(line.strip() for line in f):
                return path
    return None


def refuse_fresh_start(run: Run, why: str) -> None:
    """A fresh start would overwrite earlier records: an error, or with start_over, the
    records are moved aside (metrics.jsonl -> metrics.jsonl.before-<time>)."""
    path = records_path(run.workdir)
    if path is None:
        return
    if not run.start_over:
        raise WorkdirError(
            f"{run.workdir} holds an earlier run's records ({path}) but {why}; refusing to "
            "start fresh over them. Use a new workdir, or pass --start_over to start a new run "
            "here (the old metrics are kept beside it)")
    kept = f"{path}.before-{time.strftime('%Y%m%d-%H%M%S')}"
    os.rename(path, kept)
    log.warning("--start_over: %s; starting fresh, earlier metrics kept as %s", why, kept)


def start_data(run: Run) -> None:
    c = run.config
    run.data, run.data_info = pipeline.make_train_iterator(
        c.data, frames=c.model.frames, image_size=c.model.image_size,
        global_batch_size=c.train.batch_size, seed=c.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        quarantine_path=os.path.join(run.workdir, "quarantine.csv"))
    run.initial_data_state = run.data.get_state()
    log.info("data: %s", run.data_info.description)


def build_state(run: Run, mesh) -> None:
    steps, warmup = total_steps(run.config, run.data_info.num_examples)
    run.setup = statelib.build(run.config, mesh, total_steps=steps, warmup_steps=warmup)
    fraction = statelib.unsharded_check(run.setup, run.config.train.unsharded_limit)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(run.setup.abstract_state["params"]))
    replicated = f", {fraction:.1%} of their bytes replicated" if jax.device_count() > 1 else ""
    log.info("model: %s student + heads, %.2fM trainable parameters%s; %d steps (%d warmup) at "
             "batch %d", run.config.model.variant, params / 1e6, replicated, steps, warmup,
             run.config.train.batch_size)


def check_resume(run: Run, step: int, meta: dict) -> None:
    """Refuses a checkpoint whose config differs in what shapes the state (one error
    listing every such key); notes the other changes for the warning and the history."""
    structural, other = ckptlib.config_changes(meta["config"], run.config.to_dict())
    if structural:
        raise cfglib.ConfigError(
            f"cannot resume from {run.checkpoints.directory}/{step}: the config changed in what "
            "shapes the train state (checkpoint.STATE_KEYS):\n  - "
            + "\n  - ".join(f"{k}: {old!r} in the checkpoint, {new!r} now"
                            for k, (old, new) in structural.items())
            + "\nUse the checkpoint's values, or a new workdir (init_from=<this workdir> "
              "starts a new run from its weights).")
    run.config_changes = other


def restore_or_init(run: Run) -> str:
    """Newest intact checkpoint of this workdir, else init_from (params only), else fresh."""
    setup, c = run.setup, run.config
    had_checkpoints = bool(run.checkpoints.all_steps())
    found = run.checkpoints.restore_latest(setup.abstract_state, run.data,
                                           check=lambda step, meta: check_resume(run, step, meta))
    if found is not None:
        run.step, run.state, meta = found
        run.batches, run.skipped = meta["batches"], list(meta.get("skipped_batches", []))
        version, current = ckptlib.format_version(meta), ckptlib.FORMAT_VERSION
        upgrade = (f" (checkpoint format {version}, read as format {current}; new checkpoints "
                   f"are format {current})") if version < current else ""
        return f"resumed from {run.checkpoints.directory} step {run.step}{upgrade}"
    if had_checkpoints:
        refuse_fresh_start(run, "every checkpoint is corrupt (set aside: "
                           f"{', '.join(run.checkpoints.corrupt())})")
    run.data.set_state(run.initial_data_state)
    run.batches = run.step = 0
    run.state = statelib.init_state(setup)
    if not c.init_from:
        return "fresh init"
    loaded, report = ckptlib.load_params(c.init_from, setup.abstract_state["params"],
                                         strict=c.init_strict)
    run.state["params"] = ckptlib.merge_params(run.state["params"], loaded)
    if "ema" in run.state:
        run.state["ema"] = jax.tree.map(jnp.copy, run.state["params"]["student"])
    return "init_from: " + "; ".join(report)


def compile_step(run: Run):
    """Ahead-of-time compilation of the train step; logs time and per-device memory."""
    setup, c = run.setup, run.config
    video = jax.ShapeDtypeStruct(
        (c.train.batch_size, c.model.frames, c.model.image_size, c.model.image_size, 3), jnp.uint8,
        sharding=batch_sharding(setup.mesh))
    start = time.perf_counter()
    compiled = steplib.jit_train_step(setup).lower(run.state, run.teachers, video, 0.0).compile()
    memory = compiled.memory_analysis()
    in_use = ""
    if memory is not None:
        gib = (memory.argument_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / 2**30
        in_use = f", {gib:.2f} GiB per device"
    log.info("compiled the train step in %.1f s%s", time.perf_counter() - start, in_use)
    return compiled


def save(run: Run) -> None:
    meta = {"step": run.step, "batches": run.batches, "skipped_batches": run.skipped,
            "config": run.config.to_dict(), "versions": ckptlib.versions(),
            "process_count": jax.process_count(), "mesh": dict(run.setup.mesh.shape)}
    run.checkpoints.save(run.step, run.state, run.data, meta)


# ---------------------------------------------------------------------------
# Steps.

def wait_for_batch(run: Run) -> dict | None:
    """The data stream's next batch; None when a stop signal came while waiting for it
    (the stream is then put back where it was, so a checkpoint resumes right)."""
    if jax.process_count() > 1:            # processes agree on stops between steps only
        return next(run.data)
    before = run.data.get_state()
    try:
        with run.stop.interruptible():
            return next(run.data)
    except Interrupted:
        pipeline.kill_workers()            # the wait may be on a stuck worker
        run.data.set_state(before)
        return None


def next_batch(run: Run, timer: Throughput) -> tuple[dict, int] | None:
    """The next batch of the stream (skipping positions a rollback marked) and its
    position; None when a stop signal came while waiting for data."""
    while True:
        start = time.perf_counter()
        batch = wait_for_batch(run)
        if batch is None:
            return None
        timer.waited(start, time.perf_counter())
        position, run.batches = run.batches, run.batches + 1
        if position not in run.skipped:
            return batch, position
        log.warning("skipping batch %d of the data stream (it gave a non-finite loss)", position)


def first_fault(pending: list[tuple[int, int, dict]]) -> tuple[int, int, str, dict] | None:
    """(step, stream position, message, metrics) of the first non-finite step, if any."""
    for step, position, metrics in pending:
        values = {k: float(v) for k, v in metrics.items()}
        bad = [k for k in values if k.startswith("loss") and not math.isfinite(values[k])]
        if bad or not math.isfinite(values["grad_norm"]):
            terms = [k for k in bad if k != "loss"] or bad or ["grad_norm"]
            message = (f"step {step}: non-finite {', '.join(terms)} "
                       f"(loss {values['loss']}, grad_norm {values['grad_norm']})")
            return step, position, message, values
    return None


def handle_fault(run: Run, fault, writer: MetricsWriter) -> None:
    """Stops, or rolls back to the last good checkpoint and marks the batch to be skipped."""
    _, position, message, _ = fault
    c = run.config.train
    run.checkpoints.wait()
    latest = run.checkpoints.latest_step()
    kept = f"the last good checkpoint is step {latest}" if latest is not None else "no checkpoint yet"
    if c.nan_policy == "stop":
        raise NonFiniteError(f"{message}; stopping ({kept}).")
    if run.rollbacks >= c.nan_retries:
        raise NonFiniteError(f"{message}; {run.rollbacks} rollbacks already (train.nan_retries="
                             f"{c.nan_retries}), stopping ({kept}).")
    run.rollbacks += 1
    skipped = [*run.skipped, position]
    how = restore_or_init(run)
    run.skipped = sorted(set(run.skipped) | set(skipped))
    writer.rewind(run.step)
    log.warning("%s; rollback %d/%d: %s, will skip batch %d of the data stream", message,
                run.rollbacks, c.nan_retries, how, position)


def flush(run: Run, pending: list, writer: MetricsWriter, timer: Throughput, perf: dict) -> bool:
    """Checks the pending steps' metrics and logs the last one. False after a rollback."""
    fault = first_fault(pending)
    if fault:
        pending.clear()
        handle_fault(run, fault, writer)
        timer.reset()
        return False
    step, _, metrics = pending[-1]
    if step % run.config.train.log_every == 0 or step == run.setup.total_steps:
        scalars = {k: float(v) for k, v in metrics.items()}
        scalars.update(timer.report(run.config.train.batch_size, perf["flops"], perf["peak"]))
        writer.write(step, scalars)
    pending.clear()
    return True


def train(run: Run, compiled, probe: KnnProbe | None, writer: MetricsWriter, perf: dict) -> str:
    """Runs steps to the end. Returns 'done' or the name of the signal that stopped it."""
    c = run.config.train
    total = run.setup.total_steps
    ckpt_every = cfglib.to_steps(c.ckpt_every, batch_size=c.batch_size,
                                 examples_per_epoch=run.data_info.num_examples)
    probe_every = cfglib.to_steps(c.probe_every, batch_size=c.batch_size,
                                  examples_per_epoch=run.data_info.num_examples) if probe else 0
    sharding = batch_sharding(run.setup.mesh)
    pending = []
    # Across processes, agreeing on a stop is a collective: do it only every log_every steps.
    check_every = 1 if jax.process_count() == 1 else c.log_every
    with Throughput() as timer:
        while run.step < total:
            if run.step % check_every == 0 and (signal := preempted(run)):
                return signal
            fetched = next_batch(run, timer)
            if fetched is None:
                return preempted(run)
            batch, position = fetched
            video = pipeline.to_global({"video": batch["video"]}, sharding)["video"]
            poison = np.float32(np.nan if position in c.inject_nan_batches else 0.0)
            run.state, metrics = compiled(run.state, run.teachers, video, poison)
            run.step = step = run.step + 1
            timer.dispatched(metrics["loss"])
            pending.append((step, position, metrics))
            writer.advance()
            due_ckpt = ckpt_every and step % ckpt_every == 0
            due_probe = probe_every and step % probe_every == 0
            if not (step % c.log_every == 0 or due_ckpt or due_probe or step == total):
                continue
            if not flush(run, pending, writer, timer, perf):
                continue                                    # rolled back
            if due_ckpt:
                save(run)
            if due_probe:
                run_probe(run, probe, writer)
        return "done"


def run_probe(run: Run, probe: KnnProbe, writer: MetricsWriter) -> None:
    scores = probe(run.state, run.teachers)
    run.probe_scores = (run.step, scores)
    writer.write(run.step, scores)
    writer.note(f"step {run.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


# ---------------------------------------------------------------------------
# The run.

def run(config, workdir: str, *, start_over: bool = False) -> dict:
    """Trains (or resumes) in `workdir`; returns a summary of what was done and written.

    `start_over` allows a fresh start in a workdir that holds an earlier run's records
    but no intact checkpoint (they are moved aside)."""
    workdir = os.path.abspath(workdir)
    stop = StopRequest().install()
    try:
        return _run(Run(config, workdir, stop, start_over=start_over))
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


def record_config(run: Run) -> None:
    """Writes config.json (the config now) and appends it to config_history.jsonl with
    the changes since the checkpoint, so no earlier config is lost."""
    path = os.path.join(run.workdir, "config.json")
    history = os.path.join(run.workdir, "config_history.jsonl")
    entries = []
    if os.path.isfile(path) and not os.path.isfile(history):   # a workdir from before history
        with open(path) as f:
            entries.append({"start_step": None, "config": json.load(f)})
    entries.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "start_step": run.step,
                    "changes": {k: list(v) for k, v in run.config_changes.items()},
                    "config": run.config.to_dict()})
    with open(history, "a") as f:
        f.writelines(json.dumps(e, default=str) + "\n" for e in entries)
    cfglib.save(run.config, path)


def summarize(run: Run, outcome: str, start_step: int, last: dict, baseline: dict) -> dict:
    """The summary `run` returns."""
    quarantine = run.data_info.quarantine
    return {"outcome": outcome, "start_step": start_step, "step": run.step,
            "total_steps": run.setup.total_steps, "last_metrics": last,
            "probe": run.probe_scores[1] if run.probe_scores else {}, "probe_baseline": baseline,
            "checkpoint": os.path.join(run.checkpoints.directory, str(run.step)),
            "bad_files": quarantine.summary() if quarantine.files else ""}


def _run(run: Run) -> dict:
    check_config(run.config, run.workdir)
    run.checkpoints = ckptlib.Checkpoints(os.path.join(run.workdir, "checkpoints"),
                                          keep=run.config.train.keep)
    try:
        steps = run.checkpoints.all_steps()
        if not steps:
            refuse_fresh_start(run, "it has no checkpoint to resume from")
        else:                    # a config that cannot resume fails before anything is built
            with contextlib.suppress(ckptlib.CorruptCheckpoint):   # restore sets it aside
                meta = run.checkpoints.checked(steps[-1], lambda: run.checkpoints.meta(steps[-1]))
                check_resume(run, steps[-1], meta)
        return _start_and_train(run)
    finally:
        run.checkpoints.close()


def _start_and_train(run: Run) -> dict:
    c = run.config
    mesh = make_mesh(c.mesh.shape)
    log.info("mesh: %s over %d devices (%s), %d process(es); rules %s", dict(mesh.shape),
             jax.device_count(), jax.devices()[0].device_kind, jax.process_count(), c.mesh.rules)
    start_data(run)
    build_state(run, mesh)
    log.info("state: %s", restore_or_init(run))
    if run.config_changes:
        log.warning("resuming with a changed config (both kept in config_history.jsonl): %s",
                    "; ".join(f"{k}: {old!r} -> {new!r}"
                              for k, (old, new) in run.config_changes.items()))
    if run.step >= run.setup.total_steps:
        return summarize(run, "nothing to do", run.step, {}, {})
    files = {"image_teacher": c.teacher.weights, "video_teacher": c.objective.video_teacher.weights}
    run.teachers = statelib.init_teachers(run.setup, files)
    if run.is_chief:
        record_config(run)
    start_step, baseline = run.step, {}
    writer = MetricsWriter(run.workdir, enabled=run.is_chief, start_step=start_step,
                           total_steps=run.setup.total_steps)
    try:
        outcome = preempted(run)
        if outcome is None:
            compiled, perf = compile_step(run), performance(run)
            probe = KnnProbe(c.train.probe_path, run.setup, k=c.train.probe_k) if c.train.probe_path else None
            if probe and run.step == 0:                  # the untrained baseline
                run_probe(run, probe, writer)
                baseline = run.probe_scores[1]
            outcome = preempted(run) or train(run, compiled, probe, writer, perf)
            if probe and outcome == "done" and (run.probe_scores or (None,))[0] != run.step:
                run_probe(run, probe, writer)
        if run.checkpoints.latest_step() != run.step:
            save(run)
        run.checkpoints.wait()
    finally:
        writer.close()
    return summarize(run, outcome, start_step, writer.last, baseline)


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
              f"  metrics    : {os.path.join(workdir, 'metrics.jsonl')}",
              f"  TensorBoard: {os.path.join(workdir, 'tensorboard')}",
              f"  config     : {os.path.join(workdir, 'config.json')}"]
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

"""`twlv train`: one pretraining run, as a narrative.

    config -> validate -> mesh -> data -> abstract state + shardings -> restore or init
           -> compile -> steps (metrics, checkpoints, probe) -> final checkpoint -> summary

Resume order: this workdir's latest checkpoint (reusing a workdir resumes), then
`init_from` (params only), then a fresh init. SIGTERM/SIGINT at any phase saves the
current step and exits cleanly. A non-finite loss stops the run or rolls back to the
last good checkpoint and skips the batch (`train.nan_policy`).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from twlv_jax.train.preemption import StopRequest
from twlv_jax.train.probe import KnnProbe
from twlv_jax.train.validate import teacher_warning, total_steps, validate

log = logging.getLogger("twlv.train")


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN or infinite and the policy says stop."""


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

    @property
    def is_chief(self) -> bool:
        return jax.process_index() == 0


# ---------------------------------------------------------------------------
# Phases.

def check_config(config) -> None:
    validate(config, jax.device_count())
    warning = teacher_warning(config)
    if warning:
        log.warning("\n%s", warning)


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


def restore_or_init(run: Run) -> str:
    """Latest checkpoint of this workdir, else init_from (params only), else fresh."""
    setup, c = run.setup, run.config
    latest = run.checkpoints.latest_step()
    if latest is not None:
        run.state, meta = run.checkpoints.restore(latest, setup.abstract_state, run.data)
        run.batches, run.skipped = meta["batches"], list(meta.get("skipped_batches", []))
        run.step = latest
        return f"resumed from {run.checkpoints.directory} step {latest}"
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
    compiled = steplib.compile_step(setup).lower(run.state, run.teachers, video, 0.0).compile()
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

def next_batch(run: Run, timer: Throughput) -> tuple[dict, int]:
    """The next batch of the stream (skipping positions a rollback marked), and its position."""
    while True:
        start = time.perf_counter()
        batch = next(run.data)
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
            batch, position = next_batch(run, timer)
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

def run(config, workdir: str) -> dict:
    """Trains (or resumes) in `workdir`; returns a summary of what was done and written."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    stop = StopRequest().install()
    try:
        return _run(Run(config, workdir, stop))
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
    perf = {"flops": flops.train_step(c, run.setup.objective), "peak": peak}
    log.info("%.3g model FLOPs per step; peak %.3g FLOP/s (%s)", perf["flops"], peak, source)
    return perf


def _run(run: Run) -> dict:
    c = run.config
    check_config(c)
    mesh = make_mesh(c.mesh.shape)
    log.info("mesh: %s over %d devices (%s), %d process(es); rules %s", dict(mesh.shape),
             jax.device_count(), jax.devices()[0].device_kind, jax.process_count(), c.mesh.rules)
    start_data(run)
    build_state(run, mesh)
    run.checkpoints = ckptlib.Checkpoints(os.path.join(run.workdir, "checkpoints"), keep=c.train.keep)
    log.info("state: %s", restore_or_init(run))
    files = {"image_teacher": c.teacher.weights, "video_teacher": c.objective.video_teacher.weights}
    run.teachers = statelib.init_teachers(run.setup, files)
    if run.is_chief:
        cfglib.save(c, os.path.join(run.workdir, "config.json"))
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
            if probe and outcome == "done" and run.probe_scores[0] != run.step:
                run_probe(run, probe, writer)
        if run.checkpoints.latest_step() != run.step:
            save(run)
        run.checkpoints.wait()
    finally:
        writer.close()
        run.checkpoints.close()
    return {"outcome": outcome, "start_step": start_step, "step": run.step,
            "total_steps": run.setup.total_steps, "last_metrics": writer.last,
            "probe": run.probe_scores[1] if run.probe_scores else {}, "probe_baseline": baseline,
            "checkpoint": os.path.join(run.checkpoints.directory, str(run.step)),
            "bad_files": run.data_info.quarantine.summary() if run.data_info.quarantine.files else ""}


def summary_text(summary: dict, workdir: str) -> str:
    m = summary["last_metrics"]
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
    overrides, rest = cfglib.split_cli(argv)
    parser = argparse.ArgumentParser(prog="twlv train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any config key can be overridden: --config.optim.lr=3e-4")
    parser.add_argument("--config", required=True, help="FILE[:ARGS], e.g. configs/pretrain.py:variant=B")
    parser.add_argument("--workdir", required=True, help="output folder; reusing it resumes")
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
        summary = run(config, args.workdir)
    except (ValueError, FileNotFoundError, TooManyBadFiles, NonFiniteError,
            distributed.DistributedError) as error:   # bad input or a stop the run chose
        print(f"twlv train: {error}", file=sys.stderr)
        return 3 if isinstance(error, NonFiniteError) else 2
    if jax.process_index() == 0:
        print(summary_text(summary, args.workdir))
    return 0

"""Running a sweep's runs: locally one after another, or handed to a launcher script.

Each run trains in ROOT/NAME, then, when the sweep asks for it, its evaluation step runs
there (evaluate.py). Its state is kept in ROOT/NAME/sweep_status.json (written
by the local runner and on hand-over); a run handed to a cluster is read from its
metrics.jsonl instead. Local runs are subprocesses of `twlv train` with --start_over,
so a rerun resumes from the newest checkpoint or, without one, starts the run afresh.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from twlv_jax import config as cfglib
from twlv_jax import paths as pathlib
from twlv_jax.sweep import evaluate
from twlv_jax.sweep.expand import Run

LAUNCHERS = ("local", "slurm", "tpu_vm", "xpk")
LAUNCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "launch")
STATUS = "sweep_status.json"
STATES = ("done", "failed", "interrupted", "running", "submitted", "not started")


def run_dir(root: str, run: Run) -> str:
    return pathlib.join(root, run.name)


def write_status(folder: str, state: str, detail: str = "") -> None:
    with pathlib.atomic_write(pathlib.join(folder, STATUS), "w") as f:
        json.dump({"state": state, "detail": detail, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)


def last_records(folder: str) -> tuple[dict, dict]:
    """(last training record, last record with probe scores) of a run's metrics.jsonl."""
    train, probe = {}, {}
    path = pathlib.join(folder, "metrics.jsonl")
    if pathlib.isfile(path):
        with pathlib.open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                record = json.loads(line)
                if "loss" in record:
                    train = record
                if any(k.startswith("probe/") for k in record):
                    probe = record
    return train, probe


def state_of(folder: str, config) -> tuple[str, str]:
    """(state, detail) of a run from its status file, else from its metrics."""
    path = pathlib.join(folder, STATUS)
    if pathlib.isfile(path):
        with pathlib.open(path) as f:
            status = json.load(f)
        if status["state"] != "submitted":
            return status["state"], status["detail"]
    train, _ = last_records(folder)
    if not train:
        return ("submitted", "no metrics yet") if pathlib.isfile(path) else ("not started", "")
    amount, unit = cfglib.parse_duration(config.train.steps)
    if unit == "steps" and train["step"] >= amount:
        return "done", ""
    return "running", f"step {train['step']}"


def launcher_devices(launcher: str, launcher_args: list[str]) -> int | None:
    """The devices a launcher's options give each run, when they say: SLURM nodes x GPUs
    per node (its defaults 1 x 8), or an XPK TPU type x slices (v4/v5p types count
    TensorCores, two per device; v5e/v6e types count chips). None for local and tpu_vm."""
    options = dict(a[2:].split("=", 1) for a in launcher_args if a.startswith("--") and "=" in a)
    if launcher == "slurm":
        return int(options.get("nodes", 1)) * int(options.get("gpus_per_node", 8))
    if launcher == "xpk" and "tpu_type" in options:
        kind, _, count = options["tpu_type"].rpartition("-")
        per_device = 2 if kind in ("v4", "v5p") else 1
        return int(count) // per_device * int(options.get("num_slices", 1))
    return None


def train_command(root: str, run: Run) -> list[str]:
    return [sys.executable, "-m", "twlv_jax", "train", "--config", run.spec,
            "--workdir", run_dir(root, run), *run.cli_overrides(), "--start_over"]


def launcher_command(launcher: str, root: str, run: Run, launcher_args: list[str],
                     dry_run: bool) -> list[str]:
    """The launch/<launcher>.sh command that starts `run` (prints only with --dry_run)."""
    script = os.path.join(LAUNCH_DIR, f"{launcher}.sh")
    return [script, *(["--dry_run"] if dry_run else []), *launcher_args, run.spec,
            run_dir(root, run), *run.cli_overrides()]


def _outcome(returncode: int, output: str) -> tuple[str, str]:
    """(state, detail) of a finished `twlv train` from its exit code and output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("twlv train:")]
    if returncode == 0 and said and ("finished at" in said[-1] or "nothing to do" in said[-1]):
        return "done", ""
    if returncode == 0 and said and "stopped by" in said[-1]:
        return "interrupted", said[-1][len("twlv train: "):]
    # Its own error (which may go on over lines), else the last line it wrote.
    first = max((i for i, line in enumerate(lines) if line.startswith("twlv train:")),
                default=len(lines) - 1)
    why = " ".join(line.lstrip("- ") for line in lines[first:])[:400] or "no output"
    return "failed", f"exit code {returncode}: {why}"


def _term_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)      # 1: PR_SET_PDEATHSIG


class LocalRunner:
    """Runs `twlv train` (and the evaluation step) for each run in turn; SIGINT/SIGTERM is
    passed to the command going on (a training run checkpoints and exits) and ends the
    sweep after it."""

    def __init__(self, root: str):
        self.root = root
        self.stopped: str | None = None
        self._child: subprocess.Popen | None = None

    def _handle(self, signum, frame) -> None:
        self.stopped = signal.Signals(signum).name
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)

    def __enter__(self) -> LocalRunner:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _call(self, command: list[str], log) -> int:
        """Runs one command to its end, its output appended to `log`."""
        # Its own session: a Ctrl-C in the terminal reaches the sweep, which passes it on
        # once. If the sweep dies (kill -9), the child gets SIGTERM, so a rerun never finds
        # it still running in the same workdir.
        self._child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=_term_with_parent)
        try:
            return self._child.wait()
        finally:
            self._child = None

    def run(self, run: Run) -> tuple[str, str]:
        """Trains one run to its end (or a stop); returns and records (state, detail)."""
        folder = run_dir(self.root, run)
        log_path = os.path.join(folder, "train.log")
        start = os.path.getsize(log_path) if os.path.isfile(log_path) else 0
        write_status(folder, "running", f"log: {log_path}")
        with open(log_path, "a") as log:
            returncode = self._call(train_command(self.root, run), log)
        with open(log_path) as f:
            f.seek(start)
            state, detail = _outcome(returncode, f.read())
        write_status(folder, state, detail)
        return state, detail

    def evaluate(self, run: Run) -> str:
        """The evaluation step of a finished run (twlv embed, knn, probe); returns '' when
        it completed, else why not (also kept as the run's note, so a rerun retries it)."""
        folder = run_dir(self.root, run)
        step = evaluate.last_step(folder)
        if step is None:
            return _note(folder, "evaluation failed: the run has no checkpoint")
        log_path = os.path.join(folder, "eval.log")
        with open(log_path, "a") as log:
            for command in evaluate.commands(folder, run.evaluation, step):
                start = log.tell()
                log.write(f"$ {shlex.join(command)}\n")
                log.flush()
                returncode = self._call(command, log)
                if self.stopped:
                    return _note(folder, f"evaluation interrupted by {self.stopped}")
                if returncode != 0:
                    with open(log_path) as f:
                        f.seek(start)
                        why = _last_error(f.read(), f"twlv {command[3]}:")
                    return _note(folder, f"evaluation failed: {why} (log: {log_path})")
        write_status(folder, "done")
        return ""


def _last_error(output: str, prefix: str) -> str:
    """The last line that starts with `prefix` (a verb's one-line error), else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(prefix)]
    return (said or lines or ["no output"])[-1][:400]


def _note(folder: str, detail: str) -> str:
    write_status(folder, "done", detail)
    return detail

"""Training metrics: JSONL, TensorBoard event files and a progress bar (process 0 only).

In a bucket, whose objects cannot be appended to, both are written to a local folder
and copied up whole (`MetricsWriter.sync`) at most every SYNC_SECONDS, at each
checkpoint and at the end. A crash loses at most the records since the last copy, all
of them after the last checkpoint: the resume redoes those steps."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor

from tensorboardX import SummaryWriter
from tqdm import tqdm

from twlv_jax import paths

SYNC_SECONDS = 60.0


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drops records after `last_step` (they belong to steps that a resume redoes) from a
    local file."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    with open(path, "w") as f:
        f.writelines(lines)


class MetricsWriter:
    """Appends one JSON object per logged step to WORKDIR/metrics.jsonl, writes the same
    scalars as TensorBoard events under WORKDIR/tensorboard, and drives a tqdm bar. A
    workdir in a bucket is written through a local folder (`sync`)."""

    def __init__(self, workdir: str, *, enabled: bool, start_step: int, total_steps: int):
        self.enabled = enabled
        self.workdir = workdir
        self.path = paths.join(workdir, "metrics.jsonl")
        self.last: dict = {}                # the last training record, for the summary
        self.last_probe: tuple[int, dict] | None = None     # (step, scores) of the last probe
        self.staging = tempfile.mkdtemp(prefix="twlv-metrics-") \
            if enabled and paths.is_remote(workdir) else None
        self.local = os.path.join(self.staging, "metrics.jsonl") if self.staging else self.path
        self.synced = time.monotonic()
        if enabled:
            if self.staging and paths.exists(self.path):      # one download, truncated here
                with open(self.local, "wb") as f:
                    f.write(paths.read_bytes(self.path))
            truncate_jsonl(self.local, start_step)
            if self.staging and os.path.exists(self.local):   # the bucket's copy too
                paths.upload(self.local, self.path)
            self.file = open(self.local, "a")  # noqa: SIM115 (open for the whole run)
            self.tensorboard = SummaryWriter(os.path.join(self.staging or workdir, "tensorboard"))
        self.bar_options = dict(total=total_steps, initial=start_step, disable=not enabled,
                                unit="step", dynamic_ncols=True, desc="train")
        self._bar = None

    @property
    def bar(self) -> tqdm:
        """The progress bar, started on first use (after compilation, so its rate is true)."""
        if self._bar is None:
            self._bar = tqdm(**self.bar_options)
        return self._bar

    def rewind(self, step: int) -> None:
        """After a rollback: forget records past `step`."""
        if self.enabled:
            self.file.close()
            truncate_jsonl(self.local, step)
            self.file = open(self.local, "a")  # noqa: SIM115
            self.bar.reset(total=self.bar.total)
            self.bar.update(step)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
        if "loss" in scalars:
            self.last = record
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in scalars.items():
            if math.isfinite(value):
                self.tensorboard.add_scalar(key, value, step)
        if "loss" in scalars:
            self.bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
        if time.monotonic() - self.synced > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Copies metrics.jsonl and the TensorBoard event files up to a workdir in a
        bucket, whole (nothing to do for a local workdir)."""
        if not (self.enabled and self.staging):
            return
        self.file.flush()
        self.tensorboard.flush()
        paths.upload(self.local, self.path)
        for local in paths.walk_files(os.path.join(self.staging, "tensorboard")):
            paths.upload(local, paths.join(self.workdir, os.path.relpath(local, self.staging)))
        self.synced = time.monotonic()

    def write_probe(self, step: int, scores: dict[str, float]) -> None:
        """The online probe's scores at `step`: written, and shown above the progress bar."""
        self.write(step, scores)
        self.note(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        self.last_probe = (step, scores)

    def note(self, text: str) -> None:
        """A line of text above the progress bar (process 0 only)."""
        if self.enabled:
            tqdm.write(text)

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.enabled:
            self.sync()
            self.file.close()
            self.tensorboard.close()
            if self.staging:
                shutil.rmtree(self.staging, ignore_errors=True)


class Throughput:
    """Wall time, steps and data wait since the last report.

    Data wait counts only time the devices sat idle for want of a batch: steps run
    asynchronously, so a background thread notes when each dispatched step finishes, and
    waiting for the next batch while a step still runs costs nothing.
    """

    def __init__(self):
        self._watcher = ThreadPoolExecutor(1, thread_name_prefix="twlv-step-watch")
        self._last_step: Future | None = None
        self.reset()

    def reset(self) -> None:
        self.start, self.data_wait, self.steps = time.perf_counter(), 0.0, 0

    def dispatched(self, loss) -> None:
        """A step was dispatched; `loss` (a jax.Array) is ready when it has finished."""
        self.steps += 1
        self._last_step = self._watcher.submit(_finished_at, loss)

    def waited(self, start: float, end: float) -> None:
        """The loop waited for a batch from `start` to `end` (time.perf_counter)."""
        last = self._last_step
        finished = -math.inf if last is None else last.result() if last.done() else None
        self.data_wait += idle_time(start, end, finished)

    def report(self, batch_size: int, flops_per_step: float, peak_flops: float) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        result = {"clips_per_s": self.steps * batch_size / elapsed,
                  "data_wait": self.data_wait / elapsed,
                  "step_s": elapsed / max(self.steps, 1)}
        if peak_flops:
            result["mfu"] = self.steps * flops_per_step / elapsed / peak_flops
        self.reset()
        return result

    def __enter__(self) -> Throughput:
        return self

    def __exit__(self, *exc) -> None:
        self._watcher.shutdown(wait=True)


def idle_time(start: float, end: float, finished: float | None) -> float:
    """The part of a wait from `start` to `end` after the last dispatched step finished at
    `finished` (None: it was still running at `end`)."""
    if finished is None:
        return 0.0
    return max(0.0, end - max(start, finished))


def _finished_at(loss) -> float:
    loss.block_until_ready()
    return time.perf_counter()

"""Worker processes of a benchmark: one process per measured case, driven by its parent.

A worker is a benchmark script started with `--worker SPEC` (a JSON object naming its case) in
the checkout it measures. It builds the case, replies with what building it measured, then
answers one command per line of stdin: `step` (time one step), `profile` (trace one); anything
else, or the end of stdin, ends it. A reply is one JSON object on a line of its own after
`MARK`; the parent skips the worker's other lines of stdout, and its stderr is the parent's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

MARK = "@@"


def reply(**message) -> None:
    print(MARK + json.dumps(message), flush=True)


def peak_rss_gb() -> float:
    """Largest resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def serve(runner, **built) -> int:
    """The worker's side: replies `built` (and the memory so far), then answers commands with
    `runner.step()` and `runner.profile()` until told to stop."""
    reply(**built, rss_gb=peak_rss_gb())
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            reply(value=runner.step(), rss_gb=peak_rss_gb())
        elif command == "profile":
            reply(profile=runner.profile())
        else:
            break
    return 0


class Worker:
    """The parent's handle on a worker: `script` (a path inside `root`, the checkout measured)
    started with `--worker spec`, its own `twlv_jax` imported from `root`."""

    def __init__(self, label: str, root: str, script: str, spec: dict):
        self.label = label
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(root, script), "--worker", json.dumps(spec)],
            cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info: dict = {}

    def read(self) -> dict:
        """The next reply; RuntimeError when the worker exits first (out of memory, say)."""
        for line in self.process.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"worker for {self.label} exited with {self.process.wait()}")

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        """Asks the worker to quit; kills it if it does not within a minute."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()

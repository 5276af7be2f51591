"""SIGTERM / SIGINT: finish the current phase, checkpoint, exit cleanly.

The handler sets a flag; the loop checks it between phases and steps. While the loop
waits inside `interruptible()` (on data, which may never come), the handler also raises
Interrupted there, so a stop does not wait for the data. On multi-host runs all
processes agree (any process signalled means all stop at the same step).
"""

from __future__ import annotations

import contextlib
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Interrupted(Exception):
    """A stop signal arrived inside `StopRequest.interruptible()`."""


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}
        self._waiting = False

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt        # a second Ctrl-C stops at once
        self.signal_name = signal.Signals(signum).name
        if self._waiting:
            self._waiting = False
            raise Interrupted(self.signal_name)

    @contextlib.contextmanager
    def interruptible(self):
        """A block (a wait) that a stop signal ends at once with Interrupted."""
        if self.signal_name is not None:
            raise Interrupted(self.signal_name)
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def requested(self) -> bool:
        """True on every process when any process was signalled."""
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        flags = multihost_utils.process_allgather(np.array([local], np.int32))
        return bool(np.any(flags))

"""SIGTERM / SIGINT: finish the current phase, checkpoint, exit cleanly.

The handler only sets a flag; the loop checks it between phases and steps. On multi-host
runs all processes agree (any process signalled means all stop at the same step).
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

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

    def requested(self) -> bool:
        """True on every process when any process was signalled."""
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        flags = multihost_utils.process_allgather(np.array([local], np.int32))
        return bool(np.any(flags))

"""Multi-host start-up: `jax.distributed.initialize` with pre-flight checks that fail fast.

`--coordinator=auto` lets JAX find the coordinator itself (Cloud TPU pods, SLURM, Open
MPI); a SLURM job with several tasks is detected without it. Elsewhere pass
`--coordinator HOST:PORT --num_processes N --process_id I` (or the environment variables
TWLV_COORDINATOR, TWLV_NUM_PROCESSES, TWLV_PROCESS_ID).
"""

from __future__ import annotations

import logging
import os
import socket
import time

import jax

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """Multi-host start-up cannot proceed; the message says why."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Raises RuntimeError when HOST:PORT does not accept a TCP connection within `timeout` s."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                raise DistributedError(f"cannot reach the coordinator {address} within {timeout:.0f} s "
                                   f"({error}); check the address, that process 0 is running, "
                                   "and firewalls") from None
            time.sleep(0.5)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: float = 300.0) -> bool:
    """Starts jax.distributed when asked to (flags, environment, TPU pod or SLURM).

    Returns True when running multi-process. Must run before any other JAX call.
    """
    coordinator = coordinator or os.environ.get("TWLV_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _env_int("TWLV_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("TWLV_PROCESS_ID")
    auto = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    auto = auto or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    if coordinator is None and not auto:
        return False
    if coordinator == "auto":
        coordinator = None
    elif coordinator is not None:
        if num_processes is None or process_id is None:
            raise DistributedError("--coordinator needs --num_processes and --process_id")
        if not 0 <= process_id < num_processes:
            raise DistributedError(f"--process_id {process_id} must be in [0, {num_processes})")
        if process_id != 0:
            wait_for_coordinator(coordinator, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU-only multi-host runs
    log.info("jax.distributed.initialize(coordinator=%s, num_processes=%s, process_id=%s)",
             coordinator or "auto", num_processes, process_id)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=int(timeout))
    return jax.process_count() > 1

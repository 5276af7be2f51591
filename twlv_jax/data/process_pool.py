"""Map a function over items in worker processes, keeping the order."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor


def map_ordered(function: Callable, items: Iterable, *, workers: int) -> Iterator:
    """function(item) for each item, in order; in `workers` spawned processes when > 1.

    Spawned (not forked) workers are safe next to JAX's threads. `function` must be a
    picklable top-level function (or a functools.partial of one).
    """
    if workers <= 1:
        yield from map(function, items)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(function, items, chunksize=2)

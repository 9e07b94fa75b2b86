"""Handing freed heap memory back to the operating system, and keeping the
garbage collector's pauses off a busy event loop.

A burst (hundreds of collectors reconnecting and resending their spools)
makes ZeroMQ and Python allocate tens of megabytes in many small blocks;
glibc keeps them once freed, so a long-running ingest's RSS would stay at its
worst burst. ``malloc_trim`` returns what is free. glibc only; elsewhere this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_libc = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None
_malloc_trim = getattr(_libc, "malloc_trim", None)


def trim_heap() -> None:
    """Return free heap memory of every arena to the OS (a few milliseconds at most)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


YOUNG_COLLECTION_EVERY = 50_000  # container allocations between young collections (CPython's default: 700)


@contextmanager
def calm_garbage_collector() -> Iterator[None]:
    """While a service's event loop runs, one that allocates many short-lived
    objects freed by reference counting: collect rarely, and never scan what
    existed when it started. Restored on exit (tests run services in-process).

    Every object alive at entry (modules, configuration, recovered state) is
    frozen out of collections, and young collections run every 50,000
    container allocations instead of 700. Measured in the ingest at 40 robots
    (three runs each): p99 capture-to-durable 168-333 ms against 438-2,340 ms,
    and a few per cent less CPU. Cycles are still collected, only later.
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()

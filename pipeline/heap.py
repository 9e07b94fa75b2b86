"""Handing freed heap memory back to the operating system.

A burst (hundreds of collectors reconnecting and resending their spools)
makes ZeroMQ and Python allocate tens of megabytes in many small blocks;
glibc keeps them once freed, so a long-running ingest's RSS would stay at its
worst burst. ``malloc_trim`` returns what is free. glibc only; elsewhere this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_libc = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None
_malloc_trim = getattr(_libc, "malloc_trim", None)


def trim_heap() -> None:
    """Return free heap memory of every arena to the OS (a few milliseconds at most)."""
    if _malloc_trim is not None:
        _malloc_trim(0)

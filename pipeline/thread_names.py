"""Python thread names made visible to the OS (``top -H``, ``ps -L``, ``/proc/PID/task``).

CPython before 3.14 leaves every thread named after the interpreter, so an
operator (or ``tools/bench_ingest.py``) cannot tell which of the ingest's
threads is busy. Linux only; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread ``name`` (default: its Python name), cut to Linux's 15 bytes."""
    if _libc is None:
        return
    raw = (name or threading.current_thread().name).encode("ascii", "replace")[:15]
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)

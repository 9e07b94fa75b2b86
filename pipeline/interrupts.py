"""Ctrl-C that is never lost, and never raised inside an import.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT
arrives. Two places go wrong:

- a callback whose exceptions Python must ignore (a ``__del__``, a weakref or garbage
  collector callback): it prints "Exception ignored" and carries on, and a long job
  would run to its end. So the handler remembers the request, and long jobs call
  :func:`check` at their safe points, where it is raised again;
- an import (ours take a second or so: zarr, Ray): a KeyboardInterrupt through an
  extension module's initialisation makes CPython end the process by SIGINT whatever
  exit code we return, and can leave modules half imported. So while an import runs,
  the handler only asks again a moment later. Code that cannot be left half done
  (a library starting its event loop) runs under :func:`deferred` for the same reason.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

_requested = threading.Event()
_deferring = 0
_ASK_AGAIN_AFTER_S = 0.05


@dataclass
class _Asking:
    """The state a re-ask (a SIGINT this module sends itself) must check first."""

    active: bool = False  # within :func:`handled`: our handler is the one that will run
    raised: bool = False  # the KeyboardInterrupt was raised: asking again would make a second one
    again: bool = False  # the next SIGINT is a re-ask, not the user's


_asking = _Asking()
_asking_lock = threading.Lock()


@contextmanager
def handled() -> Iterator[None]:
    """Handle Ctrl-C as this module says within the block, then as before it.

    Only the main thread can set a signal handler: elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    with _asking_lock:
        _asking.active, _asking.raised, _asking.again = True, False, False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        with _asking_lock:
            _asking.active = False  # no re-ask from now on: Python's own handler would raise it
        signal.signal(signal.SIGINT, previous)


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even if Python had to ignore it where it landed."""
    if _requested.is_set():
        _raise()


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: a Ctrl-C meanwhile is raised when it ends (or at a :func:`check` inside it)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    check()


def _raise() -> None:
    _asking.raised = True
    raise KeyboardInterrupt


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _asking.again:
        _asking.again = False
        if _asking.raised:
            return  # a check raised it meanwhile
    _requested.set()
    if _deferring:
        return
    if _importing(frame):
        timer = threading.Timer(_ASK_AGAIN_AFTER_S, _ask_again)
        timer.daemon = True
        timer.start()
        return
    _raise()


def _ask_again() -> None:
    with _asking_lock:
        if _asking.active and not _asking.raised:
            _asking.again = True
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False

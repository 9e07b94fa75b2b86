"""Terminal output for long-running commands: a live status line and tables.

On a terminal the status line rewrites itself in place; when stderr is a
file or a pipe (CI, systemd) it prints one line every ``log_every_s``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


class StatusLine:
    def __init__(self, stream: TextIO | None = None, log_every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every_s = log_every_s
        self._last_print = 0.0
        self._width = 0

    def update(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
            self._width = len(text)
        elif now - self._last_print >= self.log_every_s:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print = now

    def done(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) if rows else False for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] and n else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


class ProgressBar:
    """``[#####.....] 12/40 episode-id`` on a terminal; a line per 10% elsewhere."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        self._last_decile = -1
        self._started = time.monotonic()

    def __call__(self, done: int, total: int, item: str = "") -> None:
        fraction = done / total if total else 1.0
        filled = int(fraction * self.width)
        elapsed = time.monotonic() - self._started
        eta = elapsed / done * (total - done) if done else 0.0
        text = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} ({elapsed:.0f} s, ~{eta:.0f} s left) {item}"
        if self.tty:
            self.stream.write("\r" + text[:160].ljust(160))
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(fraction * 10) > self._last_decile or done >= total:
            self._last_decile = int(fraction * 10)
            self.stream.write(text + "\n")
            self.stream.flush()

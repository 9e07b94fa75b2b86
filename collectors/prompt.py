"""The operator's interactive prompt: commands, feedback, a live status line, a summary.

On a terminal the screen is split without curses: the lines above scroll
(log records, command feedback, the commands typed), the line above the last
shows the collector's status, redrawn in place twice a second, and the last
line is the prompt with what the operator is typing, which no output overwrites
(the terminal is in cbreak mode: the console echoes and edits the typed line
itself and puts it back after every write). Elsewhere (stdin or stderr not a
terminal: scripts, pipes) every message is one plain line and the status
line is printed between commands.

Commands (one per line)::

    s [TASK]   start an episode (TASK: its task instruction)
    e | f | d  end it: success, failure, discarded
    l TEXT     label the running episode
    t TEXT     change the running episode's task instruction
    (empty)    show the status line
    h | ?      list the commands
    q          quit: end a running episode as interrupted, wait for the seals, print a summary
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

COMMANDS = (
    "commands: s [task] start | e end (success) | f end (failure) | d end (discard)\n"
    "          l TEXT label | t TEXT task | Enter status | h help | q quit"
)
PROMPT = "> "
MAX_TEXT = 1000  # characters of a task or label typed at the prompt


@dataclass
class EpisodeRecord:
    """What the operator recorded in this session, for the summary."""

    episode: str
    task: str
    started: float
    seconds: float = 0.0
    outcome: str = ""  # empty while running
    labels: int = 0


class TerminalConsole:
    """Scrolling messages, a status line and a prompt line on one terminal.

    With ``tty`` the console owns the terminal (cbreak mode: no kernel echo, so it
    echoes and edits the typed line itself and can redraw it after any output);
    otherwise messages are plain lines and the status shows only when
    :meth:`show_status` is called. Every write positions the cursor absolutely,
    so nothing depends on the terminal's save/restore of the cursor, which
    emulators implement differently inside a scrolling region.
    """

    def __init__(self, stream: TextIO, tty: bool, input_fd: int | None = None) -> None:
        self.stream = stream
        self.tty = tty
        self.input_fd = input_fd
        self._lock = threading.RLock()
        self._status = ""
        self._typed = ""
        self._size: os.terminal_size | None = None
        self._active = False
        self._saved_mode: list | None = None

    # ------------------------------------------------------------------ layout

    def open(self) -> None:
        """Reserve the last two lines (status, prompt) below a scrolling region."""
        if not self.tty:
            return
        with self._lock:
            if self.input_fd is not None:
                import termios
                import tty

                self._saved_mode = termios.tcgetattr(self.input_fd)
                tty.setcbreak(self.input_fd)  # keys one by one, no echo; Ctrl-C still signals
            self._active = True
            self._layout(force=True)

    def _rows_cols(self) -> tuple[int, int]:
        return (self._size.lines, self._size.columns) if self._size else (24, 80)

    def _layout(self, force: bool = False) -> None:
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except OSError:
            size = os.terminal_size((80, 24))
        if not force and size == self._size:
            return
        self._size = os.terminal_size((max(size.columns, 20), max(size.lines, 4)))
        rows, _ = self._rows_cols()
        # Two newlines push whatever is on the last two rows up into the region
        # (setting the region, DECSTBM, homes the cursor).
        self._write("\n\n" + f"\x1b[1;{rows - 2}r")
        self._draw_status()
        self._draw_input()

    def close(self) -> None:
        """Give the terminal back: its mode, the whole screen, the cursor below everything."""
        if not self.tty:
            return
        with self._lock:
            if not self._active:
                return
            self._active = False
            rows, _ = self._rows_cols()
            self._write(f"\x1b[r\x1b[{rows - 1};1H\x1b[2K\x1b[{rows};1H\x1b[2K")
            if self._saved_mode is not None and self.input_fd is not None:
                import termios

                termios.tcsetattr(self.input_fd, termios.TCSADRAIN, self._saved_mode)
                self._saved_mode = None

    # ------------------------------------------------------------------ output

    def message(self, text: str) -> None:
        """A line (or lines) in the scrolling region; the prompt and typed text stay."""
        with self._lock:
            if not (self.tty and self._active):
                self._write(text + "\n")
                return
            rows, _ = self._rows_cols()
            body = "".join("\n\r" + line for line in text.split("\n"))
            self._write(f"\x1b[{rows - 2};1H{body}")
            self._place_cursor()

    def status(self, text: str) -> None:
        """Redraw the status line in place (a terminal only)."""
        with self._lock:
            self._status = text
            if self.tty and self._active:
                self._layout()
                self._draw_status()
                self._place_cursor()

    def show_status(self) -> None:
        """The status as a message (what an empty command line shows; off a terminal)."""
        with self._lock:
            if self._status:
                self.message(self._status)

    def _draw_status(self) -> None:
        rows, cols = self._rows_cols()
        self._write(f"\x1b[{rows - 1};1H\x1b[2K{self._status[: cols - 1]}")  # never wraps onto the prompt

    def _draw_input(self) -> None:
        rows, cols = self._rows_cols()
        shown = (PROMPT + self._typed)[-(cols - 1):]  # a long line scrolls left, as shells do
        self._write(f"\x1b[{rows};1H\x1b[2K{shown}")

    def _place_cursor(self) -> None:
        rows, cols = self._rows_cols()
        self._write(f"\x1b[{rows};{min(len(PROMPT) + len(self._typed), cols - 1) + 1}H")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal is gone; the collector goes on

    # ------------------------------------------------------------------ input

    def read_lines(self, put: Callable[[str | None], None]) -> None:
        """Read the operator's lines until end of input; ``put(None)`` at the end.

        On a terminal the typed line is edited here: Backspace, Ctrl-U (clear),
        Ctrl-W (word), Enter, Ctrl-D on an empty line (end); escape sequences
        (arrow keys) are ignored.
        """
        if not (self.tty and self.input_fd is not None):
            import sys

            for line in sys.stdin:
                put(line.rstrip("\n"))
            put(None)
            return
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        in_escape = False
        while True:
            try:
                data = os.read(self.input_fd, 1024)
            except OSError:
                data = b""
            if not data:
                put(None)
                return
            for ch in decoder.decode(data):
                if in_escape:
                    in_escape = not (ch.isalpha() or ch == "~")
                    continue
                with self._lock:
                    if ch == "\x1b":
                        in_escape = True
                    elif ch in "\r\n":
                        line, self._typed = self._typed, ""
                        if self._active:
                            self._draw_input()
                        put(line)
                    elif ch == "\x04":  # Ctrl-D
                        if not self._typed:
                            put(None)
                            return
                    elif ch in "\x7f\x08":
                        self._typed = self._typed[:-1]
                    elif ch == "\x15":  # Ctrl-U
                        self._typed = ""
                    elif ch == "\x17":  # Ctrl-W
                        self._typed = self._typed.rstrip().rpartition(" ")[0] + (" " if " " in self._typed.rstrip() else "")
                    elif ch.isprintable():
                        self._typed += ch
                    if self._active:
                        self._draw_input()


class ConsoleLogHandler(logging.Handler):
    """Log records as console messages, so they never break into the prompt."""

    def __init__(self, console: TerminalConsole) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.message(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def clean_text(text: str) -> str | None:
    """Task and label text as typed: printable, bounded; None when it is not."""
    if len(text) > MAX_TEXT:
        return None
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        return None  # control characters (NUL, escapes): never recorded
    return text


class OperatorPrompt:
    """Turns command lines into collector calls, and says what each one did."""

    def __init__(self, collector, console: TerminalConsole, task: str, operator: str) -> None:  # noqa: ANN001
        self.collector = collector
        self.console = console
        self.default_task = task
        self.operator = operator
        self.episodes: list[EpisodeRecord] = []

    @property
    def current(self) -> EpisodeRecord | None:
        if self.episodes and not self.episodes[-1].outcome:
            return self.episodes[-1]
        return None

    def say(self, text: str) -> None:
        self.console.message(text)

    def handle(self, line: str) -> bool:
        """Run one command line; False when the operator quits."""
        self.notice_stopped()
        cmd, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if not cmd:
            self.console.show_status()
        elif cmd == "s":
            self._start(rest or self.default_task)
        elif cmd in ("e", "f", "d"):
            self._end({"e": "success", "f": "failure", "d": "discarded"}[cmd])
        elif cmd == "l":
            self._label(rest)
        elif cmd == "t":
            self._task(rest)
        elif cmd in ("h", "?", "help"):
            self.say(COMMANDS)
        elif cmd == "q":
            if self.current is not None:
                self._end("interrupted")
            self.say("quitting: waiting for the ingest to seal what was recorded (Ctrl-C gives up)")
            return False
        else:
            self.say(f"unknown command {cmd!r}; h lists the commands")
        return True

    def notice_stopped(self) -> None:
        """An episode the collector ended by itself (spool full, --on-spool-full stop)."""
        current = self.current
        if current is not None and self.collector.episode != current.episode:
            current.outcome = "interrupted"
            current.seconds = time.monotonic() - current.started
            reason = self.collector.error or "the collector ended it"
            self.say(f"episode {current.episode} was ended by the collector after {current.seconds:.1f} s: {reason}")

    def _start(self, task: str) -> None:
        current = self.current
        if current is not None:
            self.say(f"episode {current.episode} is running ({time.monotonic() - current.started:.1f} s): "
                     "end it first with e, f or d")
            return
        if clean_text(task) is None:
            self.say(f"task not accepted: control characters or more than {MAX_TEXT} characters; nothing started")
            return
        episode = self.collector.start_episode(task, self.operator)
        self.episodes.append(EpisodeRecord(episode, task, time.monotonic()))
        self.say(f"started episode {episode}" + (f" (task {task!r})" if task else " (no task: t TEXT sets one)"))

    def _end(self, outcome: str) -> None:
        current = self.current
        if current is None:
            self.say("no episode running: start one with s [task]")
            return
        self.collector.stop_episode(outcome)
        current.outcome = outcome
        current.seconds = time.monotonic() - current.started
        self.say(f"ended episode {current.episode}: {outcome}, {current.seconds:.1f} s")

    def _label(self, text: str) -> None:
        current = self.current
        if current is None:
            self.say("no episode running: labels go into an episode; start one with s [task]")
        elif not text:
            self.say("label what? type l TEXT")
        elif clean_text(text) is None:
            self.say(f"label not recorded: control characters or more than {MAX_TEXT} characters")
        else:
            self.collector.label(text)
            current.labels += 1
            self.say(f"labelled {current.episode} at {time.monotonic() - current.started:.1f} s: {text!r}")

    def _task(self, text: str) -> None:
        current = self.current
        if current is None:
            self.say("no episode running: s TASK starts one with that task")
        elif not text or clean_text(text) is None:
            self.say(f"task not changed: type t TEXT (printable, at most {MAX_TEXT} characters)")
        else:
            self.collector.set_task(text)
            current.task = text
            self.say(f"task of {current.episode} is now {text!r}")

    # ------------------------------------------------------------------ summary

    def summary(self) -> str:
        """Episodes of this session with durations, outcomes and seal state; what is left in the spool."""
        from pipeline.console import format_table

        c = self.collector
        failed = c.failed_episodes()
        unsealed = set(c.unsealed_episodes())
        rows = []
        for ep in self.episodes:
            if ep.episode in failed:
                state = "NOT SEALED: " + failed[ep.episode]
            elif ep.episode in unsealed:
                state = "not sealed yet"
            else:
                state = "sealed"
            rows.append([ep.episode, ep.task or "-", round(ep.seconds, 1), ep.outcome or "running", ep.labels, state])
        lines = [f"{c.config.robot_id}: {len(self.episodes)} episode(s) recorded in this session"]
        if rows:
            lines.append(format_table(["episode", "task", "seconds", "outcome", "labels", "ingest"], rows))
        lines.append(
            f"spool {c.config.spool_dir}: {c.spool.unacked()} messages unacknowledged, "
            f"{c.spool.bytes_used / 1e6:.1f} MB; episodes not sealed yet: {len(unsealed)}"
        )
        return "\n".join(lines)


def run_prompt(
    prompt: OperatorPrompt, lines: queue.Queue[str | None], stop: threading.Event, status: Callable[[], str],
) -> None:
    """Serve command lines until ``q``, end of input or ``stop``; keep the status line fresh."""
    console = prompt.console
    console.message(COMMANDS)
    console.status(status())
    if not console.tty:
        console.show_status()
    while not stop.is_set():
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            prompt.notice_stopped()
            console.status(status())
            continue
        if line is None:  # end of input (Ctrl-D, or a script's last line)
            line = "q"
        elif console.tty:
            console.message(PROMPT + line)  # the command, kept in the scrolling history
        keep_going = prompt.handle(line)
        console.status(status())
        if not keep_going:
            return
        if not console.tty and line.strip():
            console.show_status()

"""The interactive collector on a real terminal: `refinery collect` under a
pseudo-terminal, streaming to a real ingest, its screen rendered by a VT100
emulator (pyte) exactly as an operator would see it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator

import pyte
import pytest

from collectors.prompt import OperatorPrompt, TerminalConsole, clean_text
from tests.conftest import TINY_ROBOT
from tests.processes import RUNNING

ROWS, COLS = 40, 140


class Terminal:
    """A child process on a pseudo-terminal of ROWS x COLS, and what its screen shows."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args], stdin=slave, stdout=slave, stderr=slave,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm"}, start_new_session=True,
        )
        RUNNING.append(self.proc)
        self.slave_probe = slave  # kept open: the terminal's mode is read from it after the child exits
        self.master = master
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.transcript = b""

    def pump(self, seconds: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        while True:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    return
                self.transcript += data
                self.stream.feed(data)
            elif time.monotonic() >= deadline:
                return

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.05)
            if predicate():
                return
        raise AssertionError(f"screen never showed {what} within {timeout} s:\n{self.text()}")

    def wait_for_text(self, text: str, timeout: float = 15.0) -> None:
        self.wait_for(lambda: text in self.text(), repr(text), timeout)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def command(self, line: str, expect: str) -> None:
        before = self.text().count(expect)
        self.type(line + "\r")
        self.wait_for(lambda: self.text().count(expect) > before, f"{expect!r} after {line!r}")

    def finish(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.1)
        self.pump(0.2)
        code = self.proc.wait(1)
        return code

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave_probe)


@pytest.fixture
def open_terminal() -> Iterator[Callable[[list[str]], Terminal]]:
    opened: list[Terminal] = []

    def open_(args: list[str]) -> Terminal:
        opened.append(Terminal(args))
        return opened[-1]

    yield open_
    for term in opened:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait(10)
        term.close()


def test_operator_session_on_a_terminal(ingest, tmp_path, open_terminal) -> None:
    term = open_terminal(["collect", "--robot", str(TINY_ROBOT), "--robot-id", "tiny-op", "--ingest", ingest.endpoint,
                     "--plain", "--spool", str(tmp_path / "spool"), "--operator", "op-7"])
    term.wait_for(lambda: "link up" in term.lines()[ROWS - 2], "the status line above the prompt")
    lines = term.lines()
    assert lines[ROWS - 1] == ">"  # the prompt, alone on the last line
    (commands,) = [line for line in lines if "commands:" in line]
    assert commands.startswith("commands:") and "INFO" not in commands  # not run together with a log line

    # Every command says what it did, including when there is nothing to do.
    term.command("e", "no episode running")
    term.command("l before anything", "no episode running: labels go into an episode")
    term.command("x", "unknown command 'x'")
    term.command("s fold the towel", "started episode tiny-op-")
    episode = re.search(r"started episode (\S+)", term.text()).group(1)
    term.command("s again", "is running")

    # The status line ticks while the operator types; the typed text stays where it is.
    term.type("l good gr")
    term.wait_for(lambda: term.lines()[ROWS - 1] == "> l good gr", "the typed text on the prompt line")
    first = term.lines()[ROWS - 2]
    term.wait_for(lambda: term.lines()[ROWS - 2] != first, "the status line redrawn")
    assert term.lines()[ROWS - 1] == "> l good gr"
    assert "ep " + episode[-6:] in term.lines()[ROWS - 2]
    term.command("asp", "labelled " + episode)
    assert term.lines()[ROWS - 1] == ">"

    term.command("e", f"ended episode {episode}: success")
    term.command("q", "quitting")
    assert term.finish() == 0, term.transcript.decode(errors="replace")[-3000:]
    out = term.transcript.decode(errors="replace")
    summary = out[out.index("episode(s) recorded in this session") - len("tiny-op: 1 "):]
    assert "tiny-op: 1 episode(s) recorded in this session" in summary
    (row,) = [line for line in summary.splitlines() if line.startswith(episode)]
    assert "fold the towel" in row and "success" in row and row.rstrip().endswith("sealed") and "not" not in row
    assert "0 messages unacknowledged" in summary
    assert (ingest.data_dir / "raw" / "tiny-op" / f"{episode}.h5").exists()


class _FakeCollector:
    episode = None
    error = ""

    def start_episode(self, task: str, operator: str) -> str:  # pragma: no cover - not reached
        raise AssertionError("nothing may start")

    def label(self, text: str) -> None:  # pragma: no cover - not reached
        raise AssertionError("nothing may be labelled")


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("text", ["a\x00b", "\x1b[2J", "x" * 1001])
def test_typed_task_and_label_text_with_control_characters_is_refused(text: str) -> None:
    assert clean_text(text) is None
    out = _Lines()
    prompt = OperatorPrompt(_FakeCollector(), TerminalConsole(out, tty=False), task="", operator="op")
    prompt.handle("s " + text)
    assert prompt.episodes == [] and "task not accepted" in "".join(out.lines)


def test_printable_text_is_kept_as_typed() -> None:
    assert clean_text("fold the towel, then the shirt (ü, 東京)") == "fold the towel, then the shirt (ü, 東京)"


def test_ctrl_c_at_the_prompt_ends_the_episode_as_interrupted_and_drains(ingest, tmp_path, open_terminal) -> None:
    term = open_terminal(["collect", "--robot", str(TINY_ROBOT), "--robot-id", "tiny-int", "--ingest", ingest.endpoint,
                     "--plain", "--spool", str(tmp_path / "spool")])
    term.wait_for(lambda: "link up" in term.lines()[ROWS - 2], "the status line above the prompt")
    term.command("s wave", "started episode tiny-int-")
    episode = re.search(r"started episode (\S+)", term.text()).group(1)
    term.type("l half-typ")
    term.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert term.finish() == 0, term.transcript.decode(errors="replace")[-3000:]
    out = term.transcript.decode(errors="replace")
    (row,) = [line for line in out.splitlines() if line.startswith(episode)]
    assert "interrupted" in row and row.rstrip().endswith("sealed") and "not" not in row
    assert (ingest.data_dir / "raw" / "tiny-int" / f"{episode}.h5").exists()
    mode = termios.tcgetattr(term.slave_probe)
    assert mode[3] & termios.ICANON and mode[3] & termios.ECHO  # the terminal is given back as it was

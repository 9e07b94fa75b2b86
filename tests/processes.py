"""Real `refinery` processes for fault tests: started as a user would, killed with real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distinct_free_ports(count: int) -> list[int]:
    """``count`` free ports, all different. They are held bound together while they
    are picked: picked one at a time, the kernel may hand out a port it has just
    handed out and seen closed (two of a Ray cluster's components once got the same)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.socket())
            sockets[-1].bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


RUNNING: list[subprocess.Popen[bytes]] = []
"""Every process started here; the test session kills what a failed test left running."""


def kill_leftovers() -> None:
    while RUNNING:
        proc = RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


class RefineryProcess:
    """One `refinery ...` subprocess with its log in a file (no pipe to fill up)."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n--- start {self.starts}: {' '.join(self.args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        RUNNING.append(self.proc)
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before logging {text!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the log within {timeout} s:\n{self.log()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)


class IngestProcess(RefineryProcess):
    def __init__(self, data_dir: Path, port: int, *extra: str) -> None:
        self.data_dir = data_dir
        self.endpoint = f"tcp://127.0.0.1:{port}"
        super().__init__(
            ["ingest", "--plain", "--data-dir", str(data_dir), "--bind", self.endpoint, *extra],
            data_dir.parent / f"ingest-{port}.log",
        )

    def start(self) -> None:
        mark = len(self.log()) if self.log_path.exists() else 0
        super().start()
        self.wait_for_log("ingest listening", after=mark)

    def raw_files(self) -> list[Path]:
        return sorted((self.data_dir / "raw").rglob("*.h5"))

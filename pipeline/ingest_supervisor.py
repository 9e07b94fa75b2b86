"""``refinery ingest --processes N``: one ingest process per core, one command.

One Python process serves about one core, so a machine with many runs several
ingest processes side by side. Process ``i`` listens on the port of ``--bind``
plus ``i`` and writes to ``<data-dir>/ingest-<i>/`` (journals, quarantine and
sealed raw episodes): nothing is shared between writers, and one
``refinery process <data-dir>`` reads the sealed episodes of all of them.
Collectors list every endpoint (``--ingest tcp://h:5555,tcp://h:5556``) and
spread over them by a stable hash of their robot id.

The parent only supervises: it forwards SIGTERM/SIGINT to its children and
passes their output through, each line prefixed with ``[ingest-i]``. When one
child exits on its own the parent stops the others and exits non-zero with one
line naming it, so systemd (or any supervisor) restarts the whole set; the
collectors spool meanwhile. To let each process fail and restart on its own,
run them as separate services instead (``refinery ingest --bind tcp://*:5556
--data-dir /data/refinery/ingest-1``: the same layout).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

CHILD_DIR_PREFIX = "ingest-"
_TCP_PORT = re.compile(r"^(tcp://.+):(\d+)$")


@dataclass(frozen=True)
class IngestProcessSpec:
    index: int
    bind: str
    data_dir: Path

    @property
    def name(self) -> str:
        return f"{CHILD_DIR_PREFIX}{self.index}"


def plan_processes(bind: str, data_dir: Path, count: int) -> list[IngestProcessSpec]:
    """Where each of ``count`` ingest processes listens and writes.

    Raises:
        ConfigError: ``bind`` is not ``tcp://HOST:PORT`` with a fixed port, or the
            ports would run past 65535.
    """
    match = _TCP_PORT.match(bind)
    if match is None or match.group(2) == "0":
        raise ConfigError(
            "refinery ingest", "--bind",
            f"--processes needs a TCP endpoint with a fixed port (tcp://*:5555), got {bind!r}: "
            "process i listens on that port plus i",
        )
    host, port = match.group(1), int(match.group(2))
    if port + count - 1 > 65535:
        raise ConfigError("refinery ingest", "--bind", f"ports {port}..{port + count - 1} run past 65535")
    return [IngestProcessSpec(i, f"{host}:{port + i}", data_dir / f"{CHILD_DIR_PREFIX}{i}") for i in range(count)]


def collector_endpoints(specs: Sequence[IngestProcessSpec], host: str) -> str:
    """The ``--ingest`` value collectors need to reach all processes at ``host``."""
    return ",".join(f"tcp://{host}:{spec.bind.rsplit(':', 1)[1]}" for spec in specs)


def _death_signal() -> Callable[[], None] | None:
    """``prctl`` resolved in the parent: a child calls it between fork and exec
    (nothing there may load a library), so it gets SIGTERM if the supervisor dies
    without forwarding one (kill -9)."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the children then outlive a killed supervisor

    def set_death_signal() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_death_signal


class Supervisor:
    """Start, watch and stop the ingest processes of one ``refinery ingest --processes N``."""

    def __init__(self, specs: list[IngestProcessSpec], child_argv: Sequence[str]) -> None:
        self.specs = specs
        self.child_argv = list(child_argv)  # `refinery` arguments shared by every child
        self.procs: list[subprocess.Popen[str]] = []
        self.last_lines: dict[int, str] = {}
        self._stopping = threading.Event()
        self._out_lock = threading.Lock()

    def command(self, spec: IngestProcessSpec) -> list[str]:
        # argparse keeps the last value of an option: these override the shared ones.
        return [sys.executable, "-m", "pipeline.cli", *self.child_argv,
                "--processes", "1", "--bind", spec.bind, "--data-dir", str(spec.data_dir)]

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> tuple[int, str]:
        """Serve until stopped (0, "") or until a child exits on its own
        (its exit code or 1, and one line saying which and why)."""
        death_signal = _death_signal()
        for spec in self.specs:  # every fork before any thread starts (preexec_fn)
            spec.data_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                self.command(spec), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", bufsize=1, preexec_fn=death_signal,  # noqa: PLW1509
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            ))
        for spec, proc in zip(self.specs, self.procs):
            threading.Thread(target=self._relay, args=(spec, proc), daemon=True, name=f"relay-{spec.name}").start()
        failed: tuple[IngestProcessSpec, int] | None = None
        while failed is None and not self._stopping.is_set():
            for spec, proc in zip(self.specs, self.procs):
                code = proc.poll()
                if code is not None:
                    failed = (spec, code)
                    break
            self._stopping.wait(0.2)
        self._terminate()
        if failed is None:
            bad = [(s, p.returncode) for s, p in zip(self.specs, self.procs) if p.returncode not in (0, -signal.SIGTERM)]
            if not bad:
                return 0, ""
            failed = bad[0]
        spec, code = failed
        time.sleep(0.1)  # let the relay thread take the child's last line
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:  # its last line is its own one-line error
            how = f"exited with {code}: {self.last_lines.get(spec.index, '').strip() or 'no output'}"
        line = f"ingest process {spec.index} of {len(self.specs)} ({spec.bind}, {spec.data_dir}) {how}; stopped the others"
        return (code if code > 0 else 1), line

    def _terminate(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _relay(self, spec: IngestProcessSpec, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                self.last_lines[spec.index] = line
            with self._out_lock:
                sys.stderr.write(f"[{spec.name}] {line}")
                sys.stderr.flush()

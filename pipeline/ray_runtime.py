"""Ray for a job: a cluster by address, or an embedded one private to this machine and this process.

The embedded Ray (the local default of ``process`` and ``demo``) is made to
behave like a part of the ``refinery`` process that started it:

- **Loopback only.** Ray turns a loopback node address into the machine's
  external one (``services.resolve_ip_for_localhost``) and then listens on it
  or on every interface (GCS, raylets, workers, agents). A local job has no
  reason to be reachable from the network, so the node address stays
  127.0.0.1 and every server listens on loopback (tested by listing the
  sockets of Ray's processes).
- **Nothing outlives us.** A SIGKILLed driver leaves Ray's agents running
  (DESIGN, Ray pitfalls). A watchdog process, started before Ray, holds a pipe
  from the driver; when the pipe closes (exit, crash or SIGKILL alike) it
  kills every process of this Ray session.
- **Ctrl-C during start-up** crashed Ray's start-up code (a segfault seen
  here): SIGINT is held back while Ray starts and delivered right after, so
  the job stops cleanly at any moment. Ray's processes are started with SIGINT
  blocked, so a Ctrl-C in the terminal reaches only the driver, which shuts
  them down.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import ProcessingError

log = logging.getLogger("refinery.ray")
LOOPBACK = "127.0.0.1"


@contextmanager
def _sigint_held() -> Iterator[None]:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a Ctrl-C that came meanwhile is raised here


class RaySession:
    """Ray connected or started for one job; :meth:`close` leaves it as it was found."""

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 object_store_bytes: int = 256 * 1024 * 1024) -> None:
        import ray

        self.started = False
        self._watchdog: subprocess.Popen[bytes] | None = None
        if ray.is_initialized():
            return  # the caller's Ray (tests, notebooks): theirs to stop
        address = address or os.environ.get("RAY_ADDRESS")
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                self._start_embedded(num_cpus or os.cpu_count() or 1, object_store_bytes)
        except KeyboardInterrupt:
            self.close()
            raise
        except Exception as err:  # Ray raises bare ConnectionError, RuntimeError, TimeoutError...
            self.close()
            lines = str(err).strip().splitlines()
            where = f"the Ray cluster at {address}" if address else "the embedded Ray"
            raise ProcessingError(
                "ray", f"could not start {where}: {lines[-1] if lines else type(err).__name__} "
                       "(a busy machine can time out: try again; -v shows Ray's traceback)"
            ) from err
        self.started = True

    def _start_embedded(self, num_cpus: int, object_store_bytes: int) -> None:
        import ray
        from ray._private import services

        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ray_runtime"], stdin=subprocess.PIPE, start_new_session=True,
        )
        # Keep the node on loopback (see the module docstring).
        services.resolve_ip_for_localhost = lambda host: host
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with _sigint_held():
            # With RAY_AUTH_MODE unset, ray.init() turns token auth on and makes the
            # token itself; setting the variable here would not do (DESIGN, Ray pitfalls).
            ray.init(
                num_cpus=num_cpus,
                object_store_memory=object_store_bytes,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                _node_ip_address=LOOPBACK,
            )
            session = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.write(f"{session}\n".encode())
            self._watchdog.stdin.flush()

    def close(self) -> None:
        import ray

        if self.started or self._watchdog is not None:
            with _sigint_held():
                if ray.is_initialized() and self.started:
                    ray.shutdown()
                if self._watchdog is not None and self._watchdog.stdin is not None:
                    self._watchdog.stdin.close()  # the watchdog sweeps what shutdown left
                    self._watchdog.wait(30)
        self.started = False
        self._watchdog = None


def session_processes(session: str) -> list[int]:
    """PIDs of the processes of Ray session ``session`` (its name is on every command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if session.encode() in cmdline:
            pids.append(int(entry))
    return pids


def _watch() -> None:
    """The watchdog: read the session name, wait for the driver's pipe to close, kill what is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sessions = [line.decode().strip() for line in sys.stdin.buffer]  # ends when the driver is gone
    time.sleep(0.5)  # a clean shutdown is under way: let it finish first
    for session in filter(None, sessions):
        for _ in range(10):
            pids = session_processes(session)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


if __name__ == "__main__":
    _watch()

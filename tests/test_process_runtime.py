"""The embedded Ray of a job behaves like part of the `refinery` process: loopback only, gone with it, Ctrl-C safe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.ray_runtime import session_processes
from pipeline.raw_builder import simulate_episode

# A driver that starts the embedded Ray as `refinery process` does, runs a task, reports the
# addresses its process tree listens on (read from /proc), then closes it or waits to be killed.
DRIVER = """
import json, os, sys, time, ray
from pipeline.ray_runtime import RaySession
from tests.test_process_runtime import listening_addresses
session = RaySession(num_cpus=1, object_store_bytes=80 * 1024 * 1024)
ray.get(ray.remote(lambda: os.getpid()).remote())
name = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
print(json.dumps({"session": name, "listening": listening_addresses(os.getpid())}), flush=True)
if sys.argv[1] == "wait":
    time.sleep(600)
session.close()
"""


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier += children
    return found


def _decode(address: str) -> str:
    raw = bytes.fromhex(address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    plain = b"".join(words)
    if plain[:12] == bytes(10) + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in plain[12:])
    return ":".join(plain[i : i + 2].hex() for i in range(0, 16, 2))


def listening_addresses(root: int) -> list[str]:
    """The local addresses that ``root``'s process tree listens on (TCP, IPv4 and IPv6)."""
    inodes: set[str] = set()
    for pid in _descendants(root):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.add(_decode(fields[1].split(":")[0]))
    return sorted(found)


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    """A Ray temp dir of the test's own: short (socket paths must fit 107 bytes), and on every Ray command line."""
    path = tempfile.mkdtemp(prefix="rf-rt-")
    yield path
    for pid in session_processes(path):  # a failed test's leftovers
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def start_driver(mode: str, ray_tmp: str) -> tuple[subprocess.Popen[str], dict]:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    child = subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE, text=True, env=env,
                             cwd=Path(__file__).parent.parent)
    line = child.stdout.readline() if child.stdout else ""
    assert line, "the driver printed nothing"
    return child, json.loads(line)


def wait_until_gone(session: str, seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
def test_the_embedded_ray_listens_on_loopback_only(ray_tmp: str) -> None:
    child, report = start_driver("close", ray_tmp)
    assert child.wait(120) == 0
    assert report["listening"], "no listening socket found: the check would pass vacuously"
    loopback = ("127.0.0.1", "::ffff:127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001")
    beyond = [ip for ip in report["listening"] if ip not in loopback]
    assert not beyond, f"Ray listens beyond loopback: {beyond}"
    assert wait_until_gone(report["session"]) == []


@pytest.mark.slow
def test_no_ray_process_outlives_a_sigkilled_driver(ray_tmp: str) -> None:
    child, report = start_driver("wait", ray_tmp)
    assert session_processes(report["session"]), "Ray's processes not found by session name"
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert wait_until_gone(report["session"]) == []


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.5, 1.5, 6.0])  # while it imports; while Ray starts; while it works
def test_ctrl_c_at_any_moment_stops_cleanly_with_one_line(
    after_s: float, tmp_path: Path, ray_tmp: str, tiny_robot
) -> None:
    raw = tmp_path / "raw"
    for n in range(4):
        simulate_episode(raw, tiny_robot, robot_id=f"tiny-{n}", seconds=2.0, seed=n)
    env = {**{key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "process", str(raw), "--out", str(tmp_path / "ds.zarr"), "--num-cpus", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    time.sleep(after_s)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=180)
    assert "Traceback" not in out and "Segmentation" not in out, out
    if child.returncode == 0:
        pytest.skip("the job finished before Ctrl-C arrived (a fast machine)")
    assert child.returncode == 130, out
    assert "stopped" in out and ("run the same command again" in out or "nothing was done" in out), out
    assert wait_until_gone(ray_tmp) == []


# `refinery process` with a Ctrl-C that lands where Python cannot raise it: in a __del__, where
# Python prints "Exception ignored" and goes on. It lands there while the job waits for its
# first Ray task (ray.wait is wrapped to drop an object whose __del__ sends the SIGINT).
SWALLOWED_CTRL_C = """
import os, signal, sys
import ray
fired = []
class Swallows:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(200_000):
            pass  # the handler runs here, and what it raises is ignored
real_wait = ray.wait
def wait(*args, **kwargs):
    if not fired:
        fired.append(True)
        Swallows()
    return real_wait(*args, **kwargs)
ray.wait = wait
sys.unraisablehook = lambda unraisable: print("ignored:", unraisable.exc_type.__name__, file=sys.stderr)
from pipeline.cli import main
code = main(sys.argv[1:])
print("fired" if fired else "never fired")
sys.exit(code)
"""


@pytest.mark.slow
def test_a_ctrl_c_python_had_to_ignore_still_stops_the_job(tmp_path: Path, ray_tmp: str, tiny_robot) -> None:
    raw = tmp_path / "raw"
    for n in range(2):
        simulate_episode(raw, tiny_robot, robot_id=f"tiny-{n}", seconds=2.0, seed=n)
    env = {**{key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    child = subprocess.run(
        [sys.executable, "-c", SWALLOWED_CTRL_C, "process", str(raw), "--out", str(tmp_path / "ds.zarr"),
         "--num-cpus", "1"],
        capture_output=True, text=True, env=env, timeout=180, cwd=Path(__file__).parent.parent,
    )
    out = child.stdout + child.stderr
    assert "fired" in child.stdout and "ignored: KeyboardInterrupt" in child.stderr, out
    assert child.returncode == 130, out
    assert "stopped" in out and "run the same command again" in out
    assert wait_until_gone(ray_tmp) == []

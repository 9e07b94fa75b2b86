"""The same job against a separate Ray cluster (`ray start --head`), through the CLI a user runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dataset.store import load_index
from pipeline.raw_builder import simulate_episode
from tests.processes import distinct_free_ports

RAY = Path(sys.executable).with_name("ray")


def start_cluster(ray_tmp: Path, env: dict[str, str], dashboard: bool = False) -> tuple[int, int]:
    """A one-node Ray cluster in its own processes, as `ray start --head` on a head node;
    its GCS port and its dashboard's (the job server, with ``dashboard``)."""
    port, agent_port, dashboard_port = distinct_free_ports(3)
    # Ray's fixed default for the agent's HTTP port (52365) is already taken by the
    # test session's own Ray.
    shown = (["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
             if dashboard else ["--include-dashboard=false"])
    start = subprocess.run(
        [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={agent_port}", f"--temp-dir={ray_tmp}", *shown],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert start.returncode == 0, start.stderr
    return port, dashboard_port


@pytest.fixture
def cluster_env() -> Iterator[tuple[Path, dict[str, str]]]:
    ray_tmp = Path(tempfile.mkdtemp(prefix="rf-ray-"))  # short: Ray's socket paths must fit 107 bytes
    # The cluster uses token auth with the session's token (conftest sets both).
    # The head runs submitted entrypoints with its own environment: `refinery` must be on its PATH.
    env = {**os.environ, "PATH": f"{RAY.parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    try:
        yield ray_tmp, env
    finally:
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def two_raw_episodes(tmp_path: Path, tiny_robot) -> Path:
    raw = tmp_path / "raw"
    simulate_episode(raw, tiny_robot, robot_id="tiny-c1", seconds=2.0, seed=1)
    simulate_episode(raw, tiny_robot, robot_id="tiny-c2", seconds=2.0, seed=2)
    return raw


@pytest.mark.slow
def test_process_runs_on_a_cluster_by_address(tmp_path: Path, two_raw_episodes: Path, cluster_env) -> None:
    ray_tmp, env = cluster_env
    port, _ = start_cluster(ray_tmp, env)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "process", str(two_raw_episodes), "--out", str(tmp_path / "ds.zarr"),
         "--address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert_both_processed(result, tmp_path / "ds.zarr")


@pytest.mark.slow
def test_process_runs_as_a_submitted_ray_job(tmp_path: Path, two_raw_episodes: Path, cluster_env) -> None:
    ray_tmp, env = cluster_env
    _, dashboard_port = start_cluster(ray_tmp, env, dashboard=True)
    # The entrypoint runs on the head node, which finds the cluster through RAY_ADDRESS.
    submit = [str(RAY), "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--",
              "refinery", "process", str(two_raw_episodes), "--out", str(tmp_path / "ds.zarr")]
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(submit, capture_output=True, text=True, timeout=300, env=env)
        # A fresh head accepts jobs only once its dashboard agent is up, some seconds after `ray start`.
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert_both_processed(result, tmp_path / "ds.zarr")


def assert_both_processed(result: subprocess.CompletedProcess[str], dataset: Path) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processed 2" in result.stdout
    assert len(load_index(dataset)) == 2


def stop_cluster(temp_dir: Path) -> None:
    """Kill this cluster's processes and their children only (`ray stop` would also stop the
    test session's own Ray). Children are found before anyone is killed: the dashboard's
    forkserver and module processes do not name the temp dir, and would be orphaned."""
    parent_of: dict[int, int] = {}
    doomed: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        parent_of[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if str(temp_dir).encode() in cmdline:
            doomed.add(int(proc.name))
    while children := {pid for pid, parent in parent_of.items() if parent in doomed} - doomed:
        doomed |= children
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

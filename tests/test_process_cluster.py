"""The same job against a separate Ray cluster (`ray start --head`), through the CLI a user runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

from pipeline.dataset.index import load_index
from pipeline.raw_builder import simulate_episode
from tests.processes import free_port

RAY = Path(sys.executable).with_name("ray")


@pytest.mark.slow
def test_process_runs_on_a_cluster_by_address(tmp_path: Path, tiny_robot) -> None:
    raw = tmp_path / "raw"
    simulate_episode(raw, tiny_robot, robot_id="tiny-c1", seconds=2.0, seed=1)
    simulate_episode(raw, tiny_robot, robot_id="tiny-c2", seconds=2.0, seed=2)
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rf-ray-"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(
        [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert start.returncode == 0, start.stderr
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "process", str(raw), "--out", str(tmp_path / "ds.zarr"),
             "--address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "processed 2" in result.stdout
        assert len(load_index(tmp_path / "ds.zarr")) == 2
    finally:
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def stop_cluster(temp_dir: Path) -> None:
    """Kill this cluster's processes only (`ray stop` would also stop the test session's own Ray)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(temp_dir).encode() in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass

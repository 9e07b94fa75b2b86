"""The README's first command ends in `refinery demo`: it must work end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.dataset.store import load_index


@pytest.mark.slow
def test_demo_records_processes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # As on a fresh machine: no Ray settings, a home without ~/.ray.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--data-dir", str(out), "--robots", "unitree_g1,fourier_gr1",
         "--episodes", "1", "--duration", "1.5"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (home / ".ray" / "auth_token").is_file(), "the embedded Ray ran without token auth"
    assert "Recorded 2 raw episodes" in result.stdout
    assert "live fleet console: http://127.0.0.1:" in result.stderr
    entries = load_index(out / "dataset.zarr")
    assert {e.model for e in entries} == {"unitree_g1", "fourier_gr1"}
    assert all(e.accepted for e in entries)
    # Robots are stopped together: every episode lasts what was asked, not one stop after another.
    assert all(abs(e.raw_duration_s - 1.5) < 0.75 for e in entries), [e.raw_duration_s for e in entries]
    assert "remove it with: rm -r" in result.stdout
    report = (out / "quality-report.html").read_text()
    assert all(e.key in report for e in entries)

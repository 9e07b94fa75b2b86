"""Smoke test of tools/bench_seal_fleet.py: a short run of every variant on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import bench_seal_fleet


def test_bench_seal_fleet_measures_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--robots", "3", "--seconds", "0.4", "--rounds", "1", "--workers", "1", "--dir", str(tmp_path)]
    assert bench_seal_fleet.main(argv) == 0
    out = capsys.readouterr().out
    for variant in ("copy", "seal:1", "seal:thread"):
        assert f"| {variant} |" in out
    assert "robots kept up with" in out
    assert list(tmp_path.iterdir()) == []  # the work folder is removed

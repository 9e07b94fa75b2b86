"""Smoke test of tools/bench_write_behind.py: a short run of every variant on real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import bench_write_behind


def test_bench_write_behind_times_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_write_behind.main(["--seconds", "0.3", "--rounds", "1", "--mb-per-s", "40", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for variant in ("page-cache", "write-behind", "direct"):
        assert re.search(rf"^{variant} *: sync p50 +[\d.]+ ms", out, re.M), out
    assert re.search(r"^medians over the rounds, direct / write-behind:\n  sync p50: [\d.]+ / [\d.]+ = [\d.]+x$",
                     out, re.M), out
    assert list(tmp_path.iterdir()) == []  # the logs are deleted

"""Smoke test of tools/bench_segment_recycling.py: a short run of both variants on real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import bench_segment_recycling


def test_bench_segment_recycling_frees_segments_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--robots", "4", "--mb-per-s", "20", "--segment-mb", "1", "--episode-s", "0.4", "--warmup-s", "0.5",
            "--seconds", "1", "--rounds", "1", "--dir", str(tmp_path)]
    assert bench_segment_recycling.main(argv) == 0
    out = capsys.readouterr().out
    delete = re.search(r"^round 1 delete .* segments (\d+) \((\d+) written over a spare\)$", out, re.M)
    recycle = re.search(r"^round 1 recycle .* segments (\d+) \((\d+) written over a spare\)$", out, re.M)
    assert delete and recycle, out
    assert int(delete[2]) == 0 and int(recycle[2]) > 0, out  # the spares were written over, and only when kept
    assert re.search(r"^  recycle / delete: p50 [\d.]+x  p99 [\d.]+x  max [\d.]+x$", out, re.M), out
    assert list(tmp_path.iterdir()) == []  # everything is deleted

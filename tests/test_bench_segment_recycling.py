"""Smoke test of tools/bench_segment_recycling.py: a short run of every variant on real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import bench_segment_recycling


@pytest.mark.parametrize("burst", [[], ["--burst"]])
def test_bench_segment_recycling_frees_segments_every_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], burst: list[str]
) -> None:
    argv = ["--robots", "4", "--mb-per-s", "20", "--segment-mb", "1", "--episode-s", "0.4", "--warmup-s", "0.5",
            "--seconds", "1", "--rounds", "1", "--dir", str(tmp_path), *burst]
    assert bench_segment_recycling.main(argv) == 0
    out = capsys.readouterr().out
    written_over = {}
    for variant in ("unlink", "paced", "recycle"):
        found = re.search(rf"^round 1 {variant} .* segments (\d+) \((\d+) written over a spare\)$", out, re.M)
        assert found, out
        written_over[variant] = int(found[2])
    assert written_over == {"unlink": 0, "paced": 0, "recycle": written_over["recycle"]} and written_over["recycle"]
    for variant in ("paced", "recycle"):
        assert re.search(rf"^  {variant} / unlink: p50 [\d.]+x  p99 [\d.]+x  max [\d.]+x$", out, re.M), out
    assert list(tmp_path.iterdir()) == []  # everything is deleted

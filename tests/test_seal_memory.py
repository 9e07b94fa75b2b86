"""Sealing streams: its memory does not grow with the episode (issue 10: a 133 MB
journal peaked at 416 MB RSS, a 400 MB one at 1,093 MB)."""

from __future__ import annotations

from pathlib import Path

from tools.bench_seal import build_journal, check_sealed, seal_in_subprocess


def test_sealing_a_300_mb_journal_stays_near_the_baseline(tmp_path: Path) -> None:
    journal, rows = build_journal(tmp_path, 300_000_000)
    result = seal_in_subprocess(journal, tmp_path)
    grown = float(result["peak_mb"]) - float(result["before_mb"])
    print(f"sealing a {journal.stat().st_size / 1e6:.0f} MB journal: RSS {result['before_mb']:.0f} MB before, "
          f"peak {result['peak_mb']:.0f} MB")
    assert grown < 100, result  # the buffers, not the episode: the old code grew by about 2.5x the journal
    check_sealed(Path(str(result["out"])), rows)
    assert not journal.with_name(journal.name + ".partial").exists()

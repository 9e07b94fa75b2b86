"""Smoke test of tools/bench_scale.py: its pure parts, and a tiny run through the real job and index."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tools import bench_scale


def test_sizes_parse_as_sorted_counts_with_k_suffix() -> None:
    assert bench_scale.parse_sizes("10k,1000,100_000") == [1000, 10_000, 100_000]
    with pytest.raises(SystemExit, match="--sizes"):
        bench_scale.parse_sizes("many")


def test_commit_rows_are_fixed_or_drawn_from_the_range() -> None:
    rng = random.Random(0)
    assert {bench_scale.commit_sizes("32", rng)() for _ in range(20)} == {32}
    drawn = {bench_scale.commit_sizes("3-8", rng)() for _ in range(200)}
    assert drawn == set(range(3, 9))
    with pytest.raises(SystemExit, match="--commit-rows"):
        bench_scale.commit_sizes("8-3", rng)


def test_data_file_model_counts_fixed_files_and_one_per_camera_shard() -> None:
    files = bench_scale.DataFiles(
        segments=1, episodes=2, files=20, bytes=30 * 2**20, raw_bytes=30 * 2**20, fixed_files_per_segment=17,
        camera_bytes_share={"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, shard_mb=64, segment_mb=1024,
    )
    # 1 GB of frames over 3 cameras: ceil(341 MB / 64 MB) = 6 shards each, plus 17 fixed files.
    assert files.files_for_segment(1024) == 17 + 3 * 6
    assert files.mb_per_file_at(1024) == pytest.approx(1024 * 1.048576 / 35)
    need = files.segment_mb_for(32.0)
    assert need is not None and files.mb_per_file_at(need) >= 32.0 > files.mb_per_file_at(need - 64)


@pytest.mark.slow
def test_bench_smoke_grows_a_real_sample_and_prints_every_measure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench_scale.main(
        ["--sizes", "40,120", "--sample-episodes", "1", "--sample-seconds", "3", "--workers", "1", "--repeats", "2",
         "--select", "10", "--robots", "4", "--commit-rows", "3-9", "--work-dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("$ python -m tools.bench_scale --sizes 40,120"), out[:200]
    assert re.search(r"^real sample data: 1 episodes in 1 segments, \d+ files", out, re.MULTILINE), out
    table = [line for line in out.splitlines() if re.match(r"\| \d[\d,]* \| ", line) and line.count("|") == 18]
    assert len(table) == 2, out
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[0].replace(",", "")) >= 40 + 2 + 200  # the size, plus the timed 1- and 100-row commits
        assert re.fullmatch(r"\d+\.\d / \d+\.\d", cells[2]) and re.fullmatch(r"\d/2", cells[3]), line
        assert int(cells[9].split()[0].replace(",", "")) > 0, line  # episodes selected
    assert re.search(r"^  one-episode commit at [\d,]+: [\d.]+ ms = [\d.]+x", out, re.MULTILINE), out
    assert re.search(r"^  open \+ select [\d,]+ episodes at", out, re.MULTILINE), out
    assert re.search(r"^  data files: [\d.]+ MB per file at segment_mb=2048", out, re.MULTILINE), out
    # The synthetic rows are readable index rows with the real rows' schema and statistics.
    from pipeline.dataset.index import select_episodes

    chosen = select_episodes(tmp_path / "scale.zarr", robots="g1-000")
    assert chosen and all(e.stats and e.data_segment and e.key.startswith("g1-000-") for e in chosen)

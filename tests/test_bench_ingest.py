"""Smoke test of tools/bench_ingest.py: a tiny run of both modes against a real ingest and the baseline."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from tools import bench_ingest


def test_bench_model_is_a_valid_30_dof_g1_class_config() -> None:
    config = bench_ingest.bench_robot_config()
    assert config.dof == 30
    assert config.joint_state_hz == 500
    assert [c.width for c in config.cameras] == [640, 640, 640]
    assert "head_yaw" in config.standard_names


def test_interleave_keeps_the_real_time_mix() -> None:
    pattern = bench_ingest._interleave([(50.0, 0), (50.0, 1), (30.0, 2), (30.0, 3), (30.0, 4)])
    assert len(pattern) == 19
    assert [pattern.count(i) for i in range(5)] == [5, 5, 3, 3, 3]


def _run_result(p99_ms: float | None, lost: int = 0) -> bench_ingest.RunResult:
    return bench_ingest.RunResult(target="ingest", pace="realtime", robots=40, seconds=10.0, p99_ms=p99_ms,
                                  lost=lost, drain_s=0.1)


def test_a_step_run_several_times_is_judged_on_its_median_p99() -> None:
    opts = bench_ingest.build_parser().parse_args(["--max-p99-ms", "100"])
    assert bench_ingest._step_verdict([_run_result(60.0), _run_result(400.0), _run_result(90.0)], opts) == (True, 90.0)
    assert bench_ingest._step_verdict([_run_result(60.0), _run_result(400.0), _run_result(120.0)], opts) == (False, 120.0)


def test_a_step_with_one_run_that_lost_data_is_not_sustained() -> None:
    opts = bench_ingest.build_parser().parse_args([])
    assert bench_ingest._step_verdict([_run_result(60.0), _run_result(60.0, lost=3), _run_result(60.0)], opts) == (False, 60.0)


@pytest.mark.slow
def test_bench_smoke_two_robots_both_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    rc = bench_ingest.main(
        ["--robots", "2", "--seconds", "2", "--sat-seconds", "1.5", "--workers", "1", "--work-dir", str(tmp_path),
         "--seal-timeout", "30", "--drain-timeout", "10"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert time.monotonic() - started < 60
    assert out.startswith("\ncommand: python tools/bench_ingest.py --robots 2"), out[:200]
    summary = dict(kv.split("=", 1) for kv in re.search(r"^summary: (.*)$", out, re.M).group(1).split())
    for key in ("realtime_ingest_lost", "realtime_baseline_lost", "saturation_ingest_lost", "saturation_baseline_lost"):
        assert summary[key] == "0", out
    assert re.search(r"^ratio ingest/baseline: \d+\.\d\d \(", out, re.M), out
    assert float(summary["ratio"]) > 0
    # Both real-time rows are in the table, with lost == 0 in the lost column.
    header = next(line for line in out.splitlines() if line.startswith("| target | robots | offered MB/s"))
    lost_col = [c.strip() for c in header.split("|")].index("lost")
    rows = [line for line in out.splitlines() if re.match(r"\| (ingest|baseline) \| 2 \| \d", line)]
    assert len(rows) == 4, out  # real time and saturation, ingest and baseline
    for row in rows[:2]:
        assert [c.strip() for c in row.split("|")][lost_col] == "0", row
    assert not list(tmp_path.iterdir()), "the bench must remove its work folder"


def test_verify_episodes_counts_missing_and_duplicate_seqs(tmp_path: Path) -> None:
    """The loss check itself: a sealed file with a hole and a repeat is reported, not passed."""
    import h5py
    import numpy as np

    from pipeline.raw_store import raw_path

    path = raw_path(tmp_path, "r1", "ep1")
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as h5:
        h5.attrs["status"] = "complete"
        h5["streams/joint_state/seq"] = np.repeat([0, 1, 3], 10)  # seq 2 missing
        h5["cameras/head_left/seq"] = np.array([0, 1, 1, 2])  # seq 1 twice
        h5["events/seq"] = np.array([0, 1])
    robots = [{"robot_id": "r1", "episode": "ep1", "rows": {"joint_state": 10},
               "expected": {"joint_state": 3, "head_left": 2, "events": 1}}]
    check = bench_ingest.verify_episodes(tmp_path, robots)
    assert check["lost"] == 1
    assert check["duplicates"] == 1
    assert check["unsealed"] == 0
    robots[0]["episode"] = "ep2"  # never sealed, no journal: everything lost
    assert bench_ingest.verify_episodes(tmp_path, robots)["lost"] == 4 + 3 + 2


def test_verify_episodes_looks_in_every_ingest_process_folder(tmp_path: Path) -> None:
    """With --processes an episode is in one of DATA/ingest-<i>; in two of them it counts twice."""
    import h5py
    import numpy as np

    from pipeline.raw_store import raw_path

    def seal(folder: Path) -> None:
        path = raw_path(folder, "r1", "ep1")
        path.parent.mkdir(parents=True)
        with h5py.File(path, "w") as h5:
            h5.attrs["status"] = "complete"
            h5["events/seq"] = np.array([0, 1])

    robots = [{"robot_id": "r1", "episode": "ep1", "rows": {}, "expected": {"events": 1}}]
    seal(tmp_path / "ingest-1")
    assert bench_ingest.verify_episodes(tmp_path, robots) == {
        "lost": 0, "duplicates": 0, "unsealed": 0, "incomplete": 0, "expected": 2}
    seal(tmp_path / "ingest-0")
    assert bench_ingest.verify_episodes(tmp_path, robots)["duplicates"] == 2


@pytest.mark.slow
def test_bench_find_max_reports_one_and_several_ingest_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench_ingest.main(
        ["--find-max", "--steps", "2", "--seconds", "2", "--processes", "2", "--workers", "1",
         "--work-dir", str(tmp_path), "--seal-timeout", "30", "--drain-timeout", "10", "--sealing-backlog", "1",
         "--keep"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = dict(kv.split("=", 1) for kv in re.search(r"^summary: (.*)$", out, re.M).group(1).split())
    assert summary == {"max_baseline": "2", "max_ingest": "2", "max_ingest-x2": "2"}, out
    # The backlog episode left in each ingest run's journal was sealed while the robots streamed.
    assert len(list(tmp_path.rglob("raw/g1-000/g1-000-ep.h5"))) == 2, out  # one ingest process, then two
    assert re.search(r"^one ingest process vs the baseline: 2 vs 2 robots, p99 [\d.]+ ms at the baseline's 2", out, re.M), out
    assert re.search(r"^ingest-x2 vs one process: 2 vs 2 robots = 1\.00x", out, re.M), out


def test_goals_are_not_judged_against_a_baseline_that_failed_the_first_step() -> None:
    lines = bench_ingest._goals({("ingest", 60): 96.0, ("baseline", 60): 380.0},
                                {"baseline": 0, "ingest": 60, "ingest-x2": 0}, "ingest-x2", 100.0, 60)
    text = "\n".join(lines)
    assert "the baseline sustained none of the steps (its ceiling is below 60 robots)" in text
    assert "reached the baseline's ceiling" not in text
    assert re.search(r"^ingest-x2 vs one process: 0 vs 60 robots = 0\.00x .*reached neither$", text, re.M), text


def test_goal_one_is_judged_at_the_baseline_ceiling() -> None:
    lines = bench_ingest._goals({("ingest", 80): 76.0, ("baseline", 80): 90.0},
                                {"baseline": 80, "ingest": 80, "ingest-x2": 90}, "ingest-x2", 100.0, 60)
    assert "one ingest process vs the baseline: 80 vs 80 robots, p99 76.0 ms at the baseline's 80" in "\n".join(lines)
    assert any(line.endswith(": met") for line in lines), lines


def test_worst_slice_finds_the_half_second_whose_p99_is_worst() -> None:
    ns = 1_000_000_000
    captured = np.arange(0, 5 * ns, ns // 200, dtype=np.int64)  # 200 messages a second for 5 s
    latency = np.full(len(captured), 30_000_000, dtype=np.int64)  # 30 ms
    latency[(captured >= 3 * ns) & (captured < int(3.5 * ns))] = 250_000_000  # 250 ms from 3.0 to 3.5 s
    slices = bench_ingest.slice_p99s(latency, captured + 7, 7)
    assert [at for at, _ in slices] == [0.5 * i for i in range(10)]
    assert slices[6][1] == pytest.approx(250.0) and slices[5][1] == pytest.approx(30.0)
    p99_ms, at_s = bench_ingest.worst_slice(slices)
    assert p99_ms == pytest.approx(250.0) and at_s == 3.0
    assert bench_ingest.slice_p99s(latency[:10], captured[:10], 0) == []  # too few messages in any slice
    assert bench_ingest.worst_slice([]) is None

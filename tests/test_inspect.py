"""`refinery inspect`: card, segments, index files, keys, episodes, grades and sizes; also of a DP export."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from pipeline.dataset.index import DatasetIndex
from pipeline.dataset.store import DatasetLock, load_index
from pipeline.errors import StoreError
from pipeline.inspect_dataset import inspect_dataset
from pipeline.interop.dp_export import export_diffusion_policy
from pipeline.process_job import JobOptions, run_process_job
from pipeline.processing.config import ProcessConfig
from pipeline.processing.grade_rules import costs_text
from pipeline.raw_builder import simulate_episode
from pipeline.report import kept_text
from pipeline.robot_config import load_robot_config

from .conftest import TINY_ROBOT

pytestmark = pytest.mark.usefixtures("ray_session")

KEYS = ["timestamps_ns", "state/position", "state/velocity", "state/effort", "action/position",
        "cameras/head_left", "cameras/head_right"]
FRAMES_PER_SHARD = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    work = tmp_path_factory.mktemp("inspect")
    tiny = load_robot_config(TINY_ROBOT)
    simulate_episode(work / "raw", tiny, robot_id="tiny-a", seconds=2.0, seed=1, task="wave")
    simulate_episode(work / "raw", tiny, robot_id="tiny-b", seconds=2.5, seed=2, task="point")
    simulate_episode(work / "raw", tiny, robot_id="tiny-x", seconds=2.0, seed=3, outcome="discarded")
    ds = work / "ds.zarr"
    config = ProcessConfig()
    config = config.replace(output=dataclasses.replace(config.output, frames_per_shard=FRAMES_PER_SHARD))
    run_process_job(JobOptions(raw_dir=work / "raw", dataset=ds, config=config))
    return ds


@pytest.fixture(scope="module")
def text(dataset: Path) -> str:
    return inspect_dataset(dataset)


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    """A copy of the dataset to change."""
    out = tmp_path / "ds.zarr"
    shutil.copytree(dataset, out)
    return out


def section(text: str, title: str) -> list[str]:
    """The lines of the section whose heading starts with ``title`` (up to the next blank line)."""
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(title))
    end = next((n for n in range(start, len(lines)) if not lines[n].strip()), len(lines))
    return lines[start:end]


def test_every_episode_is_listed_with_robot_task_grade_and_status(dataset: Path, text: str) -> None:
    entries = load_index(dataset)
    assert len(entries) == 3

    for entry in entries:
        line = next(line for line in text.splitlines() if (entry.key or entry.raw_episode_id) in line)
        assert entry.robot_id in line and entry.model in line
        assert ("yes" in line) == entry.accepted
        if entry.accepted:
            assert entry.task in line and f"{entry.length / entry.rate_hz:.2f}" in line and entry.split in line
            assert f"  {entry.grade}  " in line
        else:  # its rejection, not the grade the score stage gave before it
            assert "no: the operator marked the episode 'discarded'" in line
            assert line.split()[6] == "-" and f"0.0 of {entry.raw_duration_s:.1f} s (0%)" in line


def test_every_key_is_listed_with_dtype_shape_and_chunking(text: str) -> None:
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip() and line.split()[0] in KEYS}

    assert sorted(rows) == sorted(KEYS)
    assert "float32" in rows["state/position"] and "(6,)" in rows["state/position"]
    assert "int64" in rows["timestamps_ns"] and "whole segment" in rows["timestamps_ns"]
    camera = rows["cameras/head_left"]
    assert "uint8" in camera and "(48, 64, 3)" in camera and "1 step, " in camera
    assert "shards of" in camera or "one shard" in camera
    assert "imagecodecs_jpeg" in camera


def test_card_grades_and_sizes_are_shown(dataset: Path, text: str) -> None:
    accepted = [e for e in load_index(dataset) if e.accepted]

    assert "Keys of model tiny_humanoid (2 episodes" in text
    assert "raw episodes 3: accepted 2" in text and "rejected 1" in text
    lines = text.splitlines()
    start = lines.index("Grades of accepted episodes") + 1
    histogram = [line.split() for line in lines[start : start + 5]]
    assert [row[0] for row in histogram] == list("ABCDF")
    counts = {row[0]: int(row[1]) for row in histogram}
    assert counts == {g: sum(e.grade == g for e in accepted) for g in "ABCDF"}
    assert all(len(row) == 3 and set(row[2]) == {"#"} for row in histogram if counts[row[0]])
    assert "on disk" in text and ("MB" in text or "kB" in text)


def test_data_segments_are_listed_with_episodes_files_and_bytes(dataset: Path, text: str) -> None:
    entries = [e for e in load_index(dataset) if e.key]
    segments = sorted({e.data_segment for e in entries})

    lines = section(text, "Data segments")
    assert lines[0].startswith(f"Data segments ({len(segments)};")
    for name in segments:
        row = next(line for line in lines if line.split()[0] == name).split()
        files = [p for p in (dataset / "data" / name).rglob("*") if p.is_file()]
        episodes = [e for e in entries if e.data_segment == name]
        assert row[1] == "tiny_humanoid"
        assert int(row[2]) == len(episodes) and int(row[3]) == sum(e.length for e in episodes)
        assert int(row[4]) == len(files)
        size = sum(p.stat().st_size for p in files)
        assert " ".join(row[5:]) == (f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB")


def test_index_files_are_listed_with_their_rows(dataset: Path, text: str) -> None:
    files = sorted((dataset / "index").glob("*.parquet"))

    lines = section(text, "Index (")
    assert lines[0].startswith(f"Index ({len(files)} file")
    listed = {line.split()[0]: int(line.split()[1]) for line in lines if line.split()[0].endswith(".parquet")}
    assert sorted(listed) == [f.name for f in files]
    assert sum(listed.values()) == len(load_index(dataset))


def test_excluded_episodes_are_shown_as_excluded_with_the_reason(copy: Path) -> None:
    gone = next(e for e in load_index(copy) if e.robot_id == "tiny-b")
    with DatasetLock(copy):
        DatasetIndex(copy).curate([gone.entry_id], excluded=True, reason="wrong task")

    text = inspect_dataset(copy)

    line = next(line for line in text.splitlines() if gone.key in line)
    assert "excluded: wrong task" in line and "yes" not in line
    assert "Episodes (1 accepted, 1 rejected, 1 excluded)" in text
    assert "excluded 1" in text and "Keys of model tiny_humanoid (1 episode," in text


def test_leftovers_of_killed_jobs_are_pointed_out(copy: Path) -> None:
    segment = next(p for p in (copy / "data").iterdir() if p.is_dir())
    shutil.copytree(segment, copy / "data" / "seg-orphan")
    (copy / "_staging" / "seg-half-1234").mkdir(parents=True)
    (copy / "_staging" / "seg-half-1234" / "part").write_bytes(b"x" * 10)

    text = inspect_dataset(copy)

    committed = {e.data_segment for e in load_index(copy) if e.data_segment}
    assert "1 data segment in no commit" in text and "1 staging folder" in text
    assert f"Data segments ({len(committed)};" in text  # what no commit points at is not data


def test_a_large_index_is_summed_up_and_only_its_first_episodes_listed(copy: Path) -> None:
    model = next(e for e in load_index(copy) if e.accepted)
    # Index rows as a fleet makes them, pointing at the real episode's rows.
    rows = [dataclasses.replace(model, key=f"bulk-{n:05d}", raw_episode_id=f"bulk-{n:05d}", raw_checksum=str(n),
                                entry_id=-1, commit=-1, split="")
            for n in range(5000)]
    with DatasetLock(copy):
        DatasetIndex(copy).commit(rows)

    started = time.monotonic()
    text = inspect_dataset(copy, max_episodes=10)
    seconds = time.monotonic() - started

    listed = section(text, "Episodes (")
    assert listed[0] == "Episodes (5002 accepted, 1 rejected, 0 excluded)"
    assert len([line for line in listed if "tiny" in line or "bulk-" in line]) == 10
    assert listed[-1].startswith("  (the first 10 of 5003 index rows")
    assert "bulk-00009" not in text and "Keys of model tiny_humanoid (5002 episodes" in text
    assert seconds < 10, f"inspect took {seconds:.1f} s on 5,003 index rows"


CUT_DECISIONS = [
    {"kind": "nonfinite", "stream": "joint_state", "start": 5, "end": 8, "action": "drop", "reason": "NaN"},
    {"kind": "gap", "stream": "joint_state", "start": 30, "end": 60, "action": "split", "reason": "1 s gap"},
    {"kind": "gap", "stream": "action", "start": 30, "end": 60, "action": "split", "reason": "1 s gap"},
    {"kind": "idle_tail", "stream": "joint_state", "start": 90, "end": 150, "action": "trim", "reason": "still"},
]


def test_what_cleaning_kept_and_did_is_summed_up_per_raw_episode_and_in_total(copy: Path) -> None:
    model = next(e for e in load_index(copy) if e.accepted)
    # A 5 s recording of which cleaning kept 1.0 s.
    cut = dataclasses.replace(model, key="cut-1", raw_episode_id="cut-1", raw_checksum="cut", length=30, rate_hz=30.0,
                              raw_duration_s=5.0, decisions_json=json.dumps(CUT_DECISIONS), entry_id=-1, commit=-1,
                              split="")
    with DatasetLock(copy):
        DatasetIndex(copy).commit([cut])
    entries = load_index(copy)
    before = [e for e in entries if e.raw_episode_id != "cut-1"]

    text = inspect_dataset(copy)

    line = next(line for line in text.splitlines() if line.startswith("  cut-1 "))
    assert "1.0 of 5.0 s (20%)" in line
    lines = section(text, "What cleaning kept")
    raw = sum(e.raw_duration_s for e in entries)
    kept = sum(e.length / e.rate_hz for e in entries if e.accepted and e.key)
    assert lines[1] == (f"  recorded {raw:.1f} s in 4 raw episodes: {kept_text(kept, raw)} as 3 dataset episodes")
    kinds = {row.split()[0]: row.split()[1:4] for row in lines if row.split()[0] in ("gap", "idle_tail", "nonfinite")}
    gaps = sum(d["kind"] == "gap" for e in before for d in e.decision_list)
    assert kinds["idle_tail"][:3] == ["1", "1", "2.0"] and kinds["nonfinite"][:3] == ["1", "1", "3"]
    assert kinds["gap"][0] == str(gaps + 2)
    assert "    cut-1: kept 1.0 of 5.0 s (20%)" in lines  # the most cut


def test_a_diffusion_policy_export_is_described_folder_or_zip(dataset: Path, tmp_path: Path) -> None:
    for out in (tmp_path / "dp.zarr", tmp_path / "dp.zarr.zip"):
        summary = export_diffusion_policy(dataset, out)

        text = inspect_dataset(out)

        assert text.startswith("Diffusion Policy replay buffer") and "2 episodes" in text
        for key, name in summary.keys.items():
            line = next(line for line in text.splitlines() if f"data/{name} " in line)
            assert key in line
        assert "imagecodecs_jpeg level=90" in text
        for episode in summary.episode_keys:
            assert episode in text


def test_a_raw_folder_or_anything_else_is_refused_with_what_to_use(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="refinery verify"):
        inspect_dataset(dataset.parent / "raw")
    with pytest.raises(StoreError, match="refinery process"):
        inspect_dataset(tmp_path)


def test_each_graded_episode_shows_what_cost_it_its_grade(dataset: Path, text: str) -> None:
    assert "grade cost" in text
    for entry in (e for e in load_index(dataset) if e.accepted and e.key):
        line = next(line for line in text.splitlines() if line.startswith(f"  {entry.key} "))
        assert costs_text(entry.quality, 2) in line


def test_the_appraisal_is_shown_with_its_parts(dataset: Path, text: str) -> None:
    lines = section(text, "Appraisal")
    assert lines[1].startswith("value ") and "/ 100" in lines[1]
    names = [line.split()[0] for line in lines[2:] if line.startswith("  ") and not line.startswith("    ")]
    assert names[:3] == ["quality", "coverage", "freshness"]
    assert any("operators" in line and "effective" in line for line in lines)

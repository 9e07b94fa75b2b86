"""The episode index: append-only Parquet commits, incremental state, compaction, selection."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.dataset.index import FAN_IN, DatasetIndex, EpisodeEntry, select_episodes, split_of
from pipeline.dataset.stats import KeyStats
from pipeline.dataset.store import Dataset, create_dataset
from pipeline.errors import DatasetError, StoreError


def entry(n: int, *, model: str = "g1", grade: str = "A", accepted: bool = True, robot: str | None = None) -> EpisodeEntry:
    rng = np.random.default_rng(n)
    position = rng.normal(size=(20 + n % 7, 3))
    return EpisodeEntry(
        key=f"ep-{n}" if accepted else "", raw_episode_id=f"ep-{n}", raw_checksum=f"sum-{n}",
        robot_id=robot or f"robot-{n % 4}", model=model, task=f"task-{n % 3}", operator="op", outcome="success",
        length=position.shape[0] if accepted else 0, rate_hz=30.0, start_ns=1_000_000 * n, grade=grade,
        overall=0.9, accepted=accepted, reasons=[] if accepted else ["too short: 0.5 s"],
        cameras=["head"] if accepted else [],
        stats={"state/position": KeyStats.of(position).to_dict()} if accepted else {},
        data_segment="seg-x" if accepted else "",
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "ds.zarr"
    create_dataset(path, val_fraction=0.25)
    return path


def test_a_commit_is_one_new_file_and_rows_come_back_whole(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    index.commit([entry(0), entry(1)], {"job": 1})
    index.commit([entry(2)], {"job": 2})
    assert sorted(p.name for p in (dataset / "index").iterdir()) == [
        "e-000000000001-000000000001-2.parquet", "e-000000000002-000000000002-1.parquet"]
    rows = index.entries()
    assert [e.key for e in rows] == ["ep-0", "ep-1", "ep-2"]
    assert [e.entry_id for e in rows] == [0, 1, 2] and [e.commit for e in rows] == [1, 1, 2]
    assert rows[1].stats["state/position"] == entry(1).stats["state/position"]


def test_state_is_kept_incrementally_and_matches_the_rows(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    entries = [entry(n, grade="AB"[n % 2]) for n in range(10)] + [entry(99, accepted=False)]
    for n in range(0, len(entries), 3):
        index.commit(entries[n : n + 3], {"job": n})
    ds = Dataset(dataset)
    card = ds.card()
    assert card["episodes_accepted"] == 10 and card["episodes_rejected"] == 1 and card["raw_episodes"] == 11
    assert card["grades"] == {"A": 5, "B": 5} and card["rejection_reasons"] == {"too short": 1}
    expected = KeyStats.of(np.concatenate([np.random.default_rng(n).normal(size=(20 + n % 7, 3)) for n in range(10)]))
    stats = ds.stats()["g1"]["state/position"]
    assert stats["count"] == expected.count
    assert np.allclose(stats["mean"], expected.summary()["mean"]) and np.allclose(stats["max"], expected.maximum)


def test_compaction_merges_files_and_keeps_rows_and_state(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    for n in range(FAN_IN * FAN_IN + 3):
        index.commit([entry(n)])
    files = sorted(p.name for p in (dataset / "index").glob("*.parquet"))
    assert len(files) < 2 * FAN_IN  # 67 single-row commits, a handful of files
    assert files[0] == f"e-000000000001-{FAN_IN * FAN_IN:012d}-{FAN_IN * FAN_IN}.parquet"
    rows = index.entries()
    assert [e.entry_id for e in rows] == list(range(FAN_IN * FAN_IN + 3))
    assert Dataset(dataset).card()["episodes_accepted"] == FAN_IN * FAN_IN + 3


def test_a_merged_file_hides_the_files_it_replaced(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    for n in range(FAN_IN):
        index.commit([entry(n)])
    merged = next((dataset / "index").glob("*.parquet"))
    # A compaction killed before it deleted the old files: they reappear beside the merged one.
    table = pq.read_table(merged)
    for n in range(FAN_IN):
        pq.write_table(table.slice(n, 1), dataset / "index" / f"e-{n + 1:012d}-{n + 1:012d}-1.parquet")
    assert [e.entry_id for e in index.entries()] == list(range(FAN_IN))


def test_a_killed_commit_leaves_the_index_as_it_was(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    index.commit([entry(0)])
    (dataset / "index" / ".tmp-deadbeef.parquet").write_bytes(b"half a parquet file")
    assert [e.key for e in index.entries()] == ["ep-0"]
    index.commit([entry(1)])
    assert not list((dataset / "index").glob(".tmp-*"))


def test_a_driver_killed_mid_commit_loses_only_that_commit(dataset: Path) -> None:
    DatasetIndex(dataset).commit([entry(0)])
    # The child dies by SIGKILL half-way through writing its commit's file.
    script = (
        "import os, signal\n"
        "from pipeline.dataset import index\n"
        "from tests.test_dataset_index import entry\n"
        "real = index.pq.write_table\n"
        "def dying(table, where, **kw):\n"
        "    real(table.slice(0, 1), where, **kw)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "index.pq.write_table = dying\n"
        f"index.DatasetIndex({str(dataset)!r}).commit([entry(5), entry(6)])\n"
    )
    child = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    assert child.returncode == -signal.SIGKILL
    assert [e.key for e in DatasetIndex(dataset).entries()] == ["ep-0"]
    assert Dataset(dataset).card()["episodes_accepted"] == 1


def test_select_filters_in_the_index_and_leaves_the_rest_unread(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    index.commit([entry(n, grade="ABCDF"[n % 5], model="g1" if n % 2 else "h1") for n in range(40)])
    chosen = select_episodes(dataset, columns=["key", "grade", "model"], min_grade="B", models="g1")
    assert chosen and all(e.grade in "AB" and e.model == "g1" for e in chosen)
    assert all(e.quality_json == "{}" and not e.stats for e in chosen)  # heavy columns not read
    with pytest.raises(DatasetError, match="no episodes match"):
        select_episodes(dataset, robots="nobody")
    with pytest.raises(DatasetError, match="not a grade"):
        select_episodes(dataset, min_grade="Z")


def test_splits_are_stable_by_raw_episode(dataset: Path) -> None:
    DatasetIndex(dataset).commit([entry(n) for n in range(200)])
    rows = DatasetIndex(dataset).entries()
    assert {e.split for e in rows} == {"train", "val"}
    assert all(e.split == split_of(e.raw_episode_id, 0.25) for e in rows)
    val = sum(e.split == "val" for e in rows)
    assert 25 <= val <= 75
    assert {e.key for e in select_episodes(dataset, split="val")} == {e.key for e in rows if e.split == "val"}


def test_opening_something_else_says_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Dataset(tmp_path / "nothing.zarr")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not a Refinery dataset"):
        create_dataset(tmp_path / "folder")
    with pytest.raises(StoreError, match="refinery upgrade"):
        Dataset(Path(__file__).parent / "data" / "dataset-v1")

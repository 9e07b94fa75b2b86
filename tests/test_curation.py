"""Curation without rewrites: exclusions, merges of merges, upgrades from format 1."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset.curation import exclude, include, parse_where
from pipeline.dataset.index import select_episodes
from pipeline.dataset.merge import merge_datasets
from pipeline.dataset.store import Dataset, load_index
from pipeline.dataset.upgrade import upgrade_dataset
from pipeline.errors import DatasetError, StoreError
from pipeline.process_job import JobOptions, run_process_job
from pipeline.raw_builder import simulate_episode

V1_DATASET = Path(__file__).parent / "data" / "dataset-v1"

ROBOTS = [("tiny-a", 1, "wave"), ("tiny-b", 2, "point"), ("tiny-c", 3, "wave"), ("tiny-d", 4, "grasp")]


@pytest.fixture(scope="module")
def raw_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_robot) -> list[Path]:
    """One raw folder per robot (as if each came from its own ingest)."""
    root = tmp_path_factory.mktemp("raw")
    dirs = []
    for robot, seed, task in ROBOTS:
        simulate_episode(root / robot, tiny_robot, robot_id=robot, seconds=2.0, seed=seed, task=task)
        dirs.append(root / robot)
    return dirs


@pytest.fixture(scope="module")
def whole(raw_dirs: list[Path], tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """All raw episodes processed in one job."""
    path = tmp_path_factory.mktemp("whole") / "all.zarr"
    run_process_job(JobOptions(raw_dir=raw_dirs, dataset=path))
    return path


def fingerprint(path: Path) -> dict[str, tuple]:
    """What a trainer sees of each episode: index fields, arrays and frame bytes, by raw episode."""
    ds = Dataset(path)
    out = {}
    for e in ds.index.entries():
        arrays = tuple(ds.numeric(e, k).tobytes() for k in ("timestamps_ns", "state/position", "action/position"))
        frames = tuple(b"".join(ds.jpeg_bytes(e, c, range(e.length))) for c in e.cameras)
        out[e.raw_episode_id] = (e.key, e.length, e.grade, e.split, e.excluded, repr(e.stats), e.quality_json,
                                 arrays, frames)
    return out


def same_stats(a: Path, b: Path) -> None:
    left, right = Dataset(a).stats(), Dataset(b).stats()
    assert left.keys() == right.keys()
    for model in left:
        for key in left[model]:
            for name in ("mean", "std", "min", "max"):
                assert np.allclose(left[model][key][name], right[model][key][name]), (model, key, name)
            assert left[model][key]["count"] == right[model][key]["count"]


# --- the --where language -------------------------------------------------------


def test_where_conditions_parse_into_index_predicates() -> None:
    assert str(parse_where('grade < "C"')) == str(parse_where("grade in ('D', 'F')"))
    parse_where('robot_id == "g1-07" and length < 300 and task in ("fold towel", "wipe")')
    parse_where("start_ns >= 1764460800000000000 and overall > 0.5")


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ("grade < C", "quote the value"),
        ('nosuch == "x"', "unknown field"),
        ("length < 3.5", "whole number"),
        ('length < "3"', "is a number"),
        ("__import__('os').system('true')", "cannot read"),
        ('grade < "Z"', "not a grade"),
        ("", "empty"),
    ],
)
def test_bad_where_conditions_are_refused_with_the_reason(condition: str, problem: str) -> None:
    with pytest.raises(DatasetError, match=problem):
        parse_where(condition)


# --- exclusions ------------------------------------------------------------------------


def test_an_exclusion_hides_an_episode_from_selection_and_statistics_and_is_reversible(
    whole: Path, tmp_path: Path
) -> None:
    path = tmp_path / "ds.zarr"
    shutil.copytree(whole, path)
    data_before = {p: p.stat().st_mtime_ns for p in (path / "data").rglob("*") if p.is_file()}
    stats_before = Dataset(path).stats()
    victim = next(e for e in load_index(path) if e.robot_id == "tiny-b")

    assert exclude(path, keys=[victim.key], reason="operator dropped the cup") == 1
    ds = Dataset(path)
    assert victim.key not in {e.key for e in select_episodes(path)}
    row = next(e for e in ds.index.entries() if e.key == victim.key)
    assert row.excluded and row.exclude_reason == "operator dropped the cup"
    assert ds.card()["episodes_excluded"] == 1 and ds.card()["episodes_accepted"] == 3
    count = stats_before["tiny_humanoid"]["state/position"]["count"]
    assert ds.stats()["tiny_humanoid"]["state/position"]["count"] == count - victim.length
    assert {p: p.stat().st_mtime_ns for p in (path / "data").rglob("*") if p.is_file()} == data_before

    assert include(path, keys=[victim.key]) == 1
    assert victim.key in {e.key for e in select_episodes(path)}
    after = Dataset(path).stats()["tiny_humanoid"]["state/position"]
    assert after["count"] == count
    assert np.allclose(after["mean"], stats_before["tiny_humanoid"]["state/position"]["mean"])


def test_exclusion_by_condition(whole: Path, tmp_path: Path) -> None:
    path = tmp_path / "ds.zarr"
    shutil.copytree(whole, path)
    assert exclude(path, where='task == "wave"', reason="task retired") == 2
    assert {e.task for e in select_episodes(path)} == {"point", "grasp"}
    assert exclude(path, where='task == "wave"', reason="again") == 0  # already out


def test_exclusion_needs_a_reason_and_a_known_episode(whole: Path, tmp_path: Path) -> None:
    path = tmp_path / "ds.zarr"
    shutil.copytree(whole, path)
    with pytest.raises(DatasetError, match="--reason"):
        exclude(path, keys=["x"], reason=" ")
    with pytest.raises(DatasetError, match="no episode with key 'nope'"):
        exclude(path, keys=["nope"], reason="r")


# --- merges ---------------------------------------------------------------------------


def test_a_merge_of_merges_equals_one_job_over_everything(raw_dirs: list[Path], whole: Path, tmp_path: Path) -> None:
    parts = []
    for n, folder in enumerate(raw_dirs):
        part = tmp_path / f"part{n}.zarr"
        run_process_job(JobOptions(raw_dir=folder, dataset=part))
        parts.append(part)
    left = tmp_path / "left.zarr"
    merge_datasets(parts[:2], left)
    right = tmp_path / "right.zarr"
    merge_datasets(parts[2:], right)
    merged = tmp_path / "merged.zarr"
    summary = merge_datasets([left, right], merged)
    assert summary.rows == 4 and summary.segments_linked > 0
    assert fingerprint(merged) == fingerprint(whole)
    same_stats(merged, whole)
    assert Dataset(merged).card()["episodes_accepted"] == 4
    # Hard links: the merge copied no frame bytes.
    segment = next((merged / "data").glob("seg-*"))
    shard = next(p for p in segment.rglob("*") if p.is_file() and p.parent.name == "0" and "cameras" in p.parts)
    assert shard.stat().st_nlink >= 2


def test_a_merge_keeps_each_raw_episode_once_and_keeps_exclusions(whole: Path, raw_dirs: list[Path], tmp_path: Path) -> None:
    excluded = tmp_path / "excluded.zarr"
    shutil.copytree(whole, excluded)
    exclude(excluded, where='robot_id == "tiny-c"', reason="camera loose")
    part = tmp_path / "part.zarr"
    run_process_job(JobOptions(raw_dir=raw_dirs[0], dataset=part))
    merged = tmp_path / "merged.zarr"
    summary = merge_datasets([excluded, part], merged, copy=True)
    assert summary.duplicates == 1 and summary.rows == 4 and summary.segments_copied > 0
    rows = load_index(merged)
    assert len(rows) == 4
    assert [e.exclude_reason for e in rows if e.excluded] == ["camera loose"]
    assert Dataset(merged).card()["episodes_excluded"] == 1


def test_a_merge_never_overwrites(whole: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="exists"):
        merge_datasets([whole, whole], whole)


# --- upgrade from format version 1 ----------------------------------------------------------


def test_a_version_1_dataset_upgrades_with_every_episode_array_and_frame(tmp_path: Path) -> None:
    import json

    import zarr

    from pipeline.dataset.frame_shards import read_jpeg_bytes

    new = tmp_path / "new.zarr"
    summary = upgrade_dataset(V1_DATASET, new)
    old_index = json.loads((V1_DATASET / "zarr.json").read_text())["attributes"]["episodes"]
    assert summary.episodes == 3 and summary.rejected == 1
    ds = Dataset(new)
    rows = {(e.raw_episode_id, e.key): e for e in ds.index.entries()}
    old_root = zarr.open_group(str(V1_DATASET), mode="r")
    for old in old_index:
        row = rows[(old["raw_episode_id"], old["key"])]
        assert (row.grade, row.length, row.accepted, row.stats) == (old["grade"], old["length"], old["accepted"], old["stats"])
        if not old["key"]:
            assert row.quality and row.reasons == old["reasons"]
            continue
        group = old_root[f"episodes/{old['key']}"]
        assert np.array_equal(ds.numeric(row, "state/position"), group["state/position"][:])
        assert row.quality == dict(group.attrs)["quality"]
        for camera in row.cameras:
            array = group["cameras"][camera]
            assert ds.jpeg_bytes(row, camera, range(row.length)) == read_jpeg_bytes(array, range(array.shape[0]))
    assert ds.card()["episodes_accepted"] == 3


def test_upgrade_refuses_a_current_dataset(whole: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a version-1"):
        upgrade_dataset(whole, tmp_path / "x.zarr")

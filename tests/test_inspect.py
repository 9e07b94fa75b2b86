"""`refinery inspect`: every episode, key, grade and size of a dataset, and of its DP export."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.dataset.index import load_index
from pipeline.errors import StoreError
from pipeline.export_dp import export_diffusion_policy
from pipeline.inspect_dataset import inspect_dataset
from pipeline.process_job import JobOptions, run_process_job
from pipeline.raw_builder import simulate_episode
from pipeline.robot_config import load_robot_config

from .conftest import TINY_ROBOT

pytestmark = pytest.mark.usefixtures("ray_session")

KEYS = ["timestamps_ns", "state/position", "state/velocity", "state/effort", "action/position",
        "cameras/head_left", "cameras/head_right"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    work = tmp_path_factory.mktemp("inspect")
    tiny = load_robot_config(TINY_ROBOT)
    simulate_episode(work / "raw", tiny, robot_id="tiny-a", seconds=2.0, seed=1, task="wave")
    simulate_episode(work / "raw", tiny, robot_id="tiny-b", seconds=2.5, seed=2, task="point")
    simulate_episode(work / "raw", tiny, robot_id="tiny-x", seconds=2.0, seed=3, outcome="discarded")
    ds = work / "ds.zarr"
    run_process_job(JobOptions(raw_dir=work / "raw", dataset=ds))
    return ds


@pytest.fixture(scope="module")
def text(dataset: Path) -> str:
    return inspect_dataset(dataset)


def test_every_episode_is_listed_with_robot_task_grade_and_status(dataset: Path, text: str) -> None:
    entries = load_index(dataset)
    assert len(entries) == 3

    for entry in entries:
        line = next(line for line in text.splitlines() if (entry.key or entry.raw_episode_id) in line)
        assert entry.robot_id in line and entry.model in line and entry.grade in line
        assert ("yes" in line) == entry.accepted
        if entry.accepted:
            assert entry.task in line and f"{entry.length / entry.rate_hz:.2f}" in line
    assert "discarded" in text  # the rejection reason


def test_every_key_is_listed_with_dtype_shape_and_chunking(text: str) -> None:
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip() and line.split()[0] in KEYS}

    assert sorted(rows) == sorted(KEYS)
    assert "float32" in rows["state/position"] and "(6,)" in rows["state/position"]
    assert "int64" in rows["timestamps_ns"]
    camera = rows["cameras/head_left"]
    assert "uint8" in camera and "(48, 64, 3)" in camera and "shards of 128" in camera and "imagecodecs_jpeg" in camera
    assert "in 1 of 2 episodes" not in text  # both episodes share every key's layout


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

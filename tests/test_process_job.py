"""The processing job on a real local Ray: raw HDF5 in, Zarr dataset out, idempotent and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from collectors.drivers.sim import SimFaults
from pipeline.dataset.frame_shards import read_jpeg_bytes
from pipeline.dataset.index import load_index, read_root_attrs
from pipeline.process_job import JobOptions, run_process_job
from pipeline.processing.config import ProcessConfig
from pipeline.raw_builder import simulate_episode
from pipeline.raw_store import RawEpisodeReader
from pipeline.report import write_report

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def raw_dir(tmp_path: Path, tiny_robot) -> Path:
    data = tmp_path / "ingest"
    simulate_episode(data, tiny_robot, robot_id="tiny-a", seconds=3.0, seed=1, task="wave")
    simulate_episode(data, tiny_robot, robot_id="tiny-b", seconds=3.0, seed=2, task="point")
    return data


def run(raw_dir: Path, dataset: Path, **options) -> object:
    return run_process_job(JobOptions(raw_dir=raw_dir, dataset=dataset, **options))


def arrays_of(dataset: Path) -> dict[str, bytes]:
    """Every array's bytes and every episode group's attributes, for comparing datasets."""
    root = zarr.open_group(str(dataset), mode="r")
    out = {}
    for key, group in root["episodes"].groups():
        out[f"{key}/attrs"] = repr(sorted(dict(group.attrs).items())).encode()
        for name in ("timestamps_ns", "state/position", "state/velocity", "action/position"):
            out[f"{key}/{name}"] = group[name][:].tobytes()
        for camera in group["cameras"].array_keys():
            arr = group["cameras"][camera]
            out[f"{key}/{camera}"] = b"".join(read_jpeg_bytes(arr, range(arr.shape[0])))
    return out


def test_raw_episodes_become_dataset_episodes(raw_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds.zarr"
    summary = run(raw_dir, dataset)
    assert summary.processed == 2 and summary.accepted == 2 and not summary.failed
    entries = load_index(dataset)
    assert {e.task for e in entries} == {"wave", "point"}
    root = zarr.open_group(str(dataset), mode="r")
    for entry in entries:
        group = root["episodes"][entry.key]
        assert entry.accepted and entry.grade in "ABCDF"
        assert group["state/position"].shape == (entry.length, 6)
        assert group["cameras"]["head_left"].shape == (entry.length, 48, 64, 3)
        assert group.attrs["quality"]["grade"] == entry.grade
        steps = np.diff(group["timestamps_ns"][:])
        assert np.all(np.abs(steps - 1e9 / 30) <= 1)  # the cameras' 30 fps by default


def test_stored_frames_are_the_received_jpeg_bytes(raw_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    root = zarr.open_group(str(dataset), mode="r")
    entry = load_index(dataset)[0]
    raw_file = next(raw_dir.rglob(f"{entry.raw_episode_id}.h5"))
    with RawEpisodeReader(raw_file) as raw:
        received = set(raw.frames("head_left"))
    stored = read_jpeg_bytes(root["episodes"][entry.key]["cameras"]["head_left"], range(entry.length))
    assert set(stored) <= received  # no re-encoding: every stored frame is a received one, bit for bit
    assert len(set(stored)) > 0.9 * len(received) - 5


def test_rerun_skips_committed_episodes_and_changes_nothing(raw_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    before = arrays_of(dataset)
    again = run(raw_dir, dataset)
    assert again.skipped == 2 and again.processed == 0
    assert arrays_of(dataset) == before
    assert len(load_index(dataset)) == 2


def test_new_raw_episodes_are_appended_without_rewriting(raw_dir: Path, tmp_path: Path, tiny_robot) -> None:
    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    files_before = {p: p.stat().st_mtime_ns for p in (dataset / "episodes").rglob("*") if p.is_file()}
    simulate_episode(raw_dir, tiny_robot, robot_id="tiny-c", seconds=2.0, seed=3)
    summary = run(raw_dir, dataset)
    assert summary.processed == 1 and summary.skipped == 2
    assert len(load_index(dataset)) == 3
    for path, mtime in files_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"


def test_killed_worker_is_retried_and_the_dataset_equals_a_clean_run(raw_dir: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean.zarr"
    run(raw_dir, clean)
    crashed = tmp_path / "crashed.zarr"
    marker = tmp_path / "worker-killed"
    summary = run(raw_dir, crashed, crash_marker=marker)
    assert marker.exists(), "no worker was killed"
    assert summary.processed == 2 and not summary.failed
    assert arrays_of(crashed) == arrays_of(clean)
    assert not [p for p in (crashed / "_staging").iterdir() if p.is_dir()]  # half-written copy discarded
    strip = lambda es: sorted((e.key, e.length, e.grade, e.raw_checksum) for e in es)  # noqa: E731
    assert strip(load_index(crashed)) == strip(load_index(clean))


def test_discarded_and_faulty_episodes_are_rejected_with_reasons(tmp_path: Path, tiny_robot) -> None:
    raw = tmp_path / "ingest"
    simulate_episode(raw, tiny_robot, robot_id="tiny-d", seconds=2.0, outcome="discarded")
    simulate_episode(raw, tiny_robot, robot_id="tiny-s", seconds=0.6)  # shorter than min_duration_s
    dataset = tmp_path / "ds.zarr"
    summary = run(raw, dataset)
    assert summary.rejected == 2 and summary.accepted == 0
    entries = {e.robot_id: e for e in load_index(dataset)}
    assert any("discarded" in r for r in entries["tiny-d"].reasons)
    assert entries["tiny-s"].reasons
    card = read_root_attrs(dataset)["card"]
    assert card["episodes_rejected"] == 2 and card["rejection_reasons"]


def test_long_stall_splits_an_episode(tmp_path: Path, tiny_robot) -> None:
    raw = tmp_path / "ingest"
    simulate_episode(raw, tiny_robot, robot_id="tiny-g", seconds=5.0, faults=SimFaults(stall=((2.0, 0.6),)))
    dataset = tmp_path / "ds.zarr"
    summary = run(raw, dataset)
    assert summary.accepted == 2 and summary.split == 1
    keys = sorted(e.key for e in load_index(dataset))
    assert keys[0].endswith(".s0") and keys[1].endswith(".s1")


def test_report_lists_every_episode(raw_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    out = write_report(dataset, tmp_path / "report.html")
    text = out.read_text()
    for entry in load_index(dataset):
        assert entry.key in text
    assert "<svg" in text and "data:image/jpeg;base64," in text


def test_resize_re_encodes_frames_at_the_asked_size(raw_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    config = ProcessConfig()
    config = config.replace(output=dataclasses.replace(config.output, resize=(24, 32)))
    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset, config=config)
    root = zarr.open_group(str(dataset), mode="r")
    entry = load_index(dataset)[0]
    assert root["episodes"][entry.key]["cameras"]["head_left"].shape[1:] == (24, 32, 3)

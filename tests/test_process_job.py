"""The processing job on a real local Ray: raw HDF5 in, Zarr dataset out, idempotent and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collectors.drivers.sim import SimFaults
from pipeline.dataset.store import Dataset, load_index
from pipeline.process_job import JobOptions, run_process_job
from pipeline.processing.config import ProcessConfig
from pipeline.raw_builder import simulate_episode
from pipeline.raw_store import RawEpisodeReader

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
    """Every episode's arrays, stored frame bytes and index row, for comparing datasets."""
    ds = Dataset(dataset)
    out = {}
    for entry in ds.index.entries():
        row = {k: v for k, v in entry.to_dict().items() if k not in ("data_segment", "offset", "entry_id", "commit", "job_id")}
        out[f"{entry.raw_episode_id}/{entry.key}/row"] = repr(sorted(row.items())).encode()
        if not entry.key:
            continue
        for name in ("timestamps_ns", "state/position", "state/velocity", "action/position"):
            out[f"{entry.key}/{name}"] = ds.numeric(entry, name).tobytes()
        for camera in entry.cameras:
            out[f"{entry.key}/{camera}"] = b"".join(ds.jpeg_bytes(entry, camera, range(entry.length)))
    return out


def test_raw_episodes_become_dataset_episodes(raw_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds.zarr"
    summary = run(raw_dir, dataset)
    assert summary.processed == 2 and summary.accepted == 2 and not summary.failed
    ds = Dataset(dataset)
    entries = ds.index.entries()
    assert {e.task for e in entries} == {"wave", "point"}
    for entry in entries:
        assert entry.accepted and entry.grade in "ABCDF"
        assert ds.numeric(entry, "state/position").shape == (entry.length, 6)
        assert ds.frame_size(entry, "head_left") == (48, 64)
        assert entry.quality["grade"] == entry.grade
        steps = np.diff(ds.numeric(entry, "timestamps_ns"))
        assert np.all(np.abs(steps - 1e9 / 30) <= 1)  # the cameras' 30 fps by default


def test_every_episode_traces_back_to_its_raw_file_and_its_job(raw_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    ds = Dataset(dataset)
    for entry in ds.index.entries():
        raw_file = next(raw_dir.rglob(entry.attrs["raw_file"]))
        with RawEpisodeReader(raw_file) as raw:
            assert entry.raw_checksum == raw.attrs["content_sha256"]
            duration = (raw.numeric("joint_state")["capture_ns"][-1] - raw.numeric("joint_state")["capture_ns"][0]) / 1e9
        assert duration <= entry.raw_duration_s < duration + 0.2
        assert entry.length / entry.rate_hz <= entry.raw_duration_s
        job = ds.job(entry.job_id)
        assert job["config"]["output"]["segment_mb"] == 2048 and str(raw_dir) in job["raw_dirs"]


def test_stored_frames_are_the_received_jpeg_bytes(raw_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    ds = Dataset(dataset)
    entry = ds.index.entries()[0]
    raw_file = next(raw_dir.rglob(f"{entry.raw_episode_id}.h5"))
    with RawEpisodeReader(raw_file) as raw:
        received = set(raw.frames("head_left"))
    stored = ds.jpeg_bytes(entry, "head_left", range(entry.length))
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
    files_before = {p: p.stat().st_mtime_ns for p in (dataset / "data").rglob("*") if p.is_file()}
    files_before |= {p: p.stat().st_mtime_ns for p in (dataset / "index").glob("*.parquet")}
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
    card = Dataset(dataset).card()
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
    from pipeline.report import write_report

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
    ds = Dataset(dataset)
    entry = ds.index.entries()[0]
    assert ds.frame_size(entry, "head_left") == (24, 32)


def test_the_command_line_takes_resize_and_names_a_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main as refinery

    assert refinery(["process", str(tmp_path), "--out", str(tmp_path / "d.zarr"), "--resize", "24x32",
                     "--show-config"]) == 0
    assert "resize:\n  - 24\n  - 32" in capsys.readouterr().out
    assert refinery(["process", str(tmp_path), "--out", str(tmp_path / "d.zarr"), "--resize", "big"]) == 2
    assert "--resize" in capsys.readouterr().err


def test_episodes_share_data_segments_so_files_grow_with_bytes(tmp_path: Path, tiny_robot) -> None:
    raw = tmp_path / "ingest"
    for n in range(6):
        simulate_episode(raw, tiny_robot, robot_id=f"tiny-{n}", seconds=1.5, seed=n)
    dataset = tmp_path / "ds.zarr"
    summary = run(raw, dataset, num_cpus=2)
    entries = load_index(dataset)
    segments = {e.data_segment for e in entries if e.accepted}
    assert summary.accepted == 6 and len(segments) == summary.segments <= 2  # one per worker, not one per episode
    ds = Dataset(dataset)
    for segment in segments:
        members = sorted((e.offset, e.end) for e in entries if e.data_segment == segment)
        assert members[0][0] == 0 and all(a[1] == b[0] for a, b in zip(members, members[1:]))  # contiguous
        assert ds.segment(segment)["timestamps_ns"].shape == (members[-1][1],)


def test_several_raw_folders_feed_one_dataset(tmp_path: Path, tiny_robot) -> None:
    first, second = tmp_path / "ingest-1", tmp_path / "ingest-2"
    simulate_episode(first, tiny_robot, robot_id="tiny-a", seconds=2.0, seed=1)
    simulate_episode(second, tiny_robot, robot_id="tiny-b", seconds=2.0, seed=2)
    dataset = tmp_path / "ds.zarr"
    summary = run_process_job(JobOptions(raw_dir=[first, second, first], dataset=dataset))
    assert summary.raw_found == 2 and summary.accepted == 2
    assert {e.robot_id for e in load_index(dataset)} == {"tiny-a", "tiny-b"}


def test_an_unreadable_raw_file_is_rejected_and_the_rest_processed(raw_dir: Path, tmp_path: Path) -> None:
    bad = raw_dir / "raw" / "tiny-x" / "broken.h5"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an HDF5 file" * 100)
    dataset = tmp_path / "ds.zarr"
    summary = run(raw_dir, dataset)
    assert summary.accepted == 2 and summary.rejected == 1 and not summary.failed
    rejected = [e for e in load_index(dataset) if not e.accepted]
    assert rejected[0].raw_episode_id == "broken" and rejected[0].reasons[0].startswith("unreadable:")
    assert run(raw_dir, dataset).skipped == 3  # recorded once


def test_a_segment_left_by_a_killed_driver_is_removed_by_the_next_job(
    raw_dir: Path, tmp_path: Path, tiny_robot
) -> None:
    import json

    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    # A driver killed after its plan was written and a segment published, before the commit:
    orphan = dataset / "data" / "seg-orphan"
    (orphan / "state").mkdir(parents=True)
    (orphan / "zarr.json").write_text("{}")
    (dataset / "_staging" / "plan-killed-job.json").write_text(json.dumps({"segments": ["seg-orphan"]}))
    stranger = dataset / "data" / "seg-nobody-planned"  # not ours to judge: left alone
    stranger.mkdir()
    simulate_episode(raw_dir, tiny_robot, robot_id="tiny-c", seconds=2.0, seed=3)
    run(raw_dir, dataset)
    assert not orphan.exists() and stranger.exists()
    assert not list((dataset / "_staging").glob("plan-*.json"))
    assert len(load_index(dataset)) == 3


def test_an_index_file_of_unknown_form_stops_the_job_before_it_deletes_anything(raw_dir: Path, tmp_path: Path) -> None:
    from pipeline.errors import StoreError

    dataset = tmp_path / "ds.zarr"
    run(raw_dir, dataset)
    segments = sorted(p.name for p in (dataset / "data").iterdir() if p.is_dir())
    for path in (dataset / "index").glob("e-*.parquet"):
        path.rename(path.with_name("e-renamed-by-someone.parquet"))
        break
    with pytest.raises(StoreError, match="does not know"):
        run(raw_dir, dataset)
    assert sorted(p.name for p in (dataset / "data").iterdir() if p.is_dir()) == segments


def test_two_ingests_with_robots_split_between_them_feed_one_dataset(
    start_ingest, make_collector, tmp_path: Path
) -> None:
    from tests.conftest import record_episode

    ingests = [start_ingest(data_dir=tmp_path / f"ingest-{n}") for n in range(2)]
    collectors = [make_collector(ingests[n % 2].endpoint, robot_id=f"tiny-{n}", seed=n) for n in range(4)]
    for collector in collectors:
        collector.start()
    recorded = {c.config.robot_id: record_episode(c, 1.5, task="wave") for c in collectors}
    for collector in collectors:
        assert collector.drain(30)
    assert all(len(ingest.raw_files()) == 2 for ingest in ingests)  # the fleet split over two ingest services
    dataset = tmp_path / "ds.zarr"
    summary = run_process_job(JobOptions(raw_dir=[i.data_dir for i in ingests], dataset=dataset))
    assert summary.raw_found == 4 and not summary.failed
    rows = load_index(dataset)
    assert {(e.robot_id, e.raw_episode_id) for e in rows} == set(recorded.items())


def test_the_summary_says_how_much_cleaning_kept(tmp_path: Path, tiny_robot) -> None:
    raw = tmp_path / "ingest"
    simulate_episode(raw, tiny_robot, robot_id="tiny-g", seconds=5.0, faults=SimFaults(stall=((2.0, 0.6),)))
    summary = run(raw, tmp_path / "ds.zarr")
    raw_s, kept_s = summary.kept()
    assert 4.9 < raw_s < 5.2 and 3.0 < kept_s < raw_s - 0.5  # the stall and its edges were cut
    text = "\n".join(summary.lines())
    assert f"of {raw_s:,.1f} s recorded ({kept_s / raw_s:.0%})" in text
    assert "cleaning decisions: " in text and summary.decision_kinds()


def _corrupt_copies(raw_dir: Path, tiny_robot) -> dict[str, Path]:
    """Bad raw files beside the good ones: damaged after sealing in the ways disks and people damage them."""
    import shutil

    import h5py

    bad = {}
    for n, name in enumerate(("jpeg", "joint", "truncated", "header")):
        path = simulate_episode(raw_dir, tiny_robot, robot_id=f"tiny-bad{n}", seconds=2.0, seed=10 + n)
        bad[name] = path
    with h5py.File(bad["jpeg"], "r+") as h5:  # 16 flipped bytes inside one JPEG
        start = int(h5["cameras/head_left/jpeg_offsets"][3]) + 200
        h5["cameras/head_left/jpeg_data"][start : start + 16] ^= 0xFF
    with h5py.File(bad["joint"], "r+") as h5:  # one joint value edited
        h5["streams/joint_state/position"][5, 0] += 0.1
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    data = bytearray(bad["header"].read_bytes())
    data[1] ^= 0xFF  # one flipped byte of the HDF5 signature
    bad["header"].write_bytes(bytes(data))
    not_hdf5 = raw_dir / "raw" / "tiny-bad" / "notes.h5"
    not_hdf5.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(__file__, not_hdf5)
    bad["not_hdf5"] = not_hdf5
    return bad


def test_corrupt_and_unreadable_raw_files_are_rejected_with_their_reasons_and_the_rest_committed(
    raw_dir: Path, tmp_path: Path, tiny_robot
) -> None:
    bad = _corrupt_copies(raw_dir, tiny_robot)
    dataset = tmp_path / "ds.zarr"
    summary = run(raw_dir, dataset)
    assert summary.accepted == 2 and not summary.failed  # the two good episodes
    rows = {e.attrs.get("raw_file", ""): e for e in load_index(dataset) if not e.accepted}
    by_file = {Path(name).name: row for name, row in rows.items()}
    for kind in ("jpeg", "joint"):
        row = by_file[bad[kind].name]
        assert row.reasons[0].startswith("corrupt: content checksum") and row.raw_checksum in row.reasons[0]
    for kind in ("truncated", "header", "not_hdf5"):
        assert by_file[bad[kind].name].reasons[0].startswith("unreadable:"), kind
    assert {Path(e.attrs.get("raw_file", "")).name for e in summary.bad_inputs} == {p.name for p in bad.values()}
    assert any("bad input" in line for line in summary.lines())
    assert run(raw_dir, dataset).skipped == 7  # each bad file is recorded once

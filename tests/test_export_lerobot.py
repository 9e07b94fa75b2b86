"""LeRobot v3.0 export: the layout, metadata, values and videos LeRobot reads, filters, key names, errors.

These run in Refinery's own environment (no lerobot: it needs Python 3.12):
every file is read back with pyarrow and PyAV and compared with the dataset.
``test_lerobot_reads_the_export`` runs ``tools/check_lerobot_export.py``, the
real consumer, where a Python 3.12 interpreter is present.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main as refinery
from pipeline.dataset.index import EpisodeEntry
from pipeline.dataset.store import Dataset, create_dataset, load_index
from pipeline.errors import DatasetError
from pipeline.interop import lerobot_layout as layout
from pipeline.interop.lerobot_export import VideoSettings, _image_stats, export_lerobot
from pipeline.process_job import JobOptions, run_process_job
from pipeline.processing.config import ProcessConfig
from pipeline.raw_builder import simulate_episode
from pipeline.robot_config import load_robot_config
from tools import check_lerobot_export

from .conftest import TINY_ROBOT

pytestmark = pytest.mark.usefixtures("ray_session")

TINY = "tiny_humanoid"
HD = "tiny_humanoid_hd"  # the same robot with 96x128 cameras
MIN_PSNR_DB = check_lerobot_export.MIN_PSNR_DB
GRADES = ("A", "B", "C", "D", "F")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """Three accepted tiny episodes (two tasks) and one episode of another model with larger cameras."""
    work = tmp_path_factory.mktemp("export_lerobot")
    tiny = load_robot_config(TINY_ROBOT)
    raw = work / "ingest"
    simulate_episode(raw, tiny, robot_id="tiny-a", seconds=1.5, seed=1, task="wave")
    simulate_episode(raw, tiny, robot_id="tiny-b", seconds=1.5, seed=2, task="point")
    simulate_episode(raw, tiny, robot_id="tiny-c", seconds=1.5, seed=5, task="wave")
    spec = yaml.safe_load(TINY_ROBOT.read_text())
    spec["model"] = HD
    for camera in spec["cameras"]:
        camera.update(width=128, height=96)
    (work / "hd.yaml").write_text(yaml.safe_dump(spec))
    simulate_episode(raw, load_robot_config(work / "hd.yaml"), robot_id="hd-a", seconds=1.5, seed=4, task="wave")
    ds = work / "ds.zarr"
    create_dataset(ds, val_fraction=0.5)
    config = ProcessConfig()
    config = config.replace(output=dataclasses.replace(config.output, frames_per_shard=32))
    summary = run_process_job(JobOptions(raw_dir=raw, dataset=ds, config=config))
    assert summary.accepted == 4, summary.lines()
    return ds


@pytest.fixture(scope="module")
def export(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lerobot") / "tiny"
    export_lerobot(dataset, out, models=TINY)
    return out


@pytest.fixture(scope="module")
def split_files(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny episodes with file-size limits so small that they spread over several data and video files."""
    out = tmp_path_factory.mktemp("lerobot") / "files"
    export_lerobot(dataset, out, models=TINY, data_file_size_mb=0.001, video_file_size_mb=0.02)
    return out


def info(out: Path) -> dict:
    return json.loads((out / layout.INFO_PATH).read_text())


def episodes(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / layout.EPISODES_DIR).glob("*/*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def frames_table(out: Path) -> dict[str, np.ndarray]:
    tables = [pq.read_table(p) for p in sorted((out / layout.DATA_DIR).glob("*/*.parquet"))]
    return {name: np.concatenate([np.asarray(t[name].to_pylist()) for t in tables]) for name in tables[0].column_names}


def entries_by_key(dataset: Path) -> dict[str, EpisodeEntry]:
    return {e.key: e for e in load_index(dataset) if e.key}


def exported_entries(dataset: Path, out: Path) -> list[EpisodeEntry]:
    by_key = entries_by_key(dataset)
    return [by_key[row["refinery/episode_key"]] for row in episodes(out)]


def decode_video(path: Path) -> tuple[list[np.ndarray], list[float], av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * stream.time_base))
        return frames, times, stream


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --- layout and metadata -------------------------------------------------------------------


def test_writes_the_v3_layout_with_one_file_of_each_kind(export: Path) -> None:
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())

    assert files == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/refinery.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "videos/observation.images.head_left/chunk-000/file-000.mp4",
        "videos/observation.images.head_right/chunk-000/file-000.mp4",
    ]


def test_info_json_holds_the_fields_lerobot_knows_and_nothing_else(export: Path, dataset: Path) -> None:
    data = info(export)
    tiny = [e for e in entries_by_key(dataset).values() if e.model == TINY]

    assert set(data) == set(layout.INFO_FIELDS)
    assert data["codebase_version"] == "v3.0" and data["fps"] == 30 and data["robot_type"] == TINY
    assert data["total_episodes"] == 3 and data["total_frames"] == sum(e.length for e in tiny)
    assert data["total_tasks"] == 2
    assert data["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert data["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (data["chunks_size"], data["data_files_size_in_mb"], data["video_files_size_in_mb"]) == (1000, 100, 200)


def test_features_carry_dtype_shape_and_joint_names(export: Path) -> None:
    features = info(export)["features"]
    joints = load_robot_config(TINY_ROBOT).joint_names

    assert features["observation.state"] == {"dtype": "float32", "shape": [6], "names": list(joints)}
    assert features["action"] == {"dtype": "float32", "shape": [6], "names": list(joints)}
    assert features["observation.velocity"]["shape"] == [6] and features["observation.effort"]["shape"] == [6]
    assert features["refinery.timestamp_ns"] == {"dtype": "int64", "shape": [1], "names": None}
    for name, spec in layout.DEFAULT_FEATURES.items():
        assert features[name] == spec
    camera = features["observation.images.head_left"]
    assert camera["dtype"] == "video" and camera["shape"] == [48, 64, 3]
    assert camera["names"] == ["height", "width", "channels"]
    assert camera["info"]["video.codec"] == "h264" and camera["info"]["video.pix_fmt"] == "yuv420p"
    assert camera["info"]["video.fps"] == 30 and camera["info"]["video.g"] == 2
    assert camera["info"]["is_depth_map"] is False and camera["info"]["has_audio"] is False


def test_splits_are_ranges_of_episode_indices_train_first(export: Path) -> None:
    splits = info(export)["splits"]
    by_index = [row["refinery/split"] for row in episodes(export)]

    for name, span in splits.items():
        start, stop = (int(v) for v in span.split(":"))
        assert by_index[start:stop] == [name] * (stop - start)
    assert sum(int(s.split(":")[1]) - int(s.split(":")[0]) for s in splits.values()) == len(by_index)
    assert by_index == sorted(by_index, key=["train", "val"].index)


def test_tasks_parquet_is_indexed_by_task_text_as_pandas_writes_it(export: Path, dataset: Path) -> None:
    table = pq.read_table(export / layout.TASKS_PATH)
    pandas_meta = json.loads(table.schema.metadata[b"pandas"])

    assert pandas_meta["index_columns"] == ["task"]
    tasks = dict(zip(table["task"].to_pylist(), table["task_index"].to_pylist(), strict=True))
    assert sorted(tasks) == ["point", "wave"] and sorted(tasks.values()) == [0, 1]
    for row, entry in zip(episodes(export), exported_entries(dataset, export), strict=True):
        assert row["tasks"] == [entry.task]
    data = frames_table(export)
    for row in episodes(export):
        rows = slice(row["dataset_from_index"], row["dataset_to_index"])
        assert set(data["task_index"][rows]) == {tasks[row["tasks"][0]]}


# --- values ---------------------------------------------------------------------------------


def test_frame_rows_equal_the_dataset_values_episode_by_episode(export: Path, dataset: Path) -> None:
    data = frames_table(export)
    source = Dataset(dataset)
    index = 0
    for n, (row, entry) in enumerate(zip(episodes(export), exported_entries(dataset, export), strict=True)):
        rows = slice(row["dataset_from_index"], row["dataset_to_index"])
        assert (row["episode_index"], row["dataset_from_index"], row["length"]) == (n, index, entry.length)
        np.testing.assert_array_equal(data["observation.state"][rows], source.numeric(entry, "state/position"))
        np.testing.assert_array_equal(data["action"][rows], source.numeric(entry, "action/position"))
        np.testing.assert_array_equal(data["observation.effort"][rows], source.numeric(entry, "state/effort"))
        np.testing.assert_array_equal(data["refinery.timestamp_ns"][rows], source.numeric(entry, "timestamps_ns"))
        np.testing.assert_array_equal(data["frame_index"][rows], np.arange(entry.length))
        np.testing.assert_array_equal(data["episode_index"][rows], n)
        np.testing.assert_array_equal(data["index"][rows], np.arange(index, index + entry.length))
        np.testing.assert_array_equal(data["timestamp"][rows], (np.arange(entry.length) / 30).astype(np.float32))
        index += entry.length
    assert len(data["index"]) == index


def test_data_columns_have_the_types_hugging_face_datasets_writes(export: Path) -> None:
    parquet = pq.ParquetFile(export / "data/chunk-000/file-000.parquet")
    schema = parquet.schema_arrow

    state = schema.field("observation.state").type
    assert pa.types.is_fixed_size_list(state) and state.list_size == 6 and state.value_type == pa.float32()
    assert str(schema.field("timestamp").type) == "float" and str(schema.field("index").type) == "int64"
    assert not [name for name in schema.names if name.startswith("observation.images")]
    assert b"huggingface" in schema.metadata
    assert parquet.num_row_groups == 3  # one per episode, as LeRobot's writer makes them


def test_stats_hold_every_statistic_of_every_feature_over_all_frames(export: Path) -> None:
    stats = json.loads((export / layout.STATS_PATH).read_text())
    data = frames_table(export)

    assert set(stats) == set(info(export)["features"])
    for name, values in stats.items():
        assert set(values) == set(layout.STAT_NAMES), name
    state = data["observation.state"].astype(np.float64)
    assert stats["observation.state"]["count"] == [len(state)]
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(axis=0))
    np.testing.assert_allclose(stats["observation.state"]["max"], state.max(axis=0))
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(axis=0), rtol=1e-9)
    q = np.array(stats["observation.state"]["q50"])
    assert np.all((q >= state.min(axis=0)) & (q <= state.max(axis=0)))
    image = stats["observation.images.head_left"]
    assert np.array(image["mean"]).shape == (3, 1, 1)
    assert 0 <= np.min(image["min"]) <= np.max(image["max"]) <= 1


def test_image_statistics_from_histograms_equal_numpy_over_the_sampled_pixels() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (3, 20, 30), dtype=np.uint8) for _ in range(7)]
    pixels = np.concatenate([f.reshape(3, -1) for f in frames], axis=1).T.astype(np.float64) / 255.0

    stats = _image_stats(frames)

    assert stats["count"].tolist() == [7] and stats["mean"].shape == (3, 1, 1)
    for name, q in zip(("q01", "q10", "q50", "q90", "q99"), layout.QUANTILES, strict=True):
        np.testing.assert_allclose(stats[name].reshape(-1), np.quantile(pixels, q, axis=0))
    np.testing.assert_allclose(stats["std"].reshape(-1), pixels.std(axis=0))
    np.testing.assert_allclose(stats["min"].reshape(-1), pixels.min(axis=0))


def test_episode_rows_keep_refinery_grade_indicators_and_ids(export: Path, dataset: Path) -> None:
    for row, entry in zip(episodes(export), exported_entries(dataset, export), strict=True):
        assert row["refinery/grade"] == entry.grade and row["refinery/robot_id"] == entry.robot_id
        assert row["refinery/raw_episode_id"] == entry.raw_episode_id and row["refinery/model"] == TINY
        assert row["refinery/start_ns"] == entry.start_ns
        indicators = json.loads(row["refinery/indicators"])
        assert {i["name"]: i["value"] for i in entry.quality["indicators"]} == {
            k: v["value"] for k, v in indicators.items()}
        assert row["stats/observation.state/count"] == [entry.length]
    extras = json.loads((export / "meta/refinery.json").read_text())
    assert extras["standard_joint_names"][0] == "waist_yaw" and extras["keys"]["state/position"] == "observation.state"


# --- videos --------------------------------------------------------------------------------


def test_video_frames_match_the_stored_jpegs_at_the_episode_timestamps(export: Path, dataset: Path) -> None:
    source = Dataset(dataset)
    rows = episodes(export)
    entries = exported_entries(dataset, export)
    for camera in ("head_left", "head_right"):
        key = f"observation.images.{camera}"
        frames, times, stream = decode_video(export / layout.video_path(key, 0, 0))
        assert stream.codec_context.pix_fmt == "yuv420p" and stream.average_rate == 30
        assert len(frames) == sum(e.length for e in entries)
        for row, entry in zip(rows, entries, strict=True):
            start = row[layout.video_column(key, "from_timestamp")]
            assert row[layout.video_column(key, "to_timestamp")] == pytest.approx(start + entry.length / 30)
            first = times.index(pytest.approx(start, abs=1e-6))
            stored = source.frames(entry, camera, range(entry.length))
            scores = [psnr(frames[first + i], stored[i]) for i in range(entry.length)]
            assert min(scores) >= MIN_PSNR_DB, (camera, entry.key, min(scores))


def test_small_file_limits_spread_episodes_over_files_that_the_rows_point_to(split_files: Path, dataset: Path) -> None:
    rows = episodes(split_files)
    entries = exported_entries(dataset, split_files)
    key = "observation.images.head_left"

    assert len({(r["data/chunk_index"], r["data/file_index"]) for r in rows}) == 3
    video_files = {(r[layout.video_column(key, "chunk_index")], r[layout.video_column(key, "file_index")]) for r in rows}
    assert len(video_files) == 2
    for row, entry in zip(rows, entries, strict=True):
        table = pq.read_table(split_files / layout.data_path(row["data/chunk_index"], row["data/file_index"]))
        assert row["episode_index"] in table["episode_index"].to_pylist()
        assert table["index"].to_pylist().count(row["dataset_from_index"]) == 1
    for chunk, file in video_files:
        inside = [(r, e) for r, e in zip(rows, entries, strict=True)
                  if (r[layout.video_column(key, "chunk_index")], r[layout.video_column(key, "file_index")]) == (chunk, file)]
        frames, _, _ = decode_video(split_files / layout.video_path(key, chunk, file))
        assert len(frames) == sum(e.length for _, e in inside)
        assert inside[0][0][layout.video_column(key, "from_timestamp")] == 0.0
        for (before, entry), (after, _) in itertools.pairwise(inside):
            assert after[layout.video_column(key, "from_timestamp")] == pytest.approx(
                before[layout.video_column(key, "from_timestamp")] + entry.length / 30)


def test_av1_export_writes_av1_video(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "av1"

    export_lerobot(dataset, out, models=TINY, robots="tiny-a", video=VideoSettings("libsvtav1", crf=35, gop=4))

    camera = info(out)["features"]["observation.images.head_left"]["info"]
    assert (camera["video.codec"], camera["video.crf"], camera["video.g"]) == ("av1", 35, 4)
    frames, _, stream = decode_video(out / layout.video_path("observation.images.head_left", 0, 0))
    assert stream.codec_context.name in ("libdav1d", "av1", "libaom-av1") and len(frames) == info(out)["total_frames"]


# --- selection and names -------------------------------------------------------------------


def test_key_renaming_exports_only_the_named_keys_under_their_names(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "renamed"

    summary = export_lerobot(dataset, out, models=TINY, keys={
        "state/position": "observation.joints", "action/position": "action", "cameras/head_left": "observation.images.front"})

    features = info(out)["features"]
    assert set(features) == {"observation.joints", "action", "observation.images.front", *layout.DEFAULT_FEATURES}
    assert [p.name for p in (out / "videos").iterdir()] == ["observation.images.front"]
    assert summary.keys["state/position"] == "observation.joints"


def test_filters_select_the_episodes_exported(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"

    summary = export_lerobot(dataset, out, robots=["tiny-b"])

    assert [row["refinery/robot_id"] for row in episodes(out)] == ["tiny-b"]
    assert info(out)["total_tasks"] == 1 and summary.episodes == 1


def test_resize_makes_episodes_of_two_camera_sizes_one_size(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "hd"

    export_lerobot(dataset, out, models=HD, image_size=(48, 64))

    assert info(out)["features"]["observation.images.head_left"]["shape"] == [48, 64, 3]
    frames, _, _ = decode_video(out / layout.video_path("observation.images.head_left", 0, 0))
    assert frames[0].shape == (48, 64, 3)


# --- errors ----------------------------------------------------------------------------------


def test_episodes_of_two_robot_models_are_refused_naming_both(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{TINY}.*{HD}.*--model"):
        export_lerobot(dataset, tmp_path / "mixed")
    assert not list(tmp_path.iterdir())


def test_an_existing_output_is_refused_unless_overwrite(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_lerobot(dataset, out, robots="tiny-a")

    with pytest.raises(DatasetError, match="already exists"):
        export_lerobot(dataset, out, robots="tiny-b")
    assert episodes(out)[0]["refinery/robot_id"] == "tiny-a"

    export_lerobot(dataset, out, robots="tiny-b", overwrite=True)
    assert episodes(out)[0]["refinery/robot_id"] == "tiny-b" and len(list(tmp_path.iterdir())) == 1


def test_bad_names_and_settings_are_refused_before_writing(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(DatasetError, match="no '/'"):
        export_lerobot(dataset, out, models=TINY, keys={"state/position": "observation/state"})
    with pytest.raises(DatasetError, match="LeRobot writes itself"):
        export_lerobot(dataset, out, models=TINY, keys={"state/position": "timestamp"})
    with pytest.raises(DatasetError, match="vcodec"):
        export_lerobot(dataset, out, models=TINY, video=VideoSettings("mjpeg"))
    with pytest.raises(DatasetError, match="even width and height"):
        export_lerobot(dataset, out, models=TINY, image_size=(47, 64))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_the_command_line_exports_and_refuses_another_formats_option(dataset: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"

    refused = refinery(["export", str(dataset), "--format", "lerobot", str(out), "--model", TINY, "--zip"])
    err = capsys.readouterr().err
    code = refinery(["export", str(dataset), "--format", "lerobot", str(out), "--model", TINY,
                     "--key", "state/position=observation.state", "--vcodec", "h264", "--crf", "20"])

    assert refused != 0 and "--zip" in err and "diffusion-policy" in err
    assert code == 0 and "observation.state" in capsys.readouterr().out
    assert set(info(out)["features"]) == {"observation.state", *layout.DEFAULT_FEATURES}


# --- the real consumer ----------------------------------------------------------------------------


def test_a_python312_on_path_that_does_not_run_is_passed_over(tmp_path: Path, monkeypatch) -> None:
    broken = tmp_path / "python3.12"  # what a pyenv shim does for a version pyenv has not selected
    broken.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert check_lerobot_export.find_python312() != str(broken)


@pytest.mark.slow
def test_lerobot_reads_the_export() -> None:
    """lerobot 0.6.1's LeRobotDataset returns the loader's values (tools/check_lerobot_export.py)."""
    python = check_lerobot_export.find_python312()
    venv = check_lerobot_export.DEFAULT_VENV
    if python is None and not check_lerobot_export.lerobot_ready(venv / "bin" / "python"):
        pytest.skip("no Python 3.12 (python3.12 on PATH or ~/.pyenv/versions/3.12*) to install lerobot 0.6.1 with; "
                    "run `python -m tools.check_lerobot_export --python PY312` where there is one")

    done = subprocess.run([sys.executable, "-m", "tools.check_lerobot_export"], capture_output=True, text=True,
                          timeout=1800, check=False)

    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    assert "5 passed, 0 failed" in out
    assert out.count(", 0 failed") >= 4 and "135 windows" in out  # every window of every run was compared
    assert "a video span one frame off is refused" in out


# --- round trip through Refinery's own LeRobot importer ----------------------------------------


def test_an_export_imports_back_and_processes_into_graded_episodes(export: Path, dataset: Path,
                                                                   tmp_path: Path) -> None:
    from pipeline.interop.lerobot_import import import_lerobot

    import_lerobot(export, tmp_path / "raw", config=TINY_ROBOT)
    again = tmp_path / "again.zarr"
    summary = run_process_job(JobOptions(raw_dir=tmp_path / "raw", dataset=again))

    assert summary.accepted == 3, summary.lines()
    originals = exported_entries(dataset, export)
    back = [e for e in load_index(again) if e.key]
    assert all(e.grade in GRADES for e in back)
    assert sorted(e.task for e in back) == sorted(e.task for e in originals)
    source, copy = Dataset(dataset), Dataset(again)

    def same_states(imported: EpisodeEntry, original: EpisodeEntry) -> bool:
        steps = min(imported.length, original.length)
        return imported.task == original.task and abs(imported.length - original.length) <= 1 and np.allclose(
            copy.numeric(imported, "state/position")[:steps], source.numeric(original, "state/position")[:steps],
            atol=1e-4)

    for entry in back:
        assert sum(same_states(entry, original) for original in originals) == 1, entry.key

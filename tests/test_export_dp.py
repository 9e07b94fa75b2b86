"""Diffusion Policy export: the replay-buffer layout its reader accepts, values, keys, filters, zip.

The dataset is format version 2: episodes are rows of data segments, so the
values are compared with the rows the index places them at, and selections
that leave holes in a segment, excluded episodes and splits are exercised.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zarr

from pipeline.dataset.index import DatasetIndex, EpisodeEntry
from pipeline.dataset.jpeg_codec import decode_jpeg_chunk
from pipeline.dataset.store import Dataset, DatasetLock, create_dataset, load_index
from pipeline.cli import main as refinery
from pipeline.errors import DatasetError, StoreError
from pipeline.interop import dp_export as export_dp
from pipeline.interop.dp_export import default_key_names, export_diffusion_policy
from pipeline.process_job import JobOptions, run_process_job
from pipeline.processing.config import ProcessConfig
from pipeline.raw_builder import simulate_episode
from pipeline.robot_config import load_robot_config

from .conftest import TINY_ROBOT

pytestmark = pytest.mark.usefixtures("ray_session")

TINY = "tiny_humanoid"
HD = "tiny_humanoid_hd"  # the same robot with 96x128 cameras
GRADES = "ABCDF"
BLOSC_KEYS = {"id", "cname", "clevel", "shuffle", "blocksize"}
FRAMES_PER_SHARD = 32  # several camera shards per segment: reads cross shard boundaries


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """Three accepted tiny episodes, one discarded one, and one episode with larger cameras."""
    work = tmp_path_factory.mktemp("export_dp")
    tiny = load_robot_config(TINY_ROBOT)
    raw = work / "ingest"
    simulate_episode(raw, tiny, robot_id="tiny-a", seconds=2.0, seed=1, task="wave")
    simulate_episode(raw, tiny, robot_id="tiny-b", seconds=2.0, seed=2, task="point")
    simulate_episode(raw, tiny, robot_id="tiny-c", seconds=1.5, seed=5, task="wave")
    simulate_episode(raw, tiny, robot_id="tiny-x", seconds=2.0, seed=3, outcome="discarded")
    spec = yaml.safe_load(TINY_ROBOT.read_text())
    spec["model"] = HD
    for camera in spec["cameras"]:
        camera.update(width=128, height=96)
    (work / "hd.yaml").write_text(yaml.safe_dump(spec))
    simulate_episode(raw, load_robot_config(work / "hd.yaml"), robot_id="hd-a", seconds=2.0, seed=4, task="wave")
    ds = work / "ds.zarr"
    create_dataset(ds, val_fraction=0.5)  # both splits likely hold episodes
    config = ProcessConfig()
    config = config.replace(output=dataclasses.replace(config.output, frames_per_shard=FRAMES_PER_SHARD))
    summary = run_process_job(JobOptions(raw_dir=raw, dataset=ds, config=config))
    assert summary.accepted == 4 and summary.rejected == 1, summary.lines()
    return ds


def tiny_entries(dataset: Path) -> list[EpisodeEntry]:
    return [e for e in load_index(dataset) if e.accepted and not e.excluded and e.model == TINY]


@pytest.fixture(scope="module")
def export(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp") / "tiny.zarr"
    export_diffusion_policy(dataset, out, models=TINY)
    return out


def zarray(path: Path) -> dict:
    return json.loads(path.joinpath(".zarray").read_text())


def dataset_values(dataset: Path, entries: list[EpisodeEntry], key: str) -> np.ndarray:
    """The episodes' rows of a numeric key, read one episode at a time through the store."""
    ds = Dataset(dataset)
    return np.concatenate([ds.numeric(e, key) for e in entries])


def dataset_jpegs(dataset: Path, entries: list[EpisodeEntry], camera: str) -> list[bytes]:
    ds = Dataset(dataset)
    return [jpeg for e in entries for jpeg in ds.jpeg_bytes(e, camera, range(e.length))]


def by_robot(dataset: Path, *robots: str) -> list[EpisodeEntry]:
    entries = {e.robot_id: e for e in load_index(dataset)}
    return [entries[r] for r in robots]


def data_names(buffer: Path) -> list[str]:
    """The arrays under data/, from the folder (zarr opens a camera array only with imagecodecs registered)."""
    return sorted(p.name for p in (buffer / "data").iterdir() if p.is_dir())


def open_buffer(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r", zarr_format=2)


# --- layout ----------------------------------------------------------------------------


def test_root_holds_data_and_meta_groups_only_in_zarr_format_2(export: Path) -> None:
    root = open_buffer(export)

    assert sorted(root.group_keys()) == ["data", "meta"] and not list(root.array_keys())
    assert all((export / "data" / n / ".zarray").exists() for n in data_names(export))
    assert not list((export / "data").glob("*/.zgroup"))
    assert list(root["meta"].array_keys()) == ["episode_ends"] and not list(root["meta"].group_keys())
    assert json.loads((export / ".zgroup").read_text()) == {"zarr_format": 2}
    assert not list(export.rglob("zarr.json"))  # nothing of format 3


def test_episode_ends_are_cumulative_exclusive_int64(export: Path, dataset: Path) -> None:
    ends = open_buffer(export)["meta"]["episode_ends"][...]

    entries = tiny_entries(dataset)
    assert ends.dtype == np.int64
    assert ends.tolist() == np.cumsum([e.length for e in entries]).tolist()
    info = open_buffer(export).attrs["refinery"]
    assert [e["key"] for e in info["episodes"]] == [e.key for e in entries]


def test_every_data_array_spans_all_steps_chunked_along_time_only(export: Path) -> None:
    steps = int(open_buffer(export)["meta"]["episode_ends"][-1])

    names = data_names(export)
    assert len(names) == 7
    for name in names:
        meta = zarray(export / "data" / name)
        assert meta["shape"][0] == steps, name
        assert meta["chunks"][1:] == meta["shape"][1:], name
    for name in ("camera_0", "camera_1"):
        meta = zarray(export / "data" / name)
        assert (meta["dtype"], meta["shape"], meta["chunks"]) == ("|u1", [steps, 48, 64, 3], [1, 48, 64, 3])
        assert len(list((export / "data" / name).glob("*.0.0.0"))) == steps


def test_default_names_follow_diffusion_policy_real_robot_keys(export: Path) -> None:
    names = data_names(export)

    assert names == sorted(
        ["action", "camera_0", "camera_1", "robot_joint", "robot_joint_vel", "robot_joint_effort", "timestamp"]
    )
    assert default_key_names(["cameras/wrist", "cameras/head", "state/position"]) == {
        "state/position": "robot_joint", "cameras/head": "camera_0", "cameras/wrist": "camera_1",
    }


def test_compressor_settings_hold_only_keys_old_readers_accept(export: Path) -> None:
    assert zarray(export / "data" / "camera_0")["compressor"] == {"id": "imagecodecs_jpeg", "level": 90}
    for name in ("action", "robot_joint", "robot_joint_vel", "robot_joint_effort", "timestamp"):
        compressor = zarray(export / "data" / name)["compressor"]
        assert set(compressor) == BLOSC_KEYS and compressor["cname"] == "lz4", name  # no typesize
        assert zarray(export / "data" / name)["filters"] is None
    assert zarray(export / "meta" / "episode_ends")["compressor"] is None


# --- values ----------------------------------------------------------------------------


def test_numeric_values_equal_the_dataset(export: Path, dataset: Path) -> None:
    data = open_buffer(export)["data"]
    entries = tiny_entries(dataset)

    for key, name in [("state/position", "robot_joint"), ("state/velocity", "robot_joint_vel"),
                      ("state/effort", "robot_joint_effort"), ("action/position", "action")]:
        values = data[name][...]
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, dataset_values(dataset, entries, key).astype(np.float32))
    timestamps = data["timestamp"][...]
    assert timestamps.dtype == np.float64
    np.testing.assert_array_equal(timestamps, dataset_values(dataset, entries, "timestamps_ns") / 1e9)


def test_stored_frames_are_the_dataset_jpeg_bytes(export: Path, dataset: Path) -> None:
    jpegs = dataset_jpegs(dataset, tiny_entries(dataset), "head_left")

    stored = [(export / "data" / "camera_0" / f"{i}.0.0.0").read_bytes() for i in range(len(jpegs))]
    assert stored == jpegs  # passthrough: not one frame re-encoded
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(stored[7], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb, decode_jpeg_chunk(jpegs[7], (48, 64, 3)))


def test_imagecodecs_numcodecs_codec_decodes_the_camera_arrays(export: Path, dataset: Path) -> None:
    image_numcodecs = pytest.importorskip("imagecodecs.numcodecs")
    image_numcodecs.register_codecs()

    frames = open_buffer(export)["data"]["camera_1"][...]

    jpegs = dataset_jpegs(dataset, tiny_entries(dataset), "head_right")
    expected = np.stack([decode_jpeg_chunk(j, (48, 64, 3)) for j in jpegs])
    np.testing.assert_array_equal(frames, expected)


# --- options ---------------------------------------------------------------------------


def test_key_mapping_selects_and_renames_keys(dataset: Path, tmp_path: Path) -> None:
    keys = {"state/position": "agent_pos", "cameras/head_right": "image", "action/position": "action"}
    summary = export_diffusion_policy(dataset, tmp_path / "dp.zarr", keys=keys, models=TINY)

    root = open_buffer(tmp_path / "dp.zarr")
    assert data_names(tmp_path / "dp.zarr") == ["action", "agent_pos", "image"]
    assert summary.keys == keys and root.attrs["refinery"]["keys"] == keys
    assert summary.shapes["image"] == (summary.steps, 48, 64, 3)
    jpegs = dataset_jpegs(dataset, tiny_entries(dataset), "head_right")
    assert (tmp_path / "dp.zarr" / "data" / "image" / "0.0.0.0").read_bytes() == jpegs[0]


def test_a_key_missing_from_an_episode_is_named(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"cameras/wrist_left"):
        export_diffusion_policy(dataset, tmp_path / "dp.zarr", keys={"cameras/wrist_left": "camera_0"}, models=TINY)
    with pytest.raises(DatasetError, match=r"'a/b'"):
        export_diffusion_policy(dataset, tmp_path / "dp.zarr", keys={"state/position": "a/b"}, models=TINY)
    assert not (tmp_path / "dp.zarr").exists()


@pytest.mark.parametrize("grade", list(GRADES))
def test_min_grade_keeps_episodes_graded_that_or_better(dataset: Path, tmp_path: Path, grade: str) -> None:
    expected = [e.key for e in tiny_entries(dataset) if GRADES.index(e.grade) <= GRADES.index(grade)]
    out = tmp_path / "dp.zarr"

    if not expected:
        with pytest.raises(DatasetError, match="no episodes match"):
            export_diffusion_policy(dataset, out, models=TINY, min_grade=grade)
        return
    summary = export_diffusion_policy(dataset, out, models=TINY, min_grade=grade)
    assert list(summary.episode_keys) == expected


def test_robot_and_task_filters_select_episodes(dataset: Path, tmp_path: Path) -> None:
    summary = export_diffusion_policy(dataset, tmp_path / "a.zarr", robots="tiny-b")
    assert [e["robot_id"] for e in open_buffer(tmp_path / "a.zarr").attrs["refinery"]["episodes"]] == ["tiny-b"]
    assert summary.episodes == 1

    summary = export_diffusion_policy(dataset, tmp_path / "b.zarr", tasks="wave", models=HD)
    assert summary.episodes == 1 and summary.shapes["camera_0"][1:] == (96, 128, 3)


def test_a_selection_with_holes_in_a_segment_exports_exactly_its_rows(dataset: Path, tmp_path: Path) -> None:
    chosen = by_robot(dataset, "tiny-a", "tiny-c")
    (skipped,) = by_robot(dataset, "tiny-b")
    # The premise: tiny-b lies between the two in one data segment.
    assert chosen[0].data_segment == skipped.data_segment == chosen[1].data_segment
    assert chosen[0].end == skipped.offset and skipped.end == chosen[1].offset

    summary = export_diffusion_policy(dataset, tmp_path / "dp.zarr", robots=["tiny-a", "tiny-c"])

    data = open_buffer(tmp_path / "dp.zarr")["data"]
    assert list(summary.episode_keys) == [e.key for e in chosen]
    np.testing.assert_array_equal(data["robot_joint"][...], dataset_values(dataset, chosen, "state/position"))
    np.testing.assert_array_equal(data["timestamp"][...], dataset_values(dataset, chosen, "timestamps_ns") / 1e9)
    stored = [(tmp_path / "dp.zarr" / "data" / "camera_1" / f"{i}.0.0.0").read_bytes() for i in range(summary.steps)]
    assert stored == dataset_jpegs(dataset, chosen, "head_right")


def test_numeric_chunks_smaller_than_an_episode_hold_the_same_values(
    export: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_dp, "_NUMERIC_CHUNK_BYTES", 7 * 6 * 4)  # 7 rows of 6 float32
    monkeypatch.setattr(export_dp, "_ROWS_PER_READ", 16)

    export_diffusion_policy(dataset, tmp_path / "dp.zarr", models=TINY)

    assert zarray(tmp_path / "dp.zarr" / "data" / "robot_joint")["chunks"] == [7, 6]
    small, whole = open_buffer(tmp_path / "dp.zarr")["data"], open_buffer(export)["data"]
    for name in ("robot_joint", "action", "timestamp"):
        np.testing.assert_array_equal(small[name][...], whole[name][...])


def test_excluded_episodes_are_left_out(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds.zarr"
    shutil.copytree(dataset, copy)
    (gone,) = by_robot(copy, "tiny-b")
    with DatasetLock(copy):
        assert DatasetIndex(copy).curate([gone.entry_id], excluded=True, reason="operator error") == 1

    summary = export_diffusion_policy(copy, tmp_path / "dp.zarr", models=TINY)

    kept = tiny_entries(copy)
    assert gone.key not in summary.episode_keys and list(summary.episode_keys) == [e.key for e in kept]
    data = open_buffer(tmp_path / "dp.zarr")["data"]
    np.testing.assert_array_equal(data["action"][...], dataset_values(copy, kept, "action/position"))


def test_split_keeps_the_episodes_the_index_assigns_to_it(dataset: Path, tmp_path: Path) -> None:
    exported: list[str] = []
    for split in ("train", "val"):
        expected = [e.key for e in tiny_entries(dataset) if e.split == split]
        out = tmp_path / f"{split}.zarr"
        if not expected:
            with pytest.raises(DatasetError, match="no episodes match"):
                export_diffusion_policy(dataset, out, models=TINY, split=split)
            continue
        summary = export_diffusion_policy(dataset, out, models=TINY, split=split)
        assert list(summary.episode_keys) == expected
        exported += expected
    assert sorted(exported) == sorted(e.key for e in tiny_entries(dataset))


def test_a_selection_reads_nothing_of_the_segments_it_leaves_out(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds.zarr"
    shutil.copytree(dataset, copy)
    (hd,) = by_robot(copy, "hd-a")
    tiny_segments = {e.data_segment for e in tiny_entries(copy)}
    assert hd.data_segment not in tiny_segments
    for segment in tiny_segments:
        shutil.rmtree(copy / "data" / segment)

    summary = export_diffusion_policy(copy, tmp_path / "hd.zarr", models=HD)

    assert summary.episode_keys == (hd.key,)
    with pytest.raises(DatasetError, match="data segment"):
        export_diffusion_policy(copy, tmp_path / "tiny.zarr", models=TINY)
    assert not (tmp_path / "tiny.zarr").exists()


def test_progress_counts_every_episode_once_in_order(dataset: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []

    summary = export_diffusion_policy(
        dataset, tmp_path / "dp.zarr", models=TINY, progress=lambda done, total, key: calls.append((done, total, key))
    )

    assert calls == [(n, summary.episodes, key) for n, key in enumerate(summary.episode_keys, start=1)]


def test_rejected_episodes_are_never_exported(export: Path, dataset: Path) -> None:
    assert [e.robot_id for e in load_index(dataset) if not e.accepted] == ["tiny-x"]

    exported = [e["robot_id"] for e in open_buffer(export).attrs["refinery"]["episodes"]]
    assert sorted(exported) == ["tiny-a", "tiny-b", "tiny-c"]


def test_zip_output_reads_with_zipstore_like_the_folder(export: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.zarr.zip"
    summary = export_diffusion_policy(dataset, out, models=TINY, zip=True)

    assert out.is_file() and summary.bytes == out.stat().st_size
    with zipfile.ZipFile(out) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert ".zgroup" in zf.namelist() and "meta/episode_ends/.zarray" in zf.namelist()
        arrays = sorted(n.split("/")[1] for n in zf.namelist() if n.startswith("data/") and n.endswith("/.zarray"))
        assert arrays == data_names(export)
        for key in ("data/camera_0/0.0.0.0", f"data/camera_0/{summary.steps - 1}.0.0.0"):
            assert zf.read(key) == (export / key).read_bytes()
    store = zarr.storage.ZipStore(out, mode="r")
    try:
        root = zarr.open_group(store, mode="r", zarr_format=2)
        folder = open_buffer(export)
        np.testing.assert_array_equal(root["meta"]["episode_ends"][...], folder["meta"]["episode_ends"][...])
        np.testing.assert_array_equal(root["data"]["robot_joint"][...], folder["data"]["robot_joint"][...])
    finally:
        store.close()


def test_mixed_camera_sizes_are_refused_naming_the_key_and_the_fix(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        export_diffusion_policy(dataset, tmp_path / "dp.zarr")

    message = str(info.value)
    assert "cameras/head_left" in message and "(48, 64, 3)" in message and "(96, 128, 3)" in message
    assert "--resize" in message and "--model" in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_resize_puts_mixed_camera_sizes_in_one_buffer(dataset: Path, tmp_path: Path) -> None:
    summary = export_diffusion_policy(dataset, tmp_path / "dp.zarr", image_size=(32, 40), jpeg_quality=80)

    root = open_buffer(tmp_path / "dp.zarr")
    assert summary.episodes == 4 and root["meta"]["episode_ends"][-1] == summary.steps
    assert zarray(tmp_path / "dp.zarr" / "data" / "camera_0")["shape"] == [summary.steps, 32, 40, 3]
    last = (tmp_path / "dp.zarr" / "data" / "camera_0" / f"{summary.steps - 1}.0.0.0").read_bytes()
    assert cv2.imdecode(np.frombuffer(last, np.uint8), cv2.IMREAD_COLOR).shape == (32, 40, 3)
    assert zarray(tmp_path / "dp.zarr" / "data" / "camera_0")["compressor"] == {"id": "imagecodecs_jpeg", "level": 80}


def test_blosc_image_codec_stores_decoded_rgb_frames(dataset: Path, tmp_path: Path) -> None:
    export_diffusion_policy(dataset, tmp_path / "dp.zarr", models=TINY, image_codec="blosc")

    frames = open_buffer(tmp_path / "dp.zarr")["data"]["camera_0"][...]
    jpegs = dataset_jpegs(dataset, tiny_entries(dataset), "head_left")
    expected = np.stack([decode_jpeg_chunk(j, (48, 64, 3)) for j in jpegs])
    np.testing.assert_array_equal(frames, expected)
    assert set(zarray(tmp_path / "dp.zarr" / "data" / "camera_0")["compressor"]) == BLOSC_KEYS


def test_existing_output_is_refused_unless_overwrite(export: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "dp.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    with pytest.raises(DatasetError, match="already exists"):
        export_diffusion_policy(dataset, out, models=TINY)
    assert (out / "keep.txt").read_text() == "mine"
    export_diffusion_policy(dataset, out, models=TINY, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "meta" / "episode_ends" / ".zarray").exists()


def test_a_failed_export_leaves_nothing_behind(dataset: Path, tmp_path: Path) -> None:
    def fail(done: int, total: int, key: str) -> None:
        raise KeyboardInterrupt

    for zip_output in (False, True):
        with pytest.raises(KeyboardInterrupt):
            export_diffusion_policy(dataset, tmp_path / "dp.zarr", models=TINY, zip=zip_output, progress=fail)
    assert not list(tmp_path.iterdir())


def test_bad_arguments_are_refused_before_writing(dataset: Path, tmp_path: Path) -> None:
    for options in ({"image_codec": "png"}, {"min_grade": "E"}, {"image_size": (0, 10)}, {"jpeg_quality": 0}):
        with pytest.raises(DatasetError):
            export_diffusion_policy(dataset, tmp_path / "dp.zarr", models=TINY, **options)
    assert not list(tmp_path.iterdir())


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    with pytest.raises(StoreError, match="refinery process"):
        export_diffusion_policy(tmp_path / "empty", tmp_path / "dp.zarr")
    assert not (tmp_path / "dp.zarr").exists()


def test_the_command_line_exports_with_the_common_filters(dataset: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dp.zarr"

    code = refinery(["export", str(dataset), "--format", "diffusion-policy", str(out), "--model", TINY,
                     "--key", "state/position=agent_pos", "--min-grade", "F"])

    assert code == 0
    assert data_names(out) == ["agent_pos"]
    assert "agent_pos" in capsys.readouterr().out


def test_a_bad_common_option_is_refused_by_name_before_writing(dataset: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = refinery(["export", str(dataset), str(tmp_path / "dp.zarr"), "--format", "diffusion-policy",
                     "--model", TINY, "--resize", "not-a-size"])

    assert code == 2
    assert "--resize" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

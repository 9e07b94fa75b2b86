"""LeRobot dataset import: raw episodes that hold the dataset's rows and video frames, then processing.

The fixture ``tests/data/lerobot-v3-tiny`` was written by LeRobot 0.6.1's own
writer (``tools/make_lerobot_fixture.py``): three episodes (30, 36, 42 rows at
15 fps) of a 6-joint arm, two 64x48 AV1 cameras with all episodes in one
video file each. The expected values are read from its Parquet files with
pyarrow here; the expected pictures are the ones the fixture script drew.
``tests/data/lerobot-v21-tiny`` holds the same episodes in the v2.1 layout
(checked by the script with LeRobot's own v2.1 -> v3.0 converter).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main
from pipeline.dataset.store import Dataset, load_index
from pipeline.errors import ConfigError
from pipeline.interop.lerobot_import import LeRobotFormatError, import_lerobot
from pipeline.process_job import JobOptions, run_process_job
from pipeline.raw_store import RawEpisodeReader, verify_episode
from tools import make_lerobot_fixture as fixture

FIXTURE = Path(__file__).parent / "data" / "lerobot-v3-tiny"
FIXTURE_V21 = Path(__file__).parent / "data" / "lerobot-v21-tiny"  # the same episodes in the v2.1 layout
BASE_NS = 1_800_000_000_000_000_000
EPISODE_GAP_NS = 1_000_000_000
VIDEO = "videos/observation.images.front/chunk-000/file-000.mp4"
EPISODES_TABLE = "meta/episodes/chunk-000/file-000.parquet"
# AV1 at crf 30 then JPEG at 90 on 64x48 pictures: the right frame is well above this, a
# neighbouring frame (the square moved) well below.
MIN_PSNR_DB = 24.0


def source_rows() -> dict[str, np.ndarray]:
    table = pq.read_table(FIXTURE / "data/chunk-000/file-000.parquet")
    return {
        "state": np.array(table.column("observation.state").to_pylist(), dtype=np.float64),
        "action": np.array(table.column("action").to_pylist(), dtype=np.float64),
        "timestamp": table.column("timestamp").to_numpy().astype(np.float64),
        "episode": table.column("episode_index").to_numpy(),
    }


def decode_rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def copy_fixture(tmp_path: Path) -> Path:
    src = tmp_path / "lerobot-v3-tiny"
    shutil.copytree(FIXTURE, src)
    return src


def edit_info(src: Path, **changes) -> None:
    info = json.loads((src / "meta/info.json").read_text())
    info.update(changes)
    (src / "meta/info.json").write_text(json.dumps(info))


def edit_episodes(src: Path, column: str, episode: int, value) -> None:
    path = src / EPISODES_TABLE
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[episode] = value
    index = table.column_names.index(column)
    table = table.set_column(index, column, pa.array(values, type=table.schema.field(column).type))
    pq.write_table(table, path)


def nothing_written(data: Path) -> bool:
    return not list(data.rglob("*.h5")) and not list(data.rglob("*.journal"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("lerobot")
    result = import_lerobot(FIXTURE, work / "data", start_ns=BASE_NS)
    return work, result


@pytest.fixture(scope="module")
def processed(imported, ray_session: None) -> Path:
    work, _ = imported
    dataset = work / "ds.zarr"
    summary = run_process_job(JobOptions(raw_dir=work / "data", dataset=dataset))
    assert summary.processed == 3 and not summary.failed, summary.lines()
    return dataset


# --- raw episodes ----------------------------------------------------------------------


def test_each_episode_becomes_one_sealed_raw_episode(imported) -> None:
    work, result = imported

    assert len(result.imported) == 3 and not result.failed and not result.existing
    assert [p.stem[-6:] for p in result.imported] == ["000000", "000001", "000002"]
    assert all(p.parent == work / "data" / "raw" / "so100_follower" for p in result.imported)
    assert all(verify_episode(p).ok for p in result.imported)
    assert not list((work / "data").rglob("*.journal"))


def test_states_and_actions_equal_the_parquet_rows_sample_by_sample(imported) -> None:
    _, result = imported
    rows = source_rows()

    for episode, path in enumerate(result.imported):
        mine = rows["episode"] == episode
        with RawEpisodeReader(path) as raw:
            joints = raw.numeric("joint_state")
            action = raw.numeric("action")
        np.testing.assert_array_equal(joints["position"], rows["state"][mine])
        np.testing.assert_array_equal(action["position"], rows["action"][mine])
        assert not joints["velocity"].any() and not joints["effort"].any()  # LeRobot records neither
        assert joints["source_index"].tolist() == list(range(int(mine.sum())))


def test_samples_and_frames_are_stamped_with_the_dataset_timestamps(imported) -> None:
    _, result = imported
    rows = source_rows()
    start = BASE_NS
    for episode, path in enumerate(result.imported):
        timestamp = rows["timestamp"][rows["episode"] == episode]
        expected = start + np.round(timestamp * 1e9).astype(np.int64)
        with RawEpisodeReader(path) as raw:
            assert raw.numeric("joint_state")["capture_ns"].tolist() == expected.tolist()
            assert raw.numeric("action")["capture_ns"].tolist() == expected.tolist()
            for camera in ("front", "wrist"):
                assert raw.camera(camera)["capture_ns"].tolist() == expected.tolist()
        # the next episode starts a second after this one's last frame period
        start += round(timestamp.size * 1e9 / fixture.FPS) + EPISODE_GAP_NS


def test_frames_are_the_video_frames_at_the_rows_times_within_psnr(imported) -> None:
    _, result = imported

    for episode, path in enumerate(result.imported):
        length = fixture.EPISODES[episode][0]
        phase = 0.7 * episode
        with RawEpisodeReader(path) as raw:
            front = raw.frames("front")
            wrist = raw.frames("wrist")
        assert len(front) == len(wrist) == length
        for i in range(length):
            t = i / fixture.FPS
            image = decode_rgb(front[i])
            assert psnr(image, fixture.picture(t, phase)) > MIN_PSNR_DB, (episode, i)
            assert psnr(decode_rgb(wrist[i]), fixture.picture(t + 1.0, phase + 2.0)[:, ::-1]) > MIN_PSNR_DB
            if i + 1 < length:  # and not its neighbour: the frame is the right one, not just similar
                assert psnr(image, fixture.picture((i + 1) / fixture.FPS, phase)) < psnr(
                    image, fixture.picture(t, phase))


def test_task_text_comes_from_the_task_table(imported) -> None:
    _, result = imported

    tasks = []
    for path in result.imported:
        with RawEpisodeReader(path) as raw:
            events = raw.events()
            tasks.append(raw.attrs["task"])
        assert [e["kind"] for e in events] == ["start", "label", "stop"]
        assert "lerobot-v3-tiny" in events[1]["text"]
    assert tasks == [task for _, task in fixture.EPISODES]


def test_generated_config_has_the_dataset_joints_and_cameras_with_limits_unknown(imported) -> None:
    _, result = imported
    config = result.config

    assert config.model == "so100_follower" and result.robot_id == "so100_follower"
    assert config.joint_names == ("shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos",
                                  "wrist_roll.pos", "gripper.pos")
    assert config.joint_state_hz == config.action_hz == 15.0
    assert all(not j.position_known and not j.velocity_known and not j.effort_known for j in config.joints)
    assert all(j.standard == "" for j in config.joints)
    assert [(c.name, c.width, c.height, c.fps, c.latency_ms) for c in config.cameras] == [
        ("front", 64, 48, 15.0, 0.0), ("wrist", 64, 48, 15.0, 0.0)]
    with RawEpisodeReader(result.imported[0]) as raw:  # the raw episode keeps it, limits as null
        stored = raw.robot_config
    assert stored["joints"][0]["position"] is None and stored["joints"][0]["velocity"] is None


def test_importing_again_skips_what_is_there(imported) -> None:
    work, result = imported
    before = [p.stat().st_mtime_ns for p in result.imported]

    again = import_lerobot(FIXTURE, work / "data", start_ns=BASE_NS)

    assert not again.imported and again.existing == result.imported
    assert [p.stat().st_mtime_ns for p in result.imported] == before


def test_velocity_and_effort_features_are_imported_when_the_dataset_has_them(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    info = json.loads((src / "meta/info.json").read_text())
    info["features"]["observation.velocity"] = dict(info["features"]["observation.state"])
    info["features"]["observation.effort"] = dict(info["features"]["observation.state"])
    (src / "meta/info.json").write_text(json.dumps(info))
    data = src / "data/chunk-000/file-000.parquet"
    table = pq.read_table(data)
    state = np.array(table.column("observation.state").to_pylist(), dtype=np.float32)
    kind = table.schema.field("observation.state").type
    table = table.append_column("observation.velocity", pa.array(list(state * 2), type=kind))
    table = table.append_column("observation.effort", pa.array(list(state - 1), type=kind))
    pq.write_table(table, data)

    result = import_lerobot(src, tmp_path / "data")

    first = table.column("episode_index").to_numpy() == 0
    with RawEpisodeReader(result.imported[0]) as raw:
        joints = raw.numeric("joint_state")
    np.testing.assert_array_equal(joints["velocity"], (state * 2)[first].astype(np.float64))
    np.testing.assert_array_equal(joints["effort"], (state - 1)[first].astype(np.float64))


def test_a_real_robot_config_gives_limits_and_its_joint_order(tmp_path: Path, imported) -> None:
    _, result = imported
    joints = list(reversed(fixture.JOINTS))
    config = {
        "model": "so100", "vendor": "TheRobotStudio", "source": "test",
        "streams": {"joint_state_hz": 30.0, "action_hz": 30.0},
        "joints": [{"name": n, "standard": None, "position": [-3.0, 3.0], "velocity": 10.0, "effort": 3.0}
                   for n in joints],
        "cameras": [{"name": "front", "width": 640, "height": 480, "fps": 30.0, "latency_ms": 40.0}],
    }
    (tmp_path / "so100.yaml").write_text(yaml.safe_dump(config))

    mine = import_lerobot(FIXTURE, tmp_path / "data", config=tmp_path / "so100.yaml", robot_id="arm-1")

    assert mine.config.joint_names == tuple(joints) and mine.config.joints[0].position_known
    assert mine.config.camera("front").latency_ms == 40.0 and mine.config.camera("front").width == 64
    with RawEpisodeReader(mine.imported[0]) as raw, RawEpisodeReader(result.imported[0]) as generated:
        np.testing.assert_array_equal(raw.numeric("joint_state")["position"],
                                      generated.numeric("joint_state")["position"][:, ::-1])


def test_a_robot_config_with_other_joints_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not in the config"):
        import_lerobot(FIXTURE, tmp_path / "data", config="aloha")
    assert nothing_written(tmp_path / "data")


def test_a_v21_dataset_imports_the_same_rows_and_pictures(imported, tmp_path: Path) -> None:
    _, v3 = imported

    v21 = import_lerobot(FIXTURE_V21, tmp_path / "data", start_ns=BASE_NS)

    assert len(v21.imported) == 3 and not v21.failed and v21.config.joint_names == v3.config.joint_names
    for episode, (old, new) in enumerate(zip(v21.imported, v3.imported, strict=True)):
        with RawEpisodeReader(old) as a, RawEpisodeReader(new) as b:
            for stream in ("joint_state", "action"):
                for key, values in b.numeric(stream).items():
                    if key != "arrival_ns":
                        np.testing.assert_array_equal(a.numeric(stream)[key], values, err_msg=f"{stream}/{key}")
            assert a.attrs["task"] == b.attrs["task"]
            frames = a.frames("front")
        assert len(frames) == fixture.EPISODES[episode][0]
        for i, jpeg in enumerate(frames):
            assert psnr(decode_rgb(jpeg), fixture.front_picture(i / fixture.FPS, episode)) > MIN_PSNR_DB


def test_a_v21_template_with_v3_fields_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "v21"
    shutil.copytree(FIXTURE_V21, src)
    edit_info(src, data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")

    with pytest.raises(LeRobotFormatError, match=r"may use only \{episode_chunk\}, \{episode_index\}"):
        import_lerobot(src, tmp_path / "data")


# --- bad datasets ----------------------------------------------------------------------


def test_missing_info_json_is_refused_naming_the_file(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    (src / "meta/info.json").unlink()

    with pytest.raises(LeRobotFormatError, match=r"meta/info.json.*is this a LeRobot dataset"):
        import_lerobot(src, tmp_path / "data")
    assert nothing_written(tmp_path / "data")


def test_missing_episode_table_is_refused(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    shutil.rmtree(src / "meta/episodes")

    with pytest.raises(LeRobotFormatError, match="episode table is missing"):
        import_lerobot(src, tmp_path / "data")
    assert nothing_written(tmp_path / "data")


@pytest.mark.parametrize("template, words", [
    ("../../../etc/{chunk_index}/{file_index}.parquet", "leaves the dataset folder"),
    ("/etc/{chunk_index}-{file_index}.parquet", "leaves the dataset folder"),
    ("data/{chunk_index.__class__}/{file_index}.parquet", "may use only"),
    ("data/{chunk_index:0999999999d}/{file_index}.parquet", "plain integer format"),
    ("data/{episode_index}.parquet", "may use only"),
])
def test_a_data_path_template_that_escapes_or_is_not_plain_is_refused(tmp_path: Path, template: str,
                                                                       words: str) -> None:
    src = copy_fixture(tmp_path)
    edit_info(src, data_path=template)

    with pytest.raises(LeRobotFormatError, match=words):
        import_lerobot(src, tmp_path / "data")
    assert nothing_written(tmp_path / "data")


def test_a_path_through_a_symlink_out_of_the_dataset_is_refused(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    outside = tmp_path / "elsewhere"
    (src / "data/chunk-000").rename(outside)
    (src / "data/chunk-000").symlink_to(outside)

    with pytest.raises(LeRobotFormatError, match="leads out of the dataset folder"):
        import_lerobot(src, tmp_path / "data")


@pytest.mark.parametrize("changes, field", [
    ({"codebase_version": "v1.6"}, "codebase_version"),
    ({"fps": -15}, "fps"),
    ({"fps": "15"}, "fps"),
    ({"features": {"observation.state": {"dtype": "float32", "shape": [6], "names": None}}}, "features.action"),
])
def test_bad_info_fields_are_refused_naming_the_field(tmp_path: Path, changes: dict, field: str) -> None:
    src = copy_fixture(tmp_path)
    edit_info(src, **changes)

    with pytest.raises(LeRobotFormatError) as caught:
        import_lerobot(src, tmp_path / "data")
    assert caught.value.field == field and caught.value.file == src / "meta/info.json"


@pytest.mark.parametrize("key", ["observation.images/../../x", "observation..images.x", ".hidden", "a" * 200])
def test_a_feature_key_that_could_build_a_path_is_refused(tmp_path: Path, key: str) -> None:
    src = copy_fixture(tmp_path)
    info = json.loads((src / "meta/info.json").read_text())
    info["features"][key] = info["features"].pop("observation.images.wrist")
    (src / "meta/info.json").write_text(json.dumps(info))

    with pytest.raises(LeRobotFormatError, match="feature key"):
        import_lerobot(src, tmp_path / "data")


def test_an_oversized_info_json_is_not_read(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    with (src / "meta/info.json").open("ab") as info:
        info.truncate(17 << 20)  # sparse: 17 MiB of zeros after the JSON

    with pytest.raises(LeRobotFormatError, match="at most"):
        import_lerobot(src, tmp_path / "data")


def test_an_action_of_another_width_than_the_state_is_refused(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    info = json.loads((src / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [7]
    (src / "meta/info.json").write_text(json.dumps(info))

    with pytest.raises(LeRobotFormatError, match="one target per joint"):
        import_lerobot(src, tmp_path / "data")


def test_joint_names_are_made_config_names_and_duplicates_refused(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    info = json.loads((src / "meta/info.json").read_text())
    info["features"]["observation.state"]["names"] = ["a b", "c/d", "e", "f", "g", "h"]
    info["features"]["action"]["names"] = ["a b", "c/d", "e", "f", "g", "h"]
    (src / "meta/info.json").write_text(json.dumps(info))
    assert import_lerobot(src, tmp_path / "data").config.joint_names == ("a_b", "c_d", "e", "f", "g", "h")

    info["features"]["observation.state"]["names"] = ["a b", "a/b", "e", "f", "g", "h"]
    (src / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotFormatError, match="'a_b' appears twice"):
        import_lerobot(src, tmp_path / "data2")


def test_an_episode_whose_rows_disagree_with_the_table_is_skipped_and_the_others_imported(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    edit_episodes(src, "episode_index", 1, 7)  # the table says episode 7; the data file has no row of it

    result = import_lerobot(src, tmp_path / "data")

    assert [p.stem[-6:] for p in result.imported] == ["000000", "000002"]
    assert len(result.failed) == 1 and result.failed[0][0] == 7
    assert "holds 0 rows of episode 7, the episode table says 36" in result.failed[0][1]
    assert not list((tmp_path / "data").rglob("*.journal"))


def test_an_episode_of_the_wrong_length_is_skipped(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    edit_episodes(src, "length", 2, 40)

    result = import_lerobot(src, tmp_path / "data")

    assert len(result.imported) == 2 and [i for i, _ in result.failed] == [2]
    assert "holds 42 rows of episode 2, the episode table says 40" in result.failed[0][1]


def test_a_truncated_video_skips_the_episodes_it_no_longer_holds(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    video = src / VIDEO
    video.write_bytes(video.read_bytes()[: video.stat().st_size * 55 // 100])

    result = import_lerobot(src, tmp_path / "data")

    assert [p.stem[-6:] for p in result.imported] == ["000000"]
    assert [i for i, _ in result.failed] == [1, 2]
    assert all("observation.images.front/chunk-000/file-000.mp4" in why for _, why in result.failed)
    assert not list((tmp_path / "data").rglob("*.journal"))


def test_a_missing_video_file_stops_the_import_before_anything_is_written(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    (src / VIDEO).unlink()

    with pytest.raises(LeRobotFormatError, match="video file missing"):
        import_lerobot(src, tmp_path / "data")
    assert nothing_written(tmp_path / "data")


def test_a_video_of_another_size_than_info_json_is_refused(tmp_path: Path) -> None:
    src = copy_fixture(tmp_path)
    info = json.loads((src / "meta/info.json").read_text())
    info["features"]["observation.images.front"]["shape"] = [96, 128, 3]
    (src / "meta/info.json").write_text(json.dumps(info))

    with pytest.raises(LeRobotFormatError, match="video is 64x48, info.json says 128x96"):
        import_lerobot(src, tmp_path / "data")


def test_the_cli_fails_with_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = copy_fixture(tmp_path)
    edit_info(src, video_path="../{video_key}/{chunk_index}/{file_index}.mp4")

    code = main(["import", "lerobot", str(src), str(tmp_path / "data")])

    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "video_path" in err[0] and "meta/info.json" in err[0] and "leaves the dataset folder" in err[0]


def test_the_cli_lists_skipped_episodes_with_their_reasons(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = copy_fixture(tmp_path)
    edit_episodes(src, "length", 0, 3)

    code = main(["import", "lerobot", str(src), str(tmp_path / "data"), "--robot-id", "arm-7"])

    out = capsys.readouterr().out
    assert code == 0
    assert "2 episodes imported, 0 imported before, 1 not imported" in out
    assert "episode 0: data/chunk-000/file-000.parquet holds 30 rows of episode 0" in out
    assert str(tmp_path / "data" / "raw" / "arm-7") in out


# --- processing ------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_processing_grades_the_imported_episodes(imported, processed: Path) -> None:
    _, result = imported
    entries = load_index(processed)

    assert {e.raw_episode_id for e in entries} == {p.stem for p in result.imported}
    accepted = [e for e in entries if e.accepted]
    assert len(accepted) == 3, [(e.raw_episode_id, e.reasons) for e in entries]
    dataset = Dataset(processed)
    for entry in accepted:
        assert entry.grade in ("A", "B", "C") and entry.model == "so100_follower"
        assert entry.cameras == ["front", "wrist"]
        assert dataset.numeric(entry, "state/position").shape == (entry.length, 6)
        assert dataset.frame_size(entry, "front") == (48, 64)
        decisions = json.loads(entry.decisions_json)
        assert {d["kind"] for d in decisions} == {"limits_unknown"}
        assert all(d["action"] == "skip" for d in decisions)
        quality = entry.quality
        unmeasured = " ".join(quality["notes"])
        assert "position limits of 6 joint(s) unknown" in unmeasured
        assert "velocity limits unknown" in unmeasured and "effort limits unknown" in unmeasured

"""ROS 2 bag import: raw episodes that hold the bag's messages sample by sample, then the same processing.

Bags are real: written by rosbags' own writer in both storages (MCAP and
SQLite3) with the ROS 2 Humble and Jazzy type stores, at several rates (joints
200 Hz, commands 50 Hz, cameras 15 Hz), with a dropped frame, an out-of-order
stamp and a missing header stamp (tests/rosbag_synthetic.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.dataset.store import load_index
from pipeline.errors import ConfigError
from pipeline.interop.rosbag_import import RosbagError, bag_paths, import_rosbags
from pipeline.interop.rosbag_map import load_bag_map
from pipeline.process_job import JobOptions, run_process_job
from pipeline.raw_store import RawEpisodeReader, verify_episode
from tests.conftest import TINY_ROBOT
from tests.rosbag_synthetic import (
    COMMAND_TOPIC,
    JOINT_TOPIC,
    JPEG_TOPIC,
    MARKER_TOPIC,
    RAW_TOPIC,
    ROBOT_JOINTS,
    T0_NS,
    BagContent,
    Faults,
    mapping_yaml,
    picture,
    ros_types,
    write_bag,
    write_messages,
)

NO_FAULTS = Faults(None, None, None)
CASES = [("mcap", "humble"), ("sqlite3", "jazzy")]


def write_map(folder: Path, **overrides: object) -> Path:
    path = folder / "map.yaml"
    path.write_text(mapping_yaml(TINY_ROBOT, **overrides))
    return path


def decode_rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def raw_files(data: Path) -> list[Path]:
    return sorted((data / "raw").rglob("*.h5")) if (data / "raw").exists() else []


def decisions(ep: RawEpisodeReader, kind: str) -> list[dict]:
    return [e for e in ep.events() if e.get("decision") == kind]


@pytest.fixture(scope="module", params=CASES, ids=[f"{s}-{d}" for s, d in CASES])
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, Path, BagContent]:
    """One bag of the storage and ROS release, imported; (bag, raw episode, what the bag holds)."""
    storage, distro = request.param
    work = tmp_path_factory.mktemp(f"rosbag-{storage}")
    content = write_bag(work / "bag", storage, distro=distro)
    result = import_rosbags(work / "bag", work / "data", write_map(work))
    assert result.written == 1 and not result.refused and not result.skipped, result
    return work / "bag", result.episodes[0], content


# --- raw episodes, sample by sample ------------------------------------------------------


def test_a_bag_becomes_one_sealed_raw_episode_named_after_it(imported) -> None:
    bag, path, _ = imported
    assert path.parent.name == "tiny-ros" and path.stem.startswith("tiny-ros-bag-")
    assert verify_episode(path).ok
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "complete" and ep.attrs["task"] == "wave both arms"
        assert ep.attrs["operator"] == "op-ros"
        assert ep.events()[1]["text"] == f"imported from ROS 2 bag {bag.name}"


def test_joint_states_are_in_robot_order_sample_by_sample(imported) -> None:
    _, path, content = imported
    with RawEpisodeReader(path) as ep:
        js = ep.numeric("joint_state")
    np.testing.assert_array_equal(js["position"], np.array(content.position))
    np.testing.assert_array_equal(js["velocity"], np.array(content.velocity))
    np.testing.assert_array_equal(js["effort"], np.array(content.effort))
    np.testing.assert_array_equal(js["source_index"], np.arange(len(content.position)))


def test_header_stamps_are_capture_times_and_receive_times_arrival_times(imported) -> None:
    _, path, content = imported
    with RawEpisodeReader(path) as ep:
        js = ep.numeric("joint_state")
    stamps = np.array(content.joint_stamp)
    receive = np.array(content.joint_receive)
    np.testing.assert_array_equal(js["arrival_ns"], receive)
    has_stamp = stamps != 0
    np.testing.assert_array_equal(js["capture_ns"][has_stamp], stamps[has_stamp])


def test_an_out_of_order_stamp_is_kept_as_recorded(imported) -> None:
    _, path, content = imported
    with RawEpisodeReader(path) as ep:
        capture = ep.numeric("joint_state")["capture_ns"]
    assert capture[100] == content.joint_stamp[100] < capture[99]


def test_a_missing_header_stamp_takes_the_receive_time_and_the_decision_is_recorded(imported) -> None:
    _, path, content = imported
    with RawEpisodeReader(path) as ep:
        capture = ep.numeric("joint_state")["capture_ns"]
        recorded = [d for d in decisions(ep, "receive_time_as_capture_time") if d["stream"] == "joint_state"]
    assert content.joint_stamp[150] == 0
    assert capture[150] == content.joint_receive[150]
    assert len(recorded) == 1 and recorded[0]["count"] == 1 and recorded[0]["source_indices"] == [150]


def test_commands_without_header_take_their_receive_times_and_say_so(imported) -> None:
    _, path, content = imported
    with RawEpisodeReader(path) as ep:
        action = ep.numeric("action")
        recorded = [d for d in decisions(ep, "receive_time_as_capture_time") if d["stream"] == "action"]
    np.testing.assert_array_equal(action["position"], np.array(content.command))
    np.testing.assert_array_equal(action["capture_ns"], np.array(content.command_receive))
    np.testing.assert_array_equal(action["arrival_ns"], np.array(content.command_receive))
    assert recorded[0]["count"] == len(content.command) and "no header" in recorded[0]["text"]


def test_jpeg_frames_pass_through_byte_for_byte_without_the_dropped_one(imported) -> None:
    _, path, content = imported
    with RawEpisodeReader(path) as ep:
        frames = ep.frames("head_left")
        cols = ep.camera("head_left")
    assert len(frames) == int(1.5 * 15) - 1
    assert frames == content.jpeg
    np.testing.assert_array_equal(cols["capture_ns"], np.array(content.frame_stamp))
    np.testing.assert_array_equal(cols["arrival_ns"], np.array(content.frame_receive))
    gap = np.diff(cols["capture_ns"]).max()
    assert gap == pytest.approx(2e9 / 15, abs=1e6)  # the dropped frame is a double interval


@pytest.mark.parametrize("camera", ["head_right", "wrist"])
def test_raw_and_png_images_are_encoded_as_jpeg_in_their_colours(imported, camera: str) -> None:
    _, path, content = imported
    with RawEpisodeReader(path) as ep:
        frames = ep.frames(camera)
    assert len(frames) == len(content.image)
    for jpeg, rgb in zip(frames, content.image):
        assert jpeg[:2] == b"\xff\xd8"
        decoded = decode_rgb(jpeg).astype(int)
        assert np.abs(decoded - rgb).mean() < 6
        assert decoded[:, :8, 0].mean() > 150 and decoded[:, :8, 2].mean() < 90  # red stays red


def test_joint_names_the_robot_lacks_are_left_out_and_listed(imported) -> None:
    _, path, _ = imported
    with RawEpisodeReader(path) as ep:
        recorded = decisions(ep, "extra_joints_left_out")
        assert ep.numeric("joint_state")["position"].shape[1] == 6
    assert recorded[0]["joints"] == ["head_pan_joint"]


def test_the_episode_config_has_the_bag_cameras_and_measured_rates(imported) -> None:
    _, path, _ = imported
    with RawEpisodeReader(path) as ep:
        config = ep.robot_config
    cameras = {c["name"]: c for c in config["cameras"]}
    assert sorted(cameras) == ["head_left", "head_right", "wrist"]
    assert (cameras["head_left"]["width"], cameras["head_left"]["height"]) == (32, 24)
    assert cameras["head_left"]["fps"] == pytest.approx(15, rel=0.02)
    assert cameras["head_left"]["latency_ms"] == 30  # from the robot config
    assert cameras["wrist"]["latency_ms"] == 20  # from the mapping
    assert config["streams"]["joint_state_hz"] == pytest.approx(200, rel=0.05)
    assert config["streams"]["action_hz"] == pytest.approx(50, rel=0.02)


def test_importing_again_skips_what_is_there(imported) -> None:
    bag, path, _ = imported
    before = path.stat().st_mtime_ns
    result = import_rosbags(bag, path.parents[2], bag.parent / "map.yaml")
    assert result.written == 0 and result.episodes == [path]
    assert path.stat().st_mtime_ns == before


def test_capture_time_receive_ignores_header_stamps_and_says_so(tmp_path: Path) -> None:
    content = write_bag(tmp_path / "bag", "sqlite3", seconds=0.5)
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", write_map(tmp_path, capture_time="receive"))
    with RawEpisodeReader(result.episodes[0]) as ep:
        js = ep.numeric("joint_state")
        frames = ep.camera("head_left")
        recorded = decisions(ep, "receive_time_as_capture_time")
    np.testing.assert_array_equal(js["capture_ns"], np.array(content.joint_receive))
    np.testing.assert_array_equal(frames["capture_ns"], np.array(content.frame_receive))
    assert [d["stream"] for d in recorded] == ["all"]


def test_a_joint_state_command_topic_is_matched_by_name(tmp_path: Path) -> None:
    T = ros_types()
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="")
    reversed_names = list(reversed(ROBOT_JOINTS))
    msgs: list[tuple[int, str, object]] = []
    for i in range(10):
        msgs.append((T0_NS + i * 5_000_000, JOINT_TOPIC, T["sensor_msgs/msg/JointState"](
            header=header, name=list(ROBOT_JOINTS), position=np.zeros(6), velocity=np.zeros(0), effort=np.zeros(0))))
        msgs.append((T0_NS + i * 5_000_000 + 1, "/joint_commands", T["sensor_msgs/msg/JointState"](
            header=header, name=reversed_names, position=np.arange(6.0) + i, velocity=np.zeros(0),
            effort=np.zeros(0))))
    types = {JOINT_TOPIC: "sensor_msgs/msg/JointState", "/joint_commands": "sensor_msgs/msg/JointState"}
    write_messages(tmp_path / "bag", "sqlite3", types, msgs)
    bag_map = tmp_path / "map.yaml"
    bag_map.write_text(yaml.safe_dump({"robot": {"config": str(TINY_ROBOT), "id": "tiny-ros"},
                                       "joint_state": {"topic": JOINT_TOPIC}, "action": {"topic": "/joint_commands"}}))
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", bag_map)
    with RawEpisodeReader(result.episodes[0]) as ep:
        action = ep.numeric("action")["position"]
    np.testing.assert_array_equal(action, [np.arange(6.0)[::-1] + i for i in range(10)])


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_single_storage_file_imports_like_its_bag_folder(tmp_path: Path, storage: str) -> None:
    content = write_bag(tmp_path / "bag", storage, seconds=0.5, faults=NO_FAULTS)
    suffix = ".mcap" if storage == "mcap" else ".db3"
    (file,) = (tmp_path / "bag").glob(f"*{suffix}")
    assert bag_paths(file) == [file]
    result = import_rosbags(file, tmp_path / "data", write_map(tmp_path))
    with RawEpisodeReader(result.episodes[0]) as ep:
        np.testing.assert_array_equal(ep.numeric("joint_state")["position"], np.array(content.position))
        assert ep.frames("head_left") == content.jpeg


# --- cutting episodes --------------------------------------------------------------------


def test_a_marker_topic_cuts_episodes_from_the_first_start_to_the_next_stop(tmp_path: Path) -> None:
    markers = [(0.05, "stop"), (0.1, "start"), (0.3, "start"), (0.6, "stop"), (0.8, "start"), (1.4, "stop")]
    content = write_bag(tmp_path / "bag", "mcap", faults=NO_FAULTS, markers=markers)
    bag_map = write_map(tmp_path, episodes={"split": "topic", "topic": MARKER_TOPIC})
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", bag_map)
    assert result.written == 2
    receive = np.array(content.joint_receive)
    for path, (a, b) in zip(result.episodes, [(0.1, 0.6), (0.8, 1.4)]):
        with RawEpisodeReader(path) as ep:
            arrival = ep.numeric("joint_state")["arrival_ns"]
        inside = receive[(receive >= T0_NS + a * 1e9) & (receive <= T0_NS + b * 1e9)]
        np.testing.assert_array_equal(arrival, inside)
    kept = 0
    for path in result.episodes:
        with RawEpisodeReader(path) as ep:
            kept += len(ep.numeric("joint_state")["arrival_ns"])
    assert result.skipped[f"{JOINT_TOPIC}: received outside every episode"] == len(receive) - kept


def test_a_gap_in_the_joint_states_cuts_episodes(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", "sqlite3", faults=NO_FAULTS, joint_gap=(0.6, 1.0))
    bag_map = write_map(tmp_path, episodes={"split": "gap", "gap_s": 0.2})
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", bag_map)
    assert result.written == 2
    with RawEpisodeReader(result.episodes[0]) as first, RawEpisodeReader(result.episodes[1]) as second:
        assert first.numeric("joint_state")["arrival_ns"].max() < T0_NS + 0.6e9
        assert second.numeric("joint_state")["arrival_ns"].min() >= T0_NS + 1.0e9
        assert len(first.frames("head_left")) > 0 and len(second.frames("head_left")) > 0


# --- bad input ---------------------------------------------------------------------------


def test_a_topic_the_bag_lacks_is_refused_naming_topic_and_field(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", "mcap", seconds=0.3)
    bag_map = write_map(tmp_path, action={"topic": "/no/such/topic"})
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", bag_map)
    (_, err), = result.refused
    assert isinstance(err, RosbagError) and err.topic == "/no/such/topic"
    assert "action.topic" in str(err) and JOINT_TOPIC in str(err)
    assert raw_files(tmp_path / "data") == []


def test_a_topic_of_the_wrong_type_is_refused_naming_both_types(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", "sqlite3", seconds=0.3)
    bag_map = write_map(tmp_path, joint_state={"topic": COMMAND_TOPIC}, action={"topic": JOINT_TOPIC})
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", bag_map)
    (_, err), = result.refused
    assert "std_msgs/msg/Float64MultiArray" in str(err) and "sensor_msgs/msg/JointState" in str(err)
    assert raw_files(tmp_path / "data") == []


def test_joint_names_of_another_robot_are_refused(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", "mcap", seconds=0.3)
    bag_map = write_map(tmp_path, robot={"config": "aloha", "id": "aloha-ros"})
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", bag_map)
    (_, err), = result.refused
    assert "none of robot model 'aloha'" in str(err)


def test_robot_joints_the_bag_lacks_are_refused_unless_filled(tmp_path: Path) -> None:
    types = {JOINT_TOPIC: "sensor_msgs/msg/JointState"}
    T = ros_types()
    names = ["torso_joint", "left_shoulder_pitch_joint", "left_shoulder_roll_joint", "left_elbow_pitch_joint",
             "right_shoulder_pitch_joint"]  # no right_elbow_pitch_joint
    msgs = [(T0_NS + i * 5_000_000, JOINT_TOPIC, T["sensor_msgs/msg/JointState"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=i), frame_id=""),
        name=names, position=np.full(5, 0.1 * i), velocity=np.zeros(0), effort=np.zeros(0))) for i in range(10)]
    write_messages(tmp_path / "bag", "mcap", types, msgs)
    refused = import_rosbags(tmp_path / "bag", tmp_path / "data", _joint_only_map(tmp_path))
    (_, err), = refused.refused
    assert "lacks joints right_elbow_pitch_joint" in str(err) and "fill_missing" in str(err)

    filled = import_rosbags(tmp_path / "bag", tmp_path / "data", _joint_only_map(tmp_path, fill_missing=0.5))
    with RawEpisodeReader(filled.episodes[0]) as ep:
        js = ep.numeric("joint_state")
    np.testing.assert_array_equal(js["position"][:, 5], 0.5)
    np.testing.assert_allclose(js["position"][:, 0], 0.1 * np.arange(10))
    np.testing.assert_array_equal(js["velocity"], 0.0)  # an empty velocity field is zeros


def _joint_only_map(folder: Path, **joint_state: object) -> Path:
    path = folder / "joint-map.yaml"
    path.write_text(yaml.safe_dump({"robot": {"config": str(TINY_ROBOT), "id": "tiny-ros"},
                                    "joint_state": {"topic": JOINT_TOPIC, **joint_state}}))
    return path


def test_a_corrupt_bag_is_refused_and_the_others_are_imported(tmp_path: Path) -> None:
    bags = tmp_path / "bags"
    bags.mkdir()
    write_bag(bags / "a_good", "mcap", seconds=0.3)
    write_bag(bags / "b_broken", "sqlite3", seconds=0.3)
    (db,) = (bags / "b_broken").glob("*.db3")
    db.write_bytes(b"this is not an sqlite file" * 100)
    write_bag(bags / "c_torn", "mcap", seconds=0.3)
    (mcap,) = (bags / "c_torn").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    result = import_rosbags(bags, tmp_path / "data", write_map(tmp_path))
    assert [p.name for p in (b for b, _ in result.refused)] == ["b_broken", "c_torn"]
    assert result.written == 1 and "a_good" in result.episodes[0].name
    assert not list((tmp_path / "data" / "journal").rglob("*.rfj"))


def test_a_bag_that_breaks_part_way_keeps_the_episodes_sealed_before_the_break(tmp_path: Path) -> None:
    from rosbags.rosbag2.writer import zstd

    markers = [(0.1, "start"), (0.6, "stop"), (0.8, "start"), (1.4, "stop")]
    content = write_bag(tmp_path / "bag", "mcap", faults=NO_FAULTS, markers=markers, compress=True)
    (file,) = (tmp_path / "bag").glob("*.mcap")
    data = file.read_bytes()
    frame = zstd.compress(content.joint_cdr[250])  # a joint state of the second episode, as the writer stored it
    at = data.index(frame)
    file.write_bytes(data[: at + 8] + bytes(len(frame) - 8) + data[at + len(frame):])
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", write_map(
        tmp_path, episodes={"split": "topic", "topic": MARKER_TOPIC}))
    (_, err), = result.refused
    assert "breaks while reading" in str(err) and "1 episode(s) before the break were imported" in str(err)
    (path,) = raw_files(tmp_path / "data")
    assert result.episodes == [path] and result.written == 1
    assert verify_episode(path).ok and path.stem.endswith("-000")
    assert not list((tmp_path / "data" / "journal").rglob("*.rfj"))


def test_a_message_that_does_not_deserialize_is_skipped_with_its_reason(tmp_path: Path) -> None:
    T = ros_types()
    types = {JOINT_TOPIC: "sensor_msgs/msg/JointState"}
    msgs: list[tuple[int, str, object]] = []
    for i in range(10):
        stamp = T["builtin_interfaces/msg/Time"](sec=1, nanosec=i)
        msgs.append((T0_NS + i * 5_000_000, JOINT_TOPIC, T["sensor_msgs/msg/JointState"](
            header=T["std_msgs/msg/Header"](stamp=stamp, frame_id=""),
            name=list(ROBOT_JOINTS), position=np.full(6, 0.1), velocity=np.zeros(0), effort=np.zeros(0))))
    msgs[4] = (msgs[4][0], JOINT_TOPIC, b"\x00\x01\x00\x00" + b"\xff" * 40)
    write_messages(tmp_path / "bag", "sqlite3", types, msgs)
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", _joint_only_map(tmp_path))
    reason = f"{JOINT_TOPIC}: does not deserialize as sensor_msgs/msg/JointState"
    assert result.skipped == {reason: 1}
    with RawEpisodeReader(result.episodes[0]) as ep:
        js = ep.numeric("joint_state")
        recorded = decisions(ep, "message_skipped")
    np.testing.assert_array_equal(js["source_index"], [0, 1, 2, 3, 5, 6, 7, 8, 9])  # the gap shows
    assert recorded[0]["count"] == 1 and reason in recorded[0]["text"]


def test_an_image_over_the_pixel_limit_is_skipped_with_its_reason(tmp_path: Path) -> None:
    T = ros_types()
    types = {JOINT_TOPIC: "sensor_msgs/msg/JointState", RAW_TOPIC: "sensor_msgs/msg/Image"}
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="")
    msgs: list[tuple[int, str, object]] = [(T0_NS + i * 5_000_000, JOINT_TOPIC, T["sensor_msgs/msg/JointState"](
        header=header, name=list(ROBOT_JOINTS), position=np.zeros(6), velocity=np.zeros(0), effort=np.zeros(0)))
        for i in range(10)]
    for i, (w, h) in enumerate([(32, 24), (320, 240), (32, 24)]):
        image = np.zeros((h, w, 3), np.uint8) if (w, h) != (32, 24) else picture(i)
        msgs.append((T0_NS + i * 10_000_000 + 1, RAW_TOPIC, T["sensor_msgs/msg/Image"](
            header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=image.reshape(-1))))
    write_messages(tmp_path / "bag", "mcap", types, msgs)
    bag_map = tmp_path / "map.yaml"
    bag_map.write_text(yaml.safe_dump({"robot": {"config": str(TINY_ROBOT), "id": "tiny-ros"},
                                       "joint_state": {"topic": JOINT_TOPIC}, "cameras": {"head_left": RAW_TOPIC},
                                       "limits": {"max_image_pixels": 10_000}}))
    result = import_rosbags(tmp_path / "bag", tmp_path / "data", bag_map)
    (reason,) = result.skipped
    assert "320x240" in reason and "limits.max_image_pixels" in reason
    with RawEpisodeReader(result.episodes[0]) as ep:
        np.testing.assert_array_equal(ep.camera("head_left")["source_index"], [0, 2])


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"joint_state": {"topic": JOINT_TOPIC, "fill_mising": 0}}, "joint_state.fill_mising", "fill_missing"),
    ({"joint_state": {}}, "joint_state.topic", "missing"),
    ({"cameras": {"head_left": "/camera with space"}}, "cameras.head_left", "not a ROS topic name"),
    ({"cameras": {"events": JPEG_TOPIC}}, "cameras.events", "reserved"),
    ({"robot": {"config": "aloha", "id": "../escape"}}, "robot.id", "letters, digits"),
    ({"episodes": {"split": "topic"}}, "episodes.topic", "missing"),
    ({"episodes": {"split": "hourly"}}, "episodes.split", "not one of"),
    ({"task": "line\nbreak"}, "task", "control character"),
    ({"action": {"topic": JOINT_TOPIC}}, "action.topic", "already mapped by joint_state.topic"),
])
def test_a_malformed_mapping_is_refused_naming_the_field(tmp_path: Path, change: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_bag_map(write_map(tmp_path, **change))
    assert info.value.field == field and words in str(info.value)
    assert str(tmp_path / "map.yaml") in str(info.value)


def test_the_readme_sample_mapping_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    sample = readme[readme.index("#### Import ROS 2 bags"):].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "map.yaml").write_text(sample)
    bag_map = load_bag_map(tmp_path / "map.yaml")
    assert bag_map.robot_config == "unitree_g1" and [c.name for c in bag_map.cameras] == ["head_left", "wrist_left"]


# --- command line and processing ---------------------------------------------------------


def test_the_cli_imports_and_reports_a_refused_bag_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                ) -> None:
    write_bag(tmp_path / "bag", "mcap", seconds=0.3)
    bag_map = write_map(tmp_path)
    assert main(["import", "rosbag", str(tmp_path / "bag"), str(tmp_path / "data"), "--map", str(bag_map)]) == 0
    assert "1 raw episodes" in capsys.readouterr().out

    (tmp_path / "bad.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 64)
    code = main(["import", "rosbag", str(tmp_path / "bad.mcap"), str(tmp_path / "data"), "--map", str(bag_map)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("refinery import: error: ") and "bad.mcap" in err[-1]
    assert "Traceback" not in "\n".join(err)


@pytest.mark.slow
def test_imported_bags_of_both_storages_process_into_graded_episodes(tmp_path: Path, ray_session: None) -> None:
    bags = tmp_path / "bags"
    bags.mkdir()
    write_bag(bags / "take_mcap", "mcap", seconds=2.0)
    write_bag(bags / "take_sqlite", "sqlite3", seconds=2.0, distro="jazzy", t0_ns=T0_NS + 10**10)
    result = import_rosbags(bags, tmp_path / "data", write_map(tmp_path))
    assert result.written == 2
    summary = run_process_job(JobOptions(raw_dir=tmp_path / "data", dataset=tmp_path / "ds.zarr"))
    assert summary.processed == 2 and not summary.failed, summary.lines()
    entries = load_index(tmp_path / "ds.zarr")
    assert {e.raw_episode_id for e in entries} == {p.stem for p in result.episodes}
    accepted = [e for e in entries if e.accepted]
    assert len(accepted) == 2, [(e.raw_episode_id, e.reasons) for e in entries]
    for entry in accepted:
        assert entry.grade and entry.task == "wave both arms" and entry.robot_id == "tiny-ros"
        assert sorted(entry.cameras) == ["head_left", "head_right", "wrist"]

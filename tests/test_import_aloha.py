"""ALOHA / ACT HDF5 import: raw episodes that hold the files' streams, then the same processing.

Test files are small ALOHA-style episodes made here: 60 steps, 14 joints, two
48x64 cameras, one stored as RGB arrays and one as ACT's compressed JPEG rows.
The importer takes camera sizes from the file, so the shipped ``aloha``
config (640x480 cameras) is used as it is.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from pipeline.dataset.store import Dataset, load_index
from pipeline.errors import StoreError
from pipeline.interop.aloha_import import AlohaFormatError, aloha_files, import_aloha
from pipeline.process_job import JobOptions, read_raw_input, run_process_job
from pipeline.raw_store import RawEpisodeReader, verify_episode
from pipeline.robot_config import load_robot_config

pytestmark = pytest.mark.usefixtures("ray_session")

STEPS = 60
DOF = 14
HEIGHT, WIDTH = 48, 64
BASE_NS = 1_800_000_000_000_000_000
STEP_NS = 20_000_000  # 50 Hz


def joint_motion(steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qpos, qvel, action inside the ALOHA limits, moving all the time (no idle head or tail)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps) / 50.0
    phase = rng.uniform(0, 2 * np.pi, DOF)
    amplitude = np.full(DOF, 0.4)
    centre = np.zeros(DOF)
    centre[[1, 8]] = -0.5  # shoulders
    centre[[2, 9]] = 0.6  # elbows
    amplitude[[6, 13]], centre[[6, 13]] = 0.3, 0.5  # grippers: normalised 0..1
    qpos = centre + amplitude * np.sin(2 * np.pi * 0.8 * t[:, None] + phase)
    qvel = amplitude * 2 * np.pi * 0.8 * np.cos(2 * np.pi * 0.8 * t[:, None] + phase)
    action = qpos + 0.01 * rng.standard_normal((steps, DOF))
    return qpos.astype(np.float32), qvel.astype(np.float32), action.astype(np.float32)


def camera_images(steps: int, seed: int) -> np.ndarray:
    """RGB frames with a red left half (to catch swapped channels), a moving square and texture."""
    rng = np.random.default_rng(seed)
    frames = np.empty((steps, HEIGHT, WIDTH, 3), dtype=np.uint8)
    texture = rng.integers(60, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    for i in range(steps):
        image = texture.copy()
        image[:, : WIDTH // 2] = (200, 40, 40)
        x = (i * 2) % (WIDTH - 12)
        image[18:30, x : x + 12] = (40, 200, 60)
        frames[i] = cv2.GaussianBlur(image, (3, 3), 0)
    return frames


def write_aloha_file(
    path: Path, seed: int, *, compress_wrist: bool = True, effort: bool = False, cameras: bool = True
) -> dict[str, np.ndarray]:
    """An ALOHA-style episode as ACT's record_episodes.py writes it; returns what went in."""
    qpos, qvel, action = joint_motion(STEPS, seed)
    high, wrist = camera_images(STEPS, seed), camera_images(STEPS, seed + 100)
    content = {"qpos": qpos, "qvel": qvel, "action": action, "cam_high": high, "cam_left_wrist": wrist}
    with h5py.File(path, "w") as h5:
        h5.attrs["sim"] = False
        h5.attrs["compress"] = compress_wrist
        obs = h5.create_group("observations")
        obs["qpos"] = qpos
        obs["qvel"] = qvel
        if effort:
            content["effort"] = np.random.default_rng(seed).normal(0, 50, (STEPS, DOF)).astype(np.float32)
            obs["effort"] = content["effort"]
        h5["action"] = action
        if not cameras:
            return content
        images = obs.create_group("images")
        images.create_dataset("cam_high", data=high, chunks=(1, HEIGHT, WIDTH, 3))
        if compress_wrist:
            # ACT: cv2.imencode straight from the RGB array, zero-padded to the longest frame.
            jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes() for f in wrist]
            padded = np.zeros((STEPS, max(map(len, jpegs))), dtype=np.uint8)
            for i, jpeg in enumerate(jpegs):
                padded[i, : len(jpeg)] = np.frombuffer(jpeg, np.uint8)
            images["cam_left_wrist"] = padded
            h5["compress_len"] = np.array([[len(j) for j in jpegs]] * 2, dtype=np.float32)
            content["wrist_jpegs"] = np.array(jpegs, dtype=object)
        else:
            images["cam_left_wrist"] = wrist
    return content


def decode_rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[dict[str, np.ndarray]]]:
    """Two ALOHA files (the second with effort) imported into one data folder."""
    work = tmp_path_factory.mktemp("aloha")
    src = work / "aloha_src"
    src.mkdir()
    contents = [write_aloha_file(src / "episode_0.hdf5", 1), write_aloha_file(src / "episode_1.hdf5", 2, effort=True)]
    paths = import_aloha(src, work / "data", robot_id="aloha-t", task="transfer the cube", start_ns=BASE_NS)
    return work, paths, contents


@pytest.fixture(scope="module")
def processed(imported: tuple[Path, list[Path], list[dict[str, np.ndarray]]], ray_session: None) -> Path:
    work, _, _ = imported
    dataset = work / "ds.zarr"
    summary = run_process_job(JobOptions(raw_dir=work / "data", dataset=dataset))
    assert summary.processed == 2 and not summary.failed, summary.lines()
    return dataset


# --- raw episodes ----------------------------------------------------------------------


def test_each_file_becomes_one_sealed_raw_episode_named_after_it(imported) -> None:
    work, paths, _ = imported

    assert [p.name for p in paths] == ["aloha-t-episode_0.h5", "aloha-t-episode_1.h5"]
    assert all(p.parent == work / "data" / "raw" / "aloha-t" for p in paths)
    assert all(verify_episode(p).ok for p in paths)
    assert not list((work / "data").rglob("*.journal"))


def test_joint_states_and_actions_equal_the_file(imported) -> None:
    _, paths, contents = imported

    for path, content in zip(paths, contents, strict=True):
        with RawEpisodeReader(path) as raw:
            joints = raw.numeric("joint_state")
            action = raw.numeric("action")
        np.testing.assert_array_equal(joints["position"], content["qpos"].astype(np.float64))
        np.testing.assert_array_equal(joints["velocity"], content["qvel"].astype(np.float64))
        expected_effort = content.get("effort", np.zeros((STEPS, DOF), np.float32))
        np.testing.assert_array_equal(joints["effort"], expected_effort.astype(np.float64))
        np.testing.assert_array_equal(action["position"], content["action"].astype(np.float64))
        assert joints["source_index"].tolist() == list(range(STEPS))


def test_steps_are_stamped_at_the_rate_from_the_base_time(imported) -> None:
    _, paths, _ = imported

    with RawEpisodeReader(paths[0]) as raw:
        stamps = raw.numeric("joint_state")["capture_ns"]
        frames = raw.camera("cam_high")["capture_ns"]
        offsets = raw.clock_sync()["offset_ns"]
    assert stamps.tolist() == [BASE_NS + i * STEP_NS for i in range(STEPS)]
    assert frames.tolist() == stamps.tolist()
    assert len(offsets) >= 2 and np.all(offsets == 0)
    with RawEpisodeReader(paths[1]) as raw:  # the next file starts after the first one ended
        assert raw.numeric("joint_state")["capture_ns"][0] == BASE_NS + (STEPS + 1) * STEP_NS


def test_task_and_events_are_recorded(imported) -> None:
    _, paths, _ = imported

    with RawEpisodeReader(paths[0]) as raw:
        events = raw.events()
        attrs = raw.attrs
    assert [e["kind"] for e in events] == ["start", "label", "stop"]
    assert events[0]["task"] == "transfer the cube" and "episode_0.hdf5" in events[1]["text"]
    assert attrs["task"] == "transfer the cube" and attrs["outcome"] == "success" and attrs["model"] == "aloha"


def test_robot_config_lists_the_file_cameras_at_the_file_size(imported) -> None:
    _, paths, _ = imported
    shipped = load_robot_config("aloha")

    with RawEpisodeReader(paths[0]) as raw:
        config = raw.robot_config
    assert [j["name"] for j in config["joints"]] == list(shipped.joint_names)
    assert {c["name"]: (c["width"], c["height"], c["fps"]) for c in config["cameras"]} == {
        "cam_high": (WIDTH, HEIGHT, 50.0), "cam_left_wrist": (WIDTH, HEIGHT, 50.0),
    }
    assert all(c["latency_ms"] == shipped.camera(c["name"]).latency_ms for c in config["cameras"])


def test_rgb_frames_decode_to_the_source_images_within_jpeg_tolerance(imported) -> None:
    _, paths, contents = imported

    with RawEpisodeReader(paths[0]) as raw:
        frames = raw.frames("cam_high")
    assert len(frames) == STEPS
    for i in (0, 31, STEPS - 1):
        source = contents[0]["cam_high"][i]
        image = decode_rgb(frames[i])
        assert np.abs(image.astype(int) - source.astype(int)).mean() < 6, i
        # Exactly what OpenCV makes of the source at quality 90: only JPEG's loss, colours in order.
        reference = cv2.imencode(".jpg", cv2.cvtColor(source, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        np.testing.assert_array_equal(image, decode_rgb(reference.tobytes()))


def test_compressed_frames_are_stored_with_their_colours_fixed(imported) -> None:
    _, paths, contents = imported

    with RawEpisodeReader(paths[0]) as raw:
        frames = raw.frames("cam_left_wrist")
    source = contents[0]["cam_left_wrist"]
    for i in (0, STEPS - 1):
        image = decode_rgb(frames[i])
        assert np.abs(image.astype(int) - source[i].astype(int)).mean() < 10  # two JPEG generations (q50, q90)
        left = image[:, : WIDTH // 2].reshape(-1, 3).mean(axis=0)
        assert left[0] > 150 and left[2] < 90  # the red half is red, not blue


def test_compressed_frames_pass_through_when_asked(tmp_path: Path) -> None:
    content = write_aloha_file(tmp_path / "episode_0.hdf5", 3)

    (path,) = import_aloha(tmp_path / "episode_0.hdf5", tmp_path / "data", compressed_rgb=False, start_ns=BASE_NS)

    with RawEpisodeReader(path) as raw:
        assert raw.frames("cam_left_wrist") == list(content["wrist_jpegs"])  # unpadded, byte for byte


def test_a_file_without_cameras_imports_without_camera_streams(tmp_path: Path) -> None:
    write_aloha_file(tmp_path / "episode_0.hdf5", 4, cameras=False)

    (path,) = import_aloha(tmp_path, tmp_path / "data", start_ns=BASE_NS)

    with RawEpisodeReader(path) as raw:
        assert raw.camera_names == [] and raw.robot_config["cameras"] == []
        assert raw.numeric("joint_state")["position"].shape == (STEPS, DOF)


def test_importing_again_skips_what_is_there(imported) -> None:
    work, paths, _ = imported
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}

    again = import_aloha(work / "aloha_src", work / "data", robot_id="aloha-t", task="transfer the cube",
                         start_ns=BASE_NS)

    assert again == paths
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths} == before


def test_importing_into_another_folder_gives_the_same_episode_identity(imported, tmp_path: Path) -> None:
    work, paths, _ = imported

    again = import_aloha(work / "aloha_src", tmp_path / "data", robot_id="aloha-t", task="transfer the cube",
                         start_ns=BASE_NS)

    identity = lambda p: (read_raw_input(p).episode_id, read_raw_input(p).checksum)  # noqa: E731
    assert [identity(p) for p in again] == [identity(p) for p in paths]  # the job would skip them


def test_files_are_taken_in_episode_index_order(tmp_path: Path) -> None:
    for name in ("episode_10.hdf5", "episode_2.hdf5", "episode_1.hdf5", "notes.hdf5"):
        (tmp_path / name).touch()

    assert [p.name for p in aloha_files(tmp_path)] == ["episode_1.hdf5", "episode_2.hdf5", "episode_10.hdf5"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="no episode_"):
        aloha_files(empty)


# --- bad input -------------------------------------------------------------------------


def nothing_written(data: Path) -> bool:
    return not [p for p in data.rglob("*") if p.is_file()] if data.exists() else True


def test_missing_qpos_is_refused_naming_file_and_dataset(tmp_path: Path) -> None:
    path = tmp_path / "episode_0.hdf5"
    write_aloha_file(path, 5)
    with h5py.File(path, "a") as h5:
        del h5["observations/qpos"]

    with pytest.raises(AlohaFormatError) as info:
        import_aloha(tmp_path, tmp_path / "data")

    assert info.value.file == path and info.value.dataset == "/observations/qpos"
    assert str(path) in str(info.value) and "/observations/qpos" in str(info.value)
    assert nothing_written(tmp_path / "data")


@pytest.mark.parametrize(
    ("dataset", "replacement", "words"),
    [
        ("action", np.zeros((STEPS - 5, DOF), np.float32), "55 steps but /observations/qpos has 60"),
        ("observations/qvel", np.zeros((STEPS, 12), np.float32), "12 columns"),
        ("observations/images/cam_high", np.zeros((STEPS - 1, HEIGHT, WIDTH, 3), np.uint8), "59 frames"),
        ("observations/images/cam_high", np.zeros((STEPS, HEIGHT, WIDTH, 4), np.uint8), "4 channels"),
    ],
)
def test_mismatched_shapes_are_refused_naming_the_dataset(tmp_path: Path, dataset: str, replacement, words) -> None:
    path = tmp_path / "episode_0.hdf5"
    write_aloha_file(path, 6)
    with h5py.File(path, "a") as h5:
        del h5[dataset]
        h5[dataset] = replacement

    with pytest.raises(AlohaFormatError, match=words) as info:
        import_aloha(tmp_path, tmp_path / "data")

    assert info.value.dataset == f"/{dataset}" and str(path) in str(info.value)
    assert nothing_written(tmp_path / "data")


def test_one_bad_file_stops_the_import_before_any_file_is_written(tmp_path: Path) -> None:
    write_aloha_file(tmp_path / "episode_0.hdf5", 7)
    (tmp_path / "episode_1.hdf5").write_bytes(b"not hdf5")

    with pytest.raises(AlohaFormatError, match="not a readable HDF5 file") as info:
        import_aloha(tmp_path, tmp_path / "data")

    assert info.value.file == tmp_path / "episode_1.hdf5"
    assert nothing_written(tmp_path / "data")


def test_a_corrupt_compressed_frame_leaves_no_journal_and_no_episode(tmp_path: Path) -> None:
    path = tmp_path / "episode_0.hdf5"
    write_aloha_file(path, 8)
    with h5py.File(path, "a") as h5:
        row = h5["observations/images/cam_left_wrist"][40]
        row[:] = 7  # not a JPEG any more
        h5["observations/images/cam_left_wrist"][40] = row

    with pytest.raises(AlohaFormatError, match="frame 40") as info:
        import_aloha(tmp_path, tmp_path / "data")

    assert info.value.dataset == "/observations/images/cam_left_wrist"
    assert nothing_written(tmp_path / "data")


# --- processing ------------------------------------------------------------------------


def test_processing_puts_the_imported_episodes_in_the_dataset(imported, processed: Path) -> None:
    _, paths, _ = imported
    entries = load_index(processed)
    ids = {p.stem for p in paths}

    assert {e.raw_episode_id for e in entries} == ids
    accepted = [e for e in entries if e.accepted]
    assert len(accepted) == 2, [(e.raw_episode_id, e.reasons) for e in entries]
    dataset = Dataset(processed)
    for entry in accepted:
        assert entry.model == "aloha" and entry.task == "transfer the cube" and entry.robot_id == "aloha-t"
        assert dataset.numeric(entry, "state/position").shape == (entry.length, DOF)
        assert dataset.numeric(entry, "action/position").shape == (entry.length, DOF)
        assert entry.cameras == ["cam_high", "cam_left_wrist"]
        assert dataset.frame_size(entry, "cam_high") == (HEIGHT, WIDTH)
        assert entry.length >= STEPS - 5

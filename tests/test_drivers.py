"""Specification of the driver layer: the contract every driver keeps, the
simulated humanoid and its faults, the OpenCV camera driver, the registry."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.drivers import (
    ActionReading,
    CompositeDriver,
    Driver,
    FrameReading,
    JointReading,
    OpenCVCameraDriver,
    Reading,
    SimFaults,
    SimHumanoid,
    decode_jpeg,
    encode_jpeg,
    make_driver,
)
from pipeline.errors import ConfigError, DriverError
from pipeline.robot_config import CameraSpec, JointSpec, RobotConfig, load_robot_config

T0 = 1_700_000_000_000_000_000  # a fixed wall-clock start, ns
MS = 1_000_000
TINY_YAML = Path(__file__).parent / "data" / "robots" / "tiny_humanoid.yaml"


def make_config(cameras: tuple[CameraSpec, ...] | None = None, joint_hz: float = 500.0) -> RobotConfig:
    """Six joints of varied kinds: a wide waist, arm joints, a slow one, a prismatic gripper."""
    if cameras is None:
        cameras = (CameraSpec("head_left", 64, 48, 30.0, 30.0), CameraSpec("head_right", 64, 48, 30.0, 30.0))
    joints = (
        JointSpec("waist", "waist_yaw", -2.618, 2.618, 32.0, 88.0),
        JointSpec("l_sh_pitch", "left_shoulder_pitch", -2.9671, 2.7925, 37.0, 25.0),
        JointSpec("l_elbow", "left_elbow", -0.2268, 3.4208, 37.0, 25.0),
        JointSpec("r_sh_pitch", "right_shoulder_pitch", -2.9671, 2.7925, 0.3, 25.0),  # slow: forces slowing
        JointSpec("r_elbow", "right_elbow", -0.2268, 3.4208, 37.0, 25.0),
        JointSpec("l_grip", "left_gripper", 0.0, 0.04, 0.1, 40.0),
    )
    return RobotConfig("test_bot", "tests", "tests/test_drivers.py", joints, joint_hz, 50.0, cameras)


def write_video(path: Path, frames: int, width: int = 64, height: int = 48, fps: float = 30.0) -> Path:
    """An MJPG .avi whose frame k is a flat grey of level 10 + 20 k (mod 240) with a white bar at x = 4 k."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG"
    for k in range(frames):
        image = np.full((height, width, 3), 10 + (20 * k) % 240, np.uint8)
        cv2.rectangle(image, (4 * k % width, 0), (4 * k % width + 3, height - 1), (255, 255, 255), -1)
        writer.write(image)
    writer.release()
    return path


def poll_range(driver: Driver, start_ns: int, stop_ns: int, step_ns: int) -> list[Reading]:
    """Start the driver at ``start_ns`` and poll it on a synthetic clock up to ``stop_ns``."""
    driver.start(start_ns)
    out: list[Reading] = []
    for now in range(start_ns + step_ns, stop_ns + 1, step_ns):
        out += driver.poll(now)
    return out


def by_stream(readings: list[Reading]) -> dict[str, list[Reading]]:
    streams: dict[str, list[Reading]] = defaultdict(list)
    for r in readings:
        streams[r.stream].append(r)
    return streams


def same_reading(a: Reading, b: Reading) -> bool:
    if type(a) is not type(b) or a.capture_ns != b.capture_ns or a.index != b.index:
        return False
    if isinstance(a, FrameReading):
        return a.camera == b.camera and a.jpeg == b.jpeg  # type: ignore[union-attr]
    names = ("position", "velocity", "effort") if isinstance(a, JointReading) else ("position",)
    return all(np.array_equal(getattr(a, n), getattr(b, n), equal_nan=True) for n in names)


class FakeDevice:
    """Stands in for a live cv2.VideoCapture: grab blocks for one frame period, like a camera."""

    def __init__(self, source: int | str, fps: float = 100.0, opened: bool = True, failing: bool = False) -> None:
        self.source, self.period, self.opened, self.failing = source, 1.0 / fps, opened, failing
        self.count = 0
        self.released = threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's spelling)
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        return True

    def grab(self) -> bool:
        time.sleep(self.period)
        return not self.failing

    def retrieve(self) -> tuple[bool, np.ndarray]:
        self.count += 1
        # Twice the config size, so the driver has to resize.
        return True, np.full((96, 128, 3), self.count % 256, np.uint8)

    def release(self) -> None:
        self.released.set()


# --------------------------------------------------------------------------- contract


@dataclass
class Recording:
    """One real-time run of a driver: every poll with its interval and duration."""

    t0_ns: int
    polls: list[tuple[int, int, list[Reading], float]] = field(default_factory=list)  # (prev, now, readings, s)

    @property
    def readings(self) -> list[Reading]:
        return [r for _, _, batch, _ in self.polls for r in batch]


class DriverContract:
    """What every driver does. Subclasses say how to build one and which streams it yields."""

    streams: frozenset[str] = frozenset()

    def make(self, tmp_path: Path) -> Driver:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def recording(cls, tmp_path_factory: pytest.TempPathFactory) -> Recording:
        driver = cls().make(tmp_path_factory.mktemp("contract"))
        rec = Recording(time.time_ns())
        driver.start(rec.t0_ns)
        prev = rec.t0_ns - 1  # sample 0 is due at t0 itself, so the first interval is [t0, now]
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            time.sleep(0.002)
            prev = cls._poll(driver, rec, prev)
        time.sleep(0.1)  # one late poll: the backlog must come out whole
        cls._poll(driver, rec, prev)
        driver.close()
        return rec

    @staticmethod
    def _poll(driver: Driver, rec: Recording, prev: int) -> int:
        now = time.time_ns()
        started = time.perf_counter()
        batch = driver.poll(now)
        rec.polls.append((prev, now, batch, time.perf_counter() - started))
        return now

    def test_delivers_every_stream(self, recording: Recording) -> None:
        assert {r.stream for r in recording.readings} == self.streams

    def test_readings_fall_in_the_polled_interval(self, recording: Recording) -> None:
        for prev, now, batch, _ in recording.polls:
            assert all(prev < r.capture_ns <= now for r in batch)

    def test_readings_come_in_capture_order(self, recording: Recording) -> None:
        stamps = [r.capture_ns for r in recording.readings]
        assert stamps == sorted(stamps)

    def test_indices_per_stream_count_from_zero_without_gaps(self, recording: Recording) -> None:
        for stream, readings in by_stream(recording.readings).items():
            assert [r.index for r in readings] == list(range(len(readings))), stream

    def test_nothing_is_delivered_twice(self, recording: Recording) -> None:
        keys = [(r.stream, r.index) for r in recording.readings]
        assert len(keys) == len(set(keys))

    def test_poll_does_not_block(self, recording: Recording) -> None:
        # A poll that waited for a device would take about a frame period (10 ms for
        # FakeDevice); the median is robust to the scheduler pausing the test process.
        assert float(np.median([seconds for *_, seconds in recording.polls])) < 0.002

    def test_poll_before_start_is_an_error(self, tmp_path: Path) -> None:
        driver = self.make(tmp_path)
        with pytest.raises(DriverError, match="before start"):
            driver.poll(time.time_ns())
        driver.close()

    def test_closing_twice_is_safe(self, tmp_path: Path) -> None:
        driver = self.make(tmp_path)
        driver.start(time.time_ns())
        driver.poll(time.time_ns())
        driver.close()
        driver.close()


class TestSimContract(DriverContract):
    streams = frozenset({"joint_state", "action", "camera/head_left", "camera/head_right"})

    def make(self, tmp_path: Path) -> Driver:
        return SimHumanoid(make_config(), seed=3)


class TestSimJointsOnlyContract(DriverContract):
    streams = frozenset({"joint_state", "action"})

    def make(self, tmp_path: Path) -> Driver:
        return SimHumanoid(make_config(), seed=3, cameras=False)


class TestVideoFileContract(DriverContract):
    streams = frozenset({"camera/head_left"})

    def make(self, tmp_path: Path) -> Driver:
        video = tmp_path / "head_left.avi"
        if not video.exists():
            write_video(video, frames=8)  # shorter than the run: it must loop
        return OpenCVCameraDriver(make_config(), {"head_left": video})


class TestLiveCameraContract(DriverContract):
    streams = frozenset({"camera/head_left"})

    def make(self, tmp_path: Path) -> Driver:
        return OpenCVCameraDriver(make_config(), {"head_left": 0}, capture_factory=FakeDevice)


class TestCompositeContract(DriverContract):
    streams = frozenset({"joint_state", "action", "camera/head_left", "camera/head_right"})

    def make(self, tmp_path: Path) -> Driver:
        video = tmp_path / "head_left.avi"
        if not video.exists():
            write_video(video, frames=8)
        config = make_config()
        return CompositeDriver(
            [SimHumanoid(config, seed=3, cameras=["head_right"]), OpenCVCameraDriver(config, {"head_left": video})]
        )


# --------------------------------------------------------------------------- JPEG


def test_jpeg_round_trip_keeps_size_and_content() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 32:] = (200, 100, 50)
    decoded = decode_jpeg(encode_jpeg(image, quality=95))
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image).mean() < 3


def test_decoding_bytes_that_are_not_jpeg_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="not a valid JPEG"):
        decode_jpeg(b"GIF89a not a jpeg")


def test_encoding_a_float_image_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="uint8"):
        encode_jpeg(np.zeros((8, 8, 3), np.float32))


# --------------------------------------------------------------------------- sim: values


def test_shipped_tiny_config_loads_and_simulates() -> None:
    config = load_robot_config(TINY_YAML)
    readings = poll_range(SimHumanoid(config), T0, T0 + 100 * MS, 10 * MS)
    assert {r.stream for r in readings} == {"joint_state", "action", "camera/head_left", "camera/head_right"}


def test_same_seed_gives_identical_arrays_and_jpeg_bytes() -> None:
    a, b = SimHumanoid(make_config(), seed=7), SimHumanoid(make_config(), seed=7)
    for k in (0, 1, 123, 4567):
        assert all(np.array_equal(x, y) for x, y in zip(a.joint_state(k), b.joint_state(k)))
        assert np.array_equal(a.action(k), b.action(k))
        assert a.frame_jpeg("head_left", k) == b.frame_jpeg("head_left", k)


def test_different_seeds_give_different_motion_and_images() -> None:
    a, b = SimHumanoid(make_config(), seed=7), SimHumanoid(make_config(), seed=8)
    assert not np.allclose(a.joint_state(100)[0], b.joint_state(100)[0])
    assert a.frame_jpeg("head_left", 10) != b.frame_jpeg("head_left", 10)


def test_poll_delivers_what_the_accessors_describe() -> None:
    sim = SimHumanoid(make_config(), seed=2)
    readings = poll_range(sim, T0, T0 + 200 * MS, MS)
    for r in readings:
        if isinstance(r, JointReading):
            position, velocity, effort = sim.joint_state(r.index)
            assert r.capture_ns == T0 + r.index * 2 * MS
            assert np.array_equal(r.position, position) and np.array_equal(r.velocity, velocity)
            assert np.array_equal(r.effort, effort)
        elif isinstance(r, ActionReading):
            assert np.array_equal(r.position, sim.action(r.index))
        else:
            assert r.jpeg == sim.frame_jpeg(r.camera, r.index)


def test_a_late_poll_returns_the_same_readings_as_frequent_polls() -> None:
    frequent = poll_range(SimHumanoid(make_config(), seed=4), T0, T0 + 300 * MS, MS)
    late = SimHumanoid(make_config(), seed=4)
    late.start(T0)
    backlog = late.poll(T0 + 300 * MS)
    assert len(backlog) == len(frequent)
    assert all(same_reading(a, b) for a, b in zip(frequent, backlog))


def test_joints_stay_inside_position_and_velocity_limits_for_20_s() -> None:
    config = make_config()
    sim = SimHumanoid(config, seed=11, cameras=False)
    joints = [r for r in poll_range(sim, T0, T0 + 20_000 * MS, 100 * MS) if isinstance(r, JointReading)]
    assert len(joints) == 10_001  # samples 0..10000 are due in [0, 20] s
    position = np.array([r.position for r in joints])
    velocity = np.array([r.velocity for r in joints])
    lo, hi = np.array([j.position_min for j in config.joints]), np.array([j.position_max for j in config.joints])
    margin = 0.1 * (hi - lo)  # the motion uses the middle 80% of each range
    assert np.all(position >= lo + margin - 1e-12) and np.all(position <= hi - margin + 1e-12)
    assert np.all(np.abs(velocity) <= np.array([j.velocity_max for j in config.joints]))


def test_effort_stays_inside_effort_limits() -> None:
    config = make_config()
    sim = SimHumanoid(config, seed=11, cameras=False)
    effort = np.array([sim.joint_state(k)[2] for k in range(0, 10_000, 7)])
    assert np.all(np.abs(effort) <= np.array([j.effort_max for j in config.joints]))


def test_velocity_is_the_derivative_of_position() -> None:
    sim = SimHumanoid(make_config(), seed=5)
    dt = 1 / 500
    for k in (10, 1000, 5000):
        central = (sim.joint_state(k + 1)[0] - sim.joint_state(k - 1)[0]) / (2 * dt)
        assert np.allclose(sim.joint_state(k)[1], central, rtol=1e-3, atol=1e-4)


def test_action_is_the_position_50_ms_ahead() -> None:
    sim = SimHumanoid(make_config(), seed=5)
    for k in (0, 7, 300):
        # Action k is at k / 50 s; 50 ms later is joint-state sample 10 k + 25 at 500 Hz.
        assert np.allclose(sim.action(k), sim.joint_state(10 * k + 25)[0], atol=1e-9)


def test_frames_have_the_configured_size() -> None:
    sim = SimHumanoid(make_config(), seed=1)
    assert decode_jpeg(sim.frame_jpeg("head_right", 3)).shape == (48, 64, 3)


def test_frames_change_with_the_motion() -> None:
    sim = SimHumanoid(make_config(), seed=1)
    # Below the frame counter text, so only the figure and joint bars can differ.
    first = decode_jpeg(sim.frame_jpeg("head_left", 0))[12:].astype(int)
    later = decode_jpeg(sim.frame_jpeg("head_left", 30))[12:].astype(int)
    assert (np.abs(first - later).max(axis=2) > 40).sum() > 20


def test_cameras_see_different_scenes() -> None:
    sim = SimHumanoid(make_config(), seed=1)
    assert sim.frame_jpeg("head_left", 5) != sim.frame_jpeg("head_right", 5)


def test_prerendered_frames_repeat_with_the_cycle() -> None:
    sim = SimHumanoid(make_config(), seed=1, prerendered=True, prerender_cycle=5)
    assert sim.frame_jpeg("head_left", 2) == sim.frame_jpeg("head_left", 12)
    assert sim.frame_jpeg("head_left", 2) != sim.frame_jpeg("head_left", 3)


def test_unknown_camera_in_cameras_option_is_rejected() -> None:
    with pytest.raises(DriverError, match="no camera 'wrist'.*head_left, head_right"):
        SimHumanoid(make_config(), cameras=["wrist"])


def test_starting_again_begins_the_next_episode_from_index_zero() -> None:
    sim = SimHumanoid(make_config())
    sim.start(T0)
    first = sim.poll(T0 + 100_000_000)
    sim.start(T0 + 10**9)
    second = sim.poll(T0 + 10**9 + 100_000_000)
    assert [(type(r), r.index) for r in first] == [(type(r), r.index) for r in second]
    assert all(b.capture_ns - a.capture_ns == 10**9 for a, b in zip(first, second))


# --------------------------------------------------------------------------- sim: faults


def faulty(seconds: float, cameras: bool = True, seed: int = 9, **faults: object) -> tuple[SimHumanoid, list[Reading]]:
    sim = SimHumanoid(make_config(), seed=seed, faults=SimFaults(**faults), cameras=cameras)  # type: ignore[arg-type]
    return sim, poll_range(sim, T0, T0 + round(seconds * 1000) * MS, 10 * MS)


def test_no_faults_means_no_gaps_and_no_nan() -> None:
    _, readings = faulty(2.0)
    for stream, rs in by_stream(readings).items():
        assert [r.index for r in rs] == list(range(len(rs))), stream
    assert not any(np.isnan(r.position).any() for r in readings if isinstance(r, JointReading))


def test_dropped_frames_skip_indices() -> None:
    _, readings = faulty(3.0, drop_frame_prob=0.3)
    indices = [r.index for r in by_stream(readings)["camera/head_left"]]
    latency_s = make_config().camera("head_left").latency_ms / 1000
    assert indices == sorted(indices) and indices[-1] == int((3.0 - latency_s) * 30)
    assert 0.5 < len(indices) / 91 < 0.9


def test_stall_produces_no_joint_or_action_samples_in_its_window() -> None:
    _, readings = faulty(2.0, cameras=False, stall=[(1.0, 0.5)])
    for stream, rate in (("joint_state", 500), ("action", 50)):
        times = np.array([r.index / rate for r in by_stream(readings)[stream]])
        assert not np.any((times >= 1.0) & (times < 1.5)), stream
        assert times.min() == 0 and times.max() > 1.9, stream


def test_spikes_move_one_joint_by_the_spike_size() -> None:
    sim, readings = faulty(2.0, cameras=False, spike_prob=0.05, spike_size_rad=1.0)
    deltas = np.array([r.position - sim.joint_state(r.index)[0] for r in readings if isinstance(r, JointReading)])
    spiked = np.any(deltas != 0, axis=1)
    assert 10 < spiked.sum() < 100
    assert np.allclose(np.abs(deltas[spiked]).sum(axis=1), 1.0)


def test_nan_fault_puts_nan_in_positions_only() -> None:
    _, readings = faulty(2.0, cameras=False, nan_prob=0.02)
    joints = [r for r in readings if isinstance(r, JointReading)]
    assert sum(np.isnan(r.position).any() for r in joints) > 5
    assert not any(np.isnan(r.velocity).any() or np.isnan(r.effort).any() for r in joints)


def test_clock_offset_shifts_every_stamp_by_exactly_the_offset() -> None:
    _, clean = faulty(1.0)
    _, shifted = faulty(1.0, clock_offset_ms=12.5)
    assert len(clean) == len(shifted)
    assert all(b.capture_ns - a.capture_ns == 12_500_000 for a, b in zip(clean, shifted))


def test_clock_drift_grows_with_time_since_start() -> None:
    _, readings = faulty(10.0, cameras=False, clock_drift_ppm=100.0)
    last = by_stream(readings)["action"][-1]  # action 500 is due at 10 s: 100 ppm of 10 s is 1 ms
    assert last.index == 500
    assert last.capture_ns - (T0 + 10_000 * MS) == 1 * MS


def test_frozen_camera_repeats_the_last_frame_before_the_window() -> None:
    sim, readings = faulty(2.0, frozen_camera=[("head_left", 1.0, 0.5)])
    frames = {r.index: r.jpeg for r in by_stream(readings)["camera/head_left"]}
    frozen = {frames[k] for k in range(30, 45)}  # frames 30..44 are captured in [1.0, 1.5) s at 30 fps
    assert frozen == {sim.frame_jpeg("head_left", 29)}
    assert frames[45] == sim.frame_jpeg("head_left", 45)
    right = {r.index: r.jpeg for r in by_stream(readings)["camera/head_right"]}
    assert right[35] == sim.frame_jpeg("head_right", 35)


def test_black_frames_are_black() -> None:
    _, readings = faulty(2.0, black_frames=[("head_right", 0.5, 0.5)])
    frames = {r.index: r.jpeg for r in by_stream(readings)["camera/head_right"]}
    assert all(decode_jpeg(frames[k]).max() <= 2 for k in range(15, 30))
    assert decode_jpeg(frames[30]).max() > 100


def test_timestamp_jitter_scatters_joint_stamps_around_nominal() -> None:
    _, readings = faulty(2.0, cameras=False, timestamp_jitter_us=50.0)
    joints = [r for r in readings if isinstance(r, JointReading)]
    error_us = np.array([(r.capture_ns - T0 - r.index * 2 * MS) / 1e3 for r in joints])
    assert 40 < error_us.std() < 60 and abs(error_us.mean()) < 5


def test_duplicate_timestamp_fault_repeats_the_previous_stamp() -> None:
    _, readings = faulty(2.0, cameras=False, duplicate_timestamp_prob=0.02)
    stamps = np.array([r.capture_ns for r in readings if isinstance(r, JointReading)])
    assert (np.diff(stamps) == 0).sum() > 5


def test_backwards_timestamp_fault_steps_stamps_back() -> None:
    _, readings = faulty(2.0, cameras=False, backwards_timestamp_prob=0.02)
    stamps = np.array([r.capture_ns for r in readings if isinstance(r, JointReading)])
    assert (np.diff(stamps) < 0).sum() > 5


def test_faults_do_not_depend_on_how_often_poll_is_called() -> None:
    faults = SimFaults(drop_frame_prob=0.2, nan_prob=0.05, spike_prob=0.05, timestamp_jitter_us=30.0)
    frequent = poll_range(SimHumanoid(make_config(), seed=1, faults=faults), T0, T0 + 500 * MS, MS)
    late = SimHumanoid(make_config(), seed=1, faults=faults)
    late.start(T0)
    backlog = late.poll(T0 + 500 * MS)
    assert len(frequent) == len(backlog)
    assert all(same_reading(a, b) for a, b in zip(frequent, backlog))


def test_fault_seed_changes_faults_but_not_motion() -> None:
    a = SimHumanoid(make_config(), seed=1, faults=SimFaults(nan_prob=0.1, seed=0))
    b = SimHumanoid(make_config(), seed=1, faults=SimFaults(nan_prob=0.1, seed=1))
    assert np.array_equal(a.joint_state(50)[0], b.joint_state(50)[0])
    a.start(T0)
    b.start(T0)
    nan_a = [np.isnan(a.joint_reading(k).position).any() for k in range(500)]  # type: ignore[union-attr]
    nan_b = [np.isnan(b.joint_reading(k).position).any() for k in range(500)]  # type: ignore[union-attr]
    assert nan_a != nan_b


def test_fault_on_a_camera_that_is_not_simulated_is_rejected() -> None:
    with pytest.raises(DriverError, match="'frozen_camera' names camera 'wrist'"):
        SimHumanoid(make_config(), faults=SimFaults(frozen_camera=[("wrist", 1.0, 1.0)]))


# --------------------------------------------------------------------------- SimFaults.parse


def test_parse_reads_scalars_and_windows() -> None:
    faults = SimFaults.parse("drop_frame_prob=0.05, clock_offset_ms=12,frozen_camera=head_left:2:1,stall=3:0.5")
    assert faults == SimFaults(
        drop_frame_prob=0.05, clock_offset_ms=12.0, frozen_camera=(("head_left", 2.0, 1.0),), stall=((3.0, 0.5),)
    )


def test_parse_of_an_empty_spec_is_no_faults() -> None:
    assert SimFaults.parse("") == SimFaults() and not SimFaults.parse("").active


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("drop_frames=0.1", "unknown key 'drop_frames'; keys: drop_frame_prob"),
        ("nan_prob", "'nan_prob' is not key=value"),
        ("clock_offset_ms=soon", "'clock_offset_ms': expected a number, got 'soon'"),
        ("drop_frame_prob=1.5", "'drop_frame_prob': must be a probability in \\[0, 1\\]"),
        ("frozen_camera=head_left:2", "'frozen_camera': expected camera:start_s:duration_s"),
        ("stall=1:-2", "'stall': need start_s >= 0 and duration_s > 0"),
        ("nan_prob=0.1,nan_prob=0.2", "'nan_prob': given twice"),
        ("seed=1.5", "'seed': expected an integer"),
    ],
)
def test_parse_errors_name_the_key(spec: str, message: str) -> None:
    with pytest.raises(DriverError, match=message):
        SimFaults.parse(spec)


_probability = st.floats(0.0, 1.0)
_window = st.tuples(st.floats(0.0, 100.0), st.floats(0.001, 10.0))
_camera_window = st.tuples(st.sampled_from(["head_left", "cam.2"]), st.floats(0.0, 100.0), st.floats(0.001, 10.0))


@settings(max_examples=50, deadline=None)
@given(
    st.builds(
        SimFaults,
        drop_frame_prob=_probability,
        stall=st.lists(_window, max_size=2).map(tuple),
        nan_prob=_probability,
        clock_offset_ms=st.floats(-1e3, 1e3),
        clock_drift_ppm=st.floats(-500, 500),
        frozen_camera=st.lists(_camera_window, max_size=2).map(tuple),
        seed=st.integers(0, 2**31),
    )
)
def test_to_spec_parses_back_to_the_same_faults(faults: SimFaults) -> None:
    assert SimFaults.parse(faults.to_spec()) == faults


# --------------------------------------------------------------------------- OpenCV cameras


def test_video_file_frames_are_paced_at_the_camera_fps(tmp_path: Path) -> None:
    driver = OpenCVCameraDriver(make_config(), {"head_left": write_video(tmp_path / "v.avi", frames=10)})
    driver.start(T0)
    frames = driver.poll(T0 + 100 * MS)  # frames 0..3 are due at 0, 33.3, 66.7 and 100 ms
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.capture_ns for f in frames] == [T0 + round(k * 1e9 / 30) for k in range(4)]
    assert driver.poll(T0 + 110 * MS) == []
    driver.close()


def test_video_file_frames_carry_the_file_content(tmp_path: Path) -> None:
    driver = OpenCVCameraDriver(make_config(), {"head_left": write_video(tmp_path / "v.avi", frames=5)})
    frames = poll_range(driver, T0, T0 + 140 * MS, 140 * MS)
    levels = [float(np.median(decode_jpeg(f.jpeg))) for f in frames]  # type: ignore[union-attr]
    assert levels == pytest.approx([10, 30, 50, 70, 90], abs=3)


def test_video_of_another_size_is_resized_to_the_config(tmp_path: Path) -> None:
    video = write_video(tmp_path / "big.avi", frames=3, width=160, height=120)
    frames = poll_range(OpenCVCameraDriver(make_config(), {"head_left": video}), T0, T0 + 50 * MS, 50 * MS)
    assert decode_jpeg(frames[0].jpeg).shape == (48, 64, 3)  # type: ignore[union-attr]


def test_video_file_loops_by_default(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", frames=4)
    frames = poll_range(OpenCVCameraDriver(make_config(), {"head_left": video}), T0, T0 + 300 * MS, 300 * MS)
    assert [f.index for f in frames] == list(range(10))
    assert frames[4].jpeg == frames[0].jpeg  # type: ignore[union-attr]


def test_video_file_stops_at_its_end_without_loop(tmp_path: Path) -> None:
    driver = OpenCVCameraDriver(make_config(), {"head_left": write_video(tmp_path / "v.avi", frames=4)}, loop=False)
    frames = poll_range(driver, T0, T0 + 300 * MS, 300 * MS)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert driver.finished and driver.poll(T0 + 1000 * MS) == []


def test_missing_video_file_names_camera_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.avi"
    with pytest.raises(DriverError, match=f"camera 'head_left': video file '{missing}' does not exist"):
        OpenCVCameraDriver(make_config(), {"head_left": missing})


def test_unreadable_video_file_is_a_driver_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"RIFF but not really a video")
    with pytest.raises(DriverError, match="camera 'head_left'.*junk.avi"):
        OpenCVCameraDriver(make_config(), {"head_left": junk})


def test_device_that_cannot_be_opened_names_camera_and_source() -> None:
    with pytest.raises(DriverError, match="camera 'head_right': cannot open camera source 7"):
        OpenCVCameraDriver(make_config(), {"head_right": 7}, capture_factory=lambda s: FakeDevice(s, opened=False))


def test_device_frames_are_stamped_at_grab_time_and_resized() -> None:
    driver = OpenCVCameraDriver(make_config(), {"head_left": "0"}, capture_factory=FakeDevice)
    before = time.time_ns()
    driver.start(before)
    time.sleep(0.08)
    after = time.time_ns()
    frames = driver.poll(after)
    driver.close()
    assert len(frames) >= 3
    assert all(before < f.capture_ns <= after for f in frames)
    assert decode_jpeg(frames[0].jpeg).shape == (48, 64, 3)  # type: ignore[union-attr]


def test_device_that_keeps_failing_is_reported_on_poll() -> None:
    driver = OpenCVCameraDriver(
        make_config(), {"head_left": 0}, capture_factory=lambda s: FakeDevice(s, fps=1000, failing=True)
    )
    driver.start(time.time_ns())
    deadline = time.monotonic() + 2.0
    with pytest.raises(DriverError, match="camera 'head_left': source 0 failed 50 grabs in a row"):
        while time.monotonic() < deadline:
            driver.poll(time.time_ns())
            time.sleep(0.01)
    driver.close()


def test_closing_releases_the_device() -> None:
    devices: list[FakeDevice] = []
    driver = OpenCVCameraDriver(
        make_config(), {"head_left": 0}, capture_factory=lambda s: devices.append(FakeDevice(s)) or devices[-1]
    )
    driver.start(time.time_ns())
    driver.close()
    assert devices[0].released.is_set()


def test_camera_not_in_the_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no camera 'wrist' in the config; cameras: head_left, head_right"):
        OpenCVCameraDriver(make_config(), {"wrist": write_video(tmp_path / "v.avi", frames=2)})


def test_parse_sources_reads_devices_and_paths() -> None:
    assert OpenCVCameraDriver.parse_sources("head_left=0, head_right=/data/r.avi") == {
        "head_left": 0,
        "head_right": "/data/r.avi",
    }
    with pytest.raises(DriverError, match="'head_left' is not camera=source"):
        OpenCVCameraDriver.parse_sources("head_left")


# --------------------------------------------------------------------------- composite and registry


def test_composite_merges_streams_in_capture_order(tmp_path: Path) -> None:
    config = make_config()
    video = write_video(tmp_path / "v.avi", frames=10)
    driver = CompositeDriver([SimHumanoid(config, cameras=["head_right"]), OpenCVCameraDriver(config, {"head_left": video})])
    readings = poll_range(driver, T0, T0 + 200 * MS, 200 * MS)
    assert [r.capture_ns for r in readings] == sorted(r.capture_ns for r in readings)
    assert {r.stream for r in readings} == {"joint_state", "action", "camera/head_left", "camera/head_right"}


def test_composite_refuses_a_stream_from_two_drivers() -> None:
    config = make_config()
    driver = CompositeDriver([SimHumanoid(config, cameras=False), SimHumanoid(config, seed=1, cameras=False)])
    driver.start(T0)
    with pytest.raises(DriverError, match="stream 'joint_state' comes from both"):
        driver.poll(T0 + 10 * MS)


def test_make_driver_builds_a_sim_by_kind() -> None:
    driver = make_driver("sim", make_config(), seed=3, faults=SimFaults.parse("nan_prob=0.1"))
    assert isinstance(driver, SimHumanoid) and driver.faults.nan_prob == 0.1


def test_make_driver_lists_the_kinds_for_an_unknown_kind() -> None:
    with pytest.raises(DriverError, match="unknown driver kind 'ros'; kinds: sim, opencv, sim\\+opencv"):
        make_driver("ros", make_config())


def test_make_driver_rejects_options_the_kind_does_not_take() -> None:
    with pytest.raises(DriverError, match="driver 'sim' for robot test_bot: bad options \\['fps'\\]"):
        make_driver("sim", make_config(), fps=10)


def test_make_driver_combines_sim_joints_with_real_cameras(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", frames=10)
    driver = make_driver("sim+opencv", make_config(), sources={"head_left": video}, seed=2)
    readings = poll_range(driver, T0, T0 + 100 * MS, 100 * MS)
    assert {r.stream for r in readings} == {"joint_state", "action", "camera/head_left", "camera/head_right"}


def test_the_sim_refuses_a_config_with_unknown_limits(tiny_robot: RobotConfig) -> None:
    joints = (replace(tiny_robot.joints[0], velocity_max=float("inf")), *tiny_robot.joints[1:])

    with pytest.raises(ConfigError, match="needs every limit"):
        SimHumanoid(replace(tiny_robot, joints=joints))

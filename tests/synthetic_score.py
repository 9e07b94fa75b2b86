"""Synthetic aligned episodes for the score and de-identify tests, built in memory.

:func:`clean_episode` builds an :class:`AlignedEpisode` as the align stage
would hand it over, from analytic joint motion and small textured JPEG
frames, with its raw episode (500 Hz joints, 50 Hz actions, 30 fps cameras,
clock-sync samples). Everything is seeded, so every build is identical. The
``with_*`` functions return a copy with one defect injected.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from pipeline.processing.episode import AlignedEpisode, CameraStream, ClockSamples, NumericStream, RawEpisode
from pipeline.robot_config import RobotConfig, parse_robot_config

T0_NS = 1_700_000_000_000_000_000  # collector clock at the first sample
CLOCK_OFFSET_NS = 3_000_000  # ingest clock minus collector clock
ACTION_LEAD_S = 0.06  # the robot follows its commands 60 ms late

_JOINTS = (
    # name, standard, position range, velocity, effort
    ("torso_joint", "waist_yaw", (-2.618, 2.618), 32.0, 88.0),
    ("left_shoulder_pitch_joint", "left_shoulder_pitch", (-2.9671, 2.7925), 37.0, 20.0),
    ("left_shoulder_roll_joint", "left_shoulder_roll", (-1.5882, 2.2515), 37.0, 20.0),
    ("left_elbow_pitch_joint", "left_elbow", (-0.2268, 3.4208), 37.0, 20.0),
    ("right_shoulder_pitch_joint", "right_shoulder_pitch", (-2.9671, 2.7925), 37.0, 20.0),
    ("right_elbow_pitch_joint", "right_elbow", (-0.2268, 3.4208), 37.0, 20.0),
    ("left_gripper_joint", "left_gripper", (0.0, 0.04), 0.5, 10.0),
)


def robot_config(cameras: tuple[str, ...] = ("head_left", "head_right"), width: int = 160, height: int = 120,
                 fps: float = 30.0) -> RobotConfig:
    return parse_robot_config(
        {
            "model": "synthetic_humanoid",
            "vendor": "Refinery tests",
            "source": "tests/synthetic_score.py (ranges after the MuJoCo Menagerie unitree_g1 model)",
            "streams": {"joint_state_hz": 500, "action_hz": 50},
            "joints": [
                {"name": n, "standard": s, "position": list(r), "velocity": v, "effort": e}
                for n, s, r, v, e in _JOINTS
            ],
            "cameras": [
                {"name": c, "width": width, "height": height, "fps": fps, "latency_ms": 30} for c in cameras
            ],
        },
        "synthetic",
    )


class Motion:
    """Smooth joint motion: two slow sinusoids per joint around mid-range, within 60 % of it."""

    def __init__(self, config: RobotConfig, seed: int) -> None:
        rng = np.random.default_rng([seed, 1])
        lo = np.array([j.position_min for j in config.joints])
        hi = np.array([j.position_max for j in config.joints])
        self.center = (lo + hi) / 2
        self.amp = 0.3 * (hi - lo)[:, None] * np.array([0.6, 0.4])
        self.omega = 2 * np.pi * rng.uniform(0.15, 0.45, (config.dof, 2))
        self.phase = rng.uniform(0, 2 * np.pi, (config.dof, 2))
        self.effort_max = np.array([j.effort_max for j in config.joints])
        # Encoder noise: 2e-5 of the range (about 1e-4 rad on an arm joint).
        self.noise = 2e-5 * (hi - lo)

    def position(self, t: np.ndarray) -> np.ndarray:
        return self.center + (self.amp * np.sin(self.omega * t[:, None, None] + self.phase)).sum(axis=-1)

    def velocity(self, t: np.ndarray) -> np.ndarray:
        return (self.amp * self.omega * np.cos(self.omega * t[:, None, None] + self.phase)).sum(axis=-1)

    def effort(self, t: np.ndarray) -> np.ndarray:
        return 0.3 * self.effort_max * np.sin(0.5 * t[:, None] + np.arange(self.effort_max.size))


def textured_frame(width: int, height: int, k: int, seed: int, brightness: float = 1.0) -> np.ndarray:
    """A BGR scene: smooth gradient, fixed noise texture and a few shapes that move with ``k``."""
    rng = np.random.default_rng([seed, 7])
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 90 + 50 * np.sin(x / width * 3 + 0.5) + 30 * np.cos(y / height * 2)
    texture = rng.normal(0, 12, (height, width)).astype(np.float32)
    gray = np.clip(base + texture, 0, 255)
    image = np.repeat(gray[:, :, None], 3, axis=2).astype(np.uint8)
    for i in range(4):
        cx = int((width * (0.2 + 0.2 * i) + 3 * k) % width)
        cy = int(height * (0.3 + 0.4 * ((i + k // 10) % 2)))
        cv2.rectangle(image, (cx - 12, cy - 9), (cx + 12, cy + 9), (40 + 50 * i, 200 - 40 * i, 120), -1)
        cv2.circle(image, (width - cx, height - cy), 7, (230, 230, 230), 2)
    cv2.putText(image, f"{k:05d}", (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    if brightness != 1.0:
        image = np.clip(image.astype(np.float32) * brightness, 0, 255).astype(np.uint8)
    return image


def encode(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def clean_episode(seconds: float = 6.0, rate_hz: float = 50.0, seed: int = 0, cameras: tuple[str, ...] = (
        "head_left", "head_right"), width: int = 160, height: int = 120, frame_pool: int = 0) -> AlignedEpisode:
    """A defect-free aligned episode.

    ``frame_pool`` > 0 renders only that many distinct frames per camera and
    cycles through them (consecutive frames still differ): large episodes for
    cost measurements without encoding every frame.
    """
    config = robot_config(cameras, width, height)
    motion = Motion(config, seed)
    rng = np.random.default_rng([seed, 2])

    # Raw streams on the collector clock, a little longer than the aligned window.
    n_joint = int((seconds + 0.4) * 500)
    t_joint = np.arange(n_joint) / 500.0
    joint_capture = T0_NS + np.round(t_joint * 1e9).astype(np.int64)
    joint_state = NumericStream(
        capture_ns=joint_capture,
        source_index=np.arange(n_joint, dtype=np.int64),
        arrival_ns=joint_capture + CLOCK_OFFSET_NS + 2_000_000,
        fields={
            "position": motion.position(t_joint) + rng.normal(0, 1.0, (n_joint, config.dof)) * motion.noise,
            "velocity": motion.velocity(t_joint),
            "effort": motion.effort(t_joint),
        },
    )
    n_action = int((seconds + 0.4) * 50)
    t_action = np.arange(n_action) / 50.0
    action_capture = T0_NS + np.round(t_action * 1e9).astype(np.int64)
    action = NumericStream(
        capture_ns=action_capture,
        source_index=np.arange(n_action, dtype=np.int64),
        arrival_ns=action_capture + CLOCK_OFFSET_NS + 2_000_000,
        fields={"position": motion.position(t_action + ACTION_LEAD_S)},
    )
    n_frames = int((seconds + 0.4) * 30)
    streams = {}
    for c, name in enumerate(cameras):
        capture = T0_NS + np.round(np.arange(n_frames) / 30.0 * 1e9).astype(np.int64)
        distinct = frame_pool if frame_pool > 0 else n_frames
        rendered = [encode(textured_frame(width, height, k, seed + 10 * c)) for k in range(distinct)]
        streams[name] = CameraStream(
            capture_ns=capture,
            source_index=np.arange(n_frames, dtype=np.int64),
            arrival_ns=capture + CLOCK_OFFSET_NS + 30_000_000,
            jpeg=[rendered[k % distinct] for k in range(n_frames)],
            width=width,
            height=height,
            fps=30.0,
            latency_ms=30.0,
        )
    t1 = T0_NS + np.arange(20, dtype=np.int64) * 300_000_000
    rtt = rng.integers(200_000, 600_000, 20)
    t2 = t1 + CLOCK_OFFSET_NS + rtt // 2
    t3 = t2 + 20_000
    t4 = t3 - CLOCK_OFFSET_NS + rtt // 2
    raw = RawEpisode(
        robot_id="robot-1",
        episode_id=f"synthetic-{seed}",
        config=config,
        attrs={"operator": "alice"},
        joint_state=joint_state,
        action=action,
        cameras=streams,
        events=[],
        clock=ClockSamples(t1, t2, t3, t4),
    )

    # The aligned grid: start 0.2 s into the raw streams, on the ingest clock.
    steps = int(seconds * rate_hz)
    t_rel = 0.2 + np.arange(steps) / rate_hz
    t_ns = T0_NS + CLOCK_OFFSET_NS + np.round(t_rel * 1e9).astype(np.int64)
    frames = {name: np.clip(np.round(t_rel * 30.0).astype(np.int64), 0, n_frames - 1) for name in cameras}
    return AlignedEpisode(
        raw=raw,
        rate_hz=rate_hz,
        t_ns=t_ns,
        state={
            "position": motion.position(t_rel) + rng.normal(0, 1.0, (steps, config.dof)) * motion.noise,
            "velocity": motion.velocity(t_rel),
            "effort": motion.effort(t_rel),
        },
        action=motion.position(t_rel + ACTION_LEAD_S),
        frames=frames,
        alignment_error_ms={"joint_state": 0.2, "action": 0.5, **{name: 4.0 for name in cameras}},
        # The align stage's camera delay estimates, as it reports cameras whose configured latency is right.
        report={"latency": {name: {"delay_ms": 2.0, "confidence": 0.9, "correlation": 0.95, "prominence": 0.3,
                                   "pairs": 119, "why": "", "configured_ms": 30.0, "applied_ms": 30.0,
                                   "frame_period_ms": 1e3 / 30.0} for name in cameras}},
    )


# --- defects -------------------------------------------------------------------------


def _copy(ep: AlignedEpisode) -> AlignedEpisode:
    return copy.deepcopy(ep)


def with_dropped_frames(ep: AlignedEpisode, camera: str = "head_left", fraction: float = 0.3,
                        seed: int = 0) -> AlignedEpisode:
    """Lose ``fraction`` of one camera's frames (source-index gaps); grid steps without a
    frame within one frame period get -1."""
    ep = _copy(ep)
    stream = ep.raw.cameras[camera]
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(stream))[: int(len(stream) * (1 - fraction))])
    old_to_new = np.full(len(stream), -1, dtype=np.int64)
    old_to_new[keep] = np.arange(keep.size)
    ep.raw.cameras[camera] = replace(
        stream,
        capture_ns=stream.capture_ns[keep],
        source_index=stream.source_index[keep],
        arrival_ns=stream.arrival_ns[keep],
        jpeg=[stream.jpeg[i] for i in keep],
    )
    ep.frames[camera] = old_to_new[ep.frames[camera]]
    return ep


def with_joint_jitter(ep: AlignedEpisode, std_ms: float = 1.0, seed: int = 0) -> AlignedEpisode:
    """Stamp raw joint samples with ``std_ms`` of timing noise."""
    ep = _copy(ep)
    stream = ep.raw.joint_state
    assert stream is not None
    noise = np.random.default_rng(seed).normal(0, std_ms * 1e6, len(stream)).astype(np.int64)
    stream.capture_ns = np.sort(stream.capture_ns + noise)
    return ep


def with_spikes(ep: AlignedEpisode, count: int = 30, size_rad: float = 0.4, seed: int = 0) -> AlignedEpisode:
    """Single-step position spikes on random joints."""
    ep = _copy(ep)
    pos = ep.state["position"]
    rng = np.random.default_rng(seed)
    steps = rng.choice(np.arange(5, pos.shape[0] - 5), count, replace=False)
    joints = rng.integers(0, 6, count)  # arm and torso joints, not the gripper
    pos[steps, joints] += size_rad * rng.choice([-1.0, 1.0], count)
    return ep


def with_idle(ep: AlignedEpisode, fraction: float = 0.7) -> AlignedEpisode:
    """Hold every joint still for the last ``fraction`` of the episode (action too)."""
    ep = _copy(ep)
    start = int(ep.t_ns.size * (1 - fraction))
    pos = ep.state["position"]
    pos[start:] = pos[start]
    ep.state["velocity"][start:] = 0.0
    assert ep.action is not None
    ep.action[start:] = ep.action[start]
    return ep


def with_limit_violations(ep: AlignedEpisode, joint: int = 3, fraction: float = 0.05) -> AlignedEpisode:
    """Push one joint 0.2 rad past its upper limit for ``fraction`` of the steps."""
    ep = _copy(ep)
    hi = ep.raw.config.joints[joint].position_max
    n = int(ep.t_ns.size * fraction)
    ep.state["position"][10:10 + n, joint] = hi + 0.2
    return ep


def _replace_frames(ep: AlignedEpisode, make: Callable[[int], bytes], fraction: float,
                    camera: str) -> AlignedEpisode:
    """Replace ``fraction`` of one camera's frames, spread evenly, by ``make(k)``."""
    ep = _copy(ep)
    stream = ep.raw.cameras[camera]
    for k in range(len(stream)):
        if fraction >= 1.0 or (k * fraction) % 1.0 + fraction >= 1.0:
            stream.jpeg[k] = make(k)
    return ep


def with_dark_frames(ep: AlignedEpisode, camera: str = "head_left", fraction: float = 1.0) -> AlignedEpisode:
    stream = ep.raw.cameras[camera]
    return _replace_frames(
        ep, lambda k: encode(textured_frame(stream.width, stream.height, k, 0, brightness=0.25)), fraction, camera
    )


def with_blurred_frames(ep: AlignedEpisode, camera: str = "head_left", fraction: float = 1.0) -> AlignedEpisode:
    stream = ep.raw.cameras[camera]
    return _replace_frames(
        ep,
        lambda k: encode(cv2.GaussianBlur(textured_frame(stream.width, stream.height, k, 0), (0, 0), 3.0)),
        fraction,
        camera,
    )


def with_black_frames(ep: AlignedEpisode, camera: str = "head_left", fraction: float = 0.2) -> AlignedEpisode:
    stream = ep.raw.cameras[camera]
    black = encode(np.zeros((stream.height, stream.width, 3), np.uint8))
    return _replace_frames(ep, lambda k: black, fraction, camera)


def with_frozen_frames(ep: AlignedEpisode, camera: str = "head_left", start: float = 0.4,
                       fraction: float = 0.3) -> AlignedEpisode:
    """The driver resends one buffer for ``fraction`` of the frames."""
    ep = _copy(ep)
    jpeg = ep.raw.cameras[camera].jpeg
    first = int(len(jpeg) * start)
    for k in range(first, first + int(len(jpeg) * fraction)):
        jpeg[k] = jpeg[first]
    return ep


def with_sync_error(ep: AlignedEpisode, camera: str = "head_left", error_ms: float = 80.0) -> AlignedEpisode:
    ep = _copy(ep)
    ep.alignment_error_ms[camera] = error_ms
    return ep


def with_nans(ep: AlignedEpisode, fraction: float = 0.05, seed: int = 0) -> AlignedEpisode:
    """NaN in ``fraction`` of the grid steps of one joint's position."""
    ep = _copy(ep)
    pos = ep.state["position"]
    rows = np.random.default_rng(seed).choice(pos.shape[0], int(pos.shape[0] * fraction), replace=False)
    pos[rows, 1] = np.nan
    return ep


def with_slow_clock_sync(ep: AlignedEpisode, rtt_ms: float = 40.0, scatter_ms: float = 5.0,
                         seed: int = 0) -> AlignedEpisode:
    """Clock-sync exchanges over a slow, noisy link: long round trips, scattered offsets."""
    ep = _copy(ep)
    clock = ep.raw.clock
    rng = np.random.default_rng(seed)
    n = clock.t1_ns.size
    rtt = (rtt_ms * 1e6 * rng.uniform(0.8, 1.2, n)).astype(np.int64)
    scatter = (rng.normal(0, scatter_ms * 1e6, n)).astype(np.int64)
    clock.t2_ns = clock.t1_ns + CLOCK_OFFSET_NS + rtt // 2 + scatter
    clock.t3_ns = clock.t2_ns + 20_000
    clock.t4_ns = clock.t3_ns - CLOCK_OFFSET_NS + rtt // 2 - scatter
    return ep


def with_camera_jitter(ep: AlignedEpisode, camera: str = "head_left", std_ms: float = 10.0,
                       seed: int = 0) -> AlignedEpisode:
    ep = _copy(ep)
    stream = ep.raw.cameras[camera]
    noise = np.random.default_rng(seed).normal(0, std_ms * 1e6, len(stream)).astype(np.int64)
    stream.capture_ns = np.sort(stream.capture_ns + noise)
    return ep


def with_joint_gap(ep: AlignedEpisode, seconds: float = 1.5) -> AlignedEpisode:
    """The joint-state stream goes silent for ``seconds`` in the middle (samples lost)."""
    ep = _copy(ep)
    stream = ep.raw.joint_state
    assert stream is not None
    mid = len(stream) // 2
    keep = np.ones(len(stream), dtype=bool)
    keep[mid:mid + int(seconds * 500)] = False
    stream.capture_ns = stream.capture_ns[keep]
    stream.source_index = stream.source_index[keep]
    stream.arrival_ns = stream.arrival_ns[keep]
    stream.fields = {k: v[keep] for k, v in stream.fields.items()}
    return ep


def with_effort_saturation(ep: AlignedEpisode, fraction: float = 0.3) -> AlignedEpisode:
    ep = _copy(ep)
    effort = ep.state["effort"]
    n = int(effort.shape[0] * fraction)
    effort[:n, 2] = ep.raw.config.joints[2].effort_max
    return ep


def with_action_lag(ep: AlignedEpisode, lag_s: float = 0.4) -> AlignedEpisode:
    """The robot follows its commands ``lag_s`` late (instead of 60 ms)."""
    ep = _copy(ep)
    assert ep.action is not None
    shift = round((lag_s - ACTION_LEAD_S) * ep.rate_hz)
    ep.action[:-shift] = ep.action[shift:].copy()
    ep.action[-shift:] = ep.action[-shift - 1]
    return ep


def with_tracking_offset(ep: AlignedEpisode, offset_rad: float = 0.25) -> AlignedEpisode:
    """The robot misses every command by ``offset_rad`` (a calibration error)."""
    ep = _copy(ep)
    assert ep.action is not None
    ep.action[:, :6] += offset_rad
    return ep

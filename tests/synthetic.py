"""Synthetic raw episodes with a known truth, for processing and dataset tests.

:func:`make_episode` builds a :class:`RawEpisode` in memory (no files, no
collector) together with the truth it was made from:

- a collector clock that runs ``offset + drift`` away from the ingest clock
  (:class:`TrueClock`), with NTP-style exchanges recorded as a collector would;
- joint positions that are sinusoids of *ingest* time, within the joint limits
  (:class:`Motion`), optionally still for an idle head and tail;
- cameras whose frames show content that changes every frame, stamped on
  arrival, ``latency_ms`` after their true exposure.

Faults are injected by the tests themselves, on copies (:func:`keep_rows`,
:func:`replace_stream`), so each test shows exactly what it broke.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from pipeline.processing.episode import CameraStream, ClockSamples, NumericStream, RawEpisode
from pipeline.robot_config import RobotConfig, parse_robot_config
from pipeline.standard_joints import STANDARD_JOINT_NAMES

NS = 1_000_000_000
EPOCH_NS = 1_700_000_000_000_000_000  # realistic epoch stamps: beyond float64's exact integers


@dataclass(frozen=True)
class CameraDef:
    name: str
    width: int = 64
    height: int = 48
    fps: float = 30.0
    latency_ms: float = 30.0


DEFAULT_CAMERAS = (CameraDef("head_left"), CameraDef("head_right", latency_ms=45.0))


def make_robot_config(
    n_joints: int = 6,
    *,
    cameras: tuple[CameraDef, ...] = DEFAULT_CAMERAS,
    continuous: tuple[int, ...] = (),
    joint_state_hz: float = 500.0,
    action_hz: float = 50.0,
    position_limit: float = 2.0,
    velocity_limit: float = 10.0,
) -> RobotConfig:
    """A robot config with ``n_joints`` standard joints and the given cameras.

    Joint ``i`` is ``joint_i`` mapped to the ``i``-th standard name, limited to
    ``[-position_limit, position_limit]`` (``[-pi, pi]`` and ``continuous`` for
    the indices in ``continuous``) and ``velocity_limit`` rad/s.
    """
    joints: list[dict[str, Any]] = []
    for i in range(n_joints):
        item: dict[str, Any] = {
            "name": f"joint_{i}",
            "standard": STANDARD_JOINT_NAMES[i],
            "position": [-position_limit, position_limit],
            "velocity": velocity_limit,
            "effort": 50.0,
        }
        if i in continuous:
            item["position"] = [-float(np.pi), float(np.pi)]
            item["continuous"] = True
        joints.append(item)
    return parse_robot_config(
        {
            "model": "synthetic",
            "vendor": "Refinery tests",
            "source": "tests/synthetic.py",
            "streams": {"joint_state_hz": joint_state_hz, "action_hz": action_hz},
            "joints": joints,
            "cameras": [
                {"name": c.name, "width": c.width, "height": c.height, "fps": c.fps, "latency_ms": c.latency_ms}
                for c in cameras
            ],
        },
        "<synthetic>",
    )


@dataclass(frozen=True)
class TrueClock:
    """``ingest = collector + offset_ns + drift_ppm * 1e-6 * (collector - ref_ns)``."""

    offset_ns: float
    drift_ppm: float
    ref_ns: int

    def to_ingest(self, t_collector_ns: np.ndarray) -> np.ndarray:
        t = np.asarray(t_collector_ns, dtype=np.int64)
        dt = (t - self.ref_ns).astype(np.float64)
        return t + np.rint(self.offset_ns + self.drift_ppm * 1e-6 * dt).astype(np.int64)

    def to_collector(self, t_ingest_ns: np.ndarray) -> np.ndarray:
        t = np.asarray(t_ingest_ns, dtype=np.int64)
        rel = (t - self.ref_ns).astype(np.float64) - self.offset_ns
        return self.ref_ns + np.rint(rel / (1 + self.drift_ppm * 1e-6)).astype(np.int64)


@dataclass(frozen=True)
class Motion:
    """Joint ``j`` at ingest time ``t``: ``center_j + amp_j * sin(2 pi f_j u + phase_j)``.

    ``u = clip(t - t0 - idle_head, 0, active)`` seconds: still for ``idle_head_s``,
    then moving for ``active_s``, then still again. Continuous joints are wrapped
    to ``(-pi, pi]``.
    """

    t0_ns: int  # ingest-clock time of the episode start
    center: np.ndarray
    amplitude: np.ndarray
    freq_hz: np.ndarray
    phase: np.ndarray
    continuous: np.ndarray  # bool (dof,)
    idle_head_s: float
    active_s: float

    def _u(self, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tau = (np.asarray(t_ns, dtype=np.int64) - self.t0_ns).astype(np.float64) / NS - self.idle_head_s
        moving = (tau > 0) & (tau < self.active_s)
        return np.clip(tau, 0.0, self.active_s)[:, None], moving[:, None]

    def position(self, t_ns: np.ndarray) -> np.ndarray:
        u, _ = self._u(t_ns)
        q = self.center + self.amplitude * np.sin(2 * np.pi * self.freq_hz * u + self.phase)
        q[:, self.continuous] = np.pi - np.mod(np.pi - q[:, self.continuous], 2 * np.pi)
        return q

    def velocity(self, t_ns: np.ndarray) -> np.ndarray:
        u, moving = self._u(t_ns)
        w = 2 * np.pi * self.freq_hz
        return np.where(moving, self.amplitude * w * np.cos(w * u + self.phase), 0.0)


@dataclass
class Synthetic:
    """A synthetic raw episode and the truth behind it."""

    raw: RawEpisode
    clock: TrueClock
    motion: Motion
    exposure_ns: dict[str, np.ndarray]  # camera -> true exposure time of each frame, ingest clock
    action_lead_s: float

    def true_action(self, t_ns: np.ndarray) -> np.ndarray:
        return self.motion.position(np.asarray(t_ns, dtype=np.int64) + round(self.action_lead_s * NS))


def frame_image(width: int, height: int, camera: int, k: int) -> np.ndarray:
    """A BGR test image that differs from frame to frame (mean brightness ~ 120)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 120 + 50 * np.sin(x / 7.0 + 0.35 * k + camera) + 40 * np.cos(y / 5.0 - 0.2 * k)
    bar = ((x.astype(np.int64) + 3 * k) % width < max(2, width // 16)) * 60.0
    g = np.clip(base + bar, 0, 255)
    return np.stack([g, 0.8 * g, 0.6 * g], axis=-1).astype(np.uint8)


def encode(image: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def black_jpeg(width: int, height: int, level: int = 0, quality: int = 80) -> bytes:
    """A JPEG of a uniform dark image (``level`` 0 = black)."""
    return encode(np.full((height, width, 3), level, dtype=np.uint8), quality)


def make_episode(
    config: RobotConfig | None = None,
    *,
    duration_s: float = 3.0,
    seed: int = 0,
    clock_offset_ms: float = 0.0,
    clock_drift_ppm: float = 0.0,
    clock_interval_s: float = 0.5,
    clock_delay_us: float = 100.0,
    clock_noisy: int = 0,
    clock_noise_ms: float = 3.0,
    idle_head_s: float = 0.0,
    idle_tail_s: float = 0.0,
    position_noise_rad: float = 0.0,
    continuous_center: float = float(np.pi),
    outcome: str = "success",
    encode_frames: bool = True,
    frame_pool: int | None = None,
    jpeg_quality: int = 80,
    action_lead_s: float = 0.05,
    start_ns: int = EPOCH_NS,
    episode_id: str = "ep-0001",
) -> Synthetic:
    """A complete raw episode: joint states, actions, cameras, clock samples, events.

    Args:
        config: robot; default :func:`make_robot_config` ().
        duration_s: length of every stream (collector clock).
        seed: varies the motion (centers, amplitudes 0.3-0.8 rad, 0.2-0.7 Hz).
        clock_offset_ms, clock_drift_ppm: the collector clock's error (see
            :class:`TrueClock`; drift counted from the episode start).
        clock_interval_s: one exact exchange this often, from 2 s before the
            start to 0.5 s after the end (the agent keeps recent exchanges).
        clock_delay_us: one-way delay of an exact exchange (both legs equal).
        clock_noisy: extra exchanges per exact one, each with an exponential
            extra delay (mean ``clock_noise_ms``) on one random leg.
        idle_head_s, idle_tail_s: the robot stands still this long at each end.
        position_noise_rad: gaussian noise on measured positions.
        continuous_center: center of continuous joints (pi: they cross ±pi).
        encode_frames: False puts short unique placeholder bytes instead of
            JPEGs, for tests that never decode (align, fast Hypothesis runs);
            clean_aligned would find those frames undecodable.
        frame_pool: encode only this many distinct images per camera and
            cycle them (fast for large frames); each frame's bytes stay unique
            (a trailer after the JPEG end marker). None: every image distinct.
    """
    config = config or make_robot_config()
    rng = np.random.default_rng(seed)
    dof = config.dof
    c0 = int(start_ns)
    clock = TrueClock(clock_offset_ms * 1e6, clock_drift_ppm, c0)
    continuous = np.array([j.continuous for j in config.joints], dtype=bool)
    center = np.where(continuous, continuous_center, rng.uniform(-0.3, 0.3, dof))
    motion = Motion(
        t0_ns=int(clock.to_ingest(np.array([c0]))[0]),
        center=center,
        amplitude=rng.uniform(0.3, 0.8, dof),
        freq_hz=rng.uniform(0.2, 0.7, dof),
        phase=rng.uniform(0, 2 * np.pi, dof),
        continuous=continuous,
        idle_head_s=idle_head_s,
        active_s=max(0.0, duration_s - idle_head_s - idle_tail_s),
    )

    n = int(round(duration_s * config.joint_state_hz))
    capture = c0 + np.rint(np.arange(n) * NS / config.joint_state_hz).astype(np.int64)
    t_true = clock.to_ingest(capture)
    position = motion.position(t_true)
    if position_noise_rad > 0:
        position += rng.normal(0.0, position_noise_rad, (n, dof))
        position[:, continuous] = np.pi - np.mod(np.pi - position[:, continuous], 2 * np.pi)
    velocity = motion.velocity(t_true)
    joint_state = NumericStream(
        capture_ns=capture,
        source_index=np.arange(n, dtype=np.int64),
        arrival_ns=t_true + 1_000_000,
        fields={"position": position, "velocity": velocity, "effort": 5.0 * velocity},
    )

    m = int(round(duration_s * config.action_hz))
    a_capture = c0 + np.rint(np.arange(m) * NS / config.action_hz).astype(np.int64)
    a_true = clock.to_ingest(a_capture)
    action = NumericStream(
        capture_ns=a_capture,
        source_index=np.arange(m, dtype=np.int64),
        arrival_ns=a_true + 1_000_000,
        fields={"position": motion.position(a_true + round(action_lead_s * NS))},
    )

    cameras: dict[str, CameraStream] = {}
    exposure_ns: dict[str, np.ndarray] = {}
    for ci, spec in enumerate(config.cameras):
        count = int(duration_s * spec.fps)
        phase_ns = 3_000_000 * (ci + 1)  # cameras are not in phase with each other or the joints
        exposure = c0 + phase_ns + np.rint(np.arange(count) * NS / spec.fps).astype(np.int64)
        latency_ns = round(spec.latency_ms * 1e6)
        if encode_frames:
            pool = count if frame_pool is None else max(2, frame_pool)
            images = [
                encode(frame_image(spec.width, spec.height, ci, k), jpeg_quality) for k in range(min(pool, count))
            ]
            if frame_pool is None:
                jpeg = images
            else:
                # A real camera never repeats a frame's bytes: a 4-byte trailer after the
                # end-of-image marker keeps pooled frames unique (decoders ignore it).
                jpeg = [images[k % len(images)] + k.to_bytes(4, "little") for k in range(count)]
        else:
            jpeg = [f"{spec.name}:{k}".encode() for k in range(count)]
        exposure_ns[spec.name] = clock.to_ingest(exposure)
        cameras[spec.name] = CameraStream(
            capture_ns=exposure + latency_ns,
            source_index=np.arange(count, dtype=np.int64),
            arrival_ns=clock.to_ingest(exposure + latency_ns) + 1_000_000,
            jpeg=jpeg,
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            latency_ms=spec.latency_ms,
        )

    clock_samples = make_clock_samples(
        clock,
        c0 - 2 * NS,
        c0 + int((duration_s + 0.5) * NS),
        interval_s=clock_interval_s,
        delay_us=clock_delay_us,
        noisy=clock_noisy,
        noise_ms=clock_noise_ms,
        rng=rng,
    )

    task = "pick up the cube"
    raw = RawEpisode(
        robot_id="synthetic-0",
        episode_id=episode_id,
        config=config,
        attrs={
            "robot_id": "synthetic-0",
            "episode_id": episode_id,
            "model": config.model,
            "status": "complete",
            "outcome": outcome,
            "task": task,
            "operator": "op-1",
        },
        joint_state=joint_state,
        action=action,
        cameras=cameras,
        events=[{"kind": "start", "task": task, "operator": "op-1"}, {"kind": "stop", "outcome": outcome}],
        clock=clock_samples,
    )
    return Synthetic(raw=raw, clock=clock, motion=motion, exposure_ns=exposure_ns, action_lead_s=action_lead_s)


def make_clock_samples(
    clock: TrueClock,
    start_ns: int,
    end_ns: int,
    *,
    interval_s: float = 0.5,
    delay_us: float = 100.0,
    noisy: int = 0,
    noise_ms: float = 3.0,
    rng: np.random.Generator | None = None,
) -> ClockSamples:
    """Four-timestamp exchanges from ``start_ns`` to ``end_ns`` (collector clock).

    One exact exchange every ``interval_s`` (both legs ``delay_us``: its offset
    is the true offset at its midpoint), plus ``noisy`` exchanges in between
    with an exponential extra delay (mean ``noise_ms``, at least 1 µs) on one
    random leg: their offsets are off by half that delay.
    """
    rng = rng or np.random.default_rng(0)
    delay = round(delay_us * 1e3)
    samples: list[tuple[int, int, int, int]] = []
    step = int(interval_s * NS)
    for t1 in range(int(start_ns), int(end_ns), step):
        samples.append(_exchange(clock, t1, delay, delay))
        for j in range(noisy):
            extra = round(rng.exponential(noise_ms * 1e6)) + 1000
            out_extra, back_extra = (extra, 0) if rng.random() < 0.5 else (0, extra)
            samples.append(_exchange(clock, t1 + (j + 1) * step // (noisy + 1), delay + out_extra, delay + back_extra))
    cols = np.array(samples, dtype=np.int64).reshape(-1, 4)
    return ClockSamples(cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3])


def _exchange(clock: TrueClock, t1: int, out_ns: int, back_ns: int) -> tuple[int, int, int, int]:
    """One four-timestamp exchange starting at collector time ``t1``."""
    t2 = int(clock.to_ingest(np.array([t1]))[0]) + out_ns
    t3 = t2 + 20_000  # the ingest's own handling time
    t4 = int(clock.to_collector(np.array([t3 + back_ns]))[0])
    return t1, t2, t3, t4


def keep_rows(stream: Any, keep: np.ndarray) -> Any:
    """A copy of a NumericStream or CameraStream with only the rows where ``keep``."""
    keep = np.asarray(keep)
    if keep.dtype != bool:
        mask = np.zeros(len(stream), dtype=bool)
        mask[keep] = True
        keep = mask
    if isinstance(stream, NumericStream):
        return NumericStream(
            capture_ns=stream.capture_ns[keep].copy(),
            source_index=stream.source_index[keep].copy(),
            arrival_ns=stream.arrival_ns[keep].copy(),
            fields={k: v[keep].copy() for k, v in stream.fields.items()},
        )
    return replace(
        stream,
        capture_ns=stream.capture_ns[keep].copy(),
        source_index=stream.source_index[keep].copy(),
        arrival_ns=stream.arrival_ns[keep].copy(),
        jpeg=[b for b, k in zip(stream.jpeg, keep, strict=True) if k],
    )


def copy_numeric(stream: NumericStream) -> NumericStream:
    """A deep copy, for tests that change values in place."""
    return keep_rows(stream, np.ones(len(stream), dtype=bool))


def replace_stream(raw: RawEpisode, name: str, stream: Any) -> RawEpisode:
    """A new RawEpisode with one stream (``joint_state``, ``action`` or a camera) replaced."""
    if name == "joint_state":
        return replace(raw, joint_state=stream)
    if name == "action":
        return replace(raw, action=stream)
    return replace(raw, cameras={**raw.cameras, name: stream})

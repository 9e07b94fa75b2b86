"""In-memory episodes: what the processing stages take and give.

A :class:`RawEpisode` is a sealed raw HDF5 file loaded into numpy arrays
(:func:`load_raw_episode`), every stream at its own rate with its original
timestamps. An :class:`AlignedEpisode` is the output of the align stage: every
stream resampled onto one timeline at one rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import RawChecksumMismatch
from pipeline.raw_store import RawEpisodeReader
from pipeline.robot_config import RobotConfig, parse_robot_config
from pipeline.streams import ACTION, JOINT_STATE


@dataclass
class NumericStream:
    """A numeric stream at its own rate: one row per sample, in arrival order."""

    capture_ns: np.ndarray  # int64 (n,), collector clock
    source_index: np.ndarray  # int64 (n,), driver counter (gaps = lost samples)
    arrival_ns: np.ndarray  # int64 (n,), ingest clock when the batch arrived
    fields: dict[str, np.ndarray]  # name -> float64 (n, dof): position, velocity, effort

    def __len__(self) -> int:
        return int(self.capture_ns.shape[0])


@dataclass
class CameraStream:
    """A camera at its own rate: one JPEG per frame, as received."""

    capture_ns: np.ndarray  # int64 (n,), collector clock, as the driver stamped it
    source_index: np.ndarray  # int64 (n,)
    arrival_ns: np.ndarray  # int64 (n,)
    jpeg: list[bytes]
    width: int
    height: int
    fps: float
    latency_ms: float  # known capture latency of this camera (from the robot config)

    def __len__(self) -> int:
        return len(self.jpeg)


@dataclass
class ClockSamples:
    """Four-timestamp exchanges: t1/t4 on the collector clock, t2/t3 on the ingest clock."""

    t1_ns: np.ndarray
    t2_ns: np.ndarray
    t3_ns: np.ndarray
    t4_ns: np.ndarray

    @property
    def offset_ns(self) -> np.ndarray:
        """Ingest clock minus collector clock, per sample (float64)."""
        return ((self.t2_ns - self.t1_ns) + (self.t3_ns - self.t4_ns)).astype(np.float64) / 2

    @property
    def round_trip_ns(self) -> np.ndarray:
        return ((self.t4_ns - self.t1_ns) - (self.t3_ns - self.t2_ns)).astype(np.float64)


@dataclass
class RawEpisode:
    robot_id: str
    episode_id: str
    config: RobotConfig
    attrs: dict[str, Any]  # status, outcome, task, operator, ...
    joint_state: NumericStream | None
    action: NumericStream | None
    cameras: dict[str, CameraStream]
    events: list[dict[str, Any]]
    clock: ClockSamples
    source_path: str = ""


@dataclass
class AlignedEpisode:
    """Every stream on one timeline ``t_ns`` (ingest clock) at ``rate_hz``.

    ``frames[camera][i]`` is the index into ``cameras[camera].jpeg`` of the frame
    nearest to ``t_ns[i]`` (or -1 where none lies within tolerance).
    """

    raw: RawEpisode
    rate_hz: float
    t_ns: np.ndarray  # int64 (T,)
    state: dict[str, np.ndarray]  # position / velocity / effort -> float64 (T, dof)
    action: np.ndarray | None  # float64 (T, dof)
    frames: dict[str, np.ndarray]  # camera -> int64 (T,)
    alignment_error_ms: dict[str, float] = field(default_factory=dict)  # per stream, documented in align.py
    report: dict[str, Any] = field(default_factory=dict)
    # stream -> int64 (n,): each raw sample's time on the ingest clock (camera frames:
    # exposure time, latency removed), as align mapped it; clean finds raw gaps with it.
    stream_time_ns: dict[str, np.ndarray] = field(default_factory=dict)
    # What align itself found (clean.Decision, stage "align"): camera delay mismatches, impossible stamps.
    decisions: list[Any] = field(default_factory=list)


def _numeric(reader: RawEpisodeReader, stream: str) -> NumericStream | None:
    if stream not in reader.stream_names:
        return None
    cols = reader.numeric(stream)
    meta = ("capture_ns", "source_index", "seq", "arrival_ns")
    return NumericStream(
        capture_ns=cols["capture_ns"],
        source_index=cols["source_index"],
        arrival_ns=cols["arrival_ns"],
        fields={k: v for k, v in cols.items() if k not in meta},
    )


def load_raw_episode(path: Path | str) -> RawEpisode:
    """Load a sealed raw episode file completely into memory, checking its content checksum.

    Every dataset is read once and hashed as it is read, so verifying costs
    the hashing, not a second read.

    Raises:
        RawChecksumMismatch: The content does not match ``content_sha256``.
        StoreError: The file cannot be read as a raw episode.
    """
    with RawEpisodeReader(path, verify=True) as reader:
        attrs = reader.attrs
        expected = str(attrs.get("content_sha256", ""))
        if reader.content_sha256 != expected:
            raise RawChecksumMismatch(str(path), str(attrs.get("episode_id", "")), expected, str(reader.content_sha256))
        config = parse_robot_config(reader.robot_config, f"{path}:/robot_config")
        cameras = {}
        for name in reader.camera_names:
            cols = reader.camera(name)
            cam_attrs = reader.camera_attrs(name)
            spec = {c.name: c for c in config.cameras}.get(name)
            cameras[name] = CameraStream(
                capture_ns=cols["capture_ns"],
                source_index=cols["source_index"],
                arrival_ns=cols["arrival_ns"],
                jpeg=reader.frames(name),
                width=int(cam_attrs.get("width", spec.width if spec else 0)),
                height=int(cam_attrs.get("height", spec.height if spec else 0)),
                fps=float(cam_attrs.get("fps", spec.fps if spec else 0.0)),
                latency_ms=float(cam_attrs.get("latency_ms", spec.latency_ms if spec else 0.0)),
            )
        clock = reader.clock_sync()
        return RawEpisode(
            robot_id=str(attrs["robot_id"]),
            episode_id=str(attrs["episode_id"]),
            config=config,
            attrs=attrs,
            joint_state=_numeric(reader, JOINT_STATE),
            action=_numeric(reader, ACTION),
            cameras=cameras,
            events=reader.events(),
            clock=ClockSamples(clock["t1_ns"], clock["t2_ns"], clock["t3_ns"], clock["t4_ns"]),
            source_path=str(path),
        )

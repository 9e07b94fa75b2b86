"""Faults the simulated humanoid can inject, so every cleaning rule has a cause to find.

All faults are off by default. Random faults are decided per stream and per
sample index from ``(sim seed, faults.seed)``, never from poll timing, so the
same settings give the same faulty episode however often ``poll`` is called.

Command-line form (``SimFaults.parse``)::

    drop_frame_prob=0.05,clock_offset_ms=12,stall=3:0.5,frozen_camera=head_left:2:1

Window faults (``stall``, ``frozen_camera``, ``black_frames``) may repeat to
give several windows; times are seconds since episode start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from pipeline.errors import DriverError

Window = tuple[float, float]  # (start_s, duration_s) since episode start
CameraWindow = tuple[str, float, float]  # (camera, start_s, duration_s)

_PROBABILITIES = (
    "drop_frame_prob",
    "spike_prob",
    "nan_prob",
    "duplicate_timestamp_prob",
    "backwards_timestamp_prob",
)
_NON_NEGATIVE = ("spike_size_rad", "timestamp_jitter_us", "camera_scene_delay_ms")
_SIGNED = ("clock_offset_ms", "clock_drift_ppm", "camera_stamp_offset_ms")
_WINDOWS = ("stall",)
_CAMERA_WINDOWS = ("frozen_camera", "black_frames")


@dataclass(frozen=True)
class SimFaults:
    """Which faults the simulator injects, and how often.

    Attributes:
        drop_frame_prob: chance that a camera frame is lost; its index is skipped.
        stall: windows in which no joint-state or action samples are produced
            (their indices are skipped, as a robot that stops talking would).
        spike_prob: chance that a joint-state sample has one joint's position
            off by ``spike_size_rad`` (random sign) for that sample only.
        spike_size_rad: size of a spike.
        nan_prob: chance that one joint's position in a joint-state sample is NaN.
        clock_offset_ms: constant offset of the robot clock, on every stream.
        clock_drift_ppm: robot clock rate error, on every stream, growing from
            zero at episode start.
        frozen_camera: windows in which a camera repeats the bytes of the last
            frame it captured before the window.
        black_frames: windows in which a camera delivers all-black images.
        timestamp_jitter_us: standard deviation of gaussian jitter on
            joint-state capture stamps.
        duplicate_timestamp_prob: chance a joint-state sample carries the
            previous sample's stamp.
        backwards_timestamp_prob: chance a joint-state sample is stamped one
            period before the previous sample's stamp.
        camera_stamp_offset_ms: every camera frame's stamp is this much later
            (negative: earlier) than the camera's known latency says, against
            correct joint stamps: a wrong latency setting or a camera clock off.
        camera_scene_delay_ms: every camera shows the scene this much later
            than its (correct) stamps say: a camera buffering frames.
        seed: varies the random faults without changing the motion.
    """

    drop_frame_prob: float = 0.0
    stall: tuple[Window, ...] = ()
    spike_prob: float = 0.0
    spike_size_rad: float = 0.5
    nan_prob: float = 0.0
    clock_offset_ms: float = 0.0
    clock_drift_ppm: float = 0.0
    frozen_camera: tuple[CameraWindow, ...] = ()
    black_frames: tuple[CameraWindow, ...] = ()
    timestamp_jitter_us: float = 0.0
    duplicate_timestamp_prob: float = 0.0
    backwards_timestamp_prob: float = 0.0
    camera_stamp_offset_ms: float = 0.0
    camera_scene_delay_ms: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in _PROBABILITIES:
            value = _finite(key, getattr(self, key))
            if not 0.0 <= value <= 1.0:
                raise DriverError(f"sim fault {key!r}: must be a probability in [0, 1], got {value}")
        for key in _NON_NEGATIVE:
            if _finite(key, getattr(self, key)) < 0:
                raise DriverError(f"sim fault {key!r}: must be >= 0, got {getattr(self, key)}")
        for key in _SIGNED:
            _finite(key, getattr(self, key))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DriverError(f"sim fault 'seed': must be a non-negative integer, got {self.seed!r}")
        # Accept lists from callers and YAML, store tuples so the dataclass stays hashable.
        object.__setattr__(self, "stall", tuple(_window("stall", w) for w in self.stall))
        for key in _CAMERA_WINDOWS:
            object.__setattr__(self, key, tuple(_camera_window(key, w) for w in getattr(self, key)))

    @property
    def active(self) -> bool:
        """True if at least one fault is switched on."""
        return self != SimFaults(seed=self.seed)

    @property
    def clock_offset_ns(self) -> int:
        return round(self.clock_offset_ms * 1e6)

    @classmethod
    def parse(cls, spec: str) -> SimFaults:
        """Parse the command-line form ``key=value,key=value``.

        Raises:
            DriverError: naming the key (or the piece) that is wrong.
        """
        known = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for piece in (p.strip() for p in spec.split(",")):
            if not piece:
                continue
            key, sep, text = (s.strip() for s in piece.partition("="))
            if not sep or not key:
                raise DriverError(f"sim faults: {piece!r} is not key=value; keys: {', '.join(known)}")
            if key not in known:
                raise DriverError(f"sim faults: unknown key {key!r}; keys: {', '.join(known)}")
            if key in _WINDOWS or key in _CAMERA_WINDOWS:
                values.setdefault(key, []).append(_parse_window(key, text))
                continue
            if key in values:
                raise DriverError(f"sim fault {key!r}: given twice")
            values[key] = _parse_scalar(key, text)
        return cls(**values)

    def to_spec(self) -> str:
        """The command-line form; ``SimFaults.parse(f.to_spec()) == f``."""
        default = SimFaults()
        parts: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _WINDOWS or f.name in _CAMERA_WINDOWS:
                parts += [f"{f.name}={':'.join(_fmt(v) for v in w)}" for w in value]
            elif value != getattr(default, f.name):
                parts.append(f"{f.name}={_fmt(value)}")
        return ",".join(parts)


def in_windows(windows: tuple[Window, ...], t_s: float) -> bool:
    """True if ``t_s`` lies in ``[start, start + duration)`` of any window."""
    return any(start <= t_s < start + duration for start, duration in windows)


def _fmt(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _finite(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DriverError(f"sim fault {key!r}: expected a finite number, got {value!r}")
    return float(value)


def _window(key: str, raw: Any) -> Window:
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
        raise DriverError(f"sim fault {key!r}: expected (start_s, duration_s), got {raw!r}")
    start, duration = _finite(key, raw[0]), _finite(key, raw[1])
    if start < 0 or duration <= 0:
        raise DriverError(f"sim fault {key!r}: need start_s >= 0 and duration_s > 0, got {raw!r}")
    return (start, duration)


def _camera_window(key: str, raw: Any) -> CameraWindow:
    if not isinstance(raw, (tuple, list)) or len(raw) != 3 or not isinstance(raw[0], str) or not raw[0]:
        raise DriverError(f"sim fault {key!r}: expected (camera, start_s, duration_s), got {raw!r}")
    start, duration = _window(key, raw[1:])
    return (raw[0], start, duration)


def _parse_scalar(key: str, text: str) -> float | int:
    try:
        return int(text) if key == "seed" else float(text)
    except ValueError as err:
        kind = "an integer" if key == "seed" else "a number"
        raise DriverError(f"sim fault {key!r}: expected {kind}, got {text!r}") from err


def _parse_window(key: str, text: str) -> Window | CameraWindow:
    if key in _CAMERA_WINDOWS:
        # Camera names may not contain ':' (config names are [A-Za-z0-9_.-]), so split from the right.
        parts = text.rsplit(":", 2)
        form = "camera:start_s:duration_s"
    else:
        parts = text.split(":")
        form = "start_s:duration_s"
    if len(parts) != (3 if key in _CAMERA_WINDOWS else 2):
        raise DriverError(f"sim fault {key!r}: expected {form}, got {text!r}")
    try:
        times = [float(p) for p in parts[-2:]]
    except ValueError as err:
        raise DriverError(f"sim fault {key!r}: expected {form} with numbers, got {text!r}") from err
    return (parts[0], *times) if key in _CAMERA_WINDOWS else (times[0], times[1])  # type: ignore[return-value]

"""Score stage: named quality indicators for one aligned episode, and one grade.

:func:`score_episode` is a pure function: an :class:`AlignedEpisode` (with the
raw episode it came from), the cleaning decisions and a :class:`ScoreConfig`
in, a :class:`QualityReport` out. Nothing is written anywhere.

Indicators
----------
Every indicator has a measured ``value`` (in ``unit``), a ``score`` in [0, 1]
(1 = no problem), a ``weight`` and a description that states the mapping
from value to score. Most mappings are ramps: score 1 at or better than a
*good* value, 0 at or worse than a *bad* value, linear in between. The
registry at the bottom of this file (``_INDICATORS``) is the reference; in
short, with (weight, good -> bad):

=============================  ======  =========================================
name                           weight  score 1 -> score 0
=============================  ======  =========================================
duration_s                 *   1.0     >= 2 s -> <= 0.5 s
completeness               *   2.0     >= 0.99 -> <= 0.8 of grid steps with every stream
joint_sample_completeness      1.0     >= 0.999 -> <= 0.9 of source indices received
action_sample_completeness     0.5     >= 0.999 -> <= 0.9
frame_completeness             1.0     >= 0.98 -> <= 0.8 (worst camera)
frame_drop_rate                1.0     <= 0.01 -> >= 0.2 (worst camera, by time)
sync_error_ms              *   2.0     <= 20 ms -> >= 60 ms (worst stream; see below)
clock_rtt_ms                   0.5     <= 2 ms -> >= 50 ms
clock_offset_stability_ms      0.5     <= 0.5 ms -> >= 10 ms
timing_jitter_ms               1.0     <= 10 % -> >= 100 % of the joint period
camera_jitter_ms               0.5     <= 10 % -> >= 50 % of the frame period
max_gap_ms                     1.0     <= 100 ms -> >= 1000 ms
jerk                           1.0     <= 5 -> >= 50 joint ranges / s^3
high_frequency_energy_ratio    1.0     <= 0.05 -> >= 0.3
action_state_tracking_error    1.0     <= 0.05 rad -> >= 0.3 rad
action_state_lag_ms            0.5     <= 150 ms -> >= 500 ms
idle_ratio                     1.0     <= 0.2 -> >= 0.8
position_limit_margin          0.5     >= 0.02 -> <= 0 of the joint range
limit_violations           *   1.0     0 -> >= 1 % of grid steps
velocity_limit_violations      1.0     0 -> >= 1 % of grid steps
effort_saturation              0.5     <= 0.01 -> >= 0.2 of grid steps
nan_fraction               *   1.0     0 -> >= 0.02 of grid steps
timestamp_disorder             0.5     0 -> >= 0.01 of raw samples
brightness                     1.0     60..190 good; 0 at <= 25 or >= 240 (worst camera)
clipped_pixel_fraction         0.5     <= 0.05 -> >= 0.4
badly_exposed_frame_ratio      1.0     <= 0.05 -> >= 0.5
sharpness                      1.0     >= 60 -> <= 8 var(Laplacian)
frozen_frame_ratio             1.0     <= 0.01 -> >= 0.2
black_frame_ratio              1.0     0 -> >= 0.1
decisions_count                0.5     <= 2 -> >= 30 cleaning decisions
=============================  ======  =========================================

``*`` marks *critical* indicators. An indicator that cannot be measured
(no action stream, no cameras, too few clock samples, ...) is reported with
value 0, score 1 and weight 0, and a note says why; it never moves the grade.

Overall score and grade
-----------------------
``overall = sum(weight_i * score_i) / sum(weight_i)`` over the indicators,
the weighted arithmetic mean. The letter comes from ``overall``:
A >= 0.9, B >= 0.8, C >= 0.65, D >= 0.5, F below. Two caps follow, because
a mean of 30 indicators hides one ruinous defect (a camera frozen half the
episode moves the mean by 1/27, under 0.04):

* the grade is at most two letters better than the letter of the worst
  *major* indicator's own score (same cut-offs; major = weight >= 1, the
  0.5-weight indicators are diagnostic and only move the mean): one major
  indicator at F caps the episode at C, one at D caps it at B;
* a critical indicator with score 0 caps the grade at D.

A trainer who keeps "B or better" therefore never gets an episode with a
major indicator in F, whatever the others say.

Costs
-----
The numeric indicators are vectorised over the episode. The image
indicators decode a sample of frames, never all of them: one frame in
``sample_every`` (24), at least ``min_frames_per_camera`` (5) and at most
``frames_per_camera`` (20), evenly spread over the frames the aligned
episode uses, plus at most ``black_candidates_per_camera`` frames whose JPEG
is suspiciously small (black frames compress to a fraction of a normal
frame), decoded as reduced grayscale (``IMREAD_REDUCED_GRAYSCALE_2/4/8``,
the largest reduction that keeps at least ``decode_min_width`` pixels).
Frozen frames are found over every used frame by comparing JPEG bytes,
which costs no decode. A reduced decode still entropy-decodes the whole
JPEG (0.6-1.2 ms for a 640x480 frame), so decodes dominate. Measured on a
shared 2-core machine, two 640x480 cameras at 30 fps: 60 s (3,624 frames)
70-90 ms, 0.02 ms per frame; 10 s 0.06 ms per frame; two 1280x720 cameras,
60 s, 0.04 ms per frame. ``tests/test_score.py`` checks the 0.1 ms budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import cv2
import numpy as np

from pipeline.errors import ProcessingError
from pipeline.processing.episode import AlignedEpisode, CameraStream, NumericStream
from pipeline.streams import ACTION, JOINT_STATE

GRADES = ("A", "B", "C", "D", "F")
"""Letters, best first."""

GRADE_CUTOFFS = (0.9, 0.8, 0.65, 0.5)
"""Lowest overall score for A, B, C and D; anything below the last is F."""

MAJOR_WEIGHT = 1.0
"""Indicators weighing at least this much can cap the grade (see the module docstring)."""


@dataclass(frozen=True)
class Indicator:
    """One named quality measurement of an episode.

    Attributes:
        name: stable identifier (``sync_error_ms``).
        value: what was measured, in ``unit``; always finite.
        unit: unit of ``value`` (``ms``, ``fraction``, ``rad``, ``count``, ...).
        score: 1 is no problem, 0 is as bad as the mapping goes.
        weight: share in the overall score; 0 when it could not be measured.
        description: what is measured and how value maps to score.
        critical: a score of 0 caps the grade at D.
    """

    name: str
    value: float
    unit: str
    score: float
    weight: float
    description: str
    critical: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "score": self.score,
            "weight": self.weight,
            "description": self.description,
            "critical": self.critical,
        }


@dataclass(frozen=True)
class QualityReport:
    """The score stage's output for one episode.

    Attributes:
        indicators: every indicator, in registry order.
        grade: ``A`` (best) to ``F``; see the module docstring for the rule.
        overall: weighted mean of the indicator scores, in [0, 1].
        notes: human-readable remarks: unmeasured indicators, grade caps.
    """

    indicators: tuple[Indicator, ...]
    grade: str
    overall: float
    notes: tuple[str, ...] = ()

    def indicator(self, name: str) -> Indicator:
        """The indicator called ``name``.

        Raises:
            KeyError: no indicator has that name.
        """
        for ind in self.indicators:
            if ind.name == name:
                return ind
        raise KeyError(name)

    @property
    def scores(self) -> dict[str, float]:
        """Indicator name -> score."""
        return {ind.name: ind.score for ind in self.indicators}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe mapping (plain str, float, bool, list, dict)."""
        return {
            "grade": self.grade,
            "overall": self.overall,
            "notes": list(self.notes),
            "indicators": [ind.to_dict() for ind in self.indicators],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "quality report") -> QualityReport:
        """Read back what :meth:`to_dict` wrote.

        Raises:
            ProcessingError: a field is missing or has the wrong type.
        """
        try:
            grade = data["grade"]
            if grade not in GRADES:
                raise ProcessingError(where, f"field 'grade': expected one of {', '.join(GRADES)}, got {grade!r}")
            indicators = tuple(
                Indicator(
                    name=_text(item["name"], where, "indicators.name"),
                    value=_real(item["value"], where, "indicators.value"),
                    unit=_text(item["unit"], where, "indicators.unit"),
                    score=_real(item["score"], where, "indicators.score"),
                    weight=_real(item["weight"], where, "indicators.weight"),
                    description=_text(item["description"], where, "indicators.description"),
                    critical=bool(item.get("critical", False)),
                )
                for item in data["indicators"]
            )
            notes = tuple(_text(n, where, "notes") for n in data.get("notes", ()))
            return cls(indicators, grade, _real(data["overall"], where, "overall"), notes)
        except (KeyError, TypeError) as err:
            raise ProcessingError(where, f"malformed quality report: missing or wrong field ({err!r})") from err


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise ProcessingError(where, f"field {name!r}: expected text, got {value!r}")
    return value


def _real(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProcessingError(where, f"field {name!r}: expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScoreConfig:
    """Knobs of the score stage. The defaults are the documented behaviour.

    Attributes:
        frames_per_camera: most frames decoded per camera for the image indicators.
        min_frames_per_camera / sample_every: below ``frames_per_camera``, decode
            one frame in ``sample_every`` but at least ``min_frames_per_camera``:
            a short episode's cost stays proportional to its length.
        black_candidates_per_camera: extra small-JPEG frames decoded per camera
            to count black frames between the samples.
        black_size_ratio: a JPEG smaller than this fraction of the camera's
            median JPEG size is a black-frame candidate.
        decode_min_width: reduced decodes keep at least this many pixels across.
        idle_speed_rad_s: a grid step is idle when no joint moves faster than
            this (speed measured over ``idle_window_s``).
        idle_window_s: time base of the idle speed (long enough to average out
            encoder noise).
        jerk_step_s: finite-difference step of the jerk estimate; the step acts
            as a low-pass filter, so encoder noise does not read as jerk.
        hf_cutoff_hz: joint velocity energy above this frequency counts as
            high-frequency (teleoperated motion is mostly below 2 Hz).
        max_tracking_lag_s: longest action-to-state lag searched.
        limit_tolerance: position-limit tolerance as a fraction of the range.
        velocity_tolerance: velocity-limit tolerance as a fraction of the limit.
        effort_saturation: an effort at or above this fraction of the limit
            counts as saturated.
        sync_good_ms / sync_bad_ms: ramp of ``sync_error_ms``; both move up together
            when half the slowest camera's frame period exceeds ``sync_good_ms``.
        weights: ``(name, weight)`` pairs overriding registry weights.
    """

    frames_per_camera: int = 20
    min_frames_per_camera: int = 5
    sample_every: int = 24
    black_candidates_per_camera: int = 20
    black_size_ratio: float = 0.5
    decode_min_width: int = 160
    idle_speed_rad_s: float = 0.05
    idle_window_s: float = 0.1
    jerk_step_s: float = 0.06
    hf_cutoff_hz: float = 5.0
    max_tracking_lag_s: float = 0.5
    limit_tolerance: float = 0.005
    velocity_tolerance: float = 0.05
    effort_saturation: float = 0.95
    sync_good_ms: float = 20.0
    sync_bad_ms: float = 60.0
    weights: tuple[tuple[str, float], ...] = ()


# --- score mappings --------------------------------------------------------------


def ramp(value: float, good: float, bad: float) -> float:
    """1 at or beyond ``good``, 0 at or beyond ``bad``, linear in between.

    Works both ways: ``good < bad`` means lower is better, ``good > bad``
    higher is better.
    """
    if good == bad:
        return 1.0 if value == good else 0.0
    return float(min(1.0, max(0.0, (bad - value) / (bad - good))))


def band(value: float, bad_low: float, good_low: float, good_high: float, bad_high: float) -> float:
    """1 inside ``[good_low, good_high]``, ramping to 0 at ``bad_low`` and ``bad_high``."""
    return min(ramp(value, good_low, bad_low), ramp(value, good_high, bad_high))


def letter(score: float) -> str:
    """The grade letter of a score in [0, 1], by :data:`GRADE_CUTOFFS`."""
    for grade, cutoff in zip(GRADES, GRADE_CUTOFFS, strict=False):  # F has no cut-off
        if score >= cutoff:
            return grade
    return GRADES[-1]


# --- shared measurements ---------------------------------------------------------


class _NotMeasured(Exception):
    """An indicator cannot be measured on this episode; the message says why."""


@dataclass
class _CameraStats:
    """What the image and frame-timing indicators need from one camera."""

    name: str
    frames: int  # raw frames in the aligned window
    completeness: float  # received / expected by source index
    drop_rate: float  # 1 - received / expected by capture time and fps
    jitter_ms: float
    jitter_ratio: float  # jitter / frame period
    max_gap_ms: float
    disorder: float
    frozen_ratio: float
    black_ratio: float
    brightness: float | None  # None: no decodable non-black sample
    clipped: float | None
    badly_exposed: float | None
    sharpness: float | None


@dataclass
class _Context:
    """Arrays shared by several indicators, computed once per episode."""

    ep: AlignedEpisode
    config: ScoreConfig
    notes: list[str]
    position: np.ndarray | None  # (T, dof), continuous joints unwrapped
    lo: np.ndarray
    hi: np.ndarray
    span: np.ndarray  # position range; 2*pi for continuous joints
    bounded: np.ndarray  # bool (dof,): joint has position limits
    gripper: np.ndarray  # bool (dof,)
    continuous: np.ndarray
    window_ns: tuple[int, int] | None  # aligned window on the collector clock (estimate)
    _cameras: list[_CameraStats] | None = None
    _lag: tuple[int, float] | _NotMeasured | None = None

    @property
    def steps(self) -> int:
        return int(self.ep.t_ns.shape[0])

    @property
    def cameras(self) -> list[_CameraStats]:
        if self._cameras is None:
            self._cameras = [_camera_stats(self, name) for name in _camera_names(self.ep)]
        return self._cameras

    def best_lag(self) -> tuple[int, float]:
        """:func:`_best_lag`, computed once for the two indicators that use it."""
        if self._lag is None:
            try:
                self._lag = _best_lag(self)
            except _NotMeasured as why:
                self._lag = why
        if isinstance(self._lag, _NotMeasured):
            raise _NotMeasured(str(self._lag))
        return self._lag

    def require_position(self, min_steps: int = 2) -> np.ndarray:
        if self.position is None:
            raise _NotMeasured("no joint positions")
        if self.position.shape[0] < min_steps:
            raise _NotMeasured(f"fewer than {min_steps} grid steps")
        return self.position

    def raw_in_window(self, name: str) -> NumericStream | None:
        """The raw numeric stream ``name`` (joint_state, action), only its samples inside the
        aligned window: an episode the clean stage trimmed or split is not blamed for a gap
        in the part it lost. None when the stream is absent or has no sample there."""
        stream = {JOINT_STATE: self.ep.raw.joint_state, ACTION: self.ep.raw.action}[name]
        if stream is None or len(stream) == 0 or self.steps == 0:
            return None
        times = self.ep.stream_time_ns.get(name)
        if times is not None and times.shape == stream.capture_ns.shape:
            margin = 1e9 / self.ep.rate_hz if self.ep.rate_hz > 0 else 0.0
            keep = (times >= self.ep.t_ns[0] - margin) & (times <= self.ep.t_ns[-1] + margin)
        elif self.window_ns is not None:
            keep = (stream.capture_ns >= self.window_ns[0]) & (stream.capture_ns <= self.window_ns[1])
        else:
            return stream
        if not keep.any():
            return None
        return NumericStream(
            capture_ns=stream.capture_ns[keep],
            source_index=stream.source_index[keep],
            arrival_ns=stream.arrival_ns[keep],
            fields={},
        )

    def require_cameras(self) -> list[_CameraStats]:
        if not self.cameras:
            raise _NotMeasured("no cameras")
        return self.cameras


def _build_context(ep: AlignedEpisode, config: ScoreConfig) -> _Context:
    joints = ep.raw.config.joints
    lo = np.array([j.position_min for j in joints], dtype=np.float64)
    hi = np.array([j.position_max for j in joints], dtype=np.float64)
    continuous = np.array([j.continuous for j in joints], dtype=bool)
    gripper = np.array([j.standard.endswith("gripper") for j in joints], dtype=bool)
    known = np.array([j.position_known for j in joints], dtype=bool)
    # A joint whose range is unknown has no span: the indicators measured in
    # joint ranges (jerk, limit margin, limit violations) leave it out.
    with np.errstate(invalid="ignore"):
        span = np.where(continuous, 2 * np.pi, np.where(known, hi - lo, np.nan))
    position = ep.state.get("position")
    notes: list[str] = []
    unknown = ep.raw.config.unknown_limits("position")
    if unknown:
        notes.append(f"robot config marks the position limits of {len(unknown)} joint(s) unknown "
                     f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}): "
                     "jerk and the position limit indicators leave them out")
    if position is not None:
        position = np.asarray(position, dtype=np.float64)
        if position.ndim != 2 or position.shape[1] != len(joints):
            notes.append(
                f"state position has shape {position.shape}, the robot config has {len(joints)} joints: "
                "joint indicators not measured"
            )
            position = None
        elif continuous.any() and position.shape[0] > 1:
            position = position.copy()
            cols = np.flatnonzero(continuous)
            block = position[:, cols]
            if np.isfinite(block).all():
                position[:, cols] = np.unwrap(block, axis=0)
    return _Context(
        ep=ep,
        config=config,
        notes=notes,
        position=position,
        lo=lo,
        hi=hi,
        span=span,
        bounded=~continuous & known,
        gripper=gripper,
        continuous=continuous,
        window_ns=_collector_window(ep),
    )


def _clock_offset_ns(ep: AlignedEpisode) -> float | None:
    """Ingest minus collector clock: median offset of the lower-RTT half of the exchanges."""
    clock = ep.raw.clock
    if clock.t1_ns.size:
        rtt = clock.round_trip_ns
        keep = rtt <= np.median(rtt)
        return float(np.median(clock.offset_ns[keep]))
    stream = ep.raw.joint_state
    if stream is not None and len(stream):
        # Arrival includes transport and batching latency (milliseconds): good
        # enough to place the window, which gets a margin anyway.
        return float(np.median((stream.arrival_ns - stream.capture_ns).astype(np.float64)))
    return None


def _collector_window(ep: AlignedEpisode) -> tuple[int, int] | None:
    """The aligned episode's time span mapped back onto the collector clock, for raw
    streams whose ingest-clock times the align stage did not record (``stream_time_ns``)."""
    if ep.t_ns.size == 0:
        return None
    offset = _clock_offset_ns(ep)
    if offset is None:
        return None
    margin = 1e9 / ep.rate_hz if ep.rate_hz > 0 else 0.0
    return (int(ep.t_ns[0] - offset - margin), int(ep.t_ns[-1] - offset + margin))


def _distinct(values: np.ndarray) -> int:
    """Number of distinct values; the common strictly increasing case without a sort."""
    if values.size < 2 or bool((np.diff(values) > 0).all()):
        return int(values.size)
    return int(np.unique(values).size)


def _index_completeness(source_index: np.ndarray) -> float:
    """Distinct source indices received / indices the span from first to last implies."""
    if source_index.size == 0:
        return 0.0
    expected = int(source_index.max() - source_index.min()) + 1
    return float(_distinct(source_index) / expected)


def _intervals_ns(capture_ns: np.ndarray, source_index: np.ndarray) -> np.ndarray:
    """Per-sample intervals: a step over k lost samples counts as k intervals of dt/k."""
    order = np.argsort(capture_ns, kind="stable")
    dt = np.diff(capture_ns[order]).astype(np.float64)
    dk = np.diff(source_index[order]).astype(np.float64)
    ok = (dk > 0) & (dt > 0)
    return dt[ok] / dk[ok]


def _disorder(capture_ns: np.ndarray, source_index: np.ndarray) -> float:
    """Fraction of samples whose capture time does not increase or whose source index repeats."""
    n = capture_ns.size
    if n < 2:
        return 0.0
    backwards = int(np.count_nonzero(np.diff(capture_ns) <= 0))
    repeated = n - _distinct(source_index)
    return min(1.0, (backwards + repeated) / (n - 1))


def _max_gap_ms(capture_ns: np.ndarray) -> float:
    if capture_ns.size < 2:
        return 0.0
    return float(np.diff(np.sort(capture_ns)).max() / 1e6)


def _camera_names(ep: AlignedEpisode) -> list[str]:
    return sorted(set(ep.frames) | set(ep.raw.cameras))


def _decode_flag(width: int, min_width: int) -> tuple[int, int]:
    """The strongest reduced-grayscale decode that keeps ``min_width`` pixels across."""
    for factor, flag in ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                         (2, cv2.IMREAD_REDUCED_GRAYSCALE_2)):
        if width <= 0 or width // factor >= min_width:
            return factor, flag
    return 1, cv2.IMREAD_GRAYSCALE


def _evenly(indices: np.ndarray, count: int) -> np.ndarray:
    if indices.size <= count:
        return indices
    picks = np.linspace(0, indices.size - 1, count).round().astype(np.int64)
    return np.unique(indices[picks])


# Black: nearly no light and nearly no structure (sensor noise in the dark
# leaves a few grey levels of spread, a dark scene has much more).
_BLACK_MEAN = 16.0
_BLACK_STD = 6.0
# Exposure bands on 8-bit luma.
_UNDER_MEAN, _OVER_MEAN = 40.0, 220.0
_CLIP_LOW, _CLIP_HIGH = 3, 252


def _camera_stats(ctx: _Context, name: str) -> _CameraStats:
    """Timing over the raw frames the aligned episode spans; content over the frames it uses."""
    stream: CameraStream | None = ctx.ep.raw.cameras.get(name)
    n = len(stream) if stream is not None else 0
    if stream is None or n == 0:
        ctx.notes.append(f"camera {name}: no frames in the raw episode")
        return _CameraStats(
            name=name, frames=0, completeness=0.0, drop_rate=1.0, jitter_ms=0.0, jitter_ratio=0.0,
            max_gap_ms=0.0, disorder=0.0, frozen_ratio=0.0, black_ratio=0.0,
            brightness=None, clipped=None, badly_exposed=None, sharpness=None,
        )
    refs = ctx.ep.frames.get(name)
    used = np.unique(refs[(refs >= 0) & (refs < n)]) if refs is not None else np.empty(0, np.int64)
    # The raw frames inside the aligned window; every frame when the episode references none.
    first, last = (int(used[0]), int(used[-1])) if used.size else (0, n - 1)
    if not used.size:
        used = np.arange(n)
    capture = stream.capture_ns[first:last + 1]
    source = stream.source_index[first:last + 1]

    period_ns = 1e9 / stream.fps if stream.fps > 0 else 0.0
    intervals = _intervals_ns(capture, source)
    jitter_ms = float(intervals.std() / 1e6) if intervals.size >= 2 else 0.0
    expected = float(capture.max() - capture.min()) / period_ns + 1 if period_ns > 0 else float(capture.size)
    received = _distinct(source)

    jpeg = stream.jpeg
    # Byte equality costs no decode, so it runs over every used frame, not a sample.
    same = sum(1 for a, b in pairwise(used.tolist()) if jpeg[a] is jpeg[b] or jpeg[a] == jpeg[b])
    content = _frame_content(ctx, name, stream, used)
    return _CameraStats(
        name=name,
        frames=int(capture.size),
        completeness=_index_completeness(source),
        drop_rate=min(1.0, max(0.0, 1.0 - received / expected)),
        jitter_ms=jitter_ms,
        jitter_ratio=jitter_ms * 1e6 / period_ns if period_ns > 0 else 0.0,
        max_gap_ms=_max_gap_ms(capture),
        disorder=_disorder(capture, source),
        frozen_ratio=same / (used.size - 1) if used.size > 1 else 0.0,
        **content,
    )


def _is_black(gray: np.ndarray) -> tuple[bool, float, float]:
    mean, std = cv2.meanStdDev(gray)
    m, d = float(mean[0, 0]), float(std[0, 0])
    return (m < _BLACK_MEAN and d < _BLACK_STD), m, d


def _frame_content(ctx: _Context, name: str, stream: CameraStream, used: np.ndarray) -> dict[str, Any]:
    """Exposure, sharpness and black frames from a sample of reduced grayscale decodes."""
    config, jpeg = ctx.config, stream.jpeg
    _, flag = _decode_flag(stream.width, config.decode_min_width)
    budget = max(config.min_frames_per_camera, math.ceil(used.size / config.sample_every))
    samples = _evenly(used, min(config.frames_per_camera, budget))
    # Black frames compress to a fraction of a normal frame: the small ones are
    # decoded too, so a black run between two samples is not missed.
    sizes = np.fromiter((len(jpeg[i]) for i in used), dtype=np.int64, count=used.size)
    small = used[sizes < config.black_size_ratio * float(np.median(sizes))]
    candidates = _evenly(small, config.black_candidates_per_camera)

    def decode(i: int) -> np.ndarray | None:
        gray = cv2.imdecode(np.frombuffer(jpeg[i], np.uint8), flag)
        return gray if gray is not None and gray.size else None

    undecodable = 0
    means: list[float] = []
    clipped: list[float] = []
    sharp: list[float] = []
    sample_black = 0
    for i in samples:
        gray = decode(int(i))
        if gray is None:
            undecodable += 1
            continue
        black, mean, _ = _is_black(gray)
        if black:
            sample_black += 1
            continue
        means.append(mean)
        clipped.append(float(np.count_nonzero((gray <= _CLIP_LOW) | (gray >= _CLIP_HIGH))) / gray.size)
        sharp.append(float(cv2.Laplacian(gray, cv2.CV_32F).var()))
    candidate_black = 0
    for i in candidates:
        gray = decode(int(i))
        if gray is None:
            undecodable += 1
            continue
        candidate_black += int(_is_black(gray)[0])
    if undecodable:
        ctx.notes.append(f"camera {name}: {undecodable} sampled frame(s) could not be decoded as JPEG")
    black_in_samples = sample_black / samples.size if samples.size else 0.0
    black_in_small = candidate_black / candidates.size * small.size / used.size if candidates.size else 0.0
    return {
        "black_ratio": min(1.0, max(black_in_samples, black_in_small)),
        "brightness": float(np.mean(means)) if means else None,
        "clipped": float(np.mean(clipped)) if clipped else None,
        "badly_exposed": float(np.mean([m < _UNDER_MEAN or m > _OVER_MEAN for m in means])) if means else None,
        "sharpness": float(np.median(sharp)) if sharp else None,
    }


def _finite_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _wrapped(diff: np.ndarray, continuous: np.ndarray) -> np.ndarray:
    if continuous.any():
        diff = diff.copy()
        diff[..., continuous] = (diff[..., continuous] + np.pi) % (2 * np.pi) - np.pi
    return diff


# --- indicators --------------------------------------------------------------------


Measure = Callable[[_Context, Sequence[object]], tuple[float, float]]


@dataclass(frozen=True)
class _Spec:
    name: str
    unit: str
    weight: float
    critical: bool
    description: str
    measure: Measure


_INDICATORS: list[_Spec] = []


def _indicator(name: str, unit: str, weight: float, description: str, *, critical: bool = False
               ) -> Callable[[Measure], Measure]:
    def register(measure: Measure) -> Measure:
        _INDICATORS.append(_Spec(name, unit, weight, critical, " ".join(description.split()), measure))
        return measure

    return register


@_indicator("duration_s", "s", 1.0, critical=True, description="""
    Length of the aligned episode (grid steps / rate). Score 1 at >= 2 s, 0 at <= 0.5 s:
    shorter episodes hold too few windows to train on.""")
def _duration(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    seconds = ctx.steps / ctx.ep.rate_hz if ctx.ep.rate_hz > 0 else 0.0
    return seconds, ramp(seconds, 2.0, 0.5)


@_indicator("completeness", "fraction", 2.0, critical=True, description="""
    Fraction of grid steps where every stream is present: finite joint positions, a finite
    action (when the episode has actions) and a frame from every camera. Score 1 at >= 0.99,
    0 at <= 0.8.""")
def _completeness(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    steps = ctx.steps
    if steps == 0:
        return 0.0, 0.0
    ok = np.ones(steps, dtype=bool)
    if ctx.position is not None:
        ok &= np.isfinite(ctx.position).all(axis=1)
    else:
        ok[:] = False
    if ctx.ep.action is not None:
        ok &= np.isfinite(ctx.ep.action).reshape(steps, -1).all(axis=1)
    for frames in ctx.ep.frames.values():
        ok &= frames >= 0
    value = float(ok.mean())
    return value, ramp(value, 0.99, 0.8)


@_indicator("joint_sample_completeness", "fraction", 1.0, description="""
    Raw joint-state samples received / samples expected from the driver's source-index span,
    inside the aligned window. Score 1 at >= 0.999, 0 at <= 0.9.""")
def _joint_samples(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    stream = ctx.raw_in_window(JOINT_STATE)
    if stream is None:
        raise _NotMeasured("no raw joint-state samples in the aligned window")
    value = _index_completeness(stream.source_index)
    return value, ramp(value, 0.999, 0.9)


@_indicator("action_sample_completeness", "fraction", 0.5, description="""
    Raw action samples received / samples expected from the source-index span, inside the
    aligned window. Score 1 at >= 0.999, 0 at <= 0.9.""")
def _action_samples(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    stream = ctx.raw_in_window(ACTION)
    if stream is None:
        raise _NotMeasured("no raw action samples in the aligned window")
    value = _index_completeness(stream.source_index)
    return value, ramp(value, 0.999, 0.9)


@_indicator("frame_completeness", "fraction", 1.0, description="""
    Camera frames received / frames expected from the source-index span, over the frames the
    aligned episode spans; the worst camera counts. Score 1 at >= 0.98, 0 at <= 0.8.""")
def _frame_completeness(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = min(c.completeness for c in ctx.require_cameras())
    return value, ramp(value, 0.98, 0.8)


@_indicator("frame_drop_rate", "fraction", 1.0, description="""
    1 - frames received / frames the capture-time span and the camera's fps imply; catches
    stalls the driver's counter does not show. Worst camera. Score 1 at <= 0.01, 0 at >= 0.2.""")
def _frame_drop_rate(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = max(c.drop_rate for c in ctx.require_cameras())
    return value, ramp(value, 0.01, 0.2)


@_indicator("sync_error_ms", "ms", 2.0, critical=True, description="""
    Largest per-stream alignment error the align stage reported (AlignedEpisode.
    alignment_error_ms: mean |frame time - step time| per camera, mean reach to the nearest
    sample per numeric stream, the clock fit's residual). Score 1 at <= sync_good_ms (20 ms,
    raised to half the slowest camera's frame period, which nearest-frame picking reaches
    by itself), 0 at 40 ms beyond that: what a frame shows no longer matches the state.""")
def _sync_error(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    errors = [float(v) for v in ctx.ep.alignment_error_ms.values() if np.isfinite(v)]
    if not errors:
        raise _NotMeasured("the align stage reported no alignment error")
    value = max(errors)
    fps = [cam.fps for cam in ctx.ep.raw.cameras.values() if cam.fps > 0]
    good = max([ctx.config.sync_good_ms] + [500.0 / f for f in fps])
    return value, ramp(value, good, good + ctx.config.sync_bad_ms - ctx.config.sync_good_ms)


@_indicator("clock_rtt_ms", "ms", 0.5, description="""
    Median round-trip time of the clock-sync exchanges; the offset is uncertain by up to half
    of it. Score 1 at <= 2 ms, 0 at >= 50 ms.""")
def _clock_rtt(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    clock = ctx.ep.raw.clock
    if clock.t1_ns.size == 0:
        raise _NotMeasured("no clock-sync samples")
    value = float(np.median(clock.round_trip_ns) / 1e6)
    return value, ramp(value, 2.0, 50.0)


@_indicator("clock_offset_stability_ms", "ms", 0.5, description="""
    Standard deviation of the clock offset around a straight line (offset + drift) fitted to
    the lower-round-trip half of the exchanges. Score 1 at <= 0.5 ms, 0 at >= 10 ms.""")
def _clock_stability(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    clock = ctx.ep.raw.clock
    rtt = clock.round_trip_ns
    keep = rtt <= np.median(rtt) if rtt.size else np.zeros(0, dtype=bool)
    if int(keep.sum()) < 3:
        raise _NotMeasured("fewer than 3 low-round-trip clock-sync samples")
    t = (clock.t1_ns[keep] - clock.t1_ns[keep].min()).astype(np.float64) / 1e9
    offset_ms = clock.offset_ns[keep] / 1e6
    if np.ptp(t) > 0:
        residual = offset_ms - np.polyval(np.polyfit(t, offset_ms, 1), t)
    else:
        residual = offset_ms - offset_ms.mean()
    value = float(residual.std())
    return value, ramp(value, 0.5, 10.0)


@_indicator("timing_jitter_ms", "ms", 1.0, description="""
    Standard deviation of the raw joint-state sampling intervals (an interval spanning k lost
    samples counts as k intervals of 1/k of it). Score from jitter / nominal period:
    1 at <= 10 %, 0 at >= 100 %.""")
def _timing_jitter(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    stream = ctx.raw_in_window(JOINT_STATE)
    if stream is None or len(stream) < 3:
        raise _NotMeasured("fewer than 3 raw joint-state samples in the aligned window")
    intervals = _intervals_ns(stream.capture_ns, stream.source_index)
    if intervals.size < 2:
        raise _NotMeasured("fewer than 2 usable joint-state intervals")
    value = float(intervals.std() / 1e6)
    period_ms = 1e3 / ctx.ep.raw.config.joint_state_hz
    return value, ramp(value / period_ms, 0.1, 1.0)


@_indicator("camera_jitter_ms", "ms", 0.5, description="""
    Standard deviation of the frame intervals (lost frames split as for timing_jitter_ms);
    the camera with the largest jitter relative to its frame period counts. Score from
    jitter / period: 1 at <= 10 %, 0 at >= 50 %.""")
def _camera_jitter(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    worst = max(ctx.require_cameras(), key=lambda c: c.jitter_ratio)
    return worst.jitter_ms, ramp(worst.jitter_ratio, 0.1, 0.5)


@_indicator("max_gap_ms", "ms", 1.0, description="""
    Longest interval between consecutive raw samples of any stream (joint state, action,
    cameras) inside the aligned window. Score 1 at <= 100 ms, 0 at >= 1000 ms.""")
def _max_gap(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    gaps = [c.max_gap_ms for c in ctx.cameras]
    for name in (JOINT_STATE, ACTION):
        stream = ctx.raw_in_window(name)
        if stream is not None:
            gaps.append(_max_gap_ms(stream.capture_ns))
    if not gaps:
        raise _NotMeasured("no raw streams")
    value = max(gaps)
    return value, ramp(value, 100.0, 1000.0)


@_indicator("jerk", "1/s^3", 1.0, description="""
    Mean absolute third derivative of joint position, in joint ranges per s^3, from a
    third-order finite difference with a jerk_step_s (60 ms) step so encoder noise does not
    dominate. Smooth teleoperation with ordinary encoder noise stays around 1-2; noise of a
    few mrad, spikes and shaking raise it.
    Score 1 at <= 5, 0 at >= 50.""")
def _jerk(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    rate = ctx.ep.rate_hz
    k = max(1, round(ctx.config.jerk_step_s * rate))
    pos = ctx.require_position(3 * k + 1)
    if not np.isfinite(ctx.span).any():
        raise _NotMeasured("no joint with a known position range in the robot config")
    h = k / rate
    n = pos.shape[0] - 3 * k
    third = pos[3 * k:3 * k + n] - 3 * pos[2 * k:2 * k + n] + 3 * pos[k:k + n] - pos[:n]
    value = _finite_mean(np.abs(third) / (h**3) / ctx.span)
    if value is None:
        raise _NotMeasured("no finite joint positions")
    return value, ramp(value, 5.0, 50.0)


@_indicator("high_frequency_energy_ratio", "fraction", 1.0, description="""
    Share of joint-velocity spectral energy above hf_cutoff_hz (5 Hz), over the joints that
    move (RMS speed >= idle_speed_rad_s); teleoperated motion lives below 2 Hz, so energy
    above 5 Hz is noise, spikes or oscillation. Score 1 at <= 0.05, 0 at >= 0.3.""")
def _hf_ratio(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    rate = ctx.ep.rate_hz
    cutoff = ctx.config.hf_cutoff_hz
    if rate <= 2 * cutoff:
        raise _NotMeasured(f"grid rate {rate:g} Hz is too low to see {cutoff:g} Hz")
    pos = ctx.require_position(16)
    velocity = _wrapped(np.diff(pos, axis=0), ctx.continuous) * rate
    finite = np.isfinite(velocity)
    velocity = np.where(finite, velocity, 0.0)
    rms = np.sqrt((velocity**2).sum(axis=0) / np.maximum(finite.sum(axis=0), 1))
    moving = rms >= ctx.config.idle_speed_rad_s
    if not moving.any():
        raise _NotMeasured("no joint moves")
    v = velocity[:, moving]
    v = v - v.mean(axis=0)
    power = np.abs(np.fft.rfft(v, axis=0)) ** 2
    freqs = np.fft.rfftfreq(v.shape[0], d=1.0 / rate)
    total = float(power[1:].sum())
    if total <= 0:
        raise _NotMeasured("no joint moves")
    value = float(power[freqs > cutoff].sum() / total)
    return value, ramp(value, 0.05, 0.3)


def _best_lag(ctx: _Context) -> tuple[int, float]:
    """The action-to-state lag (grid steps) with the smallest mean |action - position|."""
    pos = ctx.require_position(4)
    action = ctx.ep.action
    if action is None:
        raise _NotMeasured("no action stream")
    if action.ndim != 2 or action.shape != pos.shape:
        raise _NotMeasured(f"action shape {action.shape} differs from joint positions {pos.shape}")
    steps = pos.shape[0]
    max_lag = min(round(ctx.config.max_tracking_lag_s * ctx.ep.rate_hz), steps // 2)
    # At most ~4000 rows per lag and ~64 coarse lags, then a fine search around
    # the best: bounded cost at 500 Hz as at 30 Hz.
    stride_rows = max(1, (steps - max_lag) // 4000)

    def error(lag: int) -> float:
        rows = np.arange(0, steps - lag, stride_rows)
        diff = _wrapped(action[rows] - pos[rows + lag], ctx.continuous)
        mean = _finite_mean(np.abs(diff))
        return math.inf if mean is None else mean

    step = max(1, math.ceil((max_lag + 1) / 64))
    coarse = {lag: error(lag) for lag in range(0, max_lag + 1, step)}
    best = min(coarse, key=lambda lag: coarse[lag])
    fine = {lag: error(lag) for lag in range(max(0, best - step + 1), min(max_lag, best + step - 1) + 1)}
    fine.update(coarse)
    best = min(fine, key=lambda lag: (fine[lag], lag))
    if not math.isfinite(fine[best]):
        raise _NotMeasured("no finite action and position pairs")
    return best, fine[best]


@_indicator("action_state_tracking_error", "rad", 1.0, description="""
    Mean |action - joint position| after shifting the position by the lag (0 to
    max_tracking_lag_s) that minimises it: how well the robot followed the commands.
    Score 1 at <= 0.05 rad, 0 at >= 0.3 rad.""")
def _tracking(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    err = ctx.best_lag()[1]
    return err, ramp(err, 0.05, 0.3)


@_indicator("action_state_lag_ms", "ms", 0.5, description="""
    The lag found for action_state_tracking_error: command-to-motion delay. A long lag means a
    slow controller or a misaligned action stream. Score 1 at <= 150 ms, 0 at >= 500 ms.""")
def _tracking_lag(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = ctx.best_lag()[0] * 1e3 / ctx.ep.rate_hz
    return value, ramp(value, 150.0, 500.0)


@_indicator("idle_ratio", "fraction", 1.0, description="""
    Fraction of grid steps where no joint moves faster than idle_speed_rad_s (0.05 rad/s),
    speed measured over idle_window_s (100 ms). Score 1 at <= 0.2, 0 at >= 0.8.""")
def _idle(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    k = max(1, round(ctx.config.idle_window_s * ctx.ep.rate_hz))
    pos = ctx.require_position(k + 1)
    step = _wrapped(pos[k:] - pos[:-k], ctx.continuous)
    with np.errstate(invalid="ignore"):
        speed = np.nanmax(np.where(np.isfinite(step), np.abs(step), -np.inf), axis=1) * ctx.ep.rate_hz / k
    value = float(np.mean(speed < ctx.config.idle_speed_rad_s))
    return value, ramp(value, 0.2, 0.8)


@_indicator("position_limit_margin", "fraction of range", 0.5, description="""
    Smallest distance of any bounded joint (grippers excluded: they rest at their stops) to
    its nearest position limit, as a fraction of its range; negative outside the limits.
    Score 1 at >= 0.02, 0 at <= 0.""")
def _limit_margin(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    pos = ctx.require_position(1)
    cols = ctx.bounded & ~ctx.gripper
    if not cols.any():
        raise _NotMeasured("no bounded non-gripper joints with known position limits")
    p = pos[:, cols]
    margin = np.minimum(p - ctx.lo[cols], ctx.hi[cols] - p) / ctx.span[cols]
    margin = margin[np.isfinite(margin)]
    if margin.size == 0:
        raise _NotMeasured("no finite joint positions")
    value = float(margin.min())
    return value, ramp(value, 0.02, 0.0)


@_indicator("limit_violations", "steps", 1.0, critical=True, description="""
    Grid steps where a bounded joint lies outside its position limits by more than
    limit_tolerance (0.5 % of its range). Score from the fraction of steps: 1 at 0, 0 at >= 1 %.""")
def _limit_violations(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    pos = ctx.require_position(1)
    if not ctx.bounded.any():
        raise _NotMeasured("no bounded joints with known position limits")
    tol = ctx.config.limit_tolerance * ctx.span
    with np.errstate(invalid="ignore"):
        outside = ((pos < ctx.lo - tol) | (pos > ctx.hi + tol))[:, ctx.bounded]
    count = int(outside.any(axis=1).sum())
    return float(count), ramp(count / pos.shape[0], 0.0, 0.01)


@_indicator("velocity_limit_violations", "steps", 1.0, description="""
    Grid steps where a joint's speed exceeds its velocity limit by more than velocity_tolerance
    (5 %), by the reported velocity or by the central difference of position.
    Score from the fraction of steps: 1 at 0, 0 at >= 1 %.""")
def _velocity_violations(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    pos = ctx.require_position(3)
    joints = ctx.ep.raw.config.joints
    if not any(j.velocity_known for j in joints):
        raise _NotMeasured("velocity limits unknown in the robot config")
    vmax = np.array([j.velocity_max for j in joints]) * (1 + ctx.config.velocity_tolerance)
    derived = np.zeros_like(pos)
    derived[1:-1] = _wrapped(pos[2:] - pos[:-2], ctx.continuous) * ctx.ep.rate_hz / 2
    with np.errstate(invalid="ignore"):
        over = np.abs(derived) > vmax
        reported = ctx.ep.state.get("velocity")
        if reported is not None and reported.shape == pos.shape:
            over |= np.abs(reported) > vmax
    count = int(over.any(axis=1).sum())
    return float(count), ramp(count / pos.shape[0], 0.0, 0.01)


@_indicator("effort_saturation", "fraction", 0.5, description="""
    Fraction of grid steps where some joint's |effort| is at or above effort_saturation (95 %)
    of its limit: the motor could not do what was asked. Score 1 at <= 0.01, 0 at >= 0.2.""")
def _effort(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    effort = ctx.ep.state.get("effort")
    if effort is None or effort.ndim != 2 or effort.shape[1] != ctx.lo.size or effort.shape[0] == 0:
        raise _NotMeasured("no joint efforts")
    if not np.isfinite(effort).any():
        raise _NotMeasured("no finite joint efforts")
    joints = ctx.ep.raw.config.joints
    if not any(j.effort_known for j in joints):
        raise _NotMeasured("effort limits unknown in the robot config")
    limit = np.array([j.effort_max for j in joints]) * ctx.config.effort_saturation
    with np.errstate(invalid="ignore"):
        value = float(np.mean((np.abs(effort) >= limit).any(axis=1)))
    return value, ramp(value, 0.01, 0.2)


@_indicator("nan_fraction", "fraction", 1.0, critical=True, description="""
    Fraction of grid steps with a non-finite value (NaN, inf) in any aligned state field or
    action; the clean stage should leave none, and one NaN poisons a training batch.
    Score 1 at 0, 0 at >= 0.02.""")
def _nan_fraction(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    steps = ctx.steps
    arrays = [np.asarray(a).reshape(steps, -1) for a in ctx.ep.state.values() if np.asarray(a).size]
    if ctx.ep.action is not None and ctx.ep.action.size:
        arrays.append(np.asarray(ctx.ep.action).reshape(steps, -1))
    if steps == 0 or not arrays:
        raise _NotMeasured("no numeric values")
    bad = np.zeros(steps, dtype=bool)
    for a in arrays:
        bad |= ~np.isfinite(a).all(axis=1)
    value = float(bad.mean())
    return value, ramp(value, 0.0, 0.02)


@_indicator("timestamp_disorder", "fraction", 0.5, description="""
    Fraction of raw samples (joint state, action, frames, inside the aligned window) whose
    capture time does not increase or whose source index repeats. Worst stream.
    Score 1 at 0, 0 at >= 0.01.""")
def _timestamp_disorder(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    values = [c.disorder for c in ctx.cameras if c.frames]
    for name in (JOINT_STATE, ACTION):
        stream = ctx.raw_in_window(name)
        if stream is not None:
            values.append(_disorder(stream.capture_ns, stream.source_index))
    if not values:
        raise _NotMeasured("no raw streams")
    value = max(values)
    return value, ramp(value, 0.0, 0.01)


def _image_value(ctx: _Context, pick: Callable[[_CameraStats], float | None], what: str) -> list[tuple[str, float]]:
    values = [(c.name, v) for c in ctx.require_cameras() if (v := pick(c)) is not None]
    if not values:
        raise _NotMeasured(f"no decodable non-black frames to measure {what}")
    return values


@_indicator("brightness", "8-bit luma", 1.0, description="""
    Mean luma (0-255) of the sampled non-black frames; the camera scoring worst counts.
    Score 1 inside 60-190, falling to 0 at <= 25 (too dark) and >= 240 (washed out).""")
def _brightness(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    values = _image_value(ctx, lambda c: c.brightness, "brightness")
    scored = [(band(v, 25.0, 60.0, 190.0, 240.0), v) for _, v in values]
    score, value = min(scored)
    return value, score


@_indicator("clipped_pixel_fraction", "fraction", 0.5, description="""
    Mean fraction of pixels at the ends of the range (luma <= 3 or >= 252) in the sampled
    non-black frames; worst camera. Score 1 at <= 0.05, 0 at >= 0.4.""")
def _clipped(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = max(v for _, v in _image_value(ctx, lambda c: c.clipped, "clipping"))
    return value, ramp(value, 0.05, 0.4)


@_indicator("badly_exposed_frame_ratio", "fraction", 1.0, description="""
    Fraction of sampled non-black frames whose mean luma is below 40 or above 220; worst
    camera. Score 1 at <= 0.05, 0 at >= 0.5.""")
def _badly_exposed(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = max(v for _, v in _image_value(ctx, lambda c: c.badly_exposed, "exposure"))
    return value, ramp(value, 0.05, 0.5)


@_indicator("sharpness", "var(Laplacian)", 1.0, description="""
    Median variance of the Laplacian of the sampled non-black frames, decoded as reduced
    grayscale (160-320 px wide); worst camera. Low means blur (motion, focus, a smeared
    lens) or a featureless view. Score 1 at >= 60, 0 at <= 8.""")
def _sharpness(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = min(v for _, v in _image_value(ctx, lambda c: c.sharpness, "sharpness"))
    return value, ramp(value, 60.0, 8.0)


@_indicator("frozen_frame_ratio", "fraction", 1.0, description="""
    Fraction of consecutive frame pairs with byte-identical JPEGs (a stalled driver resending
    its buffer; a real sensor's noise never encodes twice the same), over all the distinct
    frames the aligned episode uses, in order; worst camera. Score 1 at <= 0.01, 0 at >= 0.2.""")
def _frozen(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = max(c.frozen_ratio for c in ctx.require_cameras())
    return value, ramp(value, 0.01, 0.2)


@_indicator("black_frame_ratio", "fraction", 1.0, description="""
    Estimated fraction of black frames (mean luma < 16 and spread < 6): the larger of the
    share among the evenly sampled frames and the share among small-JPEG candidates scaled by
    how many frames are that small, over the frames the aligned episode uses; worst camera.
    Score 1 at 0, 0 at >= 0.1.""")
def _black(ctx: _Context, _: Sequence[object]) -> tuple[float, float]:
    value = max(c.black_ratio for c in ctx.require_cameras())
    return value, ramp(value, 0.0, 0.1)


@_indicator("decisions_count", "count", 0.5, description="""
    Number of decisions the clean stage recorded (repairs, trims, drops; a check it skipped
    does not count). A couple is normal (idle head and tail); many mean the episode needed
    heavy repair. Score 1 at <= 2, 0 at >= 30.""")
def _decisions(ctx: _Context, decisions: Sequence[object]) -> tuple[float, float]:
    kinds: dict[str, int] = {}
    counted = 0
    for decision in decisions:
        # clean.Decision has a ``kind``; a decision as_dict()-ed has it as a key.
        as_map = isinstance(decision, Mapping)
        kind = decision.get("kind") if as_map else getattr(decision, "kind", None)
        action = decision.get("action") if as_map else getattr(decision, "action", None)
        label = str(kind or type(decision).__name__)
        kinds[label] = kinds.get(label, 0) + 1
        counted += action != "skip"
    if kinds:
        ctx.notes.append("cleaning decisions: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    value = float(counted)
    return value, ramp(value, 2.0, 30.0)


INDICATOR_NAMES: tuple[str, ...] = tuple(spec.name for spec in _INDICATORS)
"""Every indicator :func:`score_episode` reports, in report order."""


# --- the stage ---------------------------------------------------------------------


def score_episode(
    ep: AlignedEpisode,
    decisions: Sequence[object] = (),
    config: ScoreConfig = ScoreConfig(),
) -> QualityReport:
    """Measure every indicator of ``ep`` and grade it.

    Args:
        ep: the aligned (and cleaned) episode, with its raw episode.
        decisions: the clean stage's decisions for this episode; only counted.
        config: thresholds and sampling knobs.

    Returns:
        The quality report; every value and score is finite.

    Raises:
        ProcessingError: ``config.weights`` names an unknown indicator or a
            negative weight.
    """
    where = f"robot {ep.raw.robot_id} episode {ep.raw.episode_id}"
    overrides = dict(config.weights)
    for name, weight in overrides.items():
        if name not in INDICATOR_NAMES:
            raise ProcessingError(where, f"ScoreConfig.weights: no indicator named {name!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ProcessingError(where, f"ScoreConfig.weights[{name!r}]: expected a weight >= 0, got {weight!r}")
    ctx = _build_context(ep, config)
    indicators: list[Indicator] = []
    unmeasured: list[str] = []
    for spec in _INDICATORS:
        weight = overrides.get(spec.name, spec.weight)
        try:
            with np.errstate(all="ignore"):
                value, score = spec.measure(ctx, decisions)
            if not (math.isfinite(value) and math.isfinite(score)):
                raise _NotMeasured(f"non-finite result ({value!r}, {score!r})")
        except _NotMeasured as why:
            unmeasured.append(f"{spec.name}: not measured ({why})")
            value, score, weight = 0.0, 1.0, 0.0
        indicators.append(
            Indicator(spec.name, float(value), spec.unit, float(score), float(weight), spec.description,
                      spec.critical)
        )
    grade, overall, grade_notes = _grade(indicators)
    return QualityReport(tuple(indicators), grade, overall, tuple(ctx.notes + unmeasured + grade_notes))


def _grade(indicators: Sequence[Indicator]) -> tuple[str, float, list[str]]:
    """Overall score, letter and caps, as the module docstring states."""
    weighted = [ind for ind in indicators if ind.weight > 0]
    total = sum(ind.weight for ind in weighted)
    if total <= 0:
        return GRADES[-1], 0.0, ["no indicator could be measured: grade F"]
    overall = sum(ind.weight * ind.score for ind in weighted) / total
    grade = GRADES.index(letter(overall))
    notes: list[str] = []
    major = [ind for ind in weighted if ind.weight >= MAJOR_WEIGHT] or weighted
    worst = min(major, key=lambda ind: ind.score)
    cap = GRADES.index(letter(worst.score)) - 2
    if cap > grade:
        grade = cap
        notes.append(f"grade capped at {GRADES[cap]} by {worst.name} (score {worst.score:.2f})")
    failed = [ind.name for ind in weighted if ind.critical and ind.score <= 0]
    if failed and grade < GRADES.index("D"):
        grade = GRADES.index("D")
        notes.append(f"grade capped at D by critical indicator(s) at score 0: {', '.join(failed)}")
    return GRADES[grade], float(min(1.0, max(0.0, overall))), notes

"""Align: every stream of a raw episode onto one uniform timeline on the ingest clock.

Raw streams carry collector-clock stamps (``capture_ns``); the collector and the
ingest exchanged NTP-style four-timestamp samples during the episode. This stage

1. fits the collector->ingest clock mapping (:func:`fit_clock`): offset plus
   drift, from the lowest-round-trip exchanges only;
2. maps joint and action samples with ``to_ingest(capture_ns)`` and camera
   frames with ``to_ingest(capture_ns - latency)`` (a frame is stamped when it
   reaches the collector, ``latency_ms`` after its exposure);
3. builds the timeline ``t_ns`` at ``rate_hz`` over the interval every stream
   covers, interpolates numeric fields linearly and picks, per camera, the
   frame nearest in time within a tolerance (-1 where none is).

Everything here is a pure function of arrays: no files, no logging.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from pipeline.errors import ConfigError, ProcessingError
from pipeline.processing.episode import (
    AlignedEpisode,
    ClockSamples,
    NumericStream,
    RawEpisode,
)
from pipeline.processing.latency import (
    DelayEstimate,
    LatencySettings,
    estimate_camera_delay,
)
from pipeline.streams import ACTION, JOINT_STATE

__all__ = ["AlignConfig", "ClockFit", "align", "fit_clock", "nearest_index", "wrap_to_pi"]

_DEFAULT_RATE_HZ = 50.0  # without cameras: what ACT / diffusion-policy trainers consume
_NS_PER_S = 1_000_000_000
_CONTINUOUS_FIELD = "position"  # the only field that holds angles; velocity/effort never wrap


@dataclass(frozen=True)
class ClockFit:
    """The collector->ingest clock mapping fitted from clock-sync samples.

    ``offset(t) = offset_ns + drift_ppm * 1e-6 * (t - ref_ns)`` (ns, ingest minus
    collector) for a collector-clock time ``t``; ``to_ingest(t) = t + offset(t)``.

    Attributes:
        offset_ns: ingest minus collector clock at ``ref_ns``.
        ref_ns: collector-clock time the offset refers to (mean of the used
            samples' midpoints, so offset and drift are uncorrelated).
        drift_ppm: rate of change of the offset, in parts per million (1 ppm =
            1 µs per second).
        residual_ns: RMS of the used samples' offsets about the fit.
        samples_used: exchanges the fit used (after the round-trip filter).
        samples_total: exchanges recorded.
        rtt_min_ns: smallest round trip among the used samples; an exchange's
            offset is wrong by at most half its round trip, whatever the path asymmetry.
        method: ``"linear"`` (offset and drift), ``"offset"`` (one sample, or
            samples spanning too short a time for a drift), or ``"none"`` (no
            usable sample: offset 0, the clocks are assumed equal).
    """

    offset_ns: float
    ref_ns: int
    drift_ppm: float
    residual_ns: float
    samples_used: int
    samples_total: int
    rtt_min_ns: float
    method: Literal["linear", "offset", "none"]

    @property
    def synced(self) -> bool:
        """False when no clock sample was usable and the offset is an assumption."""
        return self.method != "none"

    def offset_at(self, t_collector_ns: np.ndarray) -> np.ndarray:
        """Ingest minus collector clock (float64 ns) at collector times."""
        dt = (np.asarray(t_collector_ns, dtype=np.int64) - np.int64(self.ref_ns)).astype(np.float64)
        return self.offset_ns + self.drift_ppm * 1e-6 * dt

    def to_ingest(self, t_collector_ns: np.ndarray) -> np.ndarray:
        """Collector-clock ns -> ingest-clock ns (int64, rounded to the nearest ns).

        The correction is computed in float64 on times relative to ``ref_ns`` and
        added to the int64 input, so epoch-sized stamps (~1.7e18 ns, beyond
        float64's 2**53) keep nanosecond precision.
        """
        t = np.asarray(t_collector_ns, dtype=np.int64)
        return t + np.rint(self.offset_at(t)).astype(np.int64)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for a report; ``ClockFit(**d)`` rebuilds the fit."""
        return asdict(self)


def fit_clock(
    clock: ClockSamples,
    *,
    window_s: float = 2.0,
    rtt_slack_us: float = 200.0,
    min_drift_span_s: float = 1.0,
) -> ClockFit:
    """Fit offset and drift of the ingest clock relative to the collector clock.

    Per exchange (NTP): ``offset = ((t2 - t1) + (t3 - t4)) / 2`` at the collector
    time ``(t1 + t4) / 2``, and ``rtt = (t4 - t1) - (t3 - t2)``. A delay on one
    leg only shifts ``offset`` by half that delay and lengthens ``rtt`` by all of
    it, so low round trips mean trustworthy offsets. Therefore:

    1. drop exchanges with a negative round trip (impossible: corrupt stamps);
    2. split time into ``window_s`` windows and keep the lowest-round-trip
       exchange of each (one good sample per window spreads the fit over the
       episode, which the drift needs);
    3. drop window winners whose round trip exceeds ``rtt_min + max(rtt_slack,
       rtt_min)``: their every exchange was delayed. The slack (200 µs) sits
       above the tens of microseconds a loopback exchange scatters by; the
       ``rtt_min`` term keeps slow links (Wi-Fi, ms round trips) from losing
       all but one window;
    4. least squares ``offset = a + b * (t - ref)``; ``drift_ppm = b`` in µs/s.
       With one sample, or samples spanning less than ``min_drift_span_s``,
       fit the offset only (mean): crystal drift is at most ~100 ppm, i.e.
       <= 100 µs over 1 s, the size of the scatter itself, so a slope from a
       shorter span is noise.

    Args:
        clock: the episode's clock-sync exchanges, in any order.
        window_s: width of the windows of step 2.
        rtt_slack_us: round-trip slack of step 3.
        min_drift_span_s: shortest span of used samples for a drift fit.

    Returns:
        The fit; ``method="none"`` with offset 0 when no exchange is usable.
    """
    t1 = np.asarray(clock.t1_ns, dtype=np.int64)
    t2 = np.asarray(clock.t2_ns, dtype=np.int64)
    t3 = np.asarray(clock.t3_ns, dtype=np.int64)
    t4 = np.asarray(clock.t4_ns, dtype=np.int64)
    total = int(t1.shape[0])
    rtt = ((t4 - t1) - (t3 - t2)).astype(np.float64)
    offset = ((t2 - t1) + (t3 - t4)).astype(np.float64) / 2
    mid = t1 + (t4 - t1) // 2
    usable = (rtt >= 0) & (t4 >= t1)
    if not usable.any():
        return ClockFit(0.0, 0, 0.0, 0.0, 0, total, 0.0, "none")
    rtt, offset, mid = rtt[usable], offset[usable], mid[usable]

    window = (mid - mid.min()) // max(1, round(window_s * _NS_PER_S))
    order = np.lexsort((rtt, window))  # by window, then round trip
    first_of_window = np.ones(order.shape[0], dtype=bool)
    first_of_window[1:] = window[order][1:] != window[order][:-1]
    best = order[first_of_window]
    rtt_min = float(rtt[best].min())
    best = best[rtt[best] <= rtt_min + max(rtt_slack_us * 1e3, rtt_min)]
    rtt, offset, mid = rtt[best], offset[best], mid[best]

    base = int(mid.min())
    ref = base + int(round(float(np.mean((mid - base).astype(np.float64)))))
    x_s = (mid - ref).astype(np.float64) / _NS_PER_S
    n = int(best.shape[0])
    if n >= 2 and float(x_s.max() - x_s.min()) >= min_drift_span_s:
        slope, intercept = np.polyfit(x_s, offset, 1)
        fitted = intercept + slope * x_s
        residual = float(np.sqrt(np.mean((offset - fitted) ** 2)))
        return ClockFit(float(intercept), ref, float(slope) / 1e3, residual, n, total, rtt_min, "linear")
    mean = float(np.mean(offset))
    residual = float(np.sqrt(np.mean((offset - mean) ** 2)))
    return ClockFit(mean, ref, 0.0, residual, n, total, rtt_min, "offset")


@dataclass(frozen=True)
class AlignConfig:
    """How :func:`align` resamples an episode.

    Attributes:
        rate_hz: rate of the output timeline; ``None`` (the default) takes the
            fastest camera's frame rate (50 Hz without cameras), so every step
            has its own frame and no frame is stored twice. 50 Hz is what diffusion-policy and
            ACT-style trainers consume; joints (500 Hz) are downsampled to it.
        frame_tolerance_ms: farthest a frame may lie from a step and still be
            that step's frame. ``None`` = half the camera's frame period: the
            nearest frame of an unbroken 30 fps stream is always within 16.7 ms,
            so a step beyond it only happens where frames were lost (or, at the
            boundary, by stamp jitter; clean fills such single steps).
        span: ``"common"``: the timeline spans the interval every stream covers
            (first to last sample of the latest-starting and earliest-ending
            stream), so nothing is extrapolated. ``"joint_state"``: the
            timeline spans the joint-state stream; actions outside their own
            coverage are held at their first/last value (counted in the report
            as ``held_steps``) and frames outside a camera's coverage are -1.
        clock_window_s, rtt_slack_us, min_drift_span_s: passed to
            :func:`fit_clock`.
        latency: ``"config"``: subtract each camera's configured
            ``latency_ms``; ``"estimate"``: subtract the delay estimated from
            the recording (image motion against joint motion,
            :mod:`pipeline.processing.latency`) where the estimate is
            confident, the configured latency elsewhere (a decision says so).
        latency_window_s: seconds of recording per camera the estimate looks
            at, where the joints move most (0: no estimate, no
            ``camera_latency_mismatch`` check).
        latency_frames: most frames per camera the estimate decodes (a
            longer window is covered with every 2nd, 3rd, ... frame).
        latency_max_lag_ms: delays searched, ± this much around the configured latency (frames need
            joint samples this far either side, so a short episode may get "unknown").
        latency_min_confidence: an estimate less confident than this is "unknown".
        stamp_tolerance_ms: a frame stamped (on the ingest clock) more than
            this plus half the best clock round trip after it arrived is a
            ``capture_after_arrival`` fault.
    """

    rate_hz: float | None = None
    frame_tolerance_ms: float | None = None
    span: Literal["common", "joint_state"] = "common"
    clock_window_s: float = 2.0
    rtt_slack_us: float = 200.0
    min_drift_span_s: float = 1.0
    latency: Literal["config", "estimate"] = "config"
    latency_window_s: float = 4.0
    latency_frames: int = 120
    latency_max_lag_ms: float = 750.0
    latency_min_confidence: float = 0.5
    stamp_tolerance_ms: float = 5.0

    def __post_init__(self) -> None:
        source = "<align config>"
        for name in ("rate_hz", "clock_window_s"):
            value = getattr(self, name)
            if name == "rate_hz" and value is None:
                continue
            if not _finite_number(value) or value <= 0:
                raise ConfigError(source, name, f"must be a number > 0, got {value!r}")
        for name in ("rtt_slack_us", "min_drift_span_s", "latency_window_s", "stamp_tolerance_ms"):
            value = getattr(self, name)
            if not _finite_number(value) or value < 0:
                raise ConfigError(source, name, f"must be a number >= 0, got {value!r}")
        tol = self.frame_tolerance_ms
        if tol is not None and (not _finite_number(tol) or tol < 0):
            raise ConfigError(source, "frame_tolerance_ms", f"must be null or a number >= 0, got {tol!r}")
        if self.span not in ("common", "joint_state"):
            raise ConfigError(source, "span", f"must be 'common' or 'joint_state', got {self.span!r}")
        if self.latency not in ("config", "estimate"):
            raise ConfigError(source, "latency", f"must be 'config' or 'estimate', got {self.latency!r}")
        lag = self.latency_max_lag_ms
        if not _finite_number(lag) or lag <= 0 or lag > 5000:
            raise ConfigError(source, "latency_max_lag_ms", f"must be a number in (0, 5000], got {lag!r}")
        if isinstance(self.latency_frames, bool) or not isinstance(self.latency_frames, int) or self.latency_frames < 8:
            raise ConfigError(source, "latency_frames", f"must be an integer >= 8, got {self.latency_frames!r}")
        conf = self.latency_min_confidence
        if not _finite_number(conf) or not 0 <= conf <= 1:
            raise ConfigError(source, "latency_min_confidence", f"must be a number in [0, 1], got {conf!r}")

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str = "<align config>") -> AlignConfig:
        """Build from a parsed YAML mapping; unknown keys are a :class:`ConfigError`."""
        if not isinstance(mapping, dict):
            raise ConfigError(source, "align", f"expected a mapping, got {type(mapping).__name__}")
        allowed = {f.name for f in fields(cls)}
        for key in mapping:
            if key not in allowed:
                raise ConfigError(source, f"align.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        try:
            return cls(**mapping)
        except ConfigError as err:
            raise ConfigError(source, err.field, err.problem) from err


def align(raw: RawEpisode, config: AlignConfig | None = None) -> AlignedEpisode:
    """Resample every stream of ``raw`` onto one uniform timeline on the ingest clock.

    Timeline: ``t_ns[i] = start + round(i * 1e9 / rate_hz)`` for ``i`` in
    ``0..floor((end - start) * rate_hz / 1e9)``, with ``[start, end]`` the span of
    ``config.span``; steps are uniform to within 1 ns of rounding.

    Numeric fields: linear interpolation between the two samples around each
    step. Continuous joints (``JointSpec.continuous``) are unwrapped before and
    wrapped to ``(-pi, pi]`` after, so a joint crossing ±pi takes the short way.

    Frames: per camera, the frame whose exposure time ``to_ingest(capture_ns -
    latency)`` is nearest to the step (earlier one on a tie), or -1 when it is
    farther than the tolerance.

    ``alignment_error_ms`` per stream: for a camera, the mean |frame time - step
    time| over the steps that got a frame (p99 and max in ``report["streams"]``);
    for a numeric stream, the mean distance from each step to its nearest real
    sample (how far interpolation had to reach); ``"clock"``: the clock fit's
    RMS residual. ``report["clock"]`` holds :meth:`ClockFit.as_dict`.

    Camera delays: per camera, the delay estimated from the recording
    (:mod:`pipeline.processing.latency`) is in ``report["latency"][camera]``
    (``delay_ms`` None when unknown, ``configured_ms``, ``applied_ms``); with
    ``config.latency == "estimate"`` a confident estimate replaces the
    configured latency. ``AlignedEpisode.decisions`` records (stage
    ``align``) a ``camera_latency_mismatch`` where a confident estimate is
    more than one frame period off the configured latency, a
    ``camera_latency_kept`` where ``estimate`` was asked and no estimate was
    confident, and a ``capture_after_arrival`` where frames are stamped after
    the ingest received them (impossible: the camera's stamps are off).

    Raises:
        ProcessingError: no joint-state stream; a stream with fewer than two
            samples, stamps not strictly increasing, or non-finite values (run
            ``clean_raw`` first); streams that share no interval.
    """
    config = config or AlignConfig()
    where = f"robot {raw.robot_id} episode {raw.episode_id}"
    if raw.joint_state is None:
        raise ProcessingError(where, "has no joint_state stream; nothing to align the other streams to")
    fit = fit_clock(
        raw.clock,
        window_s=config.clock_window_s,
        rtt_slack_us=config.rtt_slack_us,
        min_drift_span_s=config.min_drift_span_s,
    )

    numeric: dict[str, NumericStream] = {JOINT_STATE: raw.joint_state}
    if raw.action is not None:
        numeric[ACTION] = raw.action
    times: dict[str, np.ndarray] = {}
    for name, stream in numeric.items():
        _check_stream(where, name, stream.capture_ns, stream.fields)
        times[name] = fit.to_ingest(stream.capture_ns)
    for name, cam in raw.cameras.items():
        _check_stream(where, name, cam.capture_ns, {})
        latency_ns = int(round(cam.latency_ms * 1e6))
        times[name] = fit.to_ingest(np.asarray(cam.capture_ns, dtype=np.int64) - latency_ns)

    decisions: list[Any] = _stamps_after_arrival(raw, fit, config)
    latency_report: dict[str, Any] = {}
    if raw.cameras and config.latency_window_s > 0:
        latency_report, latency_decisions = _camera_delays(raw, times, config)
        decisions += latency_decisions

    spanned = times if config.span == "common" else {JOINT_STATE: times[JOINT_STATE]}
    start = max(int(t[0]) for t in spanned.values())
    end = min(int(t[-1]) for t in spanned.values())
    if end < start:
        firsts = ", ".join(f"{k} {int(t[0])}..{int(t[-1])}" for k, t in spanned.items())
        raise ProcessingError(where, f"streams share no time interval on the ingest clock ({firsts}); nothing to align")
    rate_hz = float(config.rate_hz or max((cam.fps for cam in raw.cameras.values()), default=_DEFAULT_RATE_HZ))
    period_ns = _NS_PER_S / rate_hz
    steps = int((end - start) // period_ns) + 1
    t_ns = start + np.rint(np.arange(steps) * period_ns).astype(np.int64)

    continuous = np.array([j.continuous for j in raw.config.joints], dtype=bool)
    errors: dict[str, float] = {"clock": fit.residual_ns / 1e6}
    stream_report: dict[str, dict[str, Any]] = {}

    state: dict[str, np.ndarray] = {}
    for fname, values in raw.joint_state.fields.items():
        wrap = continuous if fname == _CONTINUOUS_FIELD and continuous.shape[0] == values.shape[1] else None
        state[fname] = _interpolate(times[JOINT_STATE], values, t_ns, wrap)
    errors[JOINT_STATE], stream_report[JOINT_STATE] = _numeric_error(times[JOINT_STATE], t_ns)

    action: np.ndarray | None = None
    if raw.action is not None:
        values = _action_values(where, raw.action)
        wrap = continuous if continuous.shape[0] == values.shape[1] else None
        action = _interpolate(times[ACTION], values, t_ns, wrap)
        errors[ACTION], stream_report[ACTION] = _numeric_error(times[ACTION], t_ns)
        held = int(np.count_nonzero((t_ns < times[ACTION][0]) | (t_ns > times[ACTION][-1])))
        stream_report[ACTION]["held_steps"] = held

    frames: dict[str, np.ndarray] = {}
    for name, cam in raw.cameras.items():
        tol_ms = config.frame_tolerance_ms if config.frame_tolerance_ms is not None else 500.0 / cam.fps
        frames[name], errors[name], stream_report[name] = _nearest_frames(times[name], t_ns, tol_ms)
        stream_report[name]["latency_ms"] = float(cam.latency_ms)

    report: dict[str, Any] = {
        "clock": fit.as_dict(),
        "span": config.span,
        "start_ns": int(t_ns[0]),
        "end_ns": int(t_ns[-1]),
        "steps": steps,
        "rate_hz": rate_hz,
        "streams": stream_report,
        "latency_mode": config.latency,
        "latency": latency_report,
    }
    return AlignedEpisode(
        raw=raw,
        rate_hz=rate_hz,
        t_ns=t_ns,
        state=state,
        action=action,
        frames=frames,
        alignment_error_ms=errors,
        report=report,
        stream_time_ns=times,
        decisions=decisions,
    )


def wrap_to_pi(x: np.ndarray) -> np.ndarray:
    """Wrap angles to ``(-pi, pi]``: ``pi - ((pi - x) mod 2pi)``."""
    return np.pi - np.mod(np.pi - x, 2 * np.pi)


def nearest_index(t_src: np.ndarray, t_dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each ``t_dst``, the index of the nearest ``t_src`` (earlier on a tie) and the distance.

    Args:
        t_src: sorted int64 times, at least one.
        t_dst: int64 times.

    Returns:
        (int64 indices into ``t_src``, int64 absolute distances in ns)
    """
    right = np.clip(np.searchsorted(t_src, t_dst, side="left"), 0, t_src.shape[0] - 1)
    left = np.clip(right - 1, 0, t_src.shape[0] - 1)
    d_left = np.abs(t_dst - t_src[left])
    d_right = np.abs(t_src[right] - t_dst)
    pick_left = d_left <= d_right
    return np.where(pick_left, left, right), np.where(pick_left, d_left, d_right)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_stream(where: str, name: str, capture_ns: np.ndarray, values: dict[str, np.ndarray]) -> None:
    n = int(np.asarray(capture_ns).shape[0])
    if n < 2:
        raise ProcessingError(f"{where} stream {name}", f"has {n} sample(s); at least 2 are needed to align it")
    steps = np.diff(np.asarray(capture_ns, dtype=np.int64))
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise ProcessingError(
            f"{where} stream {name}",
            f"capture_ns is not strictly increasing at sample {i} ({int(capture_ns[i - 1])} -> {int(capture_ns[i])}, "
            f"{bad.size} such step(s)); run clean_raw before align",
        )
    for fname, arr in values.items():
        finite = np.isfinite(arr)
        if not finite.all():
            row = int(np.flatnonzero(~finite.reshape(arr.shape[0], -1).all(axis=1))[0])
            raise ProcessingError(
                f"{where} stream {name}",
                f"field {fname!r} has non-finite values (first at sample {row}); run clean_raw before align",
            )


def _action_values(where: str, stream: NumericStream) -> np.ndarray:
    if _CONTINUOUS_FIELD in stream.fields:
        return stream.fields[_CONTINUOUS_FIELD]
    if len(stream.fields) == 1:
        return next(iter(stream.fields.values()))
    raise ProcessingError(
        f"{where} stream {ACTION}", f"expected a 'position' field, got fields {sorted(stream.fields)}"
    )


def _interpolate(t_src: np.ndarray, values: np.ndarray, t_dst: np.ndarray, wrap: np.ndarray | None) -> np.ndarray:
    """Linear interpolation of the rows of ``values`` (n, k) at ``t_dst``; edges held.

    ``wrap`` marks columns that are angles on a circle: unwrapped before
    (``np.unwrap`` takes each step the short way) and wrapped after.
    """
    x = np.asarray(values, dtype=np.float64)
    x2 = x.reshape(x.shape[0], -1)
    if wrap is not None and wrap.any():
        x2 = x2.copy()
        x2[:, wrap] = np.unwrap(x2[:, wrap], axis=0)
    base = t_src[0]
    src = (t_src - base).astype(np.float64)
    dst = (t_dst - base).astype(np.float64)
    hi = np.clip(np.searchsorted(src, dst, side="right"), 1, src.shape[0] - 1)
    lo = hi - 1
    span = src[hi] - src[lo]
    w = np.clip((dst - src[lo]) / np.where(span > 0, span, 1.0), 0.0, 1.0)[:, None]
    out = x2[lo] * (1.0 - w) + x2[hi] * w
    if wrap is not None and wrap.any():
        out[:, wrap] = wrap_to_pi(out[:, wrap])
    return out.reshape((t_dst.shape[0],) + x.shape[1:])


def _distance_stats(distance_ns: np.ndarray) -> dict[str, float]:
    if distance_ns.size == 0:
        return {"mean_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    d = distance_ns.astype(np.float64) / 1e6
    return {"mean_ms": float(d.mean()), "p99_ms": float(np.percentile(d, 99)), "max_ms": float(d.max())}


def _numeric_error(t_src: np.ndarray, t_dst: np.ndarray) -> tuple[float, dict[str, Any]]:
    _, distance = nearest_index(t_src, t_dst)
    stats = _distance_stats(distance)
    return stats["mean_ms"], {**stats, "samples": int(t_src.shape[0])}


def _nearest_frames(t_src: np.ndarray, t_dst: np.ndarray, tol_ms: float) -> tuple[np.ndarray, float, dict[str, Any]]:
    index, distance = nearest_index(t_src, t_dst)
    matched = distance <= tol_ms * 1e6
    frames = np.where(matched, index, -1).astype(np.int64)
    stats = _distance_stats(distance[matched])
    report = {**stats, "samples": int(t_src.shape[0]), "matched_steps": int(matched.sum()), "tolerance_ms": tol_ms}
    return frames, stats["mean_ms"], report



def _decision(**fields_: Any) -> Any:
    # clean.py imports this module (nearest_index, wrap_to_pi), so its Decision is imported when needed.
    from pipeline.processing.clean import Decision

    return Decision(stage="align", **fields_)


def _stamps_after_arrival(raw: RawEpisode, fit: ClockFit, config: AlignConfig) -> list[Any]:
    """A ``capture_after_arrival`` decision per camera with frames stamped after the ingest received them.

    A frame is stamped when it reaches the collector, before it is sent, so
    on the ingest clock its stamp can never be later than its arrival. Only
    with a synced clock: without one the mapping is a guess.
    """
    if not fit.synced:
        return []
    decisions = []
    tolerance_ns = config.stamp_tolerance_ms * 1e6 + fit.rtt_min_ns / 2 + 3 * fit.residual_ns
    for name, cam in raw.cameras.items():
        capture = np.asarray(cam.capture_ns, dtype=np.int64)
        arrival = np.asarray(cam.arrival_ns, dtype=np.int64)
        if capture.shape != arrival.shape or capture.size == 0:
            continue
        late_ns = (fit.to_ingest(capture) - arrival).astype(np.float64)
        bad = np.flatnonzero(late_ns > tolerance_ns)
        if bad.size == 0:
            continue
        decisions.append(_decision(
            kind="capture_after_arrival", stream=name, start=int(bad[0]), end=int(bad[-1]) + 1, action="flag",
            reason=(f"camera {name}: {bad.size} of {capture.size} frames are stamped after the ingest received them "
                    f"(by up to {late_ns[bad].max() / 1e6:.0f} ms, median {np.median(late_ns[bad]) / 1e6:.0f} ms, "
                    f"clock uncertainty {tolerance_ns / 1e6:.1f} ms): impossible, so the camera's stamps are "
                    "offset and its frames may be paired with the wrong joint states"),
        ))
    return decisions


def _camera_delays(raw: RawEpisode, times: dict[str, np.ndarray], config: AlignConfig
                   ) -> tuple[dict[str, Any], list[Any]]:
    """Estimate every camera's delay; with ``latency="estimate"`` shift ``times`` by the confident ones."""
    assert raw.joint_state is not None
    position = raw.joint_state.fields.get(_CONTINUOUS_FIELD)
    report: dict[str, Any] = {}
    decisions: list[Any] = []
    settings = LatencySettings(max_lag_ms=config.latency_max_lag_ms, min_confidence=config.latency_min_confidence)
    if position is not None:
        position = np.asarray(position, dtype=np.float64).reshape(len(raw.joint_state), -1)
        continuous = np.array([j.continuous for j in raw.config.joints], dtype=bool)
        if continuous.shape[0] == position.shape[1] and continuous.any():
            position = position.copy()
            position[:, continuous] = np.unwrap(position[:, continuous], axis=0)
    for name, cam in raw.cameras.items():
        if position is None:
            estimate = DelayEstimate(None, 0.0, why="no joint positions")
        else:
            estimate = estimate_camera_delay(cam.jpeg, times[name], times[JOINT_STATE], position, fps=cam.fps,
                                             window_s=config.latency_window_s, max_frames=config.latency_frames,
                                             settings=settings)
        period_ms = 1e3 / cam.fps if cam.fps > 0 else 0.0
        applied = float(cam.latency_ms)
        use = config.latency == "estimate" and estimate.delay_ms is not None
        if use:
            assert estimate.delay_ms is not None
            applied += estimate.delay_ms
            times[name] = times[name] - round(estimate.delay_ms * 1e6)
        report[name] = {**estimate.as_dict(), "configured_ms": float(cam.latency_ms), "applied_ms": applied,
                        "frame_period_ms": period_ms}
        if estimate.delay_ms is not None and abs(estimate.delay_ms) > period_ms:
            total = cam.latency_ms + estimate.delay_ms
            then = ("frames re-aligned by the estimate" if use else
                    "run with --align-latency estimate to align by the estimate, or fix latency_ms in the robot config")
            decisions.append(_decision(
                kind="camera_latency_mismatch", stream=name, start=0, end=len(cam), action="realign" if use else "flag",
                reason=(f"camera {name}: its images lag the joints by {total:.0f} ms (estimated from image motion "
                        f"against joint motion, confidence {estimate.confidence:.2f}), the configured latency is "
                        f"{cam.latency_ms:g} ms: {estimate.delay_ms:+.0f} ms off, more than one frame period "
                        f"({period_ms:.0f} ms); {then}"),
            ))
        elif config.latency == "estimate" and estimate.delay_ms is None:
            decisions.append(_decision(
                kind="camera_latency_kept", stream=name, start=0, end=len(cam), action="keep",
                reason=(f"camera {name}: delay unknown ({estimate.why}); aligned with the configured latency "
                        f"{cam.latency_ms:g} ms"),
            ))
    return report, decisions

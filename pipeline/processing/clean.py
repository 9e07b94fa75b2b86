"""Clean: find what is wrong with an episode, repair it, cut it, or reject it.

Two entry points, both pure functions that record every decision:

- :func:`clean_raw` works on the raw streams before :func:`~pipeline.processing.align.align`:
  it drops samples align cannot use (non-finite values, duplicate and
  backwards stamps, empty frames).
- :func:`clean_aligned` works on the aligned timeline: spikes, gaps, limit
  violations, lost / frozen / black frames, idle head and tail; it returns the
  usable segments of the episode, or rejects it.

The rules, in the order applied:

====================  ==========================================  ==============================
kind                  found by                                    action
====================  ==========================================  ==============================
nonfinite             NaN/inf in any field of a raw sample        drop (raw)
duplicate_timestamp   stamp equal to an earlier sample's          drop, keep the first (raw)
backwards_timestamp   stamp before an earlier sample's, or one    drop (raw)
                      stamp ahead of the samples after it
empty_frame           a frame with no bytes                       drop (raw)
outcome               ``attrs["outcome"]`` in reject_outcomes     reject
gap                   raw interval > interpolate_max_gap_ms       interpolate; split if > split_gap_ms
                      (and > 1.5 periods of the stream's rate)
spike                 single-step outlier vs. neighbours' median  interpolate
position_limit        outside [min - tol, max + tol]              interpolate if short, else split/trim
velocity_limit        velocity field or position differences      interpolate (field) if short;
                      above velocity_max * (1 + tol)              split at a position jump
frozen_frames         identical JPEG bytes > frozen_max_s         split/trim (fill if short)
black_frames          mean brightness < black_max_brightness      fill if short, else split/trim
frame_gap             step without a frame within tolerance       fill if short, else split/trim
idle_head/idle_tail   joint speed < idle_speed_rad_s at the ends  trim, keeping idle_margin_s
idle                  a segment where nothing moves               drop
too_short             segment < min_duration_s                    drop; reject if none is left
limits_unknown        the robot config marks a joint's position   skip (the limit rule does not
                      or velocity limit unknown (``null``)        apply to that joint)
====================  ==========================================  ==============================

"interpolate": the values in the run are replaced by the straight line between
the good steps on either side. "fill": a step's frame becomes the nearest good
frame in time. "split": the steps are removed and the episode continues as a
new segment after them. "trim": the same at the head or tail. "drop": the
samples (raw) or the segment (aligned) are discarded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import cv2
import numpy as np

from pipeline.errors import ConfigError, ProcessingError
from pipeline.processing.align import nearest_index, wrap_to_pi
from pipeline.processing.episode import AlignedEpisode, CameraStream, NumericStream, RawEpisode
from pipeline.robot_config import RobotConfig
from pipeline.streams import ACTION, JOINT_STATE

__all__ = ["CleanConfig", "CleanResult", "Decision", "clean_aligned", "clean_raw"]

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this = its standard deviation


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One thing the cleaner did, and why.

    ``start``/``end`` are a half-open range ``[start, end)``:

    - from :func:`clean_raw`: sample (or frame) indices of the *input* raw stream
      named by ``stream``;
    - from :func:`clean_aligned`: step indices of the *input* aligned timeline
      (``ep.t_ns``). A split between two steps that removes none has
      ``start == end`` = the first step of the new segment.
    """

    stage: str = "clean"
    kind: str
    stream: str
    start: int
    end: int
    action: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CleanConfig:
    """Thresholds of every cleaning rule (defaults for 50 Hz timelines, 30 fps cameras).

    Attributes:
        interpolate_max_gap_ms: raw joint/action gaps up to this long are ordinary
            sample loss: align's linear interpolation covers them (smooth arm
            motion bends < 3 mrad in 50 ms) and no decision is recorded.
            Longer gaps are recorded.
        split_gap_ms: recorded gaps up to this long stay interpolated; longer
            ones split the episode. 250 ms is a human reaction time: a teleop
            motion can start and stop inside it, so a straight line would invent it.
        repair_max_ms: longest run of out-of-limit steps replaced by
            interpolation (2.5 steps at 50 Hz: a glitch, not a motion); longer
            runs are cut.
        frame_fill_max_ms: longest run of steps without a usable frame (lost,
            black) filled with the nearest good frame: 100 ms is three 30 fps
            frames; beyond it the view is stale while the arm moves ~0.1 rad.
        limit_tolerance_rad: slack on position limits before a reading is a
            violation: encoder calibration offsets and URDF-vs-firmware limit
            differences are around a degree (0.017 rad).
        velocity_tolerance: fraction above ``velocity_max`` tolerated (10%:
            datasheet limits are nominal and finite differences are noisy).
        spike_threshold: a step is a spike when it is this many robust local
            standard deviations from its neighbours' median (8: a false alarm
            on gaussian noise has odds below 1e-14 per step).
        spike_min_rad: and at least this far (0.05 rad): far above encoder
            noise (~1e-3 rad), so smooth or noiseless data never trips it.
        spike_window_s: window of the robust local scale (0.5 s: one period of
            fast 2 Hz teleop motion).
        frozen_max_s: identical JPEG bytes for longer than this are a frozen
            camera; a real sensor's noise never repeats a compressed frame bit
            for bit, so even a short repeat is a re-sent buffer, but up to
            0.5 s it costs training nothing.
        black_max_brightness: a frame whose mean gray level (0..255, decoded
            at 1/8 scale) is below this is black (10 = 4%: lens cap, dead
            sensor; a dim but usable scene stays above ~20).
        black_candidate_bytes_per_pixel: frames this small are decoded to check
            brightness: a black 640x480 frame is ~5 KB (0.02 B/px), a real scene
            0.1-0.4 B/px.
        black_candidate_size_ratio: frames smaller than this fraction of the
            camera's median frame are decoded too (dark but noisy frames).
        black_sample_s: one frame this often is decoded whatever its size, and
            a black one found so is followed to both ends of its run, so a
            camera that goes dark with noise is found within a second.
        black_probe_stride: in a run of small frames (a low-texture scene) one
            in this many is decoded, and a black run is followed in strides of
            this many frames; 3 frames (100 ms at 30 fps) bound what can be
            missed to glitches the rules would only have filled.
        idle_speed_rad_s: the robot is idle while every joint moves slower than
            this; 0.05 rad/s is ~3 deg/s, above the ~0.07 rad/s single-step
            noise of a 1 mrad encoder only after smoothing (``idle_smooth_s``).
        idle_smooth_s: moving-average window of the joint speed.
        idle_margin_s: rest kept before the first and after the last motion, so
            a policy learns to start from and come to rest.
        min_duration_s: shorter segments are dropped; a segment under a second
            is less than one action chunk for ACT/diffusion policies.
        reject_outcomes: operator outcomes that reject an episode outright.
    """

    interpolate_max_gap_ms: float = 50.0
    split_gap_ms: float = 250.0
    repair_max_ms: float = 50.0
    frame_fill_max_ms: float = 100.0
    limit_tolerance_rad: float = 0.02
    velocity_tolerance: float = 0.10
    spike_threshold: float = 8.0
    spike_min_rad: float = 0.05
    spike_window_s: float = 0.5
    frozen_max_s: float = 0.5
    black_max_brightness: float = 10.0
    black_candidate_bytes_per_pixel: float = 0.05
    black_candidate_size_ratio: float = 0.5
    black_sample_s: float = 1.0
    black_probe_stride: int = 3
    idle_speed_rad_s: float = 0.05
    idle_smooth_s: float = 0.1
    idle_margin_s: float = 0.25
    min_duration_s: float = 1.0
    reject_outcomes: tuple[str, ...] = ("discarded",)

    def __post_init__(self) -> None:
        source = "<clean config>"
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "reject_outcomes":
                if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(source, f.name, f"expected a list of outcome names, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(source, f.name, f"expected a finite number, got {value!r}")
            if value < 0:
                raise ConfigError(source, f.name, f"must be >= 0, got {value}")
        if not isinstance(self.black_probe_stride, int) or self.black_probe_stride < 1:
            raise ConfigError(source, "black_probe_stride", f"must be an integer >= 1, got {self.black_probe_stride!r}")
        for name in ("spike_window_s", "black_sample_s", "split_gap_ms", "spike_threshold"):
            if getattr(self, name) <= 0:
                raise ConfigError(source, name, f"must be > 0, got {getattr(self, name)}")
        if self.split_gap_ms < self.interpolate_max_gap_ms:
            raise ConfigError(
                source,
                "split_gap_ms",
                f"must be >= interpolate_max_gap_ms ({self.interpolate_max_gap_ms}), got {self.split_gap_ms}",
            )

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str = "<clean config>") -> CleanConfig:
        """Build from a parsed YAML mapping; unknown keys are a :class:`ConfigError`.

        Raises:
            ConfigError: naming ``source`` and the offending key.
        """
        if not isinstance(mapping, dict):
            raise ConfigError(source, "clean", f"expected a mapping, got {type(mapping).__name__}")
        allowed = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            if key not in allowed:
                raise ConfigError(source, f"clean.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
            values[key] = tuple(value) if key == "reject_outcomes" and isinstance(value, list) else value
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(source, err.field, err.problem) from err


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean_aligned` made of an episode.

    Attributes:
        segments: the usable parts, in time order (empty when rejected).
        decisions: every decision, in the order taken.
        rejected: True when no segment is usable.
        reject_reasons: why, one line each.
        report: counts (per camera: frames decoded, black, frozen, filled steps).
    """

    segments: list[AlignedEpisode]
    decisions: list[Decision]
    rejected: bool
    reject_reasons: list[str]
    report: dict[str, Any] = field(default_factory=dict)


# -- clean_raw ------------------------------------------------------------------------------


def clean_raw(raw: RawEpisode, config: CleanConfig | None = None) -> tuple[RawEpisode, list[Decision]]:
    """Drop the raw samples align cannot use; every dropped run becomes a :class:`Decision`.

    Per numeric stream: samples with NaN/inf in any field; then, in stamp
    order, samples whose stamp equals an earlier one (the first is kept) or
    lies before an earlier one, and a single sample stamped ahead of the
    samples after it (so one bad stamp in the future does not make everything
    after it "backwards"). Per camera: empty frames, then the same stamp rules.
    Afterwards every stream's ``capture_ns`` is strictly increasing.

    Args:
        raw: the episode; it is not changed. Streams without a finding are
            shared with the result, the others are new objects.
        config: unused today (no thresholds); accepted for symmetry.

    Returns:
        The cleaned episode and the decisions (sample indices of the input streams).
    """
    del config
    decisions: list[Decision] = []
    joint_state = _clean_numeric(raw.joint_state, JOINT_STATE, decisions) if raw.joint_state is not None else None
    action = _clean_numeric(raw.action, ACTION, decisions) if raw.action is not None else None
    cameras = {name: _clean_camera(cam, name, decisions) for name, cam in raw.cameras.items()}
    return replace(raw, joint_state=joint_state, action=action, cameras=cameras), decisions


def _clean_numeric(stream: NumericStream, name: str, decisions: list[Decision]) -> NumericStream:
    n = len(stream)
    finite = np.ones(n, dtype=bool)
    for values in stream.fields.values():
        finite &= np.isfinite(values).reshape(n, -1).all(axis=1)
    for a, b in _runs(~finite):
        bad = sorted(k for k, v in stream.fields.items() if not np.isfinite(v[a:b]).all())
        decisions.append(
            Decision(
                kind="nonfinite", stream=name, start=a, end=b, action="drop",
                reason=f"{b - a} sample(s) with NaN or inf in {', '.join(bad)}; interpolation cannot use them",
            )
        )
    keep = finite & _order_keep(stream.capture_ns, finite, name, "sample", decisions)
    if keep.all():
        return stream
    return NumericStream(
        capture_ns=stream.capture_ns[keep],
        source_index=stream.source_index[keep],
        arrival_ns=stream.arrival_ns[keep],
        fields={k: v[keep] for k, v in stream.fields.items()},
    )


def _clean_camera(cam: CameraStream, name: str, decisions: list[Decision]) -> CameraStream:
    sizes = np.fromiter((len(b) for b in cam.jpeg), dtype=np.int64, count=len(cam.jpeg))
    present = sizes > 0
    for a, b in _runs(~present):
        decisions.append(
            Decision(kind="empty_frame", stream=name, start=a, end=b, action="drop",
                     reason=f"{b - a} frame(s) with no JPEG bytes")
        )
    keep = present & _order_keep(cam.capture_ns, present, name, "frame", decisions)
    if keep.all():
        return cam
    return replace(
        cam,
        capture_ns=cam.capture_ns[keep],
        source_index=cam.source_index[keep],
        arrival_ns=cam.arrival_ns[keep],
        jpeg=[b for b, k in zip(cam.jpeg, keep.tolist(), strict=True) if k],
    )


def _order_keep(
    capture_ns: np.ndarray, valid: np.ndarray, name: str, what: str, decisions: list[Decision]
) -> np.ndarray:
    """Which samples (among ``valid``) to keep so that stamps strictly increase."""
    t_all = np.asarray(capture_ns, dtype=np.int64)
    keep = np.ones(t_all.shape[0], dtype=bool)
    idx = np.flatnonzero(valid)
    t = t_all[idx]
    if t.shape[0] < 2 or bool(np.all(np.diff(t) > 0)):
        return keep
    # One stamp ahead of both successors while its predecessor is behind the next
    # one: that stamp is wrong, not everything after it.
    ahead = np.zeros(t.shape[0], dtype=bool)
    if t.shape[0] >= 3:
        nxt, nxt2 = t[1:], np.append(t[2:], np.iinfo(np.int64).min)
        prev = np.insert(t[:-2], 0, np.iinfo(np.int64).min)
        ahead[:-1] = (t[:-1] > nxt) & (t[:-1] > nxt2) & (prev < nxt)
    rest = np.flatnonzero(~ahead)
    tr = t[rest]
    prior_max = np.maximum.accumulate(tr)[:-1]
    dup = np.zeros(t.shape[0], dtype=bool)
    back = ahead.copy()
    dup[rest[1:]] = tr[1:] == prior_max
    back[rest[1:]] = tr[1:] < prior_max
    rules = (
        (dup, "duplicate_timestamp", f"{what}(s) stamped the same as an earlier {what}; the first one is kept"),
        (back, "backwards_timestamp", f"{what}(s) stamped before an earlier {what}, or ahead of the next ones"),
    )
    for mask, kind, why in rules:
        full = np.zeros(t_all.shape[0], dtype=bool)
        full[idx[mask]] = True
        keep &= ~full
        for a, b in _runs(full):
            decisions.append(
                Decision(kind=kind, stream=name, start=a, end=b, action="drop", reason=f"{int(full[a:b].sum())} {why}")
            )
    return keep


# -- clean_aligned --------------------------------------------------------------------------


class _Work:
    """The mutable state of one clean_aligned call: copies of the arrays, cuts, decisions."""

    def __init__(self, ep: AlignedEpisode) -> None:
        self.ep = ep
        self.steps = int(ep.t_ns.shape[0])
        self.state = {k: v.copy() for k, v in ep.state.items()}
        self.action = None if ep.action is None else ep.action.copy()
        self.frames = {k: v.copy() for k, v in ep.frames.items()}
        self.keep = np.ones(self.steps, dtype=bool)
        self.breaks = np.zeros(self.steps, dtype=bool)  # breaks[i]: a new segment starts at step i
        self.decisions: list[Decision] = []

    def ms(self, steps: int) -> float:
        return steps * 1000.0 / self.ep.rate_hz

    def note(self, kind: str, stream: str, start: int, end: int, action: str, reason: str) -> None:
        self.decisions.append(Decision(kind=kind, stream=stream, start=start, end=end, action=action, reason=reason))

    def cut(self, kind: str, stream: str, start: int, end: int, reason: str) -> None:
        """Remove steps ``[start, end)``; ``start == end`` splits before ``start`` without removing."""
        edge = start <= 0 or end >= self.steps
        self.keep[start:end] = False
        if start == end and 0 < start < self.steps:
            self.breaks[start] = True
        self.note(kind, stream, start, end, "trim" if edge else "split", reason)


def clean_aligned(ep: AlignedEpisode, config: CleanConfig | None = None) -> CleanResult:
    """Repair, cut or reject an aligned episode by the rules of this module.

    The input is not changed. Segments share ``raw`` and ``stream_time_ns`` with
    it; frame indices still index ``raw.cameras[name].jpeg``. Each segment's
    ``report["clean"]`` says which input steps it holds.

    Raises:
        ProcessingError: the episode lacks what align always provides
            (``stream_time_ns`` of a camera or of the joint-state stream).
    """
    config = config or CleanConfig()
    raw = ep.raw
    where = f"robot {raw.robot_id} episode {raw.episode_id}"
    steps = int(ep.t_ns.shape[0])

    outcome = str(raw.attrs.get("outcome", ""))
    if outcome in config.reject_outcomes:
        reason = f"the operator marked the episode {outcome!r}"
        decision = Decision(kind="outcome", stream="episode", start=0, end=steps, action="reject", reason=reason)
        return CleanResult([], [decision], True, [reason])

    for name in (JOINT_STATE, *ep.frames):
        if name not in ep.stream_time_ns:
            raise ProcessingError(
                f"{where} stream {name}", "aligned episode has no stream_time_ns for it; produce it with align()"
            )

    work = _Work(ep)
    report: dict[str, Any] = {"cameras": {}}
    if steps:
        _gaps(work, config)
        _spikes(work, raw.config, config)
        _position_limits(work, raw.config, config)
        _velocity_limits(work, raw.config, config)
        _unknown_limits(work, raw.config)
        for name in ep.frames:
            report["cameras"][name] = _camera(work, name, config)

    segments: list[tuple[int, int]] = []
    for a, b in _segments(work.keep, work.breaks):
        trimmed = _trim_idle(work, a, b, raw.config, config)
        if trimmed is None:
            continue
        a, b = trimmed
        if work.ms(b - a) < config.min_duration_s * 1000:
            work.note(
                "too_short", "episode", a, b, "drop",
                f"segment of {work.ms(b - a) / 1000:.2f} s is shorter than min_duration_s={config.min_duration_s}",
            )
            continue
        segments.append((a, b))

    reasons: list[str] = []
    if not segments:
        cuts = sorted({d.kind for d in work.decisions if d.action in ("split", "trim", "drop")})
        why = f" after {', '.join(cuts)}" if cuts else ""
        reasons.append(
            f"no segment of at least {config.min_duration_s} s is left{why} (episode {work.ms(steps) / 1000:.2f} s)"
        )
        work.note("too_short", "episode", 0, steps, "reject", reasons[0])
    out = [_segment(work, a, b, k, len(segments)) for k, (a, b) in enumerate(segments)]
    return CleanResult(out, work.decisions, not out, reasons, report)


def _segment(work: _Work, a: int, b: int, index: int, count: int) -> AlignedEpisode:
    ep = work.ep
    report = dict(ep.report)
    report["clean"] = {"segment": index, "segments": count, "start_step": a, "end_step": b}
    return AlignedEpisode(
        raw=ep.raw,
        rate_hz=ep.rate_hz,
        t_ns=ep.t_ns[a:b],
        state={k: v[a:b] for k, v in work.state.items()},
        action=None if work.action is None else work.action[a:b],
        frames={k: v[a:b] for k, v in work.frames.items()},
        alignment_error_ms=dict(ep.alignment_error_ms),
        report=report,
        stream_time_ns=ep.stream_time_ns,
    )


def _gaps(work: _Work, config: CleanConfig) -> None:
    """Raw intervals longer than ``interpolate_max_gap_ms``: recorded, or split when > ``split_gap_ms``.

    A stream slower than 30 Hz (a 15 fps LeRobot dataset) has ordinary
    intervals above that: for it a gap is an interval above 1.5 of its period.
    """
    t = work.ep.t_ns
    robot = work.ep.raw.config
    for name, rate_hz in ((JOINT_STATE, robot.joint_state_hz), (ACTION, robot.action_hz)):
        times = work.ep.stream_time_ns.get(name)
        if times is None or times.shape[0] < 2:
            continue
        dt = np.diff(times)
        threshold_ms = max(config.interpolate_max_gap_ms, 1.5e3 / rate_hz)
        for i in np.flatnonzero(dt > threshold_ms * 1e6):
            a = int(np.searchsorted(t, times[i], side="right"))
            b = int(np.searchsorted(t, times[i + 1], side="left"))
            if a >= b:
                continue  # the gap falls between two steps: no step was interpolated across it
            gap_ms = float(dt[i]) / 1e6
            what = f"no {name} samples for {gap_ms:.0f} ms (raw samples {i}..{i + 1})"
            if gap_ms > config.split_gap_ms:
                work.cut("gap", name, a, b, f"{what} > split_gap_ms={config.split_gap_ms:g}: split there")
            else:
                work.note("gap", name, a, b, "interpolate", f"{what} <= split_gap_ms={config.split_gap_ms:g}: "
                          "linearly interpolated by align")


def _unwrapped(position: np.ndarray, continuous: np.ndarray) -> np.ndarray:
    if not continuous.any():
        return position
    out = position.copy()
    out[:, continuous] = np.unwrap(out[:, continuous], axis=0)
    return out


def _continuous(robot: RobotConfig, dof: int) -> np.ndarray:
    flags = np.array([j.continuous for j in robot.joints], dtype=bool)
    return flags if flags.shape[0] == dof else np.zeros(dof, dtype=bool)


def _spikes(work: _Work, robot: RobotConfig, config: CleanConfig) -> None:
    """Single-step outliers in joint positions, replaced by the mean of their neighbours.

    ``m[t] = x[t] - median(x[t-2], x[t-1], x[t+1], x[t+2])`` is ~0 on smooth
    motion (1.25 x'' dt^2) and equals the spike's size on a spike, while one
    outlier cannot move its neighbours' medians. A spike is ``|m[t]| >
    max(spike_threshold * s[t], spike_min_rad)`` with ``s[t]`` = 1.4826 x the
    median of ``|m|`` over ``spike_window_s`` (robust local scale), flagged at
    ``t`` alone (a flagged neighbour means a multi-step excursion, which the
    limit rules handle). The two first and last steps are not tested.
    """
    x_in = work.state.get("position")
    if x_in is None or work.steps < 5:
        return
    continuous = _continuous(robot, x_in.shape[1])
    x = _unwrapped(x_in, continuous).copy()
    a, b, c, d = x[:-4], x[1:-3], x[3:-1], x[4:]
    # Median of four = mean of the middle two = (sum - max - min) / 2.
    high = np.maximum(np.maximum(a, b), np.maximum(c, d))
    low = np.minimum(np.minimum(a, b), np.minimum(c, d))
    median4 = (a + b + c + d - high - low) / 2
    m = np.abs(x[2:-2] - median4)
    # The local scale is only needed where |m| passes the absolute floor, which is rare:
    # computing it there alone keeps the rule cheap (a sliding median everywhere cost
    # ~0.02 ms per camera frame on 29 joints).
    flag = np.zeros(m.shape, dtype=bool)
    limit = np.full(m.shape, config.spike_min_rad)
    ts, js = np.nonzero(m > config.spike_min_rad)
    if ts.size:
        w = max(3, int(round(config.spike_window_s * work.ep.rate_hz)) | 1)
        padded = np.pad(m, ((w // 2, w // 2), (0, 0)), mode="edge")
        windows = padded[ts[:, None] + np.arange(w)[None, :], js[:, None]]
        scale = _MAD_TO_SIGMA * np.median(windows, axis=1)
        limit[ts, js] = np.maximum(config.spike_threshold * scale, config.spike_min_rad)
        flag[ts, js] = m[ts, js] > limit[ts, js]
    single = flag.copy()
    single[1:] &= ~flag[:-1]
    single[:-1] &= ~flag[1:]
    single &= work.keep[2:-2, None] & work.keep[1:-3, None] & work.keep[3:-1, None]
    if not single.any():
        return
    names = robot.joint_names
    for t, j in np.argwhere(single):
        s = int(t) + 2
        j = int(j)
        old = float(x[s, j])
        x[s, j] = (x[s - 1, j] + x[s + 1, j]) / 2
        joint = names[j] if j < len(names) else str(j)
        work.note(
            "spike", JOINT_STATE, s, s + 1, "interpolate",
            f"joint {joint}: position {old:+.3f} rad is {m[t, j]:.3f} rad from its neighbours' median "
            f"(limit {limit[t, j]:.3f} rad); replaced by the mean of steps {s - 1} and {s + 1}",
        )
    if continuous.any():
        x[:, continuous] = wrap_to_pi(x[:, continuous])
    work.state["position"] = x


def _repair_or_cut(
    work: _Work, values: np.ndarray, bad: np.ndarray, kind: str, what: str, names: tuple[str, ...], config: CleanConfig
) -> None:
    """Per joint, runs of ``bad`` steps: short interior runs interpolated in ``values``, others cut."""
    bad = bad & work.keep[:, None]
    if not bad.any():
        return
    for j in np.flatnonzero(bad.any(axis=0)):
        joint = names[j] if j < len(names) else str(j)
        for a, b in _runs(bad[:, j]):
            worst = float(np.max(np.abs(values[a:b, j])))
            desc = f"joint {joint}: {what} for {work.ms(b - a):.0f} ms (|value| up to {worst:.3f})"
            if work.ms(b - a) <= config.repair_max_ms and a > 0 and b < work.steps:
                frac = np.arange(1, b - a + 1) / (b - a + 1)
                values[a:b, j] = values[a - 1, j] + (values[b, j] - values[a - 1, j]) * frac
                work.note(kind, JOINT_STATE, a, b, "interpolate",
                          f"{desc} <= repair_max_ms={config.repair_max_ms:g}: replaced by interpolation")
            else:
                work.cut(kind, JOINT_STATE, a, b, f"{desc}: cut")


def _position_limits(work: _Work, robot: RobotConfig, config: CleanConfig) -> None:
    """Positions outside ``[position_min - tol, position_max + tol]`` (continuous joints exempt)."""
    x = work.state.get("position")
    if x is None or x.shape[1] != robot.dof:
        return
    lo = np.array([j.position_min for j in robot.joints]) - config.limit_tolerance_rad
    hi = np.array([j.position_max for j in robot.joints]) + config.limit_tolerance_rad
    bad = ((x < lo) | (x > hi)) & ~_continuous(robot, robot.dof)
    _repair_or_cut(work, x, bad, "position_limit", "position outside its limits", robot.joint_names, config)


def _velocity_limits(work: _Work, robot: RobotConfig, config: CleanConfig) -> None:
    """Speeds above ``velocity_max * (1 + tol)``, in the velocity field and in position steps.

    A measured velocity over the limit is a bad reading: short runs are
    interpolated, long ones cut. Position changing faster than the limit
    between two steps is a jump no interpolation removes: the episode is split
    at it (steps inside a run of such jumps are removed).
    """
    vmax = np.array([j.velocity_max for j in robot.joints]) * (1 + config.velocity_tolerance)
    v = work.state.get("velocity")
    if v is not None and v.shape[1] == robot.dof:
        bad = np.abs(v) > vmax
        _repair_or_cut(work, v, bad, "velocity_limit", "velocity field above its limit", robot.joint_names, config)
    x = work.state.get("position")
    if x is None or x.shape[1] != robot.dof or work.steps < 2:
        return
    step = np.diff(x, axis=0)
    continuous = _continuous(robot, robot.dof)
    step[:, continuous] = wrap_to_pi(step[:, continuous])
    speed = np.abs(step) * work.ep.rate_hz
    bad = (speed > vmax) & (work.keep[:-1] & work.keep[1:])[:, None]
    for j in np.flatnonzero(bad.any(axis=0)):
        for a, b in _runs(bad[:, j]):  # intervals a..b-1, i.e. steps a..b
            work.cut(
                "velocity_limit", JOINT_STATE, a + 1, b,
                f"joint {robot.joint_names[j]}: position changes at up to {float(speed[a:b, j].max()):.1f} rad/s "
                f"between steps {a} and {b} (limit {vmax[j]:.1f} rad/s incl. tolerance): split at the jump",
            )


def _unknown_limits(work: _Work, robot: RobotConfig) -> None:
    """Say which limit rules did not apply: an unknown limit is infinite, so nothing violates it."""
    for which, rule in (("position", "position_limit"), ("velocity", "velocity_limit")):
        unknown = robot.unknown_limits(which)
        if unknown:
            names = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            work.note("limits_unknown", JOINT_STATE, 0, work.steps, "skip",
                      f"robot config {robot.model} marks the {which} limits of {len(unknown)} joint(s) unknown "
                      f"({names}): {rule} not checked for them")


def _camera(work: _Work, name: str, config: CleanConfig) -> dict[str, int]:
    """Frozen, black and missing frames of one camera: fill short runs, cut long ones."""
    cam = work.ep.raw.cameras[name]
    frames = work.frames[name]
    times = work.ep.stream_time_ns[name]
    n = len(cam.jpeg)
    used = np.zeros(n, dtype=bool)
    used[frames[frames >= 0]] = True

    same = _same_as_previous(cam.jpeg)
    stale = _frozen(same, cam.fps, config)
    black, decoded, undecodable = _black(cam, used, config)
    stale &= ~black  # a black image repeated is black first: the more specific finding
    good = ~stale & ~black
    good_index = np.flatnonzero(good)
    filled = 0
    black_what = f"frames darker than black_max_brightness={config.black_max_brightness:g}"
    if undecodable:
        black_what += f" or undecodable ({undecodable} frames)"
    rules = (
        ("frozen_frames", stale, f"frames repeat identical JPEG bytes for over frozen_max_s={config.frozen_max_s:g} s"),
        ("black_frames", black, black_what),
        ("frame_gap", None, "no frame within tolerance (lost frames)"),
    )
    for kind, bad_frame, what in rules:
        if bad_frame is None:
            bad_step = frames < 0
        else:
            bad_step = np.zeros(work.steps, dtype=bool)
            has = frames >= 0
            bad_step[has] = bad_frame[frames[has]]
        bad_step &= work.keep
        for a, b in _runs(bad_step):
            desc = f"{what}: {b - a} step(s), {work.ms(b - a):.0f} ms"
            if work.ms(b - a) <= config.frame_fill_max_ms and good_index.size:
                nearest, _ = nearest_index(times[good_index], work.ep.t_ns[a:b])
                frames[a:b] = good_index[nearest]
                filled += b - a
                work.note(kind, name, a, b, "fill",
                          f"{desc} <= frame_fill_max_ms={config.frame_fill_max_ms:g}: nearest good frame reused")
            else:
                work.cut(kind, name, a, b, f"{desc}: cut")
    return {
        "frames": n,
        "decoded": decoded,
        "black": int(black.sum()),
        "frozen": int(stale.sum()),
        "filled_steps": filled,
    }


def _same_as_previous(jpeg: list[bytes]) -> np.ndarray:
    """``same[i]``: frame ``i`` has exactly the bytes of frame ``i - 1`` (False for frame 0).

    Bytes are compared, never decoded: ``bytes ==`` compares lengths first, so
    two different frames cost ~0.1 µs, identical ones one memcmp.
    """
    same = np.zeros(len(jpeg), dtype=bool)
    if len(jpeg) > 1:
        same[1:] = np.fromiter((jpeg[i] == jpeg[i - 1] for i in range(1, len(jpeg))), dtype=bool, count=len(jpeg) - 1)
    return same


def _frozen(same: np.ndarray, fps: float, config: CleanConfig) -> np.ndarray:
    """Frames repeating their predecessor in a run of identical frames longer than ``frozen_max_s``.

    The first frame of a run is a real image; its repeats are marked.
    """
    stale = np.zeros(same.shape[0], dtype=bool)
    if not same.any():
        return stale
    fps = fps if fps > 0 else 30.0
    for a, b in _runs(same):  # frames a..b-1 repeat their predecessor: the run is frames a-1..b-1
        if (b - a + 1) / fps > config.frozen_max_s:
            stale[a:b] = True
    return stale


def _black(cam: CameraStream, check: np.ndarray, config: CleanConfig) -> tuple[np.ndarray, int, int]:
    """Black (or undecodable) frames among ``check``, decoding as few frames as possible.

    Decoding even at 1/8 scale costs ~1 ms per 100 KB of JPEG (entropy decoding
    dominates), over the per-frame budget, so frames are probed sparsely:

    - *candidates*: frames whose entropy-coded data is small enough to be
      near-uniform (``black_candidate_bytes_per_pixel``, or
      ``black_candidate_size_ratio`` of the camera's median; headers and
      tables, ~600 bytes whatever the image, are not counted, or they would
      hide small black frames). In a run of candidates (a low-texture scene)
      the first, the last and every ``black_probe_stride``-th are decoded;
    - one frame every ``black_sample_s`` whatever its size (dark noisy frames
      are not small);
    - from every black frame found, the run is followed both ways in strides:
      two black frames a stride apart make the frames between black; between a
      black and a bright one every frame is decoded, so the run's ends are exact.

    A black glitch shorter than the stride inside a bright low-texture stretch
    can be missed: with the default stride 3 that is at most 2 frames (67 ms at
    30 fps), which the rules would only have filled. A frame with the bytes of
    a frame already decoded (a frozen or constant black camera) takes its result.

    Returns:
        (black mask over frames, frames decoded, frames undecodable)
    """
    n = len(cam.jpeg)
    black = np.zeros(n, dtype=bool)
    if n == 0 or not check.any():
        return black, 0, 0
    sizes = np.fromiter((_scan_bytes(b) for b in cam.jpeg), dtype=np.int64, count=n)
    pixels = max(1, cam.width * cam.height)
    candidate = (sizes <= config.black_candidate_bytes_per_pixel * pixels) | (
        sizes <= config.black_candidate_size_ratio * float(np.median(sizes))
    )
    stride = max(1, config.black_probe_stride)
    probe = np.zeros(n, dtype=bool)
    for a, b in _runs(candidate & check):
        probe[a:b:stride] = True
        probe[b - 1] = True
    probe[:: max(1, int(round(config.black_sample_s * (cam.fps if cam.fps > 0 else 30.0))))] = True
    probe &= check

    result: dict[int, bool] = {}
    by_bytes: dict[bytes, bool] = {}  # hashing a frame costs ~1 µs/KB, far less than decoding it
    counts = [0, 0]  # decoded, undecodable

    def is_black(i: int) -> bool:
        if i in result:
            return result[i]
        data = cam.jpeg[i]
        value = by_bytes.get(data)
        if value is None:
            counts[0] += 1
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
            if image is None or image.size == 0:
                counts[1] += 1
                value = True
            else:
                value = float(image.mean()) < config.black_max_brightness
            by_bytes[data] = value
        result[i] = value
        return value

    for i in np.flatnonzero(probe).tolist():
        if black[i] or not is_black(i):
            continue
        black[i] = True
        for step in (-1, 1):
            j = i
            while 0 <= j + step < n:
                k = min(n - 1, max(0, j + step * stride))
                if is_black(k):
                    black[min(j, k) : max(j, k) + 1] = True
                    j = k
                    continue
                m = j + step
                while m != k and is_black(m):
                    black[m] = True
                    m += step
                break
    return black, counts[0], counts[1]


def _scan_bytes(jpeg: bytes) -> int:
    """Bytes after the JPEG start-of-scan marker (0xFFDA): the image data without headers.

    A frame without the marker is not a JPEG: 0, so it becomes a candidate and
    is found undecodable.
    """
    sos = jpeg.find(b"\xff\xda")
    return len(jpeg) - sos if sos >= 0 else 0


def _segments(keep: np.ndarray, breaks: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of kept steps, also ended before every break."""
    out: list[tuple[int, int]] = []
    for a, b in _runs(keep):
        cuts = [a, *(int(i) for i in np.flatnonzero(breaks[a + 1 : b]) + a + 1), b]
        out.extend(zip(cuts[:-1], cuts[1:], strict=True))
    return out


def _trim_idle(work: _Work, a: int, b: int, robot: RobotConfig, config: CleanConfig) -> tuple[int, int] | None:
    """Trim the still head and tail of segment ``[a, b)``; None when nothing in it moves.

    Speed per interval = max over joints of |x[t+1] - x[t]| * rate (wrapped for
    continuous joints), smoothed by an ``idle_smooth_s`` moving average. The
    first and last intervals above ``idle_speed_rad_s`` mark the motion;
    ``idle_margin_s`` of rest is kept on each side.
    """
    x = work.state.get("position")
    if x is None or b - a < 2:
        return a, b
    step = np.diff(x[a:b], axis=0)
    continuous = _continuous(robot, x.shape[1])
    step[:, continuous] = wrap_to_pi(step[:, continuous])
    speed = np.abs(step).max(axis=1) * work.ep.rate_hz
    k = max(1, int(round(config.idle_smooth_s * work.ep.rate_hz)))
    if k > 1:
        ones = np.ones(k)
        speed = np.convolve(speed, ones, mode="same") / np.convolve(np.ones_like(speed), ones, mode="same")
    moving = np.flatnonzero(speed >= config.idle_speed_rad_s)
    where = f"steps {a}..{b}"
    if moving.size == 0:
        work.note("idle", JOINT_STATE, a, b, "drop",
                  f"no joint moves faster than idle_speed_rad_s={config.idle_speed_rad_s:g} in {where}")
        return None
    margin = int(round(config.idle_margin_s * work.ep.rate_hz))
    start = a + max(0, int(moving[0]) - margin)
    end = min(b, a + int(moving[-1]) + 2 + margin)
    if start > a:
        work.note("idle_head", JOINT_STATE, a, start, "trim",
                  f"still for {work.ms(start - a + margin) / 1000:.2f} s before the first motion; "
                  f"{config.idle_margin_s:g} s of rest kept")
    if end < b:
        work.note("idle_tail", JOINT_STATE, end, b, "trim",
                  f"still for {work.ms(b - end + margin) / 1000:.2f} s after the last motion; "
                  f"{config.idle_margin_s:g} s of rest kept")
    return start, end


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` ranges where a 1-D boolean mask is True."""
    if mask.size == 0:
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))

"""Camera delay against the joint stream, estimated from the recording itself.

A camera's configured ``latency_ms`` is what align subtracts from its stamps.
If that number is wrong, or the camera's stamps are shifted, or the camera
delivers the scene late, every frame is paired with the wrong joint state,
and nearest-frame distances (``sync_error_ms``) cannot see it: they are
measured on the stamps themselves. The images can: when the robot moves, the
picture changes, and it changes most when the joints move fastest. As UMI
calibrates its cameras' latency, this module cross-correlates

* image motion: the mean absolute optical flow between consecutive small
  grayscale frames (:func:`motion_energy`), one value per frame interval, with
* joint motion over the same interval, ``|q_j(t_{k+1} - L) - q_j(t_k - L)|``
  per joint (positions smoothed over one frame period, so encoder noise is not
  motion), and their sum,

over candidate lags ``L``. The lag at which joint motion explains image
motion best (one joint, a non-negative mix of two, or the sum of all: a
camera sees some joints, not all) is the *residual delay*: how much earlier the scene happened
than the frame times say. ``delay_ms > 0`` means the camera's true latency is
the configured one plus ``delay_ms`` (or its stamps are that much late).

The answer is "unknown" (``delay_ms`` None), never a guessed number, when
the robot is still, the image does not change, too few frame pairs are
usable, the best correlation is weak, the peak is at the edge of the search
range, another lag explains the image almost as well (slow or periodic
motion), or the two halves of the frames, each on its own, peak elsewhere.
``confidence`` in [0, 1] says how clear the peak is: it grows with the peak
correlation above ``min_correlation`` and with the peak's prominence over
the best other local maximum (or the search edge).

Everything here is a pure function over numpy arrays and JPEG bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DelayEstimate", "LatencySettings", "busiest_window", "decode_small_gray", "estimate_camera_delay", "estimate_delay",
    "motion_energy",
]

_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class LatencySettings:
    """Knobs of :func:`estimate_delay` (align passes its own config's values).

    Attributes:
        max_lag_ms: lags searched, ``-max_lag_ms .. +max_lag_ms``.
        step_ms: spacing of the searched lags; the peak is refined between them.
        min_pairs: fewest usable frame pairs for an answer.
        still_rad: the robot counts as still when no joint's smoothed position
            spans more than this over the frames used.
        min_correlation: a peak correlation at or below this gives confidence 0.
        full_prominence: a peak this far above the best alternative lag (with a
            correlation of 1) gives confidence 1.
        min_confidence: below this the estimate is reported as unknown.
    """

    max_lag_ms: float = 500.0
    step_ms: float = 4.0
    min_pairs: int = 24
    still_rad: float = 0.02
    min_correlation: float = 0.4
    full_prominence: float = 0.2
    min_confidence: float = 0.5


@dataclass(frozen=True)
class DelayEstimate:
    """One camera's residual delay against the joints.

    Attributes:
        delay_ms: residual delay (scene time = frame time - delay_ms); None = unknown.
        confidence: 0 (no evidence) .. 1 (clear, strong peak).
        correlation: correlation at the peak (0 when not computed).
        prominence: peak correlation minus the best alternative lag's.
        pairs: frame pairs used.
        why: for an unknown estimate, the reason.
    """

    delay_ms: float | None
    confidence: float
    correlation: float = 0.0
    prominence: float = 0.0
    pairs: int = 0
    why: str = ""

    @property
    def known(self) -> bool:
        return self.delay_ms is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms, "confidence": self.confidence, "correlation": self.correlation,
            "prominence": self.prominence, "pairs": self.pairs, "why": self.why,
        }


def decode_small_gray(jpeg: bytes, min_width: int = 64) -> np.ndarray | None:
    """A grayscale decode at the largest JPEG reduction (1/8, 1/4, 1/2, none) keeping ``min_width`` pixels.

    A reduced decode skips most of the inverse DCT, so it costs about half a
    full one. None when the bytes are not a decodable JPEG.
    """
    buf = np.frombuffer(jpeg, np.uint8)
    for flag in (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_GRAYSCALE_2,
                 cv2.IMREAD_GRAYSCALE):
        image = cv2.imdecode(buf, flag)
        if image is None or image.size == 0:
            return None
        if image.shape[1] >= min_width:
            break
    return image


def motion_energy(frames: Sequence[np.ndarray | None]) -> np.ndarray:
    """Mean absolute optical flow (pixels, x and y) between each consecutive pair (``len(frames) - 1`` values).

    Dense Farneback flow on the small frames measures how far the picture
    moved, whatever its texture (a plain grey difference also grows with the
    texture under the motion, which shifts the correlation peak on real
    photographs). A pair with an undecodable frame (None) or frames of
    different sizes is NaN.
    """
    out = np.full(max(0, len(frames) - 1), np.nan)
    for k in range(len(frames) - 1):
        a, b = frames[k], frames[k + 1]
        if a is not None and b is not None and a.shape == b.shape and min(a.shape) >= 8:
            flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 2, 5, 1.1, 0)
            out[k] = float(np.mean(np.abs(flow)))
    return out


def busiest_window(frame_t_ns: np.ndarray, joint_t_ns: np.ndarray, position: np.ndarray, window_s: float,
                   max_lag_ms: float) -> tuple[int, int]:
    """The frame index range ``[a, b)`` of about ``window_s`` seconds where the joints move most unevenly.

    Only frames whose lagged joint times stay inside the joint stream are
    candidates; the window maximises the variance of the per-interval joint
    motion (what the correlation feeds on), found with running sums, so no
    frame is decoded to choose it. ``(0, 0)`` when no frame qualifies.
    """
    ft = np.asarray(frame_t_ns, dtype=np.int64)
    jt = np.asarray(joint_t_ns, dtype=np.int64)
    if ft.size < 2 or jt.size < 2:
        return 0, 0
    margin = int(max_lag_ms * _NS_PER_MS)
    inside = np.flatnonzero((ft - margin >= jt[0]) & (ft + margin <= jt[-1]))
    if inside.size < 2:
        return 0, 0
    lo, hi = int(inside[0]), int(inside[-1]) + 1
    span_s = (ft[hi - 1] - ft[lo]) / 1e9
    count = hi - lo
    per_frame_s = span_s / max(1, count - 1)
    want = count if per_frame_s <= 0 else min(count, round(window_s / per_frame_s) + 1)
    if want >= count:
        return lo, hi
    base = int(jt[0])
    q = _smoothed(jt - base, position, 1e3 * per_frame_s)
    motion = np.abs(np.diff(_interp_rows((ft[lo:hi] - base) / 1e6, (jt - base) / 1e6, q), axis=0)).sum(axis=1)
    c1 = np.concatenate([[0.0], np.cumsum(motion)])
    c2 = np.concatenate([[0.0], np.cumsum(motion**2)])
    n = want - 1  # intervals per window
    mean = (c1[n:] - c1[:-n]) / n
    var = (c2[n:] - c2[:-n]) / n - mean**2
    start = lo + int(np.argmax(var))
    return start, start + want


def estimate_delay(
    pair_start_ns: np.ndarray,
    pair_end_ns: np.ndarray,
    energy: np.ndarray,
    joint_t_ns: np.ndarray,
    position: np.ndarray,
    *,
    frame_period_ms: float,
    settings: LatencySettings = LatencySettings(),
) -> DelayEstimate:
    """The residual delay of one camera against the joints (see the module docstring).

    Args:
        pair_start_ns, pair_end_ns: times of the two frames of each pair
            (ingest clock, configured latency already removed).
        energy: image motion between the two frames of each pair (:func:`motion_energy`).
        joint_t_ns: joint-state times (same clock), increasing.
        position: joint positions ``(len(joint_t_ns), dof)``, continuous joints unwrapped.
        frame_period_ms: the camera's frame period: joint positions are
            smoothed over it, as an exposure and a frame interval average motion.
        settings: search range and thresholds.
    """
    s = settings
    fa = np.asarray(pair_start_ns, dtype=np.int64)
    fb = np.asarray(pair_end_ns, dtype=np.int64)
    e = np.asarray(energy, dtype=np.float64)
    jt = np.asarray(joint_t_ns, dtype=np.int64)
    q = np.asarray(position, dtype=np.float64).reshape(jt.shape[0], -1)
    if not fa.shape == fb.shape == e.shape:
        raise ValueError(f"pair times {fa.shape}, {fb.shape} and energy {e.shape} must have one value per pair")
    if jt.shape[0] < 2:
        return DelayEstimate(None, 0.0, why="fewer than 2 joint samples")
    base = int(jt[0])
    jms = (jt - base) / 1e6
    a, b = (fa - base) / 1e6, (fb - base) / 1e6
    usable = np.isfinite(e) & (a - s.max_lag_ms >= jms[0]) & (b + s.max_lag_ms <= jms[-1])
    pairs = int(usable.sum())
    if pairs < s.min_pairs:
        return DelayEstimate(None, 0.0, pairs=pairs, why=(
            f"{pairs} usable frame pairs (need {s.min_pairs} with joints {s.max_lag_ms:g} ms beyond them)"))
    e, a, b = e[usable], a[usable], b[usable]
    finite_q = np.isfinite(q).all(axis=1)
    jms, q = jms[finite_q], q[finite_q]
    if jms.shape[0] < 2:
        return DelayEstimate(None, 0.0, pairs=pairs, why="no finite joint positions")
    q = _smoothed(jms * 1e6, q, frame_period_ms)
    span = np.ptp(_interp_rows(np.concatenate([a, b]), jms, q), axis=0)
    if not (span > s.still_rad).any():
        return DelayEstimate(None, 0.0, pairs=pairs, why=(
            f"the robot is still (no joint moves more than {s.still_rad:g} rad over the frames used)"))
    if float(np.std(e)) < 1e-3 * max(1.0, float(np.mean(e))):
        return DelayEstimate(None, 0.0, pairs=pairs, why="the image does not change from frame to frame")

    lags = np.arange(-s.max_lag_ms, s.max_lag_ms + s.step_ms / 2, s.step_ms)
    moving = np.flatnonzero(span > s.still_rad)
    curve = _lag_correlations(e, a, b, lags, jms, q[:, moving])
    peak = int(np.argmax(curve))
    r = float(curve[peak])
    if peak < 2 or peak > lags.shape[0] - 3:
        return DelayEstimate(None, 0.0, r, 0.0, pairs, why=(
            f"the best lag is at the edge of the search range (±{s.max_lag_ms:g} ms)"))
    delay = float(lags[peak] + s.step_ms * _parabola_offset(curve[peak - 1:peak + 2]))
    prominence = r - _best_alternative(curve, peak, max(2, int(np.ceil(2 * frame_period_ms / s.step_ms))))
    confidence = float(np.clip((r - s.min_correlation) / (1 - s.min_correlation), 0, 1)
                       * np.clip(prominence / s.full_prominence, 0, 1))
    if confidence < s.min_confidence:
        return DelayEstimate(None, confidence, r, prominence, pairs, why=(
            f"no clear peak (correlation {r:.2f}, {prominence:.2f} above the best other lag; "
            f"confidence {confidence:.2f} < {s.min_confidence:g})"))
    # Each half of the pairs on its own must peak at the same lag: a fit that chose the wrong
    # joints for a wrong lag rarely does so the same way twice.
    half = pairs // 2
    for part in (slice(0, half), slice(half, pairs)):
        alone = _lag_correlations(e[part], a[part], b[part], lags, jms, q[:, moving])
        lag = float(lags[int(np.argmax(alone))])
        if abs(lag - delay) > frame_period_ms:
            return DelayEstimate(None, 0.0, r, prominence, pairs, why=(
                f"the two halves of the frames disagree (peak {delay:.0f} ms overall, {lag:.0f} ms in one half)"))
    return DelayEstimate(delay, confidence, r, prominence, pairs)


def _smoothed(t_ns: np.ndarray, q: np.ndarray, width_ms: float) -> np.ndarray:
    """Positions averaged over ``width_ms`` around each sample (running mean on a uniform resampling)."""
    t = np.asarray(t_ns, dtype=np.float64) / 1e6
    if t.shape[0] < 3 or width_ms <= 0:
        return q
    step = max(float(np.median(np.diff(t))), 1e-3)
    half = round(width_ms / step / 2)
    if half < 1:
        return q
    grid = np.arange(t[0], t[-1] + step / 2, step)
    g = _interp_rows(grid, t, q)
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    padded = np.pad(g, ((half, half), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(g.shape[1])], axis=1)
    return _interp_rows(t, grid, smooth)


def _interp_rows(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp`` of every column of ``fp`` (n, k) at ``x`` (any shape): result ``x.shape + (k,)``."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    out = np.stack([np.interp(flat, xp, fp[:, j]) for j in range(fp.shape[1])], axis=-1)
    return out.reshape(np.shape(x) + (fp.shape[1],))


def _lag_correlations(e: np.ndarray, a: np.ndarray, b: np.ndarray, lags: np.ndarray, jms: np.ndarray,
                      q: np.ndarray) -> np.ndarray:
    """Per lag, how well the joints' |displacement| over each lagged interval explains ``e``.

    A camera sees some joints, not all, so ``e`` is fitted by the best of:
    one joint's |displacement|, the sum over all joints, or a non-negative
    mix of two joints (least squares). More free weights would fit almost
    as well at the wrong lag (slow joint motions are much alike once shifted),
    which flattens the peak. The result is the multiple correlation
    ``sqrt(R^2)`` of the best fit, in [0, 1].
    """
    qa = _interp_rows(a[None, :] - lags[:, None], jms, q)  # (lags, pairs, joints)
    qb = _interp_rows(b[None, :] - lags[:, None], jms, q)
    d = np.abs(qb - qa)
    d = np.concatenate([d, d.sum(axis=2, keepdims=True)], axis=2)
    d -= d.mean(axis=1, keepdims=True)
    ec = e - e.mean()
    total = float(ec @ ec) or 1.0
    gram = np.einsum("lpi,lpj->lij", d, d)  # (lags, f, f)
    cross = np.einsum("p,lpi->li", ec, d)  # (lags, f)
    diag = np.diagonal(gram, axis1=1, axis2=2)
    single = np.where(diag > 0, np.maximum(cross, 0) ** 2 / np.where(diag > 0, diag, 1), 0.0)
    best = single.max(axis=1)
    joints = q.shape[1]
    if joints >= 2:
        i, j = np.triu_indices(joints, 1)
        gii, gjj, gij = gram[:, i, i], gram[:, j, j], gram[:, i, j]
        ci, cj = cross[:, i], cross[:, j]
        det = gii * gjj - gij**2
        ok = det > 1e-12 * np.maximum(gii * gjj, 1e-300)
        safe = np.where(ok, det, 1.0)
        wi = (gjj * ci - gij * cj) / safe
        wj = (gii * cj - gij * ci) / safe
        explained = np.where(ok & (wi >= 0) & (wj >= 0), wi * ci + wj * cj, 0.0)
        best = np.maximum(best, explained.max(axis=1))
    return np.sqrt(np.clip(best / total, 0.0, 1.0))


def _parabola_offset(y: np.ndarray) -> float:
    """Where a parabola through three equally spaced points peaks, in steps from the middle one (-0.5..0.5)."""
    den = y[0] - 2 * y[1] + y[2]
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (y[0] - y[2]) / den, -0.5, 0.5))


def _best_alternative(curve: np.ndarray, peak: int, exclude: int) -> float:
    """The highest local maximum (or end of the range) at least ``exclude`` samples from ``peak``."""
    inner = np.flatnonzero((curve[1:-1] >= curve[:-2]) & (curve[1:-1] >= curve[2:])) + 1
    far = [c for i, c in ((0, curve[0]), (curve.shape[0] - 1, curve[-1])) if abs(i - peak) >= exclude]
    candidates = far + [curve[i] for i in inner if abs(int(i) - peak) >= exclude]
    return float(max(candidates)) if candidates else float(curve.min())


def estimate_camera_delay(
    jpeg: Sequence[bytes],
    frame_t_ns: np.ndarray,
    joint_t_ns: np.ndarray,
    position: np.ndarray,
    *,
    fps: float,
    window_s: float,
    max_frames: int = 120,
    settings: LatencySettings = LatencySettings(),
    min_width: int = 64,
) -> DelayEstimate:
    """:func:`estimate_delay` for one camera, decoding only the frames of its :func:`busiest_window`.

    Args:
        jpeg: the camera's frames, as received.
        frame_t_ns: each frame's time on the joints' clock, configured latency removed.
        joint_t_ns, position: the joint stream (continuous joints unwrapped).
        fps: the camera's frame rate.
        window_s: seconds of recording the estimate looks at.
        max_frames: most frames decoded (the middle of a longer window). The
            cost is one small decode and one small optical flow per frame,
            about 1 ms.
        settings: search range and thresholds.
        min_width: frames are decoded at the largest JPEG reduction at least this wide.
    """
    if fps <= 0 or window_s <= 0:
        return DelayEstimate(None, 0.0, why="no frame rate" if fps <= 0 else "estimation switched off (window 0 s)")
    start, stop = busiest_window(frame_t_ns, joint_t_ns, position, window_s, settings.max_lag_ms)
    if stop - start < 2:
        return DelayEstimate(None, 0.0, why=(
            f"no frames with joint samples {settings.max_lag_ms:g} ms either side (episode too short)"))
    t = np.asarray(frame_t_ns, dtype=np.int64)
    jt = np.asarray(joint_t_ns, dtype=np.int64)
    near = (jt >= t[start]) & (jt <= t[stop - 1])
    seen = np.asarray(position, dtype=np.float64)[near]
    if seen.size and not (np.nanmax(seen, axis=0) - np.nanmin(seen, axis=0) > settings.still_rad).any():
        return DelayEstimate(None, 0.0, why=(  # found before decoding anything
            f"the robot is still (no joint moves more than {settings.still_rad:g} rad over the frames used)"))
    # Consecutive frames: pairs spread thinly over a longer span gave noisier peaks than a
    # contiguous stretch with the same number of decodes.
    middle = (start + stop) // 2
    start, stop = max(start, middle - max_frames // 2), min(stop, middle - max_frames // 2 + max_frames)
    energy = motion_energy([decode_small_gray(jpeg[k], min_width) for k in range(start, stop)])
    t = t[start:stop]
    return estimate_delay(t[:-1], t[1:], energy, joint_t_ns, position, frame_period_ms=1e3 / fps, settings=settings)

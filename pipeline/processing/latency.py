"""Camera delay against the joint stream, estimated from the recording itself.

A camera's configured ``latency_ms`` is what align subtracts from its stamps.
If that number is wrong, or the camera's stamps are shifted, or the camera
delivers the scene late, every frame is paired with the wrong joint state,
and nearest-frame distances (``sync_error_ms``) cannot see it: they are
measured on the stamps themselves. The images can: when the robot moves, the
picture moves with it. As UMI calibrates its cameras' latency, this module
compares

* where the picture is: the running sum of how far it moved between
  consecutive small grayscale frames (mean optical flow and phase
  correlation, x and y: :func:`image_motion`), one position per frame, with
* where the joints are: the joint positions at each frame time minus a
  candidate lag ``L`` (positions smoothed over one frame period, so encoder
  noise is not motion),

over candidate lags. At each lag the image position is fitted by least
squares as a linear mix of the moving joints' positions, a constant and a
slow drift (the summed flow drifts); the lag at which the fit best predicts
the image is the *residual delay*: how much earlier the scene happened than
the frame times say. ``delay_ms > 0`` means the camera's true latency is the
configured one plus ``delay_ms`` (or its stamps are that much late).
Positions, not per-frame motion: one frame's motion is a pixel or less and
mostly rounding, and motion magnitudes of joints that move together (as a
teleoperator's do, waypoint to waypoint) look alike over hundreds of
milliseconds of lag, so their correlation curve is high and flat.

Out of sample, then in sample: the frames are cut into ``blocks``
consecutive stretches. On a coarse grid of lags, a fit to all stretches but
one predicts the one left out; the best such lag picks the lobe (in sample,
a weight per joint fits a short recording's few same-shaped reaches about as
well one reach away). Within that lobe the fits leaving one stretch out
place the peak on the fine grid (their mean curve), and the spread of their
own peaks is the estimate's jackknife standard error (``spread_ms``).

The answer is "unknown" (``delay_ms`` None), never a guessed number, when
the robot is still, the image does not move, too few consecutive frame pairs
are usable, the best lag is at the edge of the search range, some lag
outside the best one's own lobe (``lobe_ms`` either side) predicts the image
almost as well (slow or periodic motion, or images unrelated to the joints),
or the standard error exceeds ``max_spread`` of a frame period (the peak
cannot be placed within a frame period).
``confidence`` in [0, 1] grows with the *prominence*: the share of the best
outside lag's unexplained image motion (out of sample) that the peak explains.

Everything here is a pure function over numpy arrays and JPEG bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DelayEstimate", "LatencySettings", "busiest_window", "decode_small_gray", "estimate_camera_delay", "estimate_delay",
    "image_motion",
]

_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class LatencySettings:
    """Knobs of :func:`estimate_delay` (align passes its own config's values).

    Attributes:
        max_lag_ms: lags searched, ``-max_lag_ms .. +max_lag_ms``.
        step_ms: spacing of the lags searched within the best lobe; the peak is refined between them.
        coarse_step_ms: spacing of the lags of the out-of-sample search for the lobe.
        min_pairs: fewest consecutive usable frame pairs for an answer.
        still_rad: the robot counts as still when no joint's smoothed position
            spans more than this over the frames used.
        still_px: the image counts as not moving when its summed flow spans
            less than this (pixels of the small decode) on both axes.
        lobe_ms: lags closer than this to the best one belong to its own lobe
            (positions a few frames apart are much alike); the best lag farther
            away is the alternative the prominence is measured against.
        full_prominence: a peak explaining this share of the best outside
            lag's unexplained motion gives confidence 1.
        min_confidence: below this the estimate is reported as unknown.
        blocks: the frames are cut into this many consecutive stretches; each
            is predicted by a fit to the others (the curve is out of sample),
            and the peak is found again with each left out (its spread).
        max_spread: the estimate is unknown when its jackknife standard error
            over the stretches exceeds this share of a frame period (a third:
            three standard errors still within one frame period).
    """

    max_lag_ms: float = 750.0
    step_ms: float = 4.0
    coarse_step_ms: float = 12.0
    min_pairs: int = 24
    still_rad: float = 0.02
    still_px: float = 1.0
    lobe_ms: float = 100.0
    full_prominence: float = 0.6
    min_confidence: float = 0.5
    blocks: int = 8
    max_spread: float = 1 / 3


@dataclass(frozen=True)
class DelayEstimate:
    """One camera's residual delay against the joints.

    Attributes:
        delay_ms: residual delay (scene time = frame time - delay_ms); None = unknown.
        confidence: 0 (no evidence) .. 1 (clear, strong peak).
        correlation: multiple correlation of the out-of-sample prediction at the peak (0 when not computed).
        prominence: the share of the best lag outside the peak's lobe's
            unexplained image motion that the peak explains (0..1).
        pairs: frame pairs used.
        spread_ms: the estimate's jackknife standard error (0 when not computed).
        why: for an unknown estimate, the reason.
    """

    delay_ms: float | None
    confidence: float
    correlation: float = 0.0
    prominence: float = 0.0
    pairs: int = 0
    spread_ms: float = 0.0
    why: str = ""

    @property
    def known(self) -> bool:
        return self.delay_ms is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms, "confidence": self.confidence, "correlation": self.correlation,
            "prominence": self.prominence, "pairs": self.pairs, "spread_ms": self.spread_ms, "why": self.why,
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


def image_motion(frames: Sequence[np.ndarray | None]) -> np.ndarray:
    """How far the picture moved between each consecutive pair, measured twice: shape ``(len(frames) - 1, 4)``.

    Columns: the mean dense (Farneback) optical flow, x and y, and the shift
    phase correlation finds, x and y (pixels of the small frames). Both
    measure the same displacement with different errors (the flow is pulled
    by texture and borders, the phase correlation by content entering the
    view), so fitting all four at once averages them: on the ALOHA-style
    corpus clean estimates stayed within ±7 ms with both, ±18 ms with the
    flow alone. A pair with an undecodable frame (None) or frames of
    different sizes is NaN.
    """
    out = np.full((max(0, len(frames) - 1), 4), np.nan)
    window: np.ndarray | None = None
    for k in range(len(frames) - 1):
        a, b = frames[k], frames[k + 1]
        if a is not None and b is not None and a.shape == b.shape and min(a.shape) >= 8:
            flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 2, 5, 1.1, 0)
            if window is None or window.shape != a.shape:
                window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
            (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32), window)
            out[k, :2] = flow.reshape(-1, 2).mean(axis=0)
            out[k, 2:] = (dx, dy)
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
    flow: np.ndarray,
    joint_t_ns: np.ndarray,
    position: np.ndarray,
    *,
    frame_period_ms: float,
    settings: LatencySettings = LatencySettings(),
) -> DelayEstimate:
    """The residual delay of one camera against the joints (see the module docstring).

    Args:
        pair_start_ns, pair_end_ns: times of the two frames of each pair
            (ingest clock, configured latency already removed); a pair whose
            start is not the previous pair's end starts a new chain, and only
            the longest chain of usable pairs is used.
        flow: image motion between the two frames of each pair, ``(pairs, 2)``
            (:func:`image_motion`) or ``(pairs,)`` for one axis; NaN = unusable.
        joint_t_ns: joint-state times (same clock), increasing.
        position: joint positions ``(len(joint_t_ns), dof)``, continuous joints unwrapped.
        frame_period_ms: the camera's frame period: joint positions are
            smoothed over it, as an exposure and a frame interval average
            motion; the estimate's standard error must stay within a share of it.
        settings: search range and thresholds.
    """
    s = settings
    fa = np.asarray(pair_start_ns, dtype=np.int64)
    fb = np.asarray(pair_end_ns, dtype=np.int64)
    f = np.asarray(flow, dtype=np.float64)
    f = f.reshape(f.shape[0], -1) if f.ndim else f.reshape(1, 1)
    jt = np.asarray(joint_t_ns, dtype=np.int64)
    q = np.asarray(position, dtype=np.float64).reshape(jt.shape[0], -1)
    if not fa.shape == fb.shape == f.shape[:1] or fa.ndim != 1:
        raise ValueError(f"pair times {fa.shape}, {fb.shape} and flow {f.shape} must have one row per pair")
    if jt.shape[0] < 2:
        return DelayEstimate(None, 0.0, why="fewer than 2 joint samples")
    base = int(jt[0])
    jms = (jt - base) / 1e6
    usable = np.isfinite(f).all(axis=1) & ((fa - base) / 1e6 - s.max_lag_ms >= jms[0])
    usable &= (fb - base) / 1e6 + s.max_lag_ms <= jms[-1]
    chain = _longest_chain(fa, fb, usable)
    pairs = chain.stop - chain.start
    if pairs < s.min_pairs:
        return DelayEstimate(None, 0.0, pairs=pairs, why=(
            f"{pairs} usable frame pairs in a row (need {s.min_pairs} with joints {s.max_lag_ms:g} ms beyond them)"))
    t = (np.concatenate([fa[chain.start:chain.start + 1], fb[chain]]) - base) / 1e6  # frame times, ms
    image = np.concatenate([np.zeros((1, f.shape[1])), np.cumsum(f[chain], axis=0)])  # where the picture is
    finite_q = np.isfinite(q).all(axis=1)
    jms, q = jms[finite_q], q[finite_q]
    if jms.shape[0] < 2:
        return DelayEstimate(None, 0.0, pairs=pairs, why="no finite joint positions")
    q = _smoothed(jms * 1e6, q, frame_period_ms)
    span = np.ptp(_interp_rows(t, jms, q), axis=0)
    if not (span > s.still_rad).any():
        return DelayEstimate(None, 0.0, pairs=pairs, why=(
            f"the robot is still (no joint moves more than {s.still_rad:g} rad over the frames used)"))
    if not (np.ptp(image, axis=0) >= s.still_px).any():
        return DelayEstimate(None, 0.0, pairs=pairs, why="the image does not move over the frames used")

    moving = np.flatnonzero(span > s.still_rad)
    if t.shape[0] < 2 * s.blocks:
        return DelayEstimate(None, 0.0, pairs=pairs, why=f"{t.shape[0]} frames cannot make {s.blocks} stretches of 2")
    # The out-of-sample curve, on a coarse grid, picks the lobe; within it, the in-sample fits
    # place the peak (held-out prediction errors are noisier than the residuals of a fit).
    coarse = np.arange(-s.max_lag_ms, s.max_lag_ms + s.coarse_step_ms / 2, s.coarse_step_ms)
    unexplained, _ = _unexplained(image, t, coarse, jms, q[:, moving], s.blocks)
    peak = int(np.argmin(unexplained))
    r = float(np.sqrt(max(0.0, 1.0 - unexplained[peak])))
    lags = np.arange(max(-s.max_lag_ms, coarse[peak] - s.lobe_ms), min(s.max_lag_ms, coarse[peak] + s.lobe_ms)
                     + s.step_ms / 2, s.step_ms)
    _, alone = _unexplained(image, t, lags, jms, q[:, moving], s.blocks)
    fitted = alone.mean(axis=0)  # every frame is in all but one of the fits
    delay = _refined(lags, fitted, int(np.argmin(fitted)))
    if peak in (0, coarse.shape[0] - 1) or abs(delay) > s.max_lag_ms - 2 * s.step_ms:
        return DelayEstimate(None, 0.0, r, 0.0, pairs, why=(
            f"the best lag is at the edge of the search range (±{s.max_lag_ms:g} ms)"))
    outside = np.abs(coarse - coarse[peak]) > s.lobe_ms
    alternative = float(unexplained[outside].min()) if outside.any() else float(unexplained[peak])
    prominence = float(np.clip(1.0 - unexplained[peak] / alternative, 0.0, 1.0)) if alternative > 0 else 0.0
    confidence = float(np.clip(prominence / s.full_prominence, 0.0, 1.0))
    if confidence < s.min_confidence:
        return DelayEstimate(None, confidence, r, prominence, pairs, why=(
            f"no clear peak (a lag {s.lobe_ms:g} ms or more away explains the image almost as well: the peak "
            f"explains {prominence:.0%} of its unexplained motion; confidence {confidence:.2f} < {s.min_confidence:g})"))
    # Jackknife: the peak found again with each stretch of frames left out, within the peak's own
    # lobe. A lag found by chance, or one that noise could move by a frame period, spreads widely.
    again = np.array([_refined(lags, u, int(np.argmin(u))) for u in alone])
    spread = float(np.sqrt((s.blocks - 1) / s.blocks * ((again - again.mean()) ** 2).sum()))
    if spread > s.max_spread * frame_period_ms:
        return DelayEstimate(None, 0.0, r, prominence, pairs, why=(
            f"the estimate is unstable: with any 1/{s.blocks} of the frames left out the peak moves by ±{spread:.1f} "
            f"ms (standard error), more than {s.max_spread:.0%} of a frame period ({frame_period_ms:.0f} ms)"))
    return DelayEstimate(delay, confidence, r, prominence, pairs, spread)


def _longest_chain(start_ns: np.ndarray, end_ns: np.ndarray, usable: np.ndarray) -> slice:
    """The longest run of usable pairs each starting at the frame the previous one ended at."""
    breaks = np.flatnonzero(~usable[:-1] | ~usable[1:] | (start_ns[1:] != end_ns[:-1])) + 1
    bounds = np.concatenate([[0], breaks, [usable.shape[0]]])
    best = slice(0, 0)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if usable[lo] and hi - lo > best.stop - best.start:
            best = slice(lo, hi)
    return best


def _smoothed(t_ns: np.ndarray, q: np.ndarray, width_ms: float) -> np.ndarray:
    """Positions averaged over ``width_ms`` around each sample (running mean on a uniform resampling)."""
    t = np.asarray(t_ns, dtype=np.float64) / 1e6
    if t.shape[0] < 3 or width_ms <= 0:
        return q
    # A grid finer than the samples: with joints sampled about once a frame period, a running mean
    # of whole samples would be one sample wide (no smoothing), and linearly interpolated positions
    # would be noisier at lags that hit a sample than between two, which biases the best lag.
    step = max(min(float(np.median(np.diff(t))), width_ms / 4), 1e-3)
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


def _design(t: np.ndarray, lags: np.ndarray, jms: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per lag, the regressors: joint positions at ``t - lag``, a constant, and a linear and quadratic drift."""
    qt = _interp_rows(t[None, :] - lags[:, None], jms, q)  # (lags, frames, joints)
    drift = (t - t.mean()) / max(float(np.ptp(t)), 1e-9)
    extra = np.stack([np.ones_like(drift), drift, drift**2], axis=1)
    return np.concatenate([qt, np.broadcast_to(extra[None], qt.shape[:2] + (3,))], axis=2)


def _unexplained(image: np.ndarray, t: np.ndarray, lags: np.ndarray, jms: np.ndarray, q: np.ndarray,
                 blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per lag, the share of the image position's variance the lagged joints leave unexplained, out of sample.

    The frames are cut into ``blocks`` consecutive stretches. ``image``
    (frames, axes) is fitted by least squares, all axes at once, as a linear
    mix of ``q`` at ``t - lag``, a constant and a linear and a quadratic drift
    (the summed flow drifts), on all stretches but one, and that fit predicts
    the one left out. In sample, a fit with a weight per joint explains
    alike the few reaches of a short recording shifted by about one reach
    (the joints go waypoint to waypoint together, so every reach has the same
    shape); only the true lag's weights also predict a reach they were not
    fitted to. Only interior stretches are predicted: predicting the first or
    last would extrapolate the drift. Returns the out-of-sample share (lags,),
    clipped to [0, 1], and each fit's in-sample share (blocks, lags), for the
    peak's place and its jackknife.

    Every stretch's sums are computed once; a fit leaving one out subtracts
    them, so the cost is one pass over the frames plus ``blocks`` small solves per lag.
    """
    x = _design(t, lags, jms, q)  # (lags, frames, params)
    y = image - image.mean(axis=0)
    edges = np.linspace(0, t.shape[0], blocks + 1).round().astype(int).tolist()
    parts = [slice(a, b) for a, b in pairwise(edges)]
    xt = np.swapaxes(x, 1, 2)
    gram_k = np.stack([xt[:, :, p] @ x[:, p] for p in parts])  # (blocks, lags, P, P)
    cross_k = np.stack([xt[:, :, p] @ y[p] for p in parts])  # (blocks, lags, P, axes)
    yy_k = np.array([float((y[p] ** 2).sum()) for p in parts])
    total = float(yy_k.sum())
    if total <= 0:
        return np.ones(lags.shape[0]), np.ones((blocks, lags.shape[0]))
    gram = gram_k.sum(axis=0) - gram_k
    cross = cross_k.sum(axis=0) - cross_k
    scale = np.maximum(np.einsum("klii->kli", gram), 1e-300)
    ridge = 1e-9 * scale[..., None] * np.eye(gram.shape[-1])  # joints standing still at some lags
    beta = np.linalg.solve(gram + ridge, cross)  # (blocks, lags, P, axes)
    held_out = yy_k[:, None] + ((gram_k @ beta - 2 * cross_k) * beta).sum(axis=(2, 3))
    fitted = (total - yy_k)[:, None]
    in_sample = (fitted - (beta * cross).sum(axis=(2, 3))) / np.maximum(fitted, 1e-300)
    inner = held_out[1:-1].sum(axis=0) / max(float(yy_k[1:-1].sum()), 1e-300)  # interpolated, not extrapolated
    return np.clip(inner, 0.0, 1.0), in_sample


def _refined(lags: np.ndarray, curve: np.ndarray, at: int) -> float:
    """The lag of the curve's minimum at index ``at``, placed between the searched lags by a parabola."""
    if 0 < at < lags.shape[0] - 1:
        return float(lags[at] + (lags[1] - lags[0]) * _parabola_offset(-curve[at - 1:at + 2]))
    return float(lags[at])


def _parabola_offset(y: np.ndarray) -> float:
    """Where a parabola through three equally spaced points peaks, in steps from the middle one (-0.5..0.5)."""
    den = y[0] - 2 * y[1] + y[2]
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (y[0] - y[2]) / den, -0.5, 0.5))


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
    """:func:`estimate_delay` for one camera, decoding only frames of its :func:`busiest_window`.

    Args:
        jpeg: the camera's frames, as received.
        frame_t_ns: each frame's time on the joints' clock, configured latency removed.
        joint_t_ns, position: the joint stream (continuous joints unwrapped).
        fps: the camera's frame rate.
        window_s: seconds of recording the estimate looks at.
        max_frames: most frames decoded. A window with more frames is
            covered with every 2nd (3rd, ...) frame: the whole span pins the
            lag better than a contiguous part of it. The cost is one small
            decode and one small optical flow per frame, about 1 ms.
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
    stride = max(1, -(-(stop - start - 1) // max(1, max_frames)))
    picked = np.arange(start, stop, stride)
    flow = image_motion([decode_small_gray(jpeg[k], min_width) for k in picked.tolist()])
    t = t[picked]
    return estimate_delay(t[:-1], t[1:], flow, joint_t_ns, position, frame_period_ms=1e3 / fps, settings=settings)

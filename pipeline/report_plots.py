"""The report's pictures, each an HTML fragment with nothing external: inline SVG and JPEG data URIs.

Joint positions against time as small multiples by body part (axes, ticks
and a legend), a score histogram as a sparkline, count bars, and a contact
sheet of camera thumbnails.
"""

from __future__ import annotations

import base64
import html
import math

import numpy as np

from pipeline.dataset.index import EpisodeEntry
from pipeline.dataset.store import Dataset

_THUMB_W = 128
_THUMBS_PER_CAMERA = 5
_PLOT_W, _PLOT_H = 500, 150
_PLOT_POINTS = 120  # per joint line: a smooth line at this width, a few KB per panel
_MARGIN = (44, 10, 8, 26)  # left, right, top, bottom (px)
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_BODY_PARTS = (  # (title, test on the standard name), in reading order
    ("Left leg", lambda n: n.startswith("left_") and any(p in n for p in ("hip", "knee", "ankle"))),
    ("Right leg", lambda n: n.startswith("right_") and any(p in n for p in ("hip", "knee", "ankle"))),
    ("Waist", lambda n: n.startswith("waist")),
    ("Head", lambda n: n.startswith("head")),
    ("Left arm", lambda n: n.startswith("left_") and any(p in n for p in ("shoulder", "elbow", "wrist"))),
    ("Right arm", lambda n: n.startswith("right_") and any(p in n for p in ("shoulder", "elbow", "wrist"))),
    ("Hands", lambda n: any(p in n for p in ("gripper", "hand", "finger", "thumb"))),
)
_PANEL_LINES = 8
_PANEL_ROWS = {"Left leg": "legs", "Right leg": "legs", "Waist": "trunk", "Head": "trunk", "Left arm": "arms",
               "Right arm": "arms", "Hands": "hands", "Other joints": "hands"}


def body_part_groups(names: list[str], standard: list[str], dof: int) -> list[tuple[str, list[int]]]:
    """Columns grouped by body part from their standard names; joints without one under "Other joints"."""
    groups: dict[str, list[int]] = {title: [] for title, _ in _BODY_PARTS}
    other: list[int] = []
    for j in range(dof):
        name = standard[j] if j < len(standard) and standard[j] else ""
        for title, test in _BODY_PARTS:
            if name and test(name):
                groups[title].append(j)
                break
        else:
            other.append(j)
    out = [(title, cols) for title, cols in groups.items() if cols]
    for k in range(0, len(other), _PANEL_LINES):
        out.append(("Other joints" if len(other) <= _PANEL_LINES else f"Other joints ({k // _PANEL_LINES + 1})",
                    other[k : k + _PANEL_LINES]))
    return out


def _nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_text(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    decimals += 1 if step > 0 and round(step / 10 ** math.floor(math.log10(step)), 5) == 2.5 else 0
    return f"{value:.{decimals}f}".replace("-", "−")


def joint_panels(values: np.ndarray, rate_hz: float, names: list[str], standard: list[str]) -> str:
    """Joint positions (steps x joints, rad) against time: one panel per body part, a row per pair of sides.

    Args:
        values: the episode's ``state/position``.
        rate_hz: its rate; 0 plots against steps.
        names: the robot's joint names, for joints without a standard name.
        standard: the standard joint names ("" where none), which place each joint.
    """
    if values.ndim != 2 or values.shape[0] < 2:
        return "<p class='muted'>too short to plot</p>"
    t = np.arange(values.shape[0]) / (rate_hz if rate_hz > 0 else 1.0)
    rows: dict[str, list[str]] = {}  # left and right side by side, the trunk on a row of its own
    for title, cols in body_part_groups(names, standard, values.shape[1]):
        labels = []
        for j in cols:
            label = standard[j] if j < len(standard) and standard[j] else (names[j] if j < len(names) else f"joint {j}")
            if title.startswith(("Left", "Right")):
                label = label.split("_", 1)[-1]
            labels.append(label)
        row = _PANEL_ROWS.get(title.split(" (")[0], "other")
        rows.setdefault(row, []).append(_panel(title, t, values[:, cols], labels, "s" if rate_hz > 0 else "steps"))
    return "".join(f"<div class='panels'>{''.join(panels)}</div>" for panels in rows.values())


def _panel(title: str, t: np.ndarray, values: np.ndarray, labels: list[str], t_unit: str) -> str:
    """One small multiple: joint positions (rad) against time (s), with axes and a legend."""
    left, right, top, bottom = _MARGIN
    w, h = _PLOT_W - left - right, _PLOT_H - top - bottom
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 0.02:  # a still joint: show it flat in a 0.1 rad window, not its noise blown up
        lo, hi = (lo + hi) / 2 - 0.05, (lo + hi) / 2 + 0.05
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
    t_end = float(t[-1]) or 1.0

    def x(tv: np.ndarray) -> np.ndarray:
        return left + tv / t_end * w

    def y(v: np.ndarray) -> np.ndarray:
        return top + (hi - v) / (hi - lo) * h

    parts = [f"<rect x='{left}' y='{top}' width='{w}' height='{h}' fill='#fff' stroke='#bbb'/>"]
    y_ticks = _nice_ticks(lo, hi, 4)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for v in y_ticks:
        yy = float(y(np.array(v)))
        parts.append(f"<line x1='{left}' x2='{left + w}' y1='{yy:.0f}' y2='{yy:.0f}' stroke='#eee'/>"
                     f"<text x='{left - 4}' y='{yy + 3.5:.0f}' text-anchor='end'>{_tick_text(v, y_step)}</text>")
    x_ticks = _nice_ticks(0.0, t_end, 6)
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for v in x_ticks:
        xx = float(x(np.array(v)))
        parts.append(f"<line x1='{xx:.0f}' x2='{xx:.0f}' y1='{top + h}' y2='{top + h + 4}' stroke='#888'/>"
                     f"<text x='{xx:.0f}' y='{top + h + 15}' text-anchor='middle'>{_tick_text(v, x_step)}</text>")
    parts.append(f"<text x='{left + w}' y='{_PLOT_H - 1}' text-anchor='end' fill='#666'>time ({t_unit})</text>")
    parts.append(f"<text x='10' y='{top + h / 2:.0f}' transform='rotate(-90 10 {top + h / 2:.0f})' "
                 "text-anchor='middle' fill='#666'>rad</text>")
    pick = np.unique(np.linspace(0, values.shape[0] - 1, min(_PLOT_POINTS, values.shape[0])).astype(int))
    xs = x(t[pick])
    legend = []
    for k in range(values.shape[1]):
        colour = _COLOURS[k % len(_COLOURS)]
        ys = y(values[pick, k])
        pts = " ".join(f"{a:.0f},{b:.0f}" for a, b in zip(xs, ys) if np.isfinite(b))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.3' points='{pts}'/>")
        legend.append(f"<span style='color:{colour}'>&#9632;</span>&nbsp;{_e(labels[k])}")
    svg = (f"<svg width='{_PLOT_W}' height='{_PLOT_H}' font-size='10' font-family='sans-serif'>"
           f"{''.join(parts)}</svg>")
    return (f"<div class='panel'><b>{_e(title)}</b> <span class='muted'>(rad)</span>{svg}"
            f"<div class='legend'>{' '.join(legend)}</div></div>")


def bar(count: int, most: int, width: int = 220, colour: str = "") -> str:
    """A horizontal bar for ``count`` out of ``most`` (``most`` fills ``width`` px); ``colour`` "red" or "grey"."""
    px = round(count / most * width) if most else 0
    return f"<span class='bar {colour}' style='width:{max(px, 1 if count else 0)}px'></span>"


def score_sparkline(bins: np.ndarray) -> str:
    """Score histogram 0 (left) .. 1 (right) as a tiny bar chart."""
    most = int(bins.max(initial=0)) or 1
    w, h, gap = 7, 18, 1
    bars = []
    for k, n in enumerate(bins.tolist()):
        if not n:
            continue
        height = max(1, round(n / most * h))
        colour = "#d0605e" if k < 5 else "#e0b040" if k < 8 else "#5b9b5b"
        bars.append(f"<rect x='{k * (w + gap)}' y='{h - height}' width='{w}' height='{height}' fill='{colour}'/>")
    width = len(bins) * (w + gap)
    return (f"<svg width='{width}' height='{h}' style='vertical-align:middle;background:#f6f6f6'>"
            f"<title>score histogram, 0 (left) to 1 (right)</title>{''.join(bars)}</svg>")


def contact_sheet(source: Dataset, entry: EpisodeEntry, camera: str) -> str:
    """Thumbnails of a few frames of ``camera`` spread over the episode, captioned with their time."""
    import cv2

    n = entry.length
    if n == 0:
        return ""
    picks = sorted(set(np.linspace(0, n - 1, min(_THUMBS_PER_CAMERA, n)).astype(int).tolist()))
    images = []
    for index, jpeg in zip(picks, source.jpeg_bytes(entry, camera, picks)):
        # Half-size decoding is cheaper, but never below the thumbnail's width.
        reduced = source.frame_size(entry, camera)[1] >= 2 * _THUMB_W
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2 if reduced else cv2.IMREAD_COLOR)
        if image is None:
            images.append(f"<span class='rej'>frame {index} does not decode</span>")
            continue
        width = min(_THUMB_W, image.shape[1])  # small frames are shown as they are, not blown up
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        thumb = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA) if width != image.shape[1] else image
        ok, data = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 65])
        if ok:
            b64 = base64.b64encode(data.tobytes()).decode()
            when = f"{index / entry.rate_hz:.1f} s" if entry.rate_hz else f"step {index}"
            images.append(f"<figure><img alt='{when}' src='data:image/jpeg;base64,{b64}'><figcaption>{when}"
                          "</figcaption></figure>")
    return "".join(images)


def _e(value: object) -> str:
    return html.escape(str(value))

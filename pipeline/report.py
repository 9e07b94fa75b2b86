"""`refinery report`: one self-contained HTML quality report of a dataset.

Per episode: the quality indicators and grade, the cleaning decisions, a plot
of the joint positions (inline SVG) and a contact sheet of frames per camera
(inline JPEG thumbnails); rejected episodes with their reasons. No external
files, scripts or fonts: it opens anywhere, offline.

Everything comes from the index (format version 2): the table of episodes
from its light columns, the quality reports and cleaning decisions from the
``quality_json`` and ``decisions_json`` columns of the episodes shown in
detail only (the first ``max_detailed`` rejected and accepted ones), and
their joints and frames from their rows of the data segments.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.compute as pc

from pipeline.dataset.index import KEY_COUNT_COLUMNS, EpisodeEntry, dataset_card
from pipeline.dataset.store import Dataset

DEFAULT_MAX_DETAILED = 100
"""Rejected and accepted episodes shown in detail (each); the table lists every episode."""
_PLOT_W, _PLOT_H = 640, 180
_THUMB_W = 160
_THUMBS_PER_CAMERA = 6
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
# Index columns of every row: the table, and where a detailed episode's data is.
_COLUMNS = (
    "key", "raw_episode_id", "robot_id", "model", "task", "length", "rate_hz", "grade", "overall", "accepted",
    "reasons", "cameras", "data_segment", "offset",
    *KEY_COUNT_COLUMNS,
)
# Read for the episodes shown in detail only.
_DETAIL_COLUMNS = ("quality_json", "decisions_json", "attrs_json")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
th{background:#f3f3f3}.A{background:#c8f7c5}.B{background:#e2f7c5}.C{background:#fbf3c2}
.D{background:#fbdcc2}.F{background:#f7c5c5}.rej{color:#a00}details{margin:.6em 0;border:1px solid #ddd;padding:.4em}
summary{cursor:pointer;font-weight:600}img{margin:2px;border:1px solid #999}.muted{color:#777}
"""


def write_report(dataset: Path, out: Path, *, max_detailed: int = DEFAULT_MAX_DETAILED) -> Path:
    """Write the report of ``dataset`` to ``out`` (an .html file).

    Args:
        dataset: A Refinery dataset.
        out: The HTML file to write.
        max_detailed: Show at most this many rejected and this many accepted
            episodes in detail (plots, frames, indicators, decisions); the
            table above lists every episode.

    Returns:
        ``out``.

    Raises:
        StoreError: ``dataset`` is not a Refinery dataset (of this format version).
    """
    dataset = Path(dataset)
    source = Dataset(dataset)
    card = dataset_card(source.state())
    entries = source.index.entries(_COLUMNS)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Refinery report: {_e(dataset.name)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>Quality report: {_e(dataset.name)}</h1>", _card(card)]
    parts.append("<h2>Episodes</h2>" + _episode_table(entries))
    accepted = [e for e in entries if e.accepted and e.key and not e.excluded]
    rejected = [e for e in entries if not e.accepted]
    shown = [*rejected[:max_detailed], *accepted[:max_detailed]]
    details = _details(source, shown)
    if rejected:
        parts.append("<h2>Rejected</h2>")
        for entry in rejected[:max_detailed]:
            parts.append(_rejected_section(entry, details[entry.entry_id]))
        parts.append(_more(len(rejected), max_detailed, "rejected"))
    parts.append("<h2>Accepted episodes</h2>")
    for n, entry in enumerate(accepted[:max_detailed]):
        parts.append(_episode_section(source, entry, details[entry.entry_id], expanded=n == 0))
    parts.append(_more(len(accepted), max_detailed, "accepted"))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _details(source: Dataset, entries: list[EpisodeEntry]) -> dict[int, EpisodeEntry]:
    """entry_id -> the entry with its quality report, decisions and attributes, for ``entries`` only."""
    if not entries:
        return {}
    ids = sorted(e.entry_id for e in entries)
    found = source.index.entries(_DETAIL_COLUMNS, pc.field("entry_id").isin(ids))
    return {e.entry_id: e for e in found}


def _more(total: int, shown: int, what: str) -> str:
    if total <= shown:
        return ""
    return (f"<p class='muted'>{total - shown} more {what} episodes are in the table above but not shown in "
            f"detail (the report details the first {shown}).</p>")


def _e(value: object) -> str:
    return html.escape(str(value))


def _card(card: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>"
        for k, v in card.items() if k != "last_job"
    )
    return f"<h2>Dataset card</h2><table>{rows}</table>"


def _episode_table(entries: list[EpisodeEntry]) -> str:
    head = ("<tr><th>episode</th><th>robot</th><th>model</th><th>task</th><th>seconds</th><th>grade</th>"
            "<th>score</th><th>accepted</th><th>reasons</th></tr>")
    rows = []
    for e in entries:
        name = e.key or e.raw_episode_id
        seconds = e.length / e.rate_hz if e.rate_hz else 0
        if e.excluded:
            status, reasons = "<b class=rej>excluded</b>", [e.exclude_reason]
        else:
            status, reasons = ("yes" if e.accepted else "<b class=rej>no</b>"), e.reasons
        rows.append(
            f"<tr><td><a href='#{_e(name)}'>{_e(name)}</a></td><td>{_e(e.robot_id)}</td><td>{_e(e.model)}</td>"
            f"<td>{_e(e.task)}</td><td>{seconds:.1f}</td><td class='{_e(e.grade)}'>{_e(e.grade)}</td>"
            f"<td>{e.overall:.2f}</td><td>{status}</td><td>{_e('; '.join(reasons))}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _indicator_table(quality: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(i['name'])}</td><td>{_fmt(i['value'])} {_e(i.get('unit', ''))}</td>"
        f"<td>{i['score']:.2f}</td><td>{i['weight']:.2f}</td><td class='muted'>{_e(i.get('description', ''))}</td></tr>"
        for i in quality.get("indicators", [])
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in quality.get("notes", []))
    return ("<table><tr><th>indicator</th><th>value</th><th>score</th><th>weight</th><th>meaning</th></tr>"
            f"{rows}</table>" + (f"<ul>{notes}</ul>" if notes else ""))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _e(value)


def _decisions(decisions: list[dict[str, Any]], limit: int = 40) -> str:
    if not decisions:
        return "<p class='muted'>no cleaning decisions</p>"
    rows = "".join(
        f"<tr><td>{_e(d.get('kind'))}</td><td>{_e(d.get('stream'))}</td><td>{d.get('start')}..{d.get('end')}</td>"
        f"<td>{_e(d.get('action'))}</td><td>{_e(d.get('reason'))}</td></tr>"
        for d in decisions[:limit]
    )
    more = f"<p class='muted'>and {len(decisions) - limit} more</p>" if len(decisions) > limit else ""
    return ("<table><tr><th>kind</th><th>stream</th><th>range</th><th>action</th><th>reason</th></tr>"
            f"{rows}</table>{more}")


def _rejected_section(entry: EpisodeEntry, detail: EpisodeEntry) -> str:
    return (f"<details id='{_e(entry.raw_episode_id)}'><summary class='rej'>{_e(entry.raw_episode_id)}: "
            f"{_e('; '.join(entry.reasons))}</summary>{_indicator_table(detail.quality)}"
            f"<h4>Cleaning decisions</h4>{_decisions(detail.decision_list)}</details>")


def _episode_section(source: Dataset, entry: EpisodeEntry, detail: EpisodeEntry, expanded: bool = False) -> str:
    seconds = entry.length / entry.rate_hz if entry.rate_hz else 0.0
    body = [f"<details id='{_e(entry.key)}'{' open' if expanded else ''}><summary><span class='{_e(entry.grade)}'>&nbsp;{_e(entry.grade)}&nbsp;</span> "
            f"{_e(entry.key)} ({seconds:.1f} s, {_e(entry.model)}, {_e(entry.task)})</summary>"]
    if "state/position" in entry.stats:
        position = source.numeric(entry, "state/position")
        body.append("<h4>Joint positions (rad)</h4>" + _plot(position, detail.attrs.get("joint_names", [])))
    if entry.cameras:
        body.append("<h4>Contact sheet</h4>")
        for camera in sorted(entry.cameras):
            body.append(f"<div><b>{_e(camera)}</b><br>{_contact_sheet(source, entry, camera)}</div>")
    body.append("<h4>Quality indicators</h4>" + _indicator_table(detail.quality))
    body.append("<h4>Cleaning decisions</h4>" + _decisions(detail.decision_list))
    body.append("</details>")
    return "".join(body)


def _plot(values: np.ndarray, names: list[str], max_lines: int = 8) -> str:
    """Up to ``max_lines`` joints (the ones that move most) as SVG polylines."""
    if values.shape[0] < 2:
        return "<p class='muted'>too short to plot</p>"
    spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
    chosen = np.argsort(-spread)[:max_lines]
    step = max(1, values.shape[0] // 400)
    sub = values[::step, chosen]
    lo, hi = float(np.nanmin(sub)), float(np.nanmax(sub))
    span = hi - lo or 1.0
    xs = np.linspace(0, _PLOT_W, sub.shape[0])
    lines, legend = [], []
    for k in range(sub.shape[1]):
        ys = _PLOT_H - (sub[:, k] - lo) / span * (_PLOT_H - 10) - 5
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys) if np.isfinite(y))
        colour = _COLOURS[k % len(_COLOURS)]
        lines.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.2' points='{pts}'/>")
        name = names[chosen[k]] if chosen[k] < len(names) else f"joint {chosen[k]}"
        legend.append(f"<span style='color:{colour}'>&#9632; {_e(name)}</span>")
    return (f"<svg width='{_PLOT_W}' height='{_PLOT_H}' style='border:1px solid #ddd'>{''.join(lines)}</svg>"
            f"<div style='font-size:12px'>{' '.join(legend)} <span class='muted'>range {lo:.2f}..{hi:.2f}</span></div>")


def _contact_sheet(source: Dataset, entry: EpisodeEntry, camera: str) -> str:
    n = entry.length
    if n == 0:
        return ""
    picks = sorted(set(np.linspace(0, n - 1, min(_THUMBS_PER_CAMERA, n)).astype(int).tolist()))
    images = []
    for index, jpeg in zip(picks, source.jpeg_bytes(entry, camera, picks)):
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
        if image is None:
            images.append(f"<span class='rej'>frame {index} does not decode</span>")
            continue
        height = max(1, round(image.shape[0] * _THUMB_W / image.shape[1]))
        thumb = cv2.resize(image, (_THUMB_W, height), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            b64 = base64.b64encode(data.tobytes()).decode()
            images.append(f"<img title='step {index}' src='data:image/jpeg;base64,{b64}'>")
    return "".join(images)

"""`refinery report`: one self-contained HTML quality report of a dataset, bounded in size.

Two parts:

Summary (its size does not grow with the dataset)
    What went in and what came out: raw duration recorded, duration kept by
    cleaning and the share kept, in total and as a distribution over raw
    episodes; cleaning decisions per kind (how many, how many raw episodes,
    how much time they touched); rejections by reason; grades; every quality
    indicator's distribution over all accepted episodes; and bounded tables
    of the worst-scoring, the most cut and the rejected episodes (``worst``
    rows each, plus counts of the rest).

Detail (only for a selected subset)
    Per episode: raw vs kept duration, every joint position plotted against
    time (small multiples by body part), a contact sheet per camera, the
    indicators and the cleaning decisions per kind with the full list one
    click away. ``episodes`` picks them (dataset keys or raw episode ids);
    by default the ``worst`` lowest-scoring accepted episodes and the first
    ``worst`` rejected raw episodes.

This module assembles the page. The summary's figures come from
:mod:`pipeline.dataset_overview` (memory stays flat whatever the size of the
index), the pictures from :mod:`pipeline.report_plots`, the units from
:mod:`pipeline.human_units`. No external files, scripts or fonts: the
report opens anywhere, offline.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset.index import GRADES, KEY_COUNT_COLUMNS, EpisodeEntry
from pipeline.dataset.store import Dataset
from pipeline.dataset_overview import (
    RAW_KINDS,
    KindTotals,
    Overview,
    dataset_overview,
    decision_table,
    kind_totals,
    light_rows,
    per_raw_episode,
)
from pipeline.errors import DatasetError
from pipeline.human_units import kept_text, percent_text, seconds_text, value_text
from pipeline.report_plots import (
    bar,
    body_part_groups,
    contact_sheet,
    joint_panels,
    score_sparkline,
)

# Some of these moved to their own modules; they stay importable from here for earlier callers and the tests.
__all__ = [
    "DECISIONS_LISTED",
    "DEFAULT_WORST",
    "KIND_MEANING",
    "body_part_groups",
    "decision_table",
    "kept_text",
    "kind_totals",
    "percent_text",
    "value_text",
    "write_report",
]

DEFAULT_WORST = 20
"""Episodes detailed by default (the lowest-scoring accepted ones) and rows per summary table."""
DECISIONS_LISTED = 500
"""Decisions listed one by one per detailed episode (the per-kind summary counts them all)."""
KIND_MEANING = {
    "nonfinite": "raw samples with NaN or inf",
    "duplicate_timestamp": "raw samples stamped like an earlier one",
    "backwards_timestamp": "raw samples stamped back in time",
    "empty_frame": "camera frames with no bytes",
    "outcome": "operator marked the episode for rejection",
    "gap": "joint or action samples missing",
    "spike": "single-step outliers in joint positions",
    "position_limit": "joint positions outside their limits",
    "velocity_limit": "joint speeds above their limits",
    "frozen_frames": "camera repeating the same frame",
    "black_frames": "black or undecodable frames",
    "frame_gap": "steps without a camera frame",
    "idle_head": "still time before the first motion",
    "idle_tail": "still time after the last motion",
    "idle": "segments where nothing moves",
    "too_short": "segments shorter than the minimum",
    "limits_unknown": "limit checks skipped: the robot config has no limits",
}
"""What each decision kind is, in the words of the decisions tables."""
# Index columns of every row: the summary, the tables, and where a detailed episode's data is.
_COLUMNS = (
    "key", "raw_episode_id", "robot_id", "model", "task", "length", "rate_hz", "grade", "overall", "accepted",
    "reasons", "segment", "raw_duration_s", "cameras", "data_segment", "offset",
)
# Read for the episodes shown in tables or in detail only.
_DETAIL_COLUMNS = ("quality_json", "decisions_json", "attrs_json", "job_id", "producer", *KEY_COUNT_COLUMNS)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;color:#222;max-width:1120px;
 line-height:1.4}
h1{margin-bottom:.1em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.1em}
h4{margin:.8em 0 .3em}.lead{font-size:17px;margin:.4em 0 1em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:3px 7px;font-size:13px;
 text-align:left;vertical-align:top}th{background:#f5f5f5;font-weight:600}td.n,th.n{text-align:right;white-space:nowrap;
 font-variant-numeric:tabular-nums}
.A{background:#c8f7c5}.B{background:#e2f7c5}.C{background:#fbf3c2}.D{background:#fbdcc2}.F{background:#f7c5c5}
.grade{display:inline-block;min-width:1.4em;text-align:center;font-weight:700;border-radius:3px}
.rej{color:#a00;font-weight:600}.muted{color:#777}.small{font-size:12px}
details{margin:.5em 0;border:1px solid #ddd;border-radius:4px;padding:.3em .6em}
details details{border-color:#eee}summary{cursor:pointer;font-weight:600}
.bar{display:inline-block;height:11px;background:#5b8cc9;vertical-align:middle;border-radius:2px}
.bar.red{background:#d0605e}.bar.grey{background:#bbb}
.panels{display:flex;flex-wrap:wrap;gap:6px 18px}.panel{font-size:12px;width:500px}
.panel svg{display:block}.legend span{margin-right:9px;white-space:nowrap}
.sheet img{border:1px solid #999;display:block}.sheet figure{display:inline-block;margin:2px 4px 2px 0}
.sheet figcaption{font-size:11px;color:#777;text-align:center}.facts td{border:none;padding:1px 12px 1px 0}
.facts th{border:none;background:none;padding:1px 12px 1px 0;color:#555;font-weight:500}
.low{background:#fde7e6}td.key{white-space:nowrap}
"""


def write_report(
    dataset: Path, out: Path, *, episodes: Sequence[str] | None = None, worst: int = DEFAULT_WORST
) -> Path:
    """Write the report of ``dataset`` to ``out`` (an .html file).

    Args:
        dataset: A Refinery dataset.
        out: The HTML file to write.
        episodes: Dataset keys or raw episode ids to show in detail (a raw id
            selects all its parts, or its rejection). Default: the ``worst``
            lowest-scoring accepted episodes and the first ``worst`` rejected
            raw episodes.
        worst: Rows of each summary table (worst-scoring, most cut, rejected)
            and episodes detailed by default.

    Returns:
        ``out``.

    Raises:
        StoreError: ``dataset`` is not a Refinery dataset (of this format version).
        DatasetError: an episode in ``episodes`` is not in the dataset.
    """
    dataset, out = Path(dataset), Path(out)
    source = Dataset(dataset)
    rows = light_rows(source, _COLUMNS)
    view = dataset_overview(source, rows)
    raws = per_raw_episode(rows)
    raw_of = {r: (s, k) for r, s, k in zip(raws["raw_episode_id"].to_pylist(), raws["raw_s"].to_pylist(),
                                            raws["kept_s"].to_pylist())}
    included = rows.filter(pc.and_(pc.and_(rows["accepted"], pc.not_equal(rows["key"], "")),
                                   pc.invert(rows["excluded"])))
    lowest = included.take(pc.sort_indices(included, [("overall", "ascending"), ("entry_id", "ascending")])[:worst])
    rejected = rows.filter(pc.invert(rows["accepted"]))
    detailed = _chosen(dataset, rows, episodes) if episodes is not None else pa.concat_tables([lowest, rejected[:worst]])
    listed_ids = set(lowest["entry_id"].to_pylist()) | set(rejected[:worst]["entry_id"].to_pylist())
    listed_ids |= set(detailed["entry_id"].to_pylist())
    details = _details(source, sorted(listed_ids))
    detailed_ids = set(detailed["entry_id"].to_pylist())

    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>Refinery report: {_e(dataset.name)}</title>"
             f"<style>{_CSS}</style></head><body>"),
             f"<h1>Quality report: {_e(dataset.name)}</h1>",
             f"<p class='muted small'>{_e(dataset.resolve())} · written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
             _lead(view), _card(source.card(), view)]
    parts.append(_cleaning_section(view))
    parts.append(_grades_section(view))
    parts.append(_indicator_section(view))
    parts.append(_worst_table(lowest, included.num_rows, raw_of, details, detailed_ids, worst))
    parts.append(_most_cut_table(raws, rows, worst, detailed_ids, details))
    parts.append(_rejected_table(rejected, view, raw_of, details, detailed_ids, worst))
    parts.append(_detail_sections(source, detailed, details, raw_of, episodes is None, worst))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _chosen(dataset: Path, rows: pa.Table, names: Sequence[str]) -> pa.Table:
    wanted = pa.array(list(dict.fromkeys(names)), pa.string())
    match = pc.or_(pc.is_in(rows["key"], value_set=wanted), pc.is_in(rows["raw_episode_id"], value_set=wanted))
    chosen = rows.filter(match)
    found = set(chosen["key"].to_pylist()) | set(chosen["raw_episode_id"].to_pylist())
    missing = [n for n in wanted.to_pylist() if n not in found]
    if missing:
        some = ", ".join(rows["key"].filter(pc.not_equal(rows["key"], ""))[:3].to_pylist())
        raise DatasetError(str(dataset), f"no episode {', '.join(map(repr, missing))} in the dataset; "
                           f"name a dataset key or a raw episode id (keys look like {some or 'none yet'})")
    return chosen


def _details(source: Dataset, ids: list[int]) -> dict[int, EpisodeEntry]:
    """entry_id -> the entry with its quality report, decisions and attributes, for ``ids`` only."""
    if not ids:
        return {}
    found = source.index.entries(_DETAIL_COLUMNS, pc.field("entry_id").isin(ids))
    return {e.entry_id: e for e in found}


def _e(value: object) -> str:
    return html.escape(str(value))


def _anchor(name: str) -> str:
    return "ep-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _name_link(name: str, detailed: bool) -> str:
    return f"<a href='#{_anchor(name)}'>{_e(name)}</a>" if detailed else _e(name)


def _grade(grade: str) -> str:
    return f"<span class='grade {_e(grade)}'>{_e(grade)}</span>"


def _list_text(items: list[str], limit: int = 12) -> str:
    if not items:
        return "–"
    shown = ", ".join(_e(i) for i in items[:limit])
    return shown + (f" <span class='muted'>and {len(items) - limit} more</span>" if len(items) > limit else "")


def _lead(view: Overview) -> str:
    if not view.raw_episodes:
        return "<p class='lead'>No episodes yet: no job has committed to this dataset.</p>"
    rejected = (f"; <b>{view.rejected}</b> rejected ({seconds_text(view.rejected_raw_seconds)} recorded)"
                if view.rejected else "; none rejected")
    split = f", {view.split} of them split" if view.split else ""
    return (f"<p class='lead'><b>{view.raw_episodes:,}</b> raw episodes, {seconds_text(view.raw_seconds)} recorded: "
            f"cleaning <b>{_e(view.kept)}</b> as {view.dataset_episodes:,} dataset episodes{split}{rejected}.</p>")


def _card(card: dict[str, Any], view: Overview) -> str:
    if not card.get("updated"):
        return ""
    grades = " · ".join(f"{_grade(g)} {n}" for g, n in card.get("grades", {}).items()) or "–"
    splits = ", ".join(f"{s} {n}" for s, n in card.get("splits", {}).items()) or "–"
    reasons = ", ".join(f"{_e(r)} ({n})" for r, n in card.get("rejection_reasons", {}).items())
    excluded = (f"{card.get('episodes_excluded', 0)} ({seconds_text(view.excluded_seconds)})"
                if card.get("episodes_excluded") else "none")
    rows = [
        ("Raw episodes", f"{card.get('raw_episodes', 0):,}"),
        ("Accepted", (f"{card.get('episodes_accepted', 0):,} dataset episodes, "
                     f"{seconds_text(card.get('hours_accepted', 0) * 3600)} for training")),
        ("Rejected", f"{card.get('episodes_rejected', 0):,} raw episodes" + (f"; by reason: {reasons}" if reasons else "")),
        ("Excluded by curation", excluded),
        ("Grades", grades),
        ("Splits", splits),
        ("Robots", _list_text(card.get("robots", []))),
        ("Models", _list_text(card.get("models", []))),
        ("Tasks", _list_text(card.get("tasks", []), 8)),
    ]
    job = card.get("last_job") or {}
    if job:
        raw = job.get("raw_dirs") or [job.get("raw_dir", "?")]
        rows.append(("Last job", f"started {_e(job.get('started', '?'))} from {_e(', '.join(map(str, raw)))}"))
    rows.append(("Updated", _e(card.get("updated", "?"))))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Dataset card</h2><table class='facts'>{body}</table>"


def _cleaning_section(view: Overview) -> str:
    if not view.raw_episodes:
        return ""
    out = ["<h2>What cleaning kept</h2>",
           (f"<p>Recorded {seconds_text(view.raw_seconds)} in {view.raw_episodes:,} raw episodes; "
           f"<b>{_e(view.kept)}</b>."),
           f" {view.unknown_raw:,} raw episodes have no recorded raw duration (unreadable files or rows "
           "written before it was recorded) and count with 0 s." if view.unknown_raw else "", "</p>"]
    labels = ["nothing (rejected)", *[f"{10 * (k - 1)}–{10 * k}%" for k in range(1, 11)]]
    most = int(view.kept_shares.max(initial=0))
    rows = "".join(
        f"<tr><td>{labels[k]}</td><td class='n'>{int(n):,}</td><td>{bar(int(n), most, colour='red' if k == 0 else '')}</td></tr>"
        for k, n in enumerate(view.kept_shares) if n or k in (0, 10)
    )
    out.append("<h4>Share of each raw episode kept</h4><table><tr><th>kept</th><th class='n'>raw episodes</th>"
               f"<th></th></tr>{rows}</table>")
    out.append("<h4>Cleaning decisions per kind</h4>" + _kinds_table(view.kinds, per_dataset=True))
    return "".join(out)


def _kinds_table(kinds: dict[str, KindTotals], per_dataset: bool = False) -> str:
    if not kinds:
        return "<p class='muted'>no cleaning decisions</p>"
    head = ("<tr><th>kind</th><th>what it is</th><th class='n'>decisions</th>"
            + ("<th class='n'>raw episodes</th>" if per_dataset else "")
            + "<th class='n'>time or samples affected</th><th>actions</th></tr>")
    body = "".join(
        f"<tr><td>{_e(k.kind)}</td><td class='muted'>{_e(KIND_MEANING.get(k.kind, ''))}</td>"
        f"<td class='n'>{k.decisions:,}</td>" + (f"<td class='n'>{k.episodes:,}</td>" if per_dataset else "")
        + f"<td class='n'>{_e(k.affected)}</td><td>{_e(k.action_text)}</td></tr>"
        for k in kinds.values()
    )
    return f"<table>{head}{body}</table>"


def _kinds_short(kinds: dict[str, KindTotals], limit: int = 4) -> str:
    if not kinds:
        return "<span class='muted'>none</span>"
    items = [f"{_e(k.kind)} ×{k.decisions} ({_e(k.affected)})" for k in list(kinds.values())[:limit]]
    more = f", {len(kinds) - limit} more kinds" if len(kinds) > limit else ""
    return ", ".join(items) + more


def _grades_section(view: Overview) -> str:
    if not view.raw_episodes:
        return ""
    most = max([*view.grades.values(), view.rejected, 1])
    rows = "".join(f"<tr><td>{_grade(g)}</td><td class='n'>{view.grades.get(g, 0):,}</td>"
                   f"<td>{bar(view.grades.get(g, 0), most)}</td></tr>" for g in GRADES)
    rows += (f"<tr><td class='rej'>rejected</td><td class='n'>{view.rejected:,}</td>"
             f"<td>{bar(view.rejected, most, colour='red')}</td></tr>")
    out = ["<h2>Grades and rejections</h2><div style='display:flex;gap:40px;flex-wrap:wrap'><div>",
           "<h4>Grades of accepted dataset episodes</h4>",
           f"<table><tr><th>grade</th><th class='n'>episodes</th><th></th></tr>{rows}</table>",
           "<p class='muted small'>Rejected raw episodes get no grade: they are not in the dataset.</p></div>"]
    if view.reasons:
        reasons = list(view.reasons.most_common())
        top = reasons[:DEFAULT_WORST]
        most_r = top[0][1]
        body = "".join(f"<tr><td>{_e(r)}</td><td class='n'>{n:,}</td><td>{bar(n, most_r, 120, 'red')}</td>"
                       f"<td class='muted small'>{_e(_shorten(view.reason_examples.get(r, ''), 140))}</td></tr>"
                       for r, n in top)
        more = (f"<p class='muted small'>and {len(reasons) - len(top)} more reasons "
                f"({sum(n for _, n in reasons[len(top):]):,} rejections)</p>") if len(reasons) > len(top) else ""
        out.append("<div><h4>Rejections by reason</h4><table><tr><th>reason</th><th class='n'>raw episodes</th>"
                   f"<th></th><th>for example</th></tr>{body}</table>{more}</div>")
    out.append("</div>")
    return "".join(out)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _indicator_section(view: Overview) -> str:
    if not view.indicators:
        return ""
    spreads = sorted(view.indicators.values(), key=lambda s: (s.mean_score, s.name))
    rows = []
    for s in spreads:
        p10, p50, p90 = s.percentiles()
        low = f"{s.low:,} ({percent_text(s.low / s.measured)})" if s.low else "0"
        rows.append(
            f"<tr{' class=low' if s.low else ''}><td title='{_e(s.description)}'>{_e(s.name)}</td>"
            f"<td class='n'>{s.measured:,}</td><td class='n'>{_e(value_text(p10, s.unit))}</td>"
            f"<td class='n'>{_e(value_text(p50, s.unit))}</td><td class='n'>{_e(value_text(p90, s.unit))}</td>"
            f"<td class='n'>{s.mean_score:.2f}</td><td>{score_sparkline(s.score_bins)}</td><td class='n'>{low}</td>"
            f"<td class='n'>{s.weight:g}</td></tr>")
    return ("<h2>Quality indicators over all accepted episodes</h2>"
            "<p class='muted small'>Worst mean score first. Values: 10th, 50th and 90th percentile over the "
            "episodes where the indicator was measured; score 1 is no problem, 0 as bad as it gets. "
            "Hover a name for what it measures.</p>"
            "<table><tr><th>indicator</th><th class='n'>episodes</th><th class='n'>p10</th><th class='n'>median</th>"
            "<th class='n'>p90</th><th class='n'>mean score</th><th>scores 0 → 1</th><th class='n'>scoring &lt; 0.5</th>"
            f"<th class='n'>weight</th></tr>{''.join(rows)}</table>")


def _decisions_kinds(detail: EpisodeEntry | None, rate_hz: float) -> dict[str, KindTotals]:
    if detail is None:
        return {}
    return kind_totals(decision_table(detail.decision_list, rate_hz))


def _worst_table(lowest: pa.Table, total: int, raw_of: dict[str, tuple[float, float]],
                 details: dict[int, EpisodeEntry], detailed: set[int], worst: int) -> str:
    out = ["<h2>Lowest-scoring episodes</h2>"]
    if not lowest.num_rows:
        return out[0] + "<p class='muted'>no accepted episodes</p>"
    rows = []
    for r in lowest.to_pylist():
        raw_s, kept_s = raw_of.get(r["raw_episode_id"], (0.0, 0.0))
        own = r["length"] / r["rate_hz"] if r["rate_hz"] else 0.0
        rows.append(
            f"<tr><td class='key'>{_name_link(r['key'], r['entry_id'] in detailed)}</td><td>{_e(r['robot_id'])}</td>"
            f"<td>{_e(_shorten(r['task'], 40))}</td><td>{_grade(r['grade'])}</td><td class='n'>{r['overall']:.2f}</td>"
            f"<td class='n'>{own:.1f} s</td><td>{_e(kept_text(kept_s, raw_s))}</td>"
            f"<td class='small'>{_kinds_short(_decisions_kinds(details.get(r['entry_id']), r['rate_hz']))}</td></tr>")
    more = (f"<p class='muted small'>The {lowest.num_rows} lowest-scoring of {total:,} accepted episodes"
            f"{'' if total <= worst else '; the others are in the distributions above'}.</p>")
    return (out[0] + "<table><tr><th>episode</th><th>robot</th><th>task</th><th>grade</th><th class='n'>score</th>"
            "<th class='n'>length</th><th>of its raw episode</th><th>cleaning decisions (raw episode)</th></tr>"
            f"{''.join(rows)}</table>{more}")


def _most_cut_table(raws: pa.Table, rows: pa.Table, worst: int, detailed: set[int],
                    details: dict[int, EpisodeEntry]) -> str:
    cut = raws.filter(pc.and_(raws["accepted"], pc.greater(raws["raw_s"], 0)))
    if not cut.num_rows or not worst:
        return ""
    share = pc.divide(cut["kept_s"], cut["raw_s"])
    cut = cut.append_column("share", share)
    cut = cut.filter(pc.less(cut["share"], 0.95))
    if not cut.num_rows:
        return "<h2>Most cut episodes</h2><p class='muted'>cleaning kept at least 95% of every accepted raw episode</p>"
    total = cut.num_rows
    cut = cut.take(pc.sort_indices(cut, [("share", "ascending"), ("raw_episode_id", "ascending")])[:worst])
    ids = cut["raw_episode_id"]
    parts = rows.filter(pc.is_in(rows["raw_episode_id"], value_set=ids))
    keys: dict[str, list[tuple[str, int]]] = {}
    for key, raw_id, entry_id, length, rate in zip(parts["key"].to_pylist(), parts["raw_episode_id"].to_pylist(),
                                                   parts["entry_id"].to_pylist(), parts["length"].to_pylist(),
                                                   parts["rate_hz"].to_pylist()):
        if key:
            keys.setdefault(raw_id, []).append((key, entry_id))
    body = []
    for r in cut.to_pylist():
        names = keys.get(r["raw_episode_id"], [])
        links = ", ".join(_name_link(k, i in detailed) for k, i in names[:4])
        body.append(f"<tr><td>{_e(r['raw_episode_id'])}</td><td>{_e(kept_text(r['kept_s'], r['raw_s']))}</td>"
                    f"<td class='n'>{r['parts']}</td><td class='small'>{links}</td></tr>")
    note = (f"<p class='muted small'>{total:,} accepted raw episodes lost more than 5% to cleaning; "
            f"{'all shown' if total <= worst else f'the {worst} most cut shown'}.</p>")
    return ("<h2>Most cut episodes</h2><table><tr><th>raw episode</th><th>kept</th><th class='n'>parts</th>"
            f"<th>dataset episodes</th></tr>{''.join(body)}</table>{note}")


def _rejected_table(rejected: pa.Table, view: Overview, raw_of: dict[str, tuple[float, float]],
                    details: dict[int, EpisodeEntry], detailed: set[int], worst: int) -> str:
    if not rejected.num_rows:
        return ""
    body = []
    for r in rejected[:worst].to_pylist():
        raw_s, _ = raw_of.get(r["raw_episode_id"], (0.0, 0.0))
        recorded = f"{raw_s:.1f} s" if raw_s > 0 else "unknown"
        body.append(
            f"<tr><td>{_name_link(r['raw_episode_id'], r['entry_id'] in detailed)}</td><td>{_e(r['robot_id'] or '–')}</td>"
            f"<td class='rej'>{_e('; '.join(r['reasons'] or ['(no reason recorded)']))}</td>"
            f"<td class='n'>{recorded}</td><td class='n'>0.0 s</td>"
            f"<td class='small'>{_kinds_short(_decisions_kinds(details.get(r['entry_id']), r['rate_hz'] or 0.0))}</td></tr>")
    more = (f"<p class='muted small'>The first {worst} of {rejected.num_rows:,} rejected raw episodes; "
            "all are counted by reason above.</p>") if rejected.num_rows > worst else ""
    return ("<h2>Rejected raw episodes</h2><table><tr><th>raw episode</th><th>robot</th><th>rejected because</th>"
            "<th class='n'>recorded</th><th class='n'>kept</th><th>cleaning decisions</th></tr>"
            f"{''.join(body)}</table>{more}")


def _detail_sections(source: Dataset, chosen: pa.Table, details: dict[int, EpisodeEntry],
                     raw_of: dict[str, tuple[float, float]], default: bool, worst: int) -> str:
    if not chosen.num_rows:
        return ""
    what = (f"the {worst} lowest-scoring accepted episodes and the first {worst} rejected raw episodes"
            if default else "the episodes asked for")
    out = ["<h2>Episodes in detail</h2>",
           (f"<p class='muted small'>Detail for {what} (<code>refinery report --episodes KEY</code> picks others, "
           "<code>--worst N</code> changes how many).</p>")]
    entries = {e.entry_id: e for e in source.index.entries(_COLUMNS, pc.field("entry_id").isin(
        chosen["entry_id"].to_pylist()))}
    for n, entry_id in enumerate(chosen["entry_id"].to_pylist()):
        entry, detail = entries[entry_id], details[entry_id]
        raw_s, kept_s = raw_of.get(entry.raw_episode_id, (0.0, 0.0))
        if entry.accepted and entry.key:
            out.append(_episode_section(source, entry, detail, raw_s, kept_s, open_=n == 0))
        else:
            out.append(_rejected_section(entry, detail, raw_s))
    return "".join(out)


def _facts(rows: list[tuple[str, str]]) -> str:
    return "<table class='facts'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _decisions_block(detail: EpisodeEntry, rate_hz: float) -> str:
    decisions = detail.decision_list
    kinds = kind_totals(decision_table(decisions, rate_hz))
    out = [_kinds_table(kinds)]
    if decisions:
        rows = "".join(
            f"<tr><td>{_e(d.get('kind'))}</td><td>{_e(d.get('stream'))}</td><td class='n'>{_range(d, rate_hz)}</td>"
            f"<td>{_e(d.get('action'))}</td><td class='small'>{_e(d.get('reason'))}</td></tr>"
            for d in decisions[:DECISIONS_LISTED])
        more = (f"<p class='muted small'>and {len(decisions) - DECISIONS_LISTED:,} more (every decision: the index's "
                "<code>decisions_json</code> column)</p>") if len(decisions) > DECISIONS_LISTED else ""
        out.append(f"<details><summary>All {len(decisions):,} decisions</summary><table><tr><th>kind</th>"
                   f"<th>stream</th><th class='n'>where</th><th>action</th><th>reason</th></tr>{rows}</table>{more}"
                   "</details>")
    return "".join(out)


def _range(d: dict[str, Any], rate_hz: float) -> str:
    start, end = int(d.get("start") or 0), int(d.get("end") or 0)
    if d.get("kind") in RAW_KINDS:
        return f"raw samples {start:,}–{end:,}" if end - start > 1 else f"raw sample {start:,}"
    if rate_hz <= 0:
        return f"steps {start}–{end}"
    return f"{start / rate_hz:.2f}–{end / rate_hz:.2f} s"


def _indicator_table(quality: dict[str, Any]) -> str:
    """Indicators that cost score first, with what they measure; the ones at 1.00 one click away.

    The descriptions of the indicators at 1.00 are left out: they are the same
    in every episode (the summary's indicator table shows them on hover).
    """
    def row(i: dict[str, Any], about: bool) -> str:
        measured = i.get("weight", 0) > 0
        value = value_text(float(i.get("value", 0.0)), str(i.get("unit", ""))) if measured else "not measured"
        score = f"{i['score']:.2f}" if measured else "–"
        text = f"<td class='muted small'>{_e(i.get('description', ''))}</td>" if about else ""
        return (f"<tr{' class=low' if measured and i['score'] < 0.5 else ''}><td>{_e(i['name'])}</td>"
                f"<td class='n'>{_e(value)}</td><td class='n'>{score}</td><td class='n'>{i.get('weight', 0):g}</td>"
                f"{text}</tr>")

    head = "<table><tr><th>indicator</th><th class='n'>value</th><th class='n'>score</th><th class='n'>weight</th>"
    indicators = quality.get("indicators", [])
    costly = sorted((i for i in indicators if i.get("weight", 0) > 0 and i.get("score", 1.0) < 0.995),
                    key=lambda i: i["score"])
    fine = [i for i in indicators if i not in costly]
    notes = "".join(f"<li>{_e(n)}</li>" for n in quality.get("notes", []))
    out = [f"{head}<th>what it measures</th></tr>{''.join(row(i, True) for i in costly)}</table>" if costly
           else "<p>Every measured indicator scores 1.00.</p>"]
    if notes:
        out.append(f"<ul class='small'>{notes}</ul>")
    if fine:
        out.append(f"<details><summary>{len(fine)} more indicators at score 1.00 or not measured</summary>"
                   f"{head}</tr>{''.join(row(i, False) for i in fine)}</table></details>")
    return "".join(out)


def _episode_section(source: Dataset, entry: EpisodeEntry, detail: EpisodeEntry, raw_s: float, kept_s: float,
                     open_: bool = False) -> str:
    own = entry.length / entry.rate_hz if entry.rate_hz else 0.0
    attrs = detail.attrs
    body = [(f"<details id='{_anchor(entry.key)}'{' open' if open_ else ''}><summary>{_grade(entry.grade)} "
            f"{_e(entry.key)} <span class='muted'>· score {entry.overall:.2f} · {own:.1f} s · "
            f"{_e(kept_text(kept_s, raw_s))} of raw episode {_e(entry.raw_episode_id)}</span></summary>")]
    body.append(_facts([
        ("Robot", f"{_e(entry.robot_id)} ({_e(entry.model)})"), ("Task", _e(entry.task or "–")),
        ("Raw episode", f"{_e(entry.raw_episode_id)}, part {entry.segment + 1}; file {_e(attrs.get('raw_file', '?'))}"),
        ("Length", f"{entry.length:,} steps at {entry.rate_hz:g} Hz = {own:.1f} s"),
        ("Job", _e(detail.job_id or "–")),
    ]))
    if "state/position" in detail.stats:
        position = source.numeric(entry, "state/position")
        body.append("<h4>Joint positions</h4>" + joint_panels(position, entry.rate_hz, attrs.get("joint_names", []),
                                                                 attrs.get("standard_names", [])))
    if entry.cameras:
        body.append("<h4>Contact sheet</h4>")
        for camera in sorted(entry.cameras):
            body.append(f"<div class='sheet'><b>{_e(camera)}</b><br>{contact_sheet(source, entry, camera)}</div>")
    body.append("<h4>Cleaning decisions (the whole raw episode)</h4>" + _decisions_block(detail, entry.rate_hz))
    body.append("<h4>Quality indicators</h4>" + _indicator_table(detail.quality))
    body.append("</details>")
    return "".join(body)


def _rejected_section(entry: EpisodeEntry, detail: EpisodeEntry, raw_s: float) -> str:
    recorded = f"{raw_s:.1f} s" if raw_s > 0 else "unknown"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in entry.reasons) or "<li>(no reason recorded)</li>"
    attrs = detail.attrs
    body = [(f"<details id='{_anchor(entry.raw_episode_id)}'><summary><span class='rej'>REJECTED</span> "
            f"{_e(entry.raw_episode_id)} <span class='muted'>· {_e(kept_text(0.0, raw_s))} · "
            f"{_e(_shorten('; '.join(entry.reasons), 90))}</span></summary>"),
            f"<p class='rej'>Rejected; nothing of it is in the dataset.</p><ul>{reasons}</ul>",
            _facts([("Robot", f"{_e(entry.robot_id or '–')} ({_e(entry.model or '–')})"),
                    ("Recorded", recorded), ("Kept", "0.0 s"), ("Raw file", _e(attrs.get("raw_file", "?")))]),
            "<h4>Cleaning decisions</h4>" + _decisions_block(detail, entry.rate_hz)]
    if detail.quality.get("indicators"):
        body.append("<details><summary>Quality indicators measured before the rejection (for diagnosis; "
                    "not a grade)</summary>" + _indicator_table(detail.quality) + "</details>")
    body.append("</details>")
    return "".join(body)

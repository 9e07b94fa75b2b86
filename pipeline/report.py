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

The light index columns of every row are read at once (Arrow, as `refinery
inspect` does); the heavy ones (``quality_json``, ``decisions_json``) are read
file by file in batches and parsed by Arrow's JSON reader, so memory stays
flat whatever the size of the index. No external files, scripts or fonts:
the report opens anywhere, offline.

:func:`dataset_overview` is the summary as data; `refinery inspect` prints it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipeline.dataset.index import (
    GRADES,
    KEY_COUNT_COLUMNS,
    SCHEMA,
    EpisodeEntry,
    _list_files,
)
from pipeline.dataset.store import Dataset
from pipeline.errors import DatasetError, StoreError

DEFAULT_WORST = 20
"""Episodes detailed by default (the lowest-scoring accepted ones) and rows per summary table."""
DECISIONS_LISTED = 500
"""Decisions listed one by one per detailed episode (the per-kind summary counts them all)."""
RAW_KINDS = frozenset({"nonfinite", "duplicate_timestamp", "backwards_timestamp", "empty_frame"})
"""Decision kinds of the raw stage: their ranges are samples of one raw stream, not steps of the timeline."""
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
}
_BATCH_ROWS = 1024
_SAMPLE_VALUES = 4096  # per indicator: a uniform sample of values for the percentiles
_SCORE_BINS = 10
_THUMB_W = 128
_THUMBS_PER_CAMERA = 5
_PLOT_W, _PLOT_H = 500, 150
_PLOT_POINTS = 120  # per joint line: a smooth line at this width, a few KB per panel
_MARGIN = (44, 10, 8, 26)  # left, right, top, bottom (px)
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
# Index columns of every row: the summary, the tables, and where a detailed episode's data is.
_COLUMNS = (
    "key", "raw_episode_id", "robot_id", "model", "task", "length", "rate_hz", "grade", "overall", "accepted",
    "reasons", "segment", "raw_duration_s", "cameras", "data_segment", "offset",
)
# What :func:`dataset_overview` needs of every row.
_OVERVIEW_COLUMNS = ("key", "raw_episode_id", "length", "rate_hz", "grade", "accepted", "reasons", "raw_duration_s")
# Read for the episodes shown in tables or in detail only.
_DETAIL_COLUMNS = ("quality_json", "decisions_json", "attrs_json", "job_id", "producer", *KEY_COUNT_COLUMNS)
_DECISION_SCHEMA = pa.schema([pa.field("d", pa.list_(pa.struct([
    ("kind", pa.string()), ("stream", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
    ("action", pa.string()),
])))])
_QUALITY_SCHEMA = pa.schema([pa.field("indicators", pa.list_(pa.struct([
    ("name", pa.string()), ("value", pa.float64()), ("unit", pa.string()), ("score", pa.float64()),
    ("weight", pa.float64()), ("description", pa.string()),
])))])

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


# -- human units ----------------------------------------------------------------


def seconds_text(seconds: float) -> str:
    """A duration as a person reads it: ``0.4 s``, ``12.3 s``, ``4.2 min``, ``3.1 h``."""
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def percent_text(share: float) -> str:
    """A share in [0, 1] as a percentage with sensible rounding (no ``1e-11``)."""
    pct = share * 100
    if pct == 0:
        return "0%"
    if abs(pct) < 0.01:
        return "<0.01%"
    if abs(pct) < 1:
        return f"{pct:.2f}%"
    if abs(pct) < 10:
        return f"{pct:.1f}%"
    return f"{pct:.0f}%"


def kept_text(kept_s: float, raw_s: float) -> str:
    """``kept 1.0 of 5.0 s (20%)``: what cleaning kept of a recording."""
    if raw_s <= 0:
        return f"kept {kept_s:.1f} s (raw duration not recorded)"
    share = min(1.0, kept_s / raw_s)  # the aligned grid may overrun the last sample by a step
    if raw_s >= 120:
        return f"kept {seconds_text(kept_s)} of {seconds_text(raw_s)} ({percent_text(share)})"
    return f"kept {kept_s:.1f} of {raw_s:.1f} s ({percent_text(share)})"


def number_text(value: float) -> str:
    """A plain number rounded for reading, never in exponent notation."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    if size >= 0.01:
        return f"{value:.3g}"
    return "<0.01" if value > 0 else ">-0.01"


def value_text(value: float, unit: str) -> str:
    """An indicator value in human units: fractions as %, ms rounded, counts whole."""
    if unit in ("fraction", "fraction of range"):
        text = percent_text(value)
        return text + (" of range" if unit == "fraction of range" else "")
    if unit == "ms":
        return f"{value:.0f} ms" if abs(value) >= 10 else f"{value:.1f} ms" if abs(value) >= 0.05 else "<0.1 ms"
    if unit == "s":
        return f"{value:.1f} s"
    if unit in ("count", "steps"):
        return f"{value:,.0f}" + (" steps" if unit == "steps" else "")
    if unit == "rad":
        return f"{value:.3f} rad"
    return f"{number_text(value)} {unit}".strip()


# -- the overview (also used by `refinery inspect`) ---------------------------


@dataclass
class KindTotals:
    """What one kind of cleaning decision did, over one episode or a whole dataset."""

    kind: str
    decisions: int = 0
    episodes: int = 0  # raw episodes with at least one
    seconds: float = 0.0  # timeline time touched (overlaps counted once); timeline kinds
    samples: int = 0  # raw samples or frames dropped; kinds in RAW_KINDS
    actions: Counter[str] = field(default_factory=Counter)

    def add(self, other: KindTotals) -> None:
        self.decisions += other.decisions
        self.episodes += other.episodes
        self.seconds += other.seconds
        self.samples += other.samples
        self.actions.update(other.actions)

    @property
    def affected(self) -> str:
        """``2.4 s`` of the timeline, or ``14 raw samples`` for a raw-stage kind."""
        if self.kind in RAW_KINDS:
            return f"{self.samples:,} raw sample{'' if self.samples == 1 else 's'}"
        return seconds_text(self.seconds)

    @property
    def action_text(self) -> str:
        return ", ".join(f"{a} {n}" for a, n in self.actions.most_common())


def kind_totals(decisions: pa.Table) -> dict[str, KindTotals]:
    """Decisions summed per kind.

    Args:
        decisions: one row per decision with columns ``episode`` (any id of its
            raw episode), ``rate_hz`` (of its aligned timeline), ``kind``,
            ``stream``, ``start``, ``end`` and ``action``.

    Returns:
        kind -> totals, most decisions first. Time touched is the union of the
        ranges per episode and kind (a spike on three joints at one step is
        one step), per raw stream for the raw-stage kinds.
    """
    if decisions.num_rows == 0:
        return {}
    kinds = decisions["kind"].to_numpy(zero_copy_only=False).astype(str)
    streams = decisions["stream"].to_numpy(zero_copy_only=False).astype(str)
    raw = np.isin(kinds, list(RAW_KINDS))
    episode = np.asarray(decisions["episode"].to_numpy(zero_copy_only=False))
    start = decisions["start"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    end = np.maximum(decisions["end"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), start)
    rate = decisions["rate_hz"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    # One group per (episode, kind[, stream]): sort by it and by start, then a sweep
    # adds each range's part beyond the running end of its group.
    group_keys = np.char.add(np.char.add(kinds, "\x00"), np.where(raw, streams, ""))
    _, group_kind = np.unique(group_keys, return_inverse=True)
    _, group_ep = np.unique(episode, return_inverse=True)
    group = group_ep.astype(np.int64) * (int(group_kind.max()) + 1) + group_kind
    order = np.lexsort((start, group))
    g, s, e = group[order], start[order], end[order]
    span = int(e.max()) + 1
    s2, e2 = s + g * span, e + g * span  # groups never overlap on this line
    reach = np.maximum.accumulate(e2)
    before = np.concatenate(([np.iinfo(np.int64).min], reach[:-1]))
    added = np.maximum(0, e2 - np.maximum(s2, before))
    added_seconds = np.where(rate[order] > 0, added / np.where(rate[order] > 0, rate[order], 1), 0.0)
    kinds_sorted = kinds[order]
    out: dict[str, KindTotals] = {}
    actions = decisions["action"].to_numpy(zero_copy_only=False).astype(str)
    for kind in np.unique(kinds):
        mask = kinds_sorted == kind
        totals = KindTotals(str(kind))
        totals.decisions = int(mask.sum())
        totals.episodes = int(np.unique(group_ep[kinds == kind]).size)
        if kind in RAW_KINDS:
            totals.samples = int(added[mask].sum())
        else:
            totals.seconds = float(added_seconds[mask].sum())
        totals.actions = Counter(actions[kinds == kind].tolist())
        out[str(kind)] = totals
    return dict(sorted(out.items(), key=lambda kv: (-kv[1].decisions, kv[0])))


def decision_table(decisions: list[dict[str, Any]], rate_hz: float, episode: int = 0) -> pa.Table:
    """One episode's decision list as the table :func:`kind_totals` takes."""
    return pa.table({
        "episode": pa.array([episode] * len(decisions), pa.int64()),
        "rate_hz": pa.array([rate_hz] * len(decisions), pa.float64()),
        "kind": pa.array([str(d.get("kind", "?")) for d in decisions], pa.string()),
        "stream": pa.array([str(d.get("stream", "")) for d in decisions], pa.string()),
        "start": pa.array([int(d.get("start") or 0) for d in decisions], pa.int64()),
        "end": pa.array([int(d.get("end") or 0) for d in decisions], pa.int64()),
        "action": pa.array([str(d.get("action", "")) for d in decisions], pa.string()),
    })


@dataclass
class IndicatorSpread:
    """One quality indicator over all accepted episodes: scores binned, values sampled."""

    name: str
    unit: str = ""
    description: str = ""
    weight: float = 0.0
    measured: int = 0
    score_sum: float = 0.0
    low: int = 0  # episodes scoring below 0.5
    score_bins: np.ndarray = field(default_factory=lambda: np.zeros(_SCORE_BINS, dtype=np.int64))
    _keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    _values: np.ndarray = field(default_factory=lambda: np.empty(0))

    def add(self, values: np.ndarray, scores: np.ndarray, keys: np.ndarray) -> None:
        self.measured += int(values.size)
        self.score_sum += float(scores.sum())
        self.low += int((scores < 0.5).sum())
        bins = np.clip((scores * _SCORE_BINS).astype(np.int64), 0, _SCORE_BINS - 1)
        self.score_bins += np.bincount(bins, minlength=_SCORE_BINS)
        # A uniform sample without replacement: keep the values with the smallest random keys.
        self._keys = np.concatenate([self._keys, keys])
        self._values = np.concatenate([self._values, values])
        if self._keys.size > _SAMPLE_VALUES:
            keep = np.argpartition(self._keys, _SAMPLE_VALUES)[:_SAMPLE_VALUES]
            self._keys, self._values = self._keys[keep], self._values[keep]

    def percentiles(self) -> tuple[float, float, float]:
        """10th, 50th and 90th percentile of the value (over a sample of at most 4,096 episodes)."""
        if not self._values.size:
            return (0.0, 0.0, 0.0)
        p10, p50, p90 = np.percentile(self._values, [10, 50, 90])
        return float(p10), float(p50), float(p90)

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.measured if self.measured else 1.0


@dataclass
class Overview:
    """A dataset summed up: durations, cleaning, rejections, grades, indicators."""

    raw_episodes: int = 0
    raw_seconds: float = 0.0
    kept_seconds: float = 0.0  # what cleaning kept (accepted dataset episodes, excluded ones too)
    dataset_episodes: int = 0
    rejected: int = 0  # raw episodes
    rejected_raw_seconds: float = 0.0
    excluded: int = 0
    excluded_seconds: float = 0.0
    unknown_raw: int = 0  # raw episodes without a recorded raw duration (older rows, unreadable files)
    split: int = 0  # raw episodes cut into several dataset episodes
    kinds: dict[str, KindTotals] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)  # rejection reason, up to its first ':'
    reason_examples: dict[str, str] = field(default_factory=dict)
    grades: Counter[str] = field(default_factory=Counter)  # accepted, not excluded
    kept_shares: np.ndarray = field(default_factory=lambda: np.zeros(11, dtype=np.int64))  # 0, <10%, .., <=100%
    indicators: dict[str, IndicatorSpread] = field(default_factory=dict)

    @property
    def share(self) -> float | None:
        known = self.raw_seconds
        return min(1.0, self.kept_seconds / known) if known > 0 else None

    @property
    def kept(self) -> str:
        return kept_text(self.kept_seconds, self.raw_seconds)


def per_raw_episode(rows: pa.Table) -> pa.Table:
    """One row per raw episode: ``raw_episode_id``, ``raw_s``, ``kept_s``, ``parts``, ``accepted``.

    ``rows`` needs ``raw_episode_id``, ``key``, ``length``, ``rate_hz``,
    ``raw_duration_s`` and ``accepted``.
    """
    rate = pc.if_else(pc.greater(rows["rate_hz"], 0), rows["rate_hz"], 1.0)
    has_data = pc.and_(pc.and_(pc.not_equal(rows["key"], ""), rows["accepted"]), pc.greater(rows["length"], 0))
    kept = pc.if_else(has_data, pc.divide(pc.cast(rows["length"], pa.float64()), rate), 0.0)
    table = pa.table({
        "raw_episode_id": rows["raw_episode_id"], "raw_s": rows["raw_duration_s"].fill_null(0.0),
        "kept_s": kept, "part": pc.cast(has_data, pa.int64()), "accepted": has_data,
    })
    out = table.group_by("raw_episode_id").aggregate(
        [("raw_s", "max"), ("kept_s", "sum"), ("part", "sum"), ("accepted", "any")])
    return out.rename_columns(["raw_episode_id", "raw_s", "kept_s", "parts", "accepted"]).select(
        ["raw_episode_id", "raw_s", "kept_s", "parts", "accepted"])


def light_rows(dataset: Dataset, columns: Sequence[str] = ()) -> pa.Table:
    """The light index columns the overview needs, and ``columns``, of every row (with ``excluded``)."""
    return dataset.index.table(list(dict.fromkeys([*_OVERVIEW_COLUMNS, *columns])))


def dataset_overview(dataset: Dataset, rows: pa.Table | None = None, *, indicators: bool = True) -> Overview:
    """The dataset summed up; the JSON columns are read in batches (memory stays flat).

    Args:
        dataset: an open dataset.
        rows: its :func:`light_rows`, when the caller has them already.
        indicators: also sum up every quality indicator (parses ``quality_json``
            of every accepted episode; the report does, `inspect` does not).
    """
    rows = light_rows(dataset) if rows is None else rows
    view = Overview()
    raws = per_raw_episode(rows)
    view.raw_episodes = raws.num_rows
    raw_s = raws["raw_s"].to_numpy()
    kept_s = raws["kept_s"].to_numpy()
    accepted = raws["accepted"].to_numpy(zero_copy_only=False)
    parts = raws["parts"].to_numpy()
    view.raw_seconds = float(raw_s.sum())
    view.kept_seconds = float(kept_s.sum())
    view.unknown_raw = int((raw_s <= 0).sum())
    view.rejected = int((~accepted).sum())
    view.rejected_raw_seconds = float(raw_s[~accepted].sum())
    view.split = int((parts > 1).sum())
    view.dataset_episodes = int(parts.sum())
    known = raw_s > 0
    shares = np.clip(kept_s[known] / raw_s[known], 0, 1)
    bins = np.where(shares <= 0, 0, np.clip(np.ceil(shares * 10 - 1e-9), 1, 10)).astype(np.int64)
    view.kept_shares = np.bincount(bins, minlength=11)

    excluded = rows.filter(rows["excluded"])
    view.excluded = excluded.num_rows
    if excluded.num_rows:
        ex_rate = pc.if_else(pc.greater(excluded["rate_hz"], 0), excluded["rate_hz"], 1.0)
        view.excluded_seconds = float(pc.sum(pc.divide(pc.cast(excluded["length"], pa.float64()), ex_rate)).as_py())
    included = rows.filter(pc.and_(pc.and_(rows["accepted"], pc.not_equal(rows["key"], "")),
                                   pc.invert(rows["excluded"])))
    view.grades = Counter(dict(zip(*[c.to_pylist() for c in pc.value_counts(included["grade"]).flatten()])))
    rejected = rows.filter(pc.invert(rows["accepted"]))
    for reasons in rejected["reasons"].to_pylist():
        for reason in reasons or ["(no reason recorded)"]:
            head = reason.split(":")[0]
            view.reasons[head] += 1
            view.reason_examples.setdefault(head, reason)

    excluded_ids = pa.array(excluded["entry_id"].to_pylist(), pa.int64())
    wanted = ["entry_id", "key", "segment", "accepted", "rate_hz", "decisions_json"]
    if indicators:
        wanted.append("quality_json")
    rng = np.random.default_rng(0)
    for batch in iter_index_batches(dataset, wanted):
        first = batch.filter(pc.equal(batch["segment"], 0))  # every row of a raw episode carries all its decisions
        for totals in kind_totals(_decisions_of(first)).values():
            view.kinds.setdefault(totals.kind, KindTotals(totals.kind)).add(totals)
        if indicators:
            good = pc.and_(pc.and_(batch["accepted"], pc.not_equal(batch["key"], "")),
                           pc.invert(pc.is_in(batch["entry_id"], value_set=excluded_ids)))
            _add_indicators(view.indicators, batch.filter(good)["quality_json"], rng)
    view.kinds = dict(sorted(view.kinds.items(), key=lambda kv: (-kv[1].decisions, kv[0])))
    return view


def iter_index_batches(dataset: Dataset, columns: Sequence[str]) -> Iterator[pa.Table]:
    """Index rows in batches of ``columns``, file by file, without holding the index in memory.

    Reads the index's visible files as :class:`DatasetIndex` lists them; a
    compaction that removes a file meanwhile restarts nothing already given,
    the merged file is read instead (its rows are then skipped by entry id).
    """
    seen_up_to = -1
    for _ in range(3):
        episodes, _curation = _list_files(dataset.index.dir)
        try:
            for f in episodes:
                reader = pq.ParquetFile(f.path)
                present = [c for c in columns if c in reader.schema_arrow.names]
                for batch in reader.iter_batches(batch_size=_BATCH_ROWS, columns=present):
                    table = pa.Table.from_batches([batch])
                    for name in columns:
                        if name not in present:
                            field_type = SCHEMA.field(name).type
                            table = table.append_column(pa.field(name, field_type), pa.nulls(len(table), field_type))
                    table = table.filter(pc.greater(table["entry_id"], seen_up_to))
                    if table.num_rows:
                        seen_up_to = max(seen_up_to, pc.max(table["entry_id"]).as_py())
                        yield table.select(list(columns))
            return
        except FileNotFoundError:
            continue
    raise StoreError(str(dataset.index.dir), "the index kept changing while being read; try again")


def _parse_json_lines(column: pa.ChunkedArray | pa.Array, schema: pa.Schema, wrap: str | None = None) -> pa.Table:
    """A string column of JSON documents parsed by Arrow (one per line); bad ones become nulls."""
    texts = [t if t else ("[]" if wrap else "{}") for t in column.to_pylist()]
    if wrap:
        texts = [f'{{"{wrap}":{t}}}' for t in texts]
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    if not texts:
        return schema.empty_table()
    try:
        return pa_json.read_json(io.BytesIO("\n".join(texts).encode()), parse_options=options)
    except pa.ArrowInvalid:
        good = []
        for text in texts:  # one malformed document: parse one by one, the bad one as empty
            try:
                json.loads(text)
                good.append(text)
            except ValueError:
                good.append(f'{{"{wrap}":[]}}' if wrap else "{}")
        return pa_json.read_json(io.BytesIO("\n".join(good).encode()), parse_options=options)


def _decisions_of(rows: pa.Table) -> pa.Table:
    """Flatten ``decisions_json`` of ``rows`` (with ``entry_id``, ``rate_hz``) into one row per decision."""
    if rows.num_rows == 0:
        return decision_table([], 0.0)
    parsed = _parse_json_lines(rows["decisions_json"], _DECISION_SCHEMA, wrap="d")["d"]
    lists = parsed.combine_chunks() if isinstance(parsed, pa.ChunkedArray) else parsed
    lists = lists.fill_null(pa.scalar([], lists.type)) if lists.null_count else lists
    parents = pc.list_parent_indices(lists).to_numpy()
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return decision_table([], 0.0)
    ids = rows["entry_id"].to_numpy()[parents]
    rates = rows["rate_hz"].fill_null(0.0).to_numpy()[parents]
    fields = {name: flat.field(name) for name in ("kind", "stream", "start", "end", "action")}
    return pa.table({"episode": pa.array(ids, pa.int64()), "rate_hz": pa.array(rates, pa.float64()),
                     "kind": fields["kind"].fill_null("?"), "stream": fields["stream"].fill_null(""),
                     "start": fields["start"], "end": fields["end"], "action": fields["action"].fill_null("")})


def _add_indicators(spreads: dict[str, IndicatorSpread], column: pa.ChunkedArray, rng: np.random.Generator) -> None:
    if len(column) == 0:
        return
    parsed = _parse_json_lines(column, _QUALITY_SCHEMA)["indicators"].combine_chunks()
    flat = pc.list_flatten(parsed)
    if len(flat) == 0:
        return
    weights = flat.field("weight").fill_null(0.0).to_numpy(zero_copy_only=False)
    measured = weights > 0  # weight 0: not measured (no cameras, no actions, ...)
    names = flat.field("name").fill_null("?").to_numpy(zero_copy_only=False).astype(str)[measured]
    values = flat.field("value").fill_null(0.0).to_numpy(zero_copy_only=False)[measured]
    scores = flat.field("score").fill_null(1.0).to_numpy(zero_copy_only=False)[measured]
    units = flat.field("unit").fill_null("").to_numpy(zero_copy_only=False)[measured]
    about = flat.field("description").fill_null("").to_numpy(zero_copy_only=False)[measured]
    kept_weights = weights[measured]
    for name in dict.fromkeys(names.tolist()):
        mask = names == name
        spread = spreads.get(name)
        if spread is None:
            first = int(np.argmax(mask))
            spread = spreads[name] = IndicatorSpread(name, str(units[first]), str(about[first]),
                                                     float(kept_weights[first]))
        spread.add(values[mask], scores[mask], rng.random(int(mask.sum())))


# -- the report ---------------------------------------------------------------------


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


def _bar(count: int, most: int, width: int = 220, colour: str = "") -> str:
    px = round(count / most * width) if most else 0
    return f"<span class='bar {colour}' style='width:{max(px, 1 if count else 0)}px'></span>"


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
        f"<tr><td>{labels[k]}</td><td class='n'>{int(n):,}</td><td>{_bar(int(n), most, colour='red' if k == 0 else '')}</td></tr>"
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
                   f"<td>{_bar(view.grades.get(g, 0), most)}</td></tr>" for g in GRADES)
    rows += (f"<tr><td class='rej'>rejected</td><td class='n'>{view.rejected:,}</td>"
             f"<td>{_bar(view.rejected, most, colour='red')}</td></tr>")
    out = ["<h2>Grades and rejections</h2><div style='display:flex;gap:40px;flex-wrap:wrap'><div>",
           "<h4>Grades of accepted dataset episodes</h4>",
           f"<table><tr><th>grade</th><th class='n'>episodes</th><th></th></tr>{rows}</table>",
           "<p class='muted small'>Rejected raw episodes get no grade: they are not in the dataset.</p></div>"]
    if view.reasons:
        reasons = list(view.reasons.most_common())
        top = reasons[:DEFAULT_WORST]
        most_r = top[0][1]
        body = "".join(f"<tr><td>{_e(r)}</td><td class='n'>{n:,}</td><td>{_bar(n, most_r, 120, 'red')}</td>"
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


def _sparkline(bins: np.ndarray) -> str:
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
    width = _SCORE_BINS * (w + gap)
    return (f"<svg width='{width}' height='{h}' style='vertical-align:middle;background:#f6f6f6'>"
            f"<title>score histogram, 0 (left) to 1 (right)</title>{''.join(bars)}</svg>")


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
            f"<td class='n'>{s.mean_score:.2f}</td><td>{_sparkline(s.score_bins)}</td><td class='n'>{low}</td>"
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
        body.append("<h4>Joint positions</h4>" + _joint_panels(position, entry.rate_hz, attrs.get("joint_names", []),
                                                                 attrs.get("standard_names", [])))
    if entry.cameras:
        body.append("<h4>Contact sheet</h4>")
        for camera in sorted(entry.cameras):
            body.append(f"<div class='sheet'><b>{_e(camera)}</b><br>{_contact_sheet(source, entry, camera)}</div>")
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


# -- joint plots ------------------------------------------------------------------------

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


def _joint_panels(values: np.ndarray, rate_hz: float, names: list[str], standard: list[str]) -> str:
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


def _contact_sheet(source: Dataset, entry: EpisodeEntry, camera: str) -> str:
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

"""A dataset summed up over every index row: what the report's summary and `refinery inspect` show.

Raw vs kept duration (in total and as a distribution over raw episodes),
cleaning decisions per kind with the time they touched, rejections by
reason, grades, and every quality indicator's distribution over the
accepted episodes.

The light index columns of every row are read at once (Arrow); the heavy
ones (``quality_json``, ``decisions_json``) come in batches from
:meth:`DatasetIndex.iter_batches` and are parsed by Arrow's JSON reader, so
memory stays flat whatever the size of the index.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from pipeline.dataset.store import Dataset
from pipeline.human_units import kept_text, seconds_text

RAW_KINDS = frozenset({"nonfinite", "duplicate_timestamp", "backwards_timestamp", "empty_frame"})
"""Decision kinds of the raw stage: their ranges are samples of one raw stream, not steps of the timeline."""
_SAMPLE_VALUES = 4096  # per indicator: a uniform sample of values for the percentiles
_SCORE_BINS = 10
# What :func:`dataset_overview` needs of every row.
_OVERVIEW_COLUMNS = ("key", "raw_episode_id", "length", "rate_hz", "grade", "accepted", "reasons", "raw_duration_s")
_DECISION_SCHEMA = pa.schema([pa.field("d", pa.list_(pa.struct([
    ("kind", pa.string()), ("stream", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
    ("action", pa.string()),
])))])
_QUALITY_SCHEMA = pa.schema([pa.field("indicators", pa.list_(pa.struct([
    ("name", pa.string()), ("value", pa.float64()), ("unit", pa.string()), ("score", pa.float64()),
    ("weight", pa.float64()), ("description", pa.string()),
])))])


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

    # iter_batches does not apply curation: excluded episodes are left out of the indicators by entry id
    # (their raw episodes' cleaning decisions still count, as the cleaning happened).
    excluded_ids = pa.array(excluded["entry_id"].to_pylist(), pa.int64())
    wanted = ["entry_id", "key", "segment", "accepted", "rate_hz", "decisions_json"]
    if indicators:
        wanted.append("quality_json")
    rng = np.random.default_rng(0)
    for record_batch in dataset.index.iter_batches(wanted):
        batch = pa.Table.from_batches([record_batch])
        first = batch.filter(pc.equal(batch["segment"], 0))  # every row of a raw episode carries all its decisions
        for totals in kind_totals(_decisions_of(first)).values():
            view.kinds.setdefault(totals.kind, KindTotals(totals.kind)).add(totals)
        if indicators:
            good = pc.and_(pc.and_(batch["accepted"], pc.not_equal(batch["key"], "")),
                           pc.invert(pc.is_in(batch["entry_id"], value_set=excluded_ids)))
            _add_indicators(view.indicators, batch.filter(good)["quality_json"], rng)
    view.kinds = dict(sorted(view.kinds.items(), key=lambda kv: (-kv[1].decisions, kv[0])))
    return view


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

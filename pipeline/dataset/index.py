"""The dataset's episode index: an append-only Parquet table in immutable files.

Everything a reader filters on is a column of one table with a row per
dataset episode and per rejected raw episode (Parquet, so pandas, polars,
DuckDB, Spark and Ray Data read it as it is). It lives in ``index/``::

    index/e-<first>-<last>-<rows>.parquet   episode rows committed by commits first..last
    index/x-<seq>.parquet            curation rows (exclude / include) of commit seq

Commits
    Only the job's driver (or a curation command) writes, under the dataset
    lock, one file per commit: written as ``.tmp-*``, fsynced, renamed into
    place, directory fsynced. A reader sees a whole commit or none, and a
    killed writer loses only what it had not committed yet.

State
    The file of the highest commit carries the dataset's state in its Parquet
    key-value metadata (``refinery.state``): normalisation statistics as
    mergeable sums per model and key, the card's counters and recent jobs. A
    commit reads that footer, adds what it commits and writes the new state
    with its rows, so it costs in proportion to what it adds, not to the
    size of the index (DESIGN, Zarr dataset: 5.3 s per commit at 1,000
    episodes when the index was one JSON document).

Compaction
    Files merge like a base-8 counter: whenever the newest eight episode
    files are of the same size tier (commits covered within a power of eight), they are
    rewritten as one. A merged file covers the commits of the files it
    replaces and hides them; they are deleted after it is in place, so a
    reader that lists both uses the merged one. The index then has at most
    seven files per tier: about 40 files at a million episodes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dataset import appraisal
from pipeline.dataset.stats import KeyStats
from pipeline.errors import DatasetError, StoreError

DATASET_FORMAT = "refinery-dataset"
DATASET_FORMAT_VERSION = 2
INDEX_DIR = "index"
DATA_DIR = "data"
STAGING_DIR = "_staging"
JOBS_DIR = "jobs"
GRADES = ("A", "B", "C", "D", "F")
"""Grade letters, best first (the score stage's scale)."""
TIMESTAMPS_KEY = "timestamps_ns"
CAMERA_PREFIX = "cameras/"
NUMERIC_KEYS = ("state/position", "state/velocity", "state/effort", "action/position")
"""The numeric keys a dataset episode can hold (besides timestamps); their statistics are index columns."""
_STATS_FIELDS = ("total", "total_sq", "minimum", "maximum")
STATE_KEY = b"refinery.state"
FAN_IN = 8
_TASKS_KEPT = 1000  # distinct task texts counted in the card; the rest count as "(other)"
_JOBS_KEPT = 20
_EPISODE_FILE = re.compile(r"^e-(\d{12})-(\d{12})-(\d+)\.parquet$")  # first commit, last commit, rows
_CURATION_FILE = re.compile(r"^x-(\d{12})\.parquet$")


@dataclass
class EpisodeEntry:
    """One row of the episode index: a dataset episode, or a rejected raw episode.

    Every field has a default so that a read of some columns only (see
    :data:`LIGHT_COLUMNS`) still makes entries; the others keep their defaults.
    """

    key: str = ""  # the episode's name ("" for a rejected raw episode: no data written)
    raw_episode_id: str = ""
    raw_checksum: str = ""  # content_sha256 of the raw file: re-runs skip what is committed
    robot_id: str = ""
    model: str = ""
    task: str = ""
    operator: str = ""  # pseudonym when de-identification is on
    outcome: str = ""
    length: int = 0  # steps at rate_hz
    rate_hz: float = 0.0
    start_ns: int = 0  # ingest clock of step 0
    grade: str = ""
    overall: float = 0.0
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)
    segment: int = 0  # which part of a split raw episode
    decisions: int = 0
    cameras: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> KeyStats fields
    data_segment: str = ""  # the data/<segment> group holding the arrays
    offset: int = 0  # first step of this episode in that segment's arrays
    split: str = ""  # "train" or "val", by a stable hash of the raw episode id
    raw_duration_s: float = 0.0  # how long the raw recording ran (what cleaning kept is length / rate_hz)
    producer: str = ""  # who sealed the raw file: the collector's key as the ingest recorded it
    job_id: str = ""  # the job that refined it: jobs/<job_id>.json holds its configuration
    entry_id: int = -1  # position in the index, assigned at commit
    commit: int = -1  # the commit that added the row
    excluded: bool = False  # curation tombstone (resolved when read)
    exclude_reason: str = ""
    quality_json: str = "{}"  # the score stage's report
    decisions_json: str = "[]"  # every cleaning decision
    attrs_json: str = "{}"  # joint names, standard names, raw file, de-identification

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeEntry:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def quality(self) -> dict[str, Any]:
        return json.loads(self.quality_json or "{}")

    @property
    def decision_list(self) -> list[dict[str, Any]]:
        return json.loads(self.decisions_json or "[]")

    @property
    def attrs(self) -> dict[str, Any]:
        return json.loads(self.attrs_json or "{}")

    @property
    def end(self) -> int:
        return self.offset + self.length


def _stats_column(key: str, name: str) -> str:
    return f"stats.{key}.{name}"


def _schema() -> pa.Schema:
    columns: list[pa.Field] = [
        pa.field("entry_id", pa.int64()),
        pa.field("commit", pa.int64()),
        pa.field("key", pa.string()),
        pa.field("raw_episode_id", pa.string()),
        pa.field("raw_checksum", pa.string()),
        pa.field("robot_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("task", pa.string()),
        pa.field("operator", pa.string()),
        pa.field("outcome", pa.string()),
        pa.field("length", pa.int64()),
        pa.field("rate_hz", pa.float64()),
        pa.field("start_ns", pa.int64()),
        pa.field("grade", pa.string()),
        pa.field("overall", pa.float64()),
        pa.field("accepted", pa.bool_()),
        pa.field("reasons", pa.list_(pa.string())),
        pa.field("segment", pa.int32()),
        pa.field("decisions", pa.int64()),
        pa.field("cameras", pa.list_(pa.string())),
        pa.field("data_segment", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("split", pa.string()),
        pa.field("raw_duration_s", pa.float64()),
        pa.field("producer", pa.string()),
        pa.field("job_id", pa.string()),
        pa.field("quality_json", pa.string()),
        pa.field("decisions_json", pa.string()),
        pa.field("attrs_json", pa.string()),
    ]
    for key in NUMERIC_KEYS:
        columns.append(pa.field(_stats_column(key, "count"), pa.int64()))
        columns += [pa.field(_stats_column(key, name), pa.list_(pa.float64())) for name in _STATS_FIELDS]
    return pa.schema(columns)


SCHEMA = _schema()
CURATION_SCHEMA = pa.schema(
    [
        pa.field("commit", pa.int64()),
        pa.field("entry_id", pa.int64()),
        pa.field("excluded", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("time", pa.string()),
    ]
)
KEY_COUNT_COLUMNS = tuple(_stats_column(key, "count") for key in NUMERIC_KEYS)
"""One column per numeric key: its step count where the episode holds the key (which keys it has)."""
LIGHT_COLUMNS = tuple(
    name for name in SCHEMA.names
    if not name.startswith("stats.") and name not in ("quality_json", "decisions_json", "attrs_json")
)
"""Columns a loader or a listing needs: no per-episode statistics, reports or attributes."""


def _to_row(entry: EpisodeEntry) -> dict[str, Any]:
    row = {name: getattr(entry, name) for name in SCHEMA.names if not name.startswith("stats.")}
    for key in NUMERIC_KEYS:
        stats = entry.stats.get(key)
        row[_stats_column(key, "count")] = int(stats["count"]) if stats else None
        for name in _STATS_FIELDS:
            row[_stats_column(key, name)] = [float(x) for x in stats[name]] if stats else None
    return row


def entries_from_table(table: pa.Table) -> list[EpisodeEntry]:
    """Index rows as entries; columns the table lacks keep their defaults."""
    known = {f.name for f in fields(EpisodeEntry)}
    data = table.to_pydict()
    plain = [c for c in data if c in known and c != "stats"]
    keyed = [k for k in NUMERIC_KEYS if _stats_column(k, "count") in data]
    entries = []
    for i in range(table.num_rows):
        entry = EpisodeEntry(**{c: data[c][i] for c in plain if data[c][i] is not None})
        for key in keyed:
            count = data[_stats_column(key, "count")][i]
            if count is not None:
                entry.stats[key] = {"count": count, **{
                    n: data[_stats_column(key, n)][i] for n in _STATS_FIELDS if _stats_column(key, n) in data}}
        entries.append(entry)
    return entries


def split_of(raw_episode_id: str, val_fraction: float) -> str:
    """``"val"`` for a stable ``val_fraction`` share of raw episodes, else ``"train"``.

    By raw episode, so the parts of a split recording never straddle train
    and validation; by hash, so every dataset holding an episode agrees.
    """
    digest = hashlib.sha256(raw_episode_id.encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


# -- files ------------------------------------------------------------------


@dataclass(frozen=True)
class _IndexFile:
    path: Path
    kind: str  # "e" (episode rows) or "x" (curation rows)
    first: int
    last: int
    rows: int = 0


def _list_files(index_dir: Path) -> tuple[list[_IndexFile], list[_IndexFile]]:
    """The visible episode files (merged ones hide what they replaced) and curation files, in commit order."""
    episodes: list[_IndexFile] = []
    curation: list[_IndexFile] = []
    try:
        names = os.listdir(index_dir)
    except FileNotFoundError:
        return [], []
    for name in names:
        if m := _EPISODE_FILE.match(name):
            episodes.append(_IndexFile(index_dir / name, "e", int(m[1]), int(m[2]), int(m[3])))
        elif m := _CURATION_FILE.match(name):
            curation.append(_IndexFile(index_dir / name, "x", int(m[1]), int(m[1])))
        elif name.endswith(".parquet") and not name.startswith("."):
            # Never read past an index file we do not understand: a reader would see
            # fewer episodes, and a job would take their data for orphans.
            raise StoreError(str(index_dir / name), "an index file this Refinery does not know; "
                             "is the dataset from a newer version? Nothing was changed")
    # Widest first: a file inside the range of one already kept was merged into it.
    episodes.sort(key=lambda f: (f.first, -f.last))
    visible: list[_IndexFile] = []
    for f in episodes:
        if visible and f.last <= visible[-1].last:
            continue
        visible.append(f)
    curation.sort(key=lambda f: f.first)
    return visible, curation


def _write_atomically(index_dir: Path, name: str, table: pa.Table, *, small: bool = False) -> Path:
    tmp = index_dir / f".tmp-{uuid.uuid4().hex}.parquet"
    try:
        if small:
            # A commit's own file: a few rows, soon merged; encoding and statistics
            # would cost more than they save (a third of a commit's time).
            pq.write_table(table, tmp, compression="none", use_dictionary=False, write_statistics=False)
        else:
            pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = index_dir / name
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(index_dir)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_file(path: Path, columns: list[str], where: pc.Expression | None) -> pa.Table:
    """``columns`` of one index file, rows matching ``where``; columns a file lacks come back as nulls."""
    # One file at a time: pyarrow's dataset layer costs more than the reading here.
    try:
        return pq.read_table(path, columns=columns, filters=where)
    except (pa.ArrowInvalid, KeyError):
        pass  # a file written before a column was added: read what it has
    present = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in columns if c in present])
    for name in columns:
        if name not in present:
            table = table.append_column(SCHEMA.field(name), pa.nulls(len(table), SCHEMA.field(name).type))
    table = table.select(columns)
    return table.filter(where) if where is not None else table


def _complete_batch(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    """``batch`` with ``columns`` in this order; columns its file lacks come back as nulls."""
    fields, arrays = [], []
    for name in columns:
        if name in batch.schema.names:
            fields.append(batch.schema.field(name))
            arrays.append(batch.column(name))
        else:
            fields.append(SCHEMA.field(name))
            arrays.append(pa.nulls(batch.num_rows, SCHEMA.field(name).type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _tier(f: _IndexFile) -> int:
    """Size tier of an episode file by the commits it covers (powers of FAN_IN).

    By commits, not rows: commits of varied sizes (a segment's 3 or 8 rows, a
    1-row unreadable file) still merge, and each row is rewritten about
    log8(commits) times in all.
    """
    return int(math.log(max(f.last - f.first + 1, 1), FAN_IN))


# -- state ------------------------------------------------------------------


def empty_state() -> dict[str, Any]:
    return {
        "seq": 0,
        "rows": 0,
        "stats": {},
        "counts": {
            "raw_episodes": 0, "accepted": 0, "rejected": 0, "excluded": 0, "accepted_seconds": 0.0,
            "robots": {}, "models": {}, "tasks": {}, "grades": {}, "rejection_reasons": {}, "splits": {},
        },
        "jobs": [],
        "updated": "",
        "appraisal": appraisal.empty(),
    }


def _bump(counter: dict[str, Any], key: str, by: int | float = 1) -> None:
    value = counter.get(key, 0) + by
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)


def _count_task(counts: dict[str, Any], task: str, by: int) -> None:
    tasks = counts["tasks"]
    if task in tasks or len(tasks) < _TASKS_KEPT:
        _bump(tasks, task, by)
    else:
        _bump(tasks, "(other)", by)


def _add_to_state(state: dict[str, Any], entries: Sequence[EpisodeEntry]) -> None:
    counts = state["counts"]
    counts["raw_episodes"] += len({e.raw_episode_id for e in entries})
    for e in entries:
        _bump(counts["robots"], e.robot_id)
        _bump(counts["models"], e.model)
        if e.accepted:
            _count_included(state, e, +1)
        else:
            counts["rejected"] += 1
            for reason in {r.split(":")[0] for r in e.reasons}:
                _bump(counts["rejection_reasons"], reason)


def _count_included(state: dict[str, Any], e: EpisodeEntry, sign: int) -> None:
    """Add (+1) or take out (-1) an accepted episode's share of the card and statistics."""
    counts = state["counts"]
    counts["accepted"] += sign
    counts["accepted_seconds"] += sign * (e.length / e.rate_hz if e.rate_hz else 0.0)
    _bump(counts["grades"], e.grade, sign)
    _bump(counts["splits"], e.split or "train", sign)
    appraisal.count(state, e, sign)
    if e.task:
        _count_task(counts, e.task, sign)
    if sign > 0:
        per_model = state["stats"].setdefault(e.model, {})
        for key, raw in e.stats.items():
            stats = KeyStats.from_dict(raw)
            per_model[key] = (KeyStats.from_dict(per_model[key]).merge(stats) if key in per_model else stats).to_dict()


def dataset_stats(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Normalisation statistics per robot model and key: mean, std, min, max per column, count."""
    return {
        model: {key: KeyStats.from_dict(raw).summary() for key, raw in keys.items()}
        for model, keys in state.get("stats", {}).items()
    }


def dataset_card(state: dict[str, Any]) -> dict[str, Any]:
    """What went in, what came out, what was rejected and why."""
    counts = state.get("counts", empty_state()["counts"])
    jobs = state.get("jobs", [])
    return {
        "updated": state.get("updated", ""),
        "raw_episodes": counts["raw_episodes"],
        "episodes_accepted": counts["accepted"],
        "episodes_rejected": counts["rejected"],
        "episodes_excluded": counts["excluded"],
        "hours_accepted": round(counts["accepted_seconds"] / 3600, 4),
        "robots": sorted(counts["robots"]),
        "models": sorted(counts["models"]),
        "tasks": sorted(t for t in counts["tasks"] if t != "(other)"),
        "grades": dict(sorted(counts["grades"].items())),
        "splits": dict(sorted(counts["splits"].items())),
        "rejection_reasons": dict(Counter(counts["rejection_reasons"]).most_common()),
        "last_job": jobs[-1] if jobs else {},
        "appraisal": appraisal.appraise(state).to_dict(),
    }


# -- the index --------------------------------------------------------------


class DatasetIndex:
    """Read and append the index of the dataset at ``dataset``.

    Reading is safe at any time; writing (:meth:`commit`, :meth:`curate`)
    needs the dataset lock, which the job and curation commands hold.
    """

    def __init__(self, dataset: Path | str) -> None:
        self.dataset = Path(dataset)
        self.dir = self.dataset / INDEX_DIR
        self._state: tuple[str, dict[str, Any]] | None = None  # (newest file's prefix, its state)

    # reading

    def _files(self) -> tuple[list[_IndexFile], list[_IndexFile]]:
        return _list_files(self.dir)

    def state(self) -> dict[str, Any]:
        """The state as of the latest commit (statistics sums, card counters, recent jobs)."""
        for _ in range(3):  # a compaction may delete a file between listing and reading
            episodes, curation = self._files()
            newest = max([*episodes, *curation], key=lambda f: f.last, default=None)
            if newest is None:
                return empty_state()
            # The newest commit's files start alike whether merged or not ("e-<first>" or "x-<seq>").
            tag = f"{newest.kind}-{newest.last:012d}"
            if self._state is not None and self._state[0] == tag:
                return json.loads(json.dumps(self._state[1]))  # a copy the caller may change
            try:
                metadata = pq.read_metadata(newest.path).metadata or {}
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException) as err:
                raise StoreError(str(newest.path), f"unreadable index file: {err}") from err
            state = json.loads(metadata[STATE_KEY])
            self._state = (tag, state)
            return json.loads(json.dumps(state))
        raise StoreError(str(self.dir), "the index kept changing while being read; try again")

    def _exclusions(self, curation: list[_IndexFile]) -> dict[int, str]:
        """entry_id -> reason of every episode excluded now (the latest curation row per episode wins)."""
        excluded: dict[int, str] = {}
        for f in curation:
            table = pq.read_table(f.path)
            for entry_id, flag, reason in zip(
                table["entry_id"].to_pylist(), table["excluded"].to_pylist(), table["reason"].to_pylist()
            ):
                if flag:
                    excluded[entry_id] = reason
                else:
                    excluded.pop(entry_id, None)
        return excluded

    def table(
        self,
        columns: Iterable[str] | None = None,
        where: pc.Expression | None = None,
        *,
        include_excluded: bool = True,
    ) -> pa.Table:
        """Index rows (only ``columns``, only rows matching ``where``), in commit order.

        Adds ``excluded`` and ``exclude_reason`` from the curation rows.
        """
        wanted = list(dict.fromkeys(["entry_id", *(columns if columns is not None else SCHEMA.names)]))
        unknown = [c for c in wanted if c not in SCHEMA.names and c not in ("excluded", "exclude_reason")]
        if unknown:
            raise DatasetError(str(self.dataset), f"unknown index columns {unknown}; columns: {SCHEMA.names}")
        read = [c for c in wanted if c in SCHEMA.names]
        for _ in range(3):
            episodes, curation = self._files()
            try:
                parts = [_read_file(f.path, read, where) for f in episodes]
                table = pa.concat_tables(parts) if parts else SCHEMA.empty_table().select(read)
                exclusions = self._exclusions(curation)
                break
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException) as err:
                raise StoreError(str(self.dir), f"unreadable index: {err}") from err
        else:
            raise StoreError(str(self.dir), "the index kept changing while being read; try again")
        table = table.sort_by("entry_id")
        ids = pa.array(list(exclusions), type=pa.int64())
        flags = pc.is_in(table["entry_id"], value_set=ids)
        if not include_excluded:
            table = table.filter(pc.invert(flags))
            flags = pc.is_in(table["entry_id"], value_set=ids)
        reasons = [exclusions.get(i, "") for i in table["entry_id"].to_pylist()] if exclusions else [""] * len(table)
        return table.append_column("excluded", flags).append_column("exclude_reason", pa.array(reasons, pa.string()))

    def entries(
        self, columns: Iterable[str] | None = None, where: pc.Expression | None = None, *, include_excluded: bool = True
    ) -> list[EpisodeEntry]:
        return entries_from_table(self.table(columns, where, include_excluded=include_excluded))

    def iter_batches(
        self, columns: Iterable[str], where: pc.Expression | None = None, *, batch_size: int = 1024
    ) -> Iterator[pa.RecordBatch]:
        """Index rows in batches, file by file, without holding the index in memory.

        The visible episode files are read in commit order, as :meth:`table`
        lists them (a merged file hides the ones it replaced). If a compaction
        deletes a file mid-read, the files are listed again and the merged file
        is read instead; rows already yielded are skipped by entry id, so each
        row comes once.

        Curation is not applied, unlike in :meth:`table`: excluded episodes
        come like any other and there is no ``excluded`` column. A caller that
        leaves them out takes their entry ids from ``table(["entry_id"])``.

        Args:
            columns: Index columns to read, in this order after ``entry_id``
                (always first). Columns a file predates come back as nulls.
            where: Keep only rows matching this expression; it may refer to
                ``entry_id`` and ``columns`` only. Batches left empty are skipped.
            batch_size: At most this many rows per batch.

        Yields:
            One :class:`pyarrow.RecordBatch` at a time, in entry id order.

        Raises:
            DatasetError: A column is not an index column (``excluded`` and
                ``exclude_reason`` come only with :meth:`table`).
            StoreError: An index file is unreadable, or the index kept changing
                while being read.
        """
        wanted = list(dict.fromkeys(["entry_id", *columns]))
        unknown = [c for c in wanted if c not in SCHEMA.names]
        if unknown:
            curation = {"excluded", "exclude_reason"} & set(unknown)
            hint = "; excluded and exclude_reason come with table()" if curation else ""
            raise DatasetError(str(self.dataset), f"unknown index columns {unknown}{hint}; columns: {SCHEMA.names}")
        seen_up_to = -1  # entry ids grow in commit order: a re-listing resumes after the last one yielded
        for _ in range(3):  # a compaction may delete a file between listing and reading
            episodes, _curation = self._files()
            try:
                for f in episodes:
                    with pq.ParquetFile(f.path) as reader:
                        present = set(reader.schema_arrow.names)
                        read = [c for c in wanted if c in present]
                        for batch in reader.iter_batches(batch_size=batch_size, columns=read):
                            batch = batch.filter(pc.greater(batch["entry_id"], seen_up_to))
                            if not batch.num_rows:
                                continue
                            seen_up_to = max(seen_up_to, pc.max(batch["entry_id"]).as_py())
                            batch = _complete_batch(batch, wanted)
                            if where is not None:
                                batch = batch.filter(where)
                            if batch.num_rows:
                                yield batch
                return
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException) as err:
                raise StoreError(str(self.dir), f"unreadable index: {err}") from err
        raise StoreError(str(self.dir), "the index kept changing while being read; try again")

    def committed_sources(self) -> set[tuple[str, str]]:
        """(raw episode id, raw checksum) of every raw episode the index holds."""
        table = self.table(["raw_episode_id", "raw_checksum"])
        return set(zip(table["raw_episode_id"].to_pylist(), table["raw_checksum"].to_pylist()))

    # writing

    def commit(
        self, new: Sequence[EpisodeEntry], job: dict[str, Any] | None = None, *, val_fraction: float | None = None
    ) -> list[EpisodeEntry]:
        """Append ``new`` as one commit; returns them with ``entry_id``, ``commit`` and ``split`` set.

        The caller makes sure none is in the index already (the job checks
        :meth:`committed_sources` before it plans; a commit costs in
        proportion to what it adds, so it does not re-read the index). Rows
        without a split get one by :func:`split_of` with ``val_fraction``
        (default: the dataset's).
        """
        if val_fraction is None:
            val_fraction = self._val_fraction()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        state = self.state()
        fresh = list(new)
        if not fresh:
            return []
        seq = state["seq"] + 1
        for n, entry in enumerate(fresh):
            entry.entry_id = state["rows"] + n
            entry.commit = seq
            if not entry.split:
                entry.split = split_of(entry.raw_episode_id, val_fraction)
        state["seq"] = seq
        state["rows"] += len(fresh)
        _add_to_state(state, fresh)
        if job:
            state["jobs"] = [*state["jobs"], job][-_JOBS_KEPT:]
        state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        table = pa.Table.from_pylist([_to_row(e) for e in fresh], schema=SCHEMA)
        table = table.replace_schema_metadata({STATE_KEY: json.dumps(state).encode()})
        _write_atomically(self.dir, f"e-{seq:012d}-{seq:012d}-{len(fresh)}.parquet", table, small=len(fresh) < FAN_IN)
        self._state = (f"e-{seq:012d}", json.loads(json.dumps(state)))
        self.compact()
        return fresh

    def _val_fraction(self) -> float:
        try:
            attrs = json.loads((self.dataset / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            return 0.0
        return float(attrs.get("val_fraction", 0.0))

    def curate(self, entry_ids: Sequence[int], *, excluded: bool, reason: str) -> int:
        """Exclude (or include again) episodes by ``entry_id``; returns how many changed.

        A tombstone row per episode; the data is untouched. Statistics and
        card follow: the episodes' sums are taken out (or added back) and the
        extremes recomputed from the per-episode columns of that model.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        table = self.table(where=pc.field("entry_id").isin(list(entry_ids)))
        rows = [e for e in entries_from_table(table) if e.excluded != excluded and e.accepted and e.key]
        if not rows:
            return 0
        state = self.state()
        seq = state["seq"] + 1
        for e in rows:
            _count_included(state, e, -1 if excluded else +1)
            state["counts"]["excluded"] += 1 if excluded else -1
        if excluded:
            self._take_out_stats(state, rows)
        state["seq"] = seq
        state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out = pa.Table.from_pylist(
            [{"commit": seq, "entry_id": e.entry_id, "excluded": excluded, "reason": reason, "time": stamp} for e in rows],
            schema=CURATION_SCHEMA,
        ).replace_schema_metadata({STATE_KEY: json.dumps(state).encode()})
        _write_atomically(self.dir, f"x-{seq:012d}.parquet", out)
        return len(rows)

    def _take_out_stats(self, state: dict[str, Any], rows: list[EpisodeEntry]) -> None:
        gone = {e.entry_id for e in rows}
        for model in sorted({e.model for e in rows}):
            per_model = state["stats"].get(model, {})
            remaining = self.table(
                [c for key in NUMERIC_KEYS for c in (_stats_column(key, "minimum"), _stats_column(key, "maximum"))],
                (pc.field("model") == model) & pc.field("accepted"),
                include_excluded=False,
            )
            remaining = remaining.filter(pc.invert(pc.is_in(remaining["entry_id"], pa.array(sorted(gone), pa.int64()))))
            for key in list(per_model):
                removed: KeyStats | None = None
                for e in rows:
                    if e.model == model and key in e.stats:
                        stats = KeyStats.from_dict(e.stats[key])
                        removed = stats if removed is None else removed.merge(stats)
                if removed is None:
                    continue
                low = _column_extreme(remaining, _stats_column(key, "minimum"), np.min)
                high = _column_extreme(remaining, _stats_column(key, "maximum"), np.max)
                left = KeyStats.from_dict(per_model[key]).without(removed, low, high)
                if left.count:
                    per_model[key] = left.to_dict()
                else:
                    del per_model[key]
            if not per_model:
                state["stats"].pop(model, None)

    def compact(self) -> int:
        """Merge the newest episode files while the last ``FAN_IN`` share a size tier; returns merges done."""
        merges = 0
        while True:
            episodes, _ = self._files()
            tail = episodes[-FAN_IN:]
            if len(tail) < FAN_IN or len({_tier(f) for f in tail}) != 1:
                return merges
            tables = [pq.read_table(f.path, schema=SCHEMA) for f in tail]
            metadata = pq.read_metadata(tail[-1].path).metadata or {}
            merged = pa.concat_tables(tables).replace_schema_metadata({STATE_KEY: metadata[STATE_KEY]})
            rows = sum(f.rows for f in tail)
            _write_atomically(self.dir, f"e-{tail[0].first:012d}-{tail[-1].last:012d}-{rows}.parquet", merged)
            for f in tail:
                f.path.unlink(missing_ok=True)
            _fsync_dir(self.dir)
            merges += 1

    def _remove_temporaries(self) -> None:
        for name in os.listdir(self.dir):
            if name.startswith(".tmp-"):
                (self.dir / name).unlink(missing_ok=True)


def _column_extreme(table: pa.Table, column: str, reduce: Any) -> list[float]:
    values = table[column].drop_null() if len(table) else table[column]
    if len(values) == 0:
        return []
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    width = len(values[0].as_py())
    return reduce(flat.reshape(-1, width), axis=0).tolist()


# -- selecting ----------------------------------------------------------------


def name_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    """A filter argument (one name, several, or None for any) as a set."""
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def episode_keys(entry: EpisodeEntry) -> set[str]:
    """Array keys an episode holds, from its index entry (no store access)."""
    return {TIMESTAMPS_KEY, *entry.stats, *(f"{CAMERA_PREFIX}{camera}" for camera in entry.cameras)}


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes a loader, an export or a view takes."""

    min_grade: str | None = None
    models: frozenset[str] | None = None
    robots: frozenset[str] | None = None
    tasks: frozenset[str] | None = None
    accepted_only: bool = True
    split: str | None = None
    start_after_ns: int | None = None
    start_before_ns: int | None = None

    @classmethod
    def of(
        cls,
        *,
        min_grade: str | None = None,
        models: str | Iterable[str] | None = None,
        robots: str | Iterable[str] | None = None,
        tasks: str | Iterable[str] | None = None,
        accepted_only: bool = True,
        split: str | None = None,
        start_after_ns: int | None = None,
        start_before_ns: int | None = None,
    ) -> EpisodeFilter:
        return cls(min_grade, name_set(models), name_set(robots), name_set(tasks), accepted_only, split,
                   start_after_ns, start_before_ns)

    def check(self, where: str) -> None:
        if self.min_grade is not None and self.min_grade not in GRADES:
            raise DatasetError(where, f"min_grade={self.min_grade!r} is not a grade; use one of {', '.join(GRADES)} or None")
        if self.split is not None and self.split not in ("train", "val"):
            raise DatasetError(where, f"split={self.split!r} is not a split; use 'train', 'val' or None")

    def expression(self) -> pc.Expression:
        """The filter as a Parquet predicate: rows that carry data and pass."""
        expr = (pc.field("key") != "") & (pc.field("length") > 0)
        if self.accepted_only:
            expr &= pc.field("accepted")
        if self.min_grade is not None:
            expr &= pc.field("grade").isin(list(GRADES[: GRADES.index(self.min_grade) + 1]))
        for column, values in (("model", self.models), ("robot_id", self.robots), ("task", self.tasks)):
            if values is not None:
                expr &= pc.field(column).isin(sorted(values))
        if self.split is not None:
            expr &= pc.field("split") == self.split
        if self.start_after_ns is not None:
            expr &= pc.field("start_ns") >= self.start_after_ns
        if self.start_before_ns is not None:
            expr &= pc.field("start_ns") < self.start_before_ns
        return expr

    def describe(self) -> str:
        asked = {"min_grade": self.min_grade, "models": self.models, "robots": self.robots, "tasks": self.tasks,
                 "accepted_only": self.accepted_only, "split": self.split}
        return ", ".join(f"{k}={sorted(v) if isinstance(v, frozenset) else v!r}" for k, v in asked.items())


def select_episodes(
    dataset: Path | str,
    *,
    columns: Iterable[str] | None = None,
    min_grade: str | None = None,
    models: str | Iterable[str] | None = None,
    robots: str | Iterable[str] | None = None,
    tasks: str | Iterable[str] | None = None,
    accepted_only: bool = True,
    split: str | None = None,
    start_after_ns: int | None = None,
    start_before_ns: int | None = None,
) -> list[EpisodeEntry]:
    """The episodes with data that pass the filters, excluded ones left out (loader, exports and views share this).

    Only ``columns`` of the index are read (default: :data:`LIGHT_COLUMNS`
    and the key counts; pass ``SCHEMA.names`` for every column, statistics
    and reports included), and only matching rows become entries: opening a
    large dataset reads what the selection needs.

    Raises:
        DatasetError: an unknown grade letter or split, or nothing passes (the
            message lists what the dataset has).
    """
    chosen = EpisodeFilter.of(min_grade=min_grade, models=models, robots=robots, tasks=tasks,
                              accepted_only=accepted_only, split=split, start_after_ns=start_after_ns,
                              start_before_ns=start_before_ns)
    chosen.check(str(dataset))
    index = DatasetIndex(dataset)
    if columns is None:
        columns = (*LIGHT_COLUMNS, *KEY_COUNT_COLUMNS)
    selected = index.entries(columns, chosen.expression(), include_excluded=False)
    if not selected:
        everything = index.table(["key", "length", "grade", "model", "robot_id", "task"],
                                 (pc.field("key") != "") & (pc.field("length") > 0), include_excluded=False)
        there = (
            f"{len(everything)} episodes with data: grades {sorted(set(everything['grade'].to_pylist()))}, "
            f"models {sorted(set(everything['model'].to_pylist()))}, robots {sorted(set(everything['robot_id'].to_pylist()))}, "
            f"tasks {sorted(set(everything['task'].to_pylist()))[:20]}"
        )
        raise DatasetError(str(dataset), f"no episodes match the filters ({chosen.describe()}); the dataset has {there}")
    return selected

"""`refinery inspect`: what a dataset holds, as plain text.

For a Refinery Zarr dataset (format version 2): the dataset card, what
cleaning kept (raw duration recorded, duration kept and the share, decisions
per kind with the time they touched, the most cut raw episodes), where the
bytes are (data segments with their files and sizes, index files, anything
a killed job left), the array keys of each robot model (dtype, shape per
step, chunking, codecs), the dataset's appraisal (:mod:`pipeline.dataset.appraisal`),
the episodes (key, robot, model, task, seconds, grade, what cost it its grade
(:mod:`pipeline.processing.grade_rules`), split, accepted or why not, kept of
its raw episode, size), a grade
histogram and the statistics. For a
Diffusion Policy replay buffer written by :mod:`pipeline.interop.dp_export` (folder
or ``.zarr.zip``): its episodes and arrays.

It stays quick on a dataset of a million episodes: the card and statistics
come from the index's state (one Parquet footer), the per-model, per-segment
and per-raw-episode figures from a few light index columns aggregated in
Arrow, the decisions per kind from ``decisions_json`` read in batches and
parsed by Arrow (see :func:`pipeline.dataset_overview.dataset_overview`),
the keys from each segment's array metadata (no chunk is decoded), and only
the first ``max_episodes`` episodes are listed row by row. Every list is
bounded.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.console import format_table
from pipeline.dataset.appraisal import appraise
from pipeline.dataset.index import (
    DATA_DIR,
    GRADES,
    INDEX_DIR,
    STAGING_DIR,
    dataset_card,
)
from pipeline.dataset.store import Dataset
from pipeline.dataset_overview import (
    Overview,
    dataset_overview,
    light_rows,
    per_raw_episode,
)
from pipeline.errors import StoreError
from pipeline.human_units import kept_text, seconds_text
from pipeline.processing.grade_rules import costs_text

DEFAULT_MAX_EPISODES = 50
"""Episodes listed row by row; the rest are summed up."""
DEFAULT_MAX_SEGMENTS = 20
"""Data segments and index files listed one by one."""
DEFAULT_MOST_CUT = 5
"""Most cut raw episodes named in the cleaning summary."""
_BAR = 40
# Columns of every row: enough for the per-model, per-segment and per-raw-episode sums.
_SUM_COLUMNS = ["key", "model", "length", "rate_hz", "accepted", "data_segment", "raw_episode_id", "raw_duration_s",
                "segment"]
# Columns of the rows listed one by one.
_LIST_COLUMNS = ["key", "raw_episode_id", "robot_id", "model", "task", "length", "rate_hz", "grade", "accepted",
                 "reasons", "split", "data_segment", "quality_json"]


@dataclass
class _Segment:
    """A data segment folder: its files, bytes and array metadata."""

    name: str
    missing: bool = False  # the index points at it but the folder is gone: the dataset is damaged
    files: int = 0
    bytes: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> zarr.json

    @property
    def steps(self) -> int:
        shapes = [meta["shape"][0] for meta in self.arrays.values()]
        return max(shapes, default=0)


def inspect_dataset(
    path: Path, *, max_episodes: int = DEFAULT_MAX_EPISODES, max_segments: int = DEFAULT_MAX_SEGMENTS
) -> str:
    """Describe a Refinery dataset (or a Diffusion Policy export of one).

    Args:
        path: A Refinery Zarr dataset, or a replay buffer folder / ``.zarr.zip``.
        max_episodes: List at most this many episodes (index order) one by one.
        max_segments: List at most this many data segments and index files one by one.

    Returns:
        The description, several lines of text.

    Raises:
        StoreError: Not a dataset this can read (the message says what to use).
    """
    path = Path(path)
    if (path.is_file() and zipfile.is_zipfile(path)) or (path / ".zgroup").exists():
        return _inspect_replay_buffer(path)
    if not (path / "zarr.json").exists():
        if path.is_dir() and next(path.rglob("*.h5"), None) is not None:
            raise StoreError(str(path), "holds raw episodes, not a dataset: list them with `refinery verify`")
        raise StoreError(str(path), "not a Refinery dataset (no zarr.json); create one with `refinery process`")
    dataset = Dataset(path)
    rows = light_rows(dataset, _SUM_COLUMNS)
    with_data = pc.and_(pc.not_equal(rows["key"], ""), pc.greater(rows["length"], 0))
    included = rows.filter(pc.and_(pc.and_(with_data, rows["accepted"]), pc.invert(rows["excluded"])))
    referenced = set(pc.unique(rows.filter(with_data)["data_segment"]).to_pylist())
    segments = {name: _read_segment(path / DATA_DIR / name) for name in sorted(referenced)}
    orphans = _folders(path / DATA_DIR, exclude=referenced)
    staging = _folders(path / STAGING_DIR)
    index_files = _index_files(path / INDEX_DIR)
    state = dataset.state()
    card = dataset_card(state)

    data_bytes = sum(s.bytes for s in segments.values())
    # From the parts, so that the data is walked once.
    total = (data_bytes + sum(orphans.values()) + sum(staging.values()) + sum(size for _, _, size in index_files)
             + _files_bytes(path) + _files_bytes(path / DATA_DIR))
    parts = [(f"data {_mb(data_bytes)} in {_n(len(segments), 'segment')} of "
             f"{_n(sum(s.files for s in segments.values()), 'file')}"),
             f"index {_mb(sum(size for _, _, size in index_files))} in {_n(len(index_files), 'file')}"]
    out = [f"Refinery dataset {path}",
           (f"  format {dataset.attrs.get('format')} v{dataset.attrs.get('format_version')}, {_mb(total)} on disk: "
           f"{', '.join(parts)}")]
    if orphans:
        out.append(f"  {_n(len(orphans), 'data segment')} in no commit ({_mb(sum(orphans.values()))}): left by a "
                   "job that died before committing them; the next `refinery process` removes them")
    if staging:
        out.append(f"  {_n(len(staging), 'staging folder')} ({_mb(sum(staging.values()))}): half-written segments "
                   "of killed workers; the next `refinery process` removes them")
    out += ["", "Card", *_card_lines(card)]
    out += ["", "Appraisal", *appraise(state).lines()]
    raws = per_raw_episode(rows)
    out += ["", *_cleaning_lines(dataset_overview(dataset, rows, indicators=False), raws)]
    out += ["", *_segment_lines(segments, rows.filter(with_data), max_segments)]
    out += ["", *_index_lines(index_files, len(rows), max_segments)]
    for model, model_rows in _by_model(included):
        out += ["", *_model_lines(model, model_rows, segments)]
    kept_of = dict(zip(raws["raw_episode_id"].to_pylist(), zip(raws["kept_s"].to_pylist(), raws["raw_s"].to_pylist())))
    out += ["", *_episode_lines(dataset, rows, with_data, segments, kept_of, max_episodes)]
    out += ["", "Grades of accepted episodes", *_histogram(card.get("grades", {}))]
    stats = state.get("stats", {})
    if stats:
        out += ["", "Normalisation statistics (mean, std, min, max per column)"]
        out += [f"  {model}: {', '.join(sorted(keys))}" for model, keys in sorted(stats.items())]
    return "\n".join(out) + "\n"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue  # a writer replaced it meanwhile
    return total


def _files_bytes(folder: Path) -> int:
    """Bytes of the files directly in ``folder`` (metadata, the lock file)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def _folders(parent: Path, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
    """Bytes of each subfolder of ``parent`` not named in ``exclude``."""
    if not parent.is_dir():
        return {}
    return {
        child.name: _tree_bytes(child) for child in parent.iterdir() if child.is_dir() and child.name not in exclude
    }


def _read_segment(folder: Path) -> _Segment:
    """Files, bytes and metadata of one data segment, in one walk of its folder."""
    segment = _Segment(folder.name, missing=not folder.is_dir())
    for where, _, files in os.walk(folder):
        for name in files:
            file = Path(where) / name
            try:
                segment.bytes += file.stat().st_size
            except FileNotFoundError:
                continue
            segment.files += 1
            if name != "zarr.json":
                continue
            meta = json.loads(file.read_text())
            if meta.get("node_type") == "array":
                segment.arrays[file.parent.relative_to(folder).as_posix()] = meta
            elif file.parent == folder:
                segment.attrs = meta.get("attributes", {})
    return segment


def _index_files(index_dir: Path) -> list[tuple[str, int, int]]:
    """(name, rows, bytes) of every Parquet file of the index, from their footers."""
    found = []
    for file in sorted(index_dir.glob("*.parquet")) if index_dir.is_dir() else []:
        if file.name.startswith("."):
            continue  # a commit being written
        try:
            found.append((file.name, pq.read_metadata(file).num_rows, file.stat().st_size))
        except FileNotFoundError:
            continue  # merged away by a compaction meanwhile
    return found


def _card_lines(card: dict[str, Any]) -> list[str]:
    if not card.get("updated"):
        return ["  (no card yet: no job has committed to this dataset)"]
    lines = [
        (f"  raw episodes {card.get('raw_episodes', 0)}: accepted {card.get('episodes_accepted', 0)} dataset "
        f"episodes ({seconds_text(card.get('hours_accepted', 0) * 3600)}), rejected {card.get('episodes_rejected', 0)}, "
        f"excluded {card.get('episodes_excluded', 0)}"),
        f"  splits: {', '.join(f'{s} {n}' for s, n in card.get('splits', {}).items()) or '-'}",
        f"  robots: {', '.join(card.get('robots', [])) or '-'}",
        f"  models: {', '.join(card.get('models', [])) or '-'}",
        f"  tasks: {', '.join(repr(t) for t in card.get('tasks', [])) or '-'}",
        f"  grades: {', '.join(f'{g} {n}' for g, n in card.get('grades', {}).items()) or '-'}",
    ]
    for reason, count in card.get("rejection_reasons", {}).items():
        lines.append(f"  rejected {count}x: {reason}")
    job = card.get("last_job", {})
    if job:
        raw = job.get("raw_dirs") or [job.get("raw_dir", "?")]
        lines.append(f"  last job: started {job.get('started', '?')} from {', '.join(map(str, raw))}")
    lines.append(f"  updated {card.get('updated', '?')}")
    return lines


def _cleaning_lines(view: Overview, raws: pa.Table, most_cut: int = DEFAULT_MOST_CUT) -> list[str]:
    """Raw vs kept duration, decisions per kind, the most cut raw episodes: a fixed number of lines."""
    head = "What cleaning kept"
    if not view.raw_episodes:
        return [head, "  (nothing yet)"]
    split = f", {view.split} split into parts" if view.split else ""
    lines = [head, (f"  recorded {seconds_text(view.raw_seconds)} in {_n(view.raw_episodes, 'raw episode')}: "
                   f"{view.kept} as {_n(view.dataset_episodes, 'dataset episode')}{split}"),
             f"  rejected {view.rejected} ({seconds_text(view.rejected_raw_seconds)} recorded, 0.0 s kept)"]
    if view.unknown_raw:
        lines.append(f"  {_n(view.unknown_raw, 'raw episode')} without a recorded raw duration (count as 0 s)")
    if view.kinds:
        table = [[k.kind, k.decisions, k.episodes, k.affected, k.action_text] for k in view.kinds.values()]
        lines.append(_indent(format_table(["decision kind", "decisions", "raw episodes", "affected", "actions"],
                                          table)))
    else:
        lines.append("  no cleaning decisions")
    cut = raws.filter(pc.and_(raws["accepted"], pc.greater(raws["raw_s"], 0)))
    if cut.num_rows and most_cut:
        cut = cut.append_column("share", pc.divide(cut["kept_s"], cut["raw_s"]))
        cut = cut.filter(pc.less(cut["share"], 0.95))
        total = cut.num_rows
        cut = cut.take(pc.sort_indices(cut, [("share", "ascending"), ("raw_episode_id", "ascending")])[:most_cut])
        if total:
            lines.append(f"  most cut ({min(total, most_cut)} of {total} accepted raw episodes that lost over 5%):")
            lines += [f"    {r['raw_episode_id']}: {kept_text(r['kept_s'], r['raw_s'])}" for r in cut.to_pylist()]
    return lines


def _segment_lines(segments: dict[str, _Segment], rows: pa.Table, limit: int) -> list[str]:
    files = sum(s.files for s in segments.values())
    head = f"Data segments ({len(segments)}; {_n(files, 'file')}, {_mb(sum(s.bytes for s in segments.values()))})"
    if not segments:
        return [head, "  (none yet)"]
    sums = rows.group_by("data_segment").aggregate([("length", "sum"), ("length", "count")])
    counts = zip(sums["length_count"].to_pylist(), sums["length_sum"].to_pylist())
    per = dict(zip(sums["data_segment"].to_pylist(), counts))
    table = []
    for name, segment in list(segments.items())[:limit]:
        episodes, steps = per.get(name, (0, 0))
        size = "MISSING (the index points at it)" if segment.missing else _mb(segment.bytes)
        table.append([name, segment.attrs.get("model", "?"), episodes, steps, segment.files, size])
    lines = [head, _indent(format_table(["segment", "model", "episodes", "steps", "files", "size"], table))]
    if len(segments) > limit:
        lines.append(f"  ... and {len(segments) - limit} more segments")
    return lines


def _index_lines(files: list[tuple[str, int, int]], rows: int, limit: int) -> list[str]:
    head = f"Index ({_n(len(files), 'file')}, {_n(rows, 'row')}, {_mb(sum(size for _, _, size in files))})"
    if not files:
        return [head, "  (empty: no job has committed to this dataset)"]
    table = [[name, n, _mb(size)] for name, n, size in files[:limit]]
    lines = [head, _indent(format_table(["file", "rows", "size"], table))]
    if len(files) > limit:
        lines.append(f"  ... and {len(files) - limit} more files")
    return lines


def _by_model(included: pa.Table) -> list[tuple[str, pa.Table]]:
    models = sorted(pc.unique(included["model"]).to_pylist())
    return [(model, included.filter(pc.equal(included["model"], model))) for model in models]


def _codecs(codecs: list[dict[str, Any]]) -> str:
    names = []
    for codec in codecs:
        name = codec.get("name", "?")
        config = codec.get("configuration") or {}
        if name == "bytes":
            continue
        settings = ", ".join(f"{k} {v}" for k, v in sorted(config.items()) if k in ("level", "cname", "clevel"))
        names.append(f"{name} ({settings})" if settings else name)
    return " + ".join(names) or "none"


def _array_row(meta: dict[str, Any]) -> tuple[str, str, str, str]:
    """dtype, shape per step, chunking and codecs of one segment array's ``zarr.json``."""
    shape = meta["shape"]
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    codecs = meta.get("codecs", [])
    steps = shape[0]
    # Chunks and shards that span the whole segment are said so, so that
    # segments of different lengths group together.
    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        inner = codecs[0].get("configuration", {})
        chunk = inner.get("chunk_shape", [grid])[0]
        shards = "one shard" if grid >= steps else f"shards of {grid}"
        codec = _codecs(inner.get("codecs", []))
    else:
        chunk, shards, codec = grid, "", _codecs(codecs)
    chunks = "whole segment" if chunk >= steps > 1 else f"{chunk} step{'' if chunk == 1 else 's'}"
    return meta["data_type"], str(tuple(shape[1:])), f"{chunks}, {shards}" if shards else chunks, codec


def _model_lines(model: str, rows: pa.Table, segments: dict[str, _Segment]) -> list[str]:
    steps = pc.sum(rows["length"]).as_py() or 0
    rates = sorted(pc.unique(rows["rate_hz"]).to_pylist())
    names = sorted(pc.unique(rows["data_segment"]).to_pylist())
    head = (f"Keys of model {model} ({_n(len(rows), 'episode')}, {_n(steps, 'step')} at "
            f"{', '.join(f'{r:g}' for r in rates)} Hz, in {_n(len(names), 'data segment')})")
    variants: dict[str, Counter[tuple[str, str, str, str]]] = defaultdict(Counter)
    for name in names:
        for key, meta in segments[name].arrays.items():
            variants[key][_array_row(meta)] += 1
    table = []
    for key in sorted(variants):
        for (dtype, step, chunks, codec), count in variants[key].most_common():
            note = "" if count == len(names) else f" (in {count} of {len(names)} segments)"
            table.append([key, dtype, step, chunks, codec + note])
    return [head, _indent(format_table(["key", "dtype", "shape per step", "chunks", "codecs"], table))]


def _episode_lines(
    dataset: Dataset,
    rows: pa.Table,
    with_data: pa.ChunkedArray,
    segments: dict[str, _Segment],
    kept_of: dict[str, tuple[float, float]],
    limit: int,
) -> list[str]:
    accepted = pc.sum(pc.and_(with_data, rows["accepted"])).as_py() or 0
    excluded = pc.sum(rows["excluded"]).as_py() or 0
    head = f"Episodes ({accepted - excluded} accepted, {len(rows) - accepted} rejected, {excluded} excluded)"
    # Only the rows listed are read with their text columns.
    first = rows["entry_id"][:limit]
    shown = dataset.index.entries(_LIST_COLUMNS, pc.field("entry_id").isin(first)) if limit > 0 else []
    table = []
    for e in shown:
        seconds = round(e.length / e.rate_hz, 2) if e.rate_hz else 0.0
        if e.excluded:
            status = f"excluded: {e.exclude_reason}"[:60]
        elif e.accepted:
            status = "yes"
        else:
            status = "no: " + "; ".join(e.reasons)[:60]
        kept_s, raw_s = kept_of.get(e.raw_episode_id, (0.0, 0.0))
        kept = kept_text(kept_s, raw_s).removeprefix("kept ")
        segment = segments.get(e.data_segment)
        size = "-"
        if e.key and segment is not None and segment.steps:
            size = "~" + _mb(segment.bytes * e.length / segment.steps)
        graded = e.accepted and e.key
        grade = (e.grade or "-") if graded else "-"  # a rejected episode has no grade worth reading
        cost = costs_text(e.quality, 2) if graded else "-"
        table.append([e.key or f"({e.raw_episode_id})", e.robot_id, e.model, e.task or "-", seconds, grade, cost,
                      (e.split or "-") if e.key else "-", status, kept, size])
    headers = ["episode", "robot", "model", "task", "seconds", "grade", "grade cost", "split", "accepted", "raw kept",
               "size"]
    lines = [head, _indent(format_table(headers, table))]
    if len(rows) > len(shown):
        lines.append(f"  (the first {len(shown)} of {len(rows)} index rows; size is the episode's share of its "
                     "segment; every row: Dataset(path).index.table() in Python, or the Parquet files in index/)")
    elif shown:
        lines.append("  (raw kept: what cleaning kept of the episode's raw recording, all its parts; size: the "
                     "episode's share of its data segment)")
    return lines


def _histogram(grades: dict[str, int]) -> list[str]:
    most = max(grades.values(), default=0)
    lines = []
    for grade in GRADES:
        n = grades.get(grade, 0)
        bar = "#" * (round(n / most * _BAR) if most else 0)
        lines.append(f"  {grade} {n:>5} {bar}".rstrip())
    return lines


def _inspect_replay_buffer(path: Path) -> str:
    """A Diffusion Policy replay buffer: its episodes and data arrays, from the metadata."""
    files = _replay_buffer_files(path)
    try:
        root_attrs = json.loads(files.get(".zattrs", "{}"))
        ends_meta = json.loads(files["meta/episode_ends/.zarray"])
    except (KeyError, ValueError) as err:
        raise StoreError(str(path), f"not a Diffusion Policy replay buffer (meta/episode_ends): {err}") from err
    info = root_attrs.get("refinery", {})
    out = [f"Diffusion Policy replay buffer {path} ({_mb(_tree_bytes(path))} on disk)"]
    episodes = info.get("episodes", [])
    out.append(f"  {ends_meta['shape'][0]} episodes; exported from {info.get('source', 'an unknown source')}")
    rows = []
    sources = {name: key for key, name in info.get("keys", {}).items()}
    for name in sorted(k.split("/")[1] for k in files if k.startswith("data/") and k.endswith("/.zarray")):
        meta = json.loads(files[f"data/{name}/.zarray"])
        compressor = meta.get("compressor") or {}
        codec = ", ".join(f"{k}={v}" for k, v in compressor.items() if k != "id")
        rows.append([f"data/{name}", sources.get(name, "-"), meta["dtype"], tuple(meta["shape"]),
                     tuple(meta["chunks"]), f"{compressor.get('id', 'none')} {codec}".strip()])
    out.append(_indent(format_table(["array", "from", "dtype", "shape", "chunks", "compressor"], rows)))
    if episodes:
        out.append("  Episodes")
        table = [[e["key"], e["robot_id"], e["model"], e["task"] or "-", e["length"], e["grade"]] for e in episodes]
        out.append(_indent(_indent(format_table(["episode", "robot", "model", "task", "steps", "grade"], table))))
    return "\n".join(out) + "\n"


def _replay_buffer_files(path: Path) -> dict[str, str]:
    """The metadata files (``.zarray``, ``.zattrs``, ``.zgroup``) of a replay buffer, by key."""
    if path.is_file():
        with zipfile.ZipFile(path) as zf:
            return {n: zf.read(n).decode() for n in zf.namelist() if n.rsplit("/", 1)[-1].startswith(".z")}
    return {p.relative_to(path).as_posix(): p.read_text() for p in path.rglob(".z*") if p.is_file()}

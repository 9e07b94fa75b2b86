"""`refinery inspect`: what a dataset holds, as plain text.

For a Refinery Zarr dataset: the dataset card, the array keys of each robot
model (dtype, shape per step, chunking, codecs), every episode (key, robot,
model, task, seconds, grade, accepted, size), a grade histogram and the size
on disk. For a Diffusion Policy replay buffer written by
:mod:`pipeline.export_dp` (folder or ``.zarr.zip``): its episodes and arrays.

Everything is read from metadata (``zarr.json``, ``.zarray``) and the index:
no chunk is decoded, so it is quick on large datasets.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.console import format_table
from pipeline.dataset.index import (
    EPISODES_GROUP,
    REJECTED_GROUP,
    STAGING_GROUP,
    EpisodeEntry,
    load_index,
    read_root_attrs,
)
from pipeline.errors import StoreError

GRADES = ("A", "B", "C", "D", "F")
_BAR = 40


def inspect_dataset(path: Path) -> str:
    """Describe a Refinery dataset (or a Diffusion Policy export of one).

    Args:
        path: A Refinery Zarr dataset, or a replay buffer folder / ``.zarr.zip``.

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
    entries = load_index(path)
    attrs = read_root_attrs(path)
    accepted = [e for e in entries if e.accepted]
    sizes = {e.key: _tree_bytes(path / EPISODES_GROUP / e.key) for e in accepted if e.key}
    out = [f"Refinery dataset {path}"]
    total = _tree_bytes(path)
    parts = ", ".join(
        f"{group} {_mb(_tree_bytes(path / group))}" for group in (EPISODES_GROUP, REJECTED_GROUP, STAGING_GROUP)
        if (path / group).exists()
    )
    out.append(f"  format {attrs.get('format')} v{attrs.get('format_version')}, {_mb(total)} on disk ({parts})")
    out += ["", "Card", *_card_lines(attrs.get("card", {}))]
    by_model: dict[str, list[EpisodeEntry]] = defaultdict(list)
    for entry in accepted:
        by_model[entry.model].append(entry)
    for model, group in sorted(by_model.items()):
        out += ["", *_model_lines(path, model, group)]
    out += ["", f"Episodes ({len(accepted)} accepted, {len(entries) - len(accepted)} rejected)"]
    out.append(_indent(_episode_table(entries, sizes)))
    out += ["", "Grades of accepted episodes", *_histogram(accepted)]
    stats = attrs.get("stats", {})
    if stats:
        out += ["", "Normalisation statistics (mean, std, min, max per column)"]
        out += [f"  {model}: {', '.join(sorted(keys))}" for model, keys in sorted(stats.items())]
    return "\n".join(out) + "\n"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _card_lines(card: dict[str, Any]) -> list[str]:
    if not card:
        return ["  (no card yet: no job has committed to this dataset)"]
    lines = [
        f"  raw episodes {card.get('raw_episodes', 0)}: accepted {card.get('episodes_accepted', 0)} dataset "
        f"episodes ({card.get('hours_accepted', 0)} h), rejected {card.get('episodes_rejected', 0)}",
        f"  robots: {', '.join(card.get('robots', [])) or '-'}",
        f"  models: {', '.join(card.get('models', [])) or '-'}",
        f"  tasks: {', '.join(repr(t) for t in card.get('tasks', [])) or '-'}",
        f"  grades: {', '.join(f'{g} {n}' for g, n in card.get('grades', {}).items()) or '-'}",
    ]
    for reason, count in card.get("rejection_reasons", {}).items():
        lines.append(f"  rejected {count}x: {reason}")
    job = card.get("last_job", {})
    if job:
        lines.append(f"  last job: started {job.get('started', '?')} from {job.get('raw_dir', '?')}")
    lines.append(f"  updated {card.get('updated', '?')}")
    return lines


def _arrays(group: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, zarr.json) of every array under an episode group, keys like ``state/position``."""
    for meta_path in sorted(group.rglob("zarr.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("node_type") == "array":
            yield meta_path.parent.relative_to(group).as_posix(), meta


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
    """dtype, shape per step, chunking and codecs of one array's ``zarr.json``."""
    shape = meta["shape"]
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    codecs = meta.get("codecs", [])
    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        inner = codecs[0].get("configuration", {})
        chunks = f"{inner.get('chunk_shape', ['?'])[0]} step, shards of {grid}"
        codec = _codecs(inner.get("codecs", []))
    else:
        # Short episodes are one chunk whatever the chunk length: say so, so they group with the rest.
        chunks, codec = ("whole episode" if grid >= shape[0] else f"{grid} steps"), _codecs(codecs)
    return meta["data_type"], str(tuple(shape[1:])), chunks, codec


def _model_lines(dataset: Path, model: str, entries: list[EpisodeEntry]) -> list[str]:
    steps = sum(e.length for e in entries)
    rates = sorted({e.rate_hz for e in entries})
    head = (f"Keys of model {model} ({len(entries)} episodes, {steps} steps at "
            f"{', '.join(f'{r:g}' for r in rates)} Hz)")
    variants: dict[str, Counter[tuple[str, str, str, str]]] = defaultdict(Counter)
    for entry in entries:
        for key, meta in _arrays(dataset / EPISODES_GROUP / entry.key):
            variants[key][_array_row(meta)] += 1
    rows = []
    for key in sorted(variants):
        for (dtype, step, chunks, codec), count in variants[key].most_common():
            note = "" if count == len(entries) else f" (in {count} of {len(entries)} episodes)"
            rows.append([key, dtype, step, chunks, codec + note])
    return [head, _indent(format_table(["key", "dtype", "shape per step", "chunks", "codecs"], rows))]


def _episode_table(entries: list[EpisodeEntry], sizes: dict[str, int]) -> str:
    rows = []
    for e in entries:
        seconds = round(e.length / e.rate_hz, 2) if e.rate_hz else 0.0
        status = "yes" if e.accepted else "no: " + "; ".join(e.reasons)[:60]
        rows.append([e.key or f"({e.raw_episode_id})", e.robot_id, e.model, e.task or "-", seconds, e.grade,
                     status, _mb(sizes[e.key]) if e.key in sizes else "-"])
    return format_table(["episode", "robot", "model", "task", "seconds", "grade", "accepted", "size"], rows)


def _histogram(accepted: list[EpisodeEntry]) -> list[str]:
    counts = Counter(e.grade for e in accepted)
    most = max(counts.values(), default=0)
    lines = []
    for grade in GRADES:
        n = counts.get(grade, 0)
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

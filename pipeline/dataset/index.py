"""The dataset's episode index, normalisation statistics and card.

They live in the root group's attributes (``zarr.json``). Only the job's
driver writes them, one commit at a time, by writing a new ``zarr.json`` to a
temporary file and renaming it over the old one: a reader sees the old index
or the new one, never half of either, and a killed driver loses at most the
episodes it had not committed yet (they are redone on the next run).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import StoreError

DATASET_FORMAT = "refinery-dataset"
DATASET_FORMAT_VERSION = 1
EPISODES_GROUP = "episodes"
STAGING_GROUP = "_staging"
REJECTED_GROUP = "rejected"


@dataclass
class KeyStats:
    """Mergeable running statistics of one array key (per column)."""

    count: int
    total: list[float]
    total_sq: list[float]
    minimum: list[float]
    maximum: list[float]

    @classmethod
    def of(cls, values: np.ndarray) -> KeyStats:
        v = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1)
        return cls(
            count=int(v.shape[0]),
            total=v.sum(axis=0).tolist(),
            total_sq=(v * v).sum(axis=0).tolist(),
            minimum=v.min(axis=0).tolist() if v.size else [],
            maximum=v.max(axis=0).tolist() if v.size else [],
        )

    def merge(self, other: KeyStats) -> KeyStats:
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        return KeyStats(
            count=self.count + other.count,
            total=[a + b for a, b in zip(self.total, other.total)],
            total_sq=[a + b for a, b in zip(self.total_sq, other.total_sq)],
            minimum=[min(a, b) for a, b in zip(self.minimum, other.minimum)],
            maximum=[max(a, b) for a, b in zip(self.maximum, other.maximum)],
        )

    def summary(self) -> dict[str, list[float]]:
        """mean, std, min, max per column (what a trainer normalises with)."""
        n = max(self.count, 1)
        mean = [t / n for t in self.total]
        std = [math.sqrt(max(sq / n - m * m, 0.0)) for sq, m in zip(self.total_sq, mean)]
        return {"mean": mean, "std": std, "min": self.minimum, "max": self.maximum}


@dataclass
class EpisodeEntry:
    """One row of the episode index: a dataset episode, or a rejected raw episode."""

    key: str  # group name under episodes/ ("" for rejected episodes: no data written)
    raw_episode_id: str
    raw_checksum: str  # content_sha256 of the raw file: re-runs skip what is committed
    robot_id: str
    model: str
    task: str
    operator: str  # pseudonym when de-identification is on
    outcome: str
    length: int  # steps at rate_hz
    rate_hz: float
    start_ns: int  # ingest clock of step 0
    grade: str
    overall: float
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    segment: int = 0
    decisions: int = 0
    cameras: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> KeyStats fields

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeEntry:
        return cls(**data)


def _root_meta_path(dataset: Path) -> Path:
    return dataset / "zarr.json"


def read_root_attrs(dataset: Path) -> dict[str, Any]:
    path = _root_meta_path(dataset)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise StoreError(str(dataset), "not a Zarr store (no zarr.json); create it with `refinery process`") from err
    except (OSError, ValueError) as err:
        raise StoreError(str(path), f"unreadable root metadata: {err}") from err
    return dict(meta.get("attributes", {}))


def update_root_attrs(dataset: Path, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, change and atomically replace the root group's attributes."""
    path = _root_meta_path(dataset)
    meta = json.loads(path.read_text())
    attrs = dict(meta.get("attributes", {}))
    mutate(attrs)
    meta["attributes"] = attrs
    tmp = path.with_name(f".zarr.json.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(dataset, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return attrs


def load_index(dataset: Path) -> list[EpisodeEntry]:
    attrs = read_root_attrs(dataset)
    if attrs.get("format") != DATASET_FORMAT:
        raise StoreError(str(dataset), "not a Refinery dataset (root attribute format missing)")
    return [EpisodeEntry.from_dict(e) for e in attrs.get("episodes", [])]


def committed_sources(entries: Iterable[EpisodeEntry]) -> set[tuple[str, str]]:
    """(raw episode id, raw checksum) of everything already in the index."""
    return {(e.raw_episode_id, e.raw_checksum) for e in entries}


def commit_entries(dataset: Path, new: list[EpisodeEntry], job: dict[str, Any]) -> list[EpisodeEntry]:
    """Append entries to the index and refresh statistics and card, in one atomic write."""

    def mutate(attrs: dict[str, Any]) -> None:
        entries = [EpisodeEntry.from_dict(e) for e in attrs.get("episodes", [])]
        done = committed_sources(entries)
        # All entries of one raw episode are committed together, so a raw episode
        # already present (a retried commit) is skipped whole.
        entries += [e for e in new if (e.raw_episode_id, e.raw_checksum) not in done]
        attrs["episodes"] = [e.to_dict() for e in entries]
        attrs["stats"] = dataset_stats(entries)
        jobs = list(attrs.get("jobs", []))
        if new:
            jobs.append(job)
        attrs["jobs"] = jobs[-50:]
        attrs["card"] = dataset_card(entries, jobs)

    attrs = update_root_attrs(dataset, mutate)
    return [EpisodeEntry.from_dict(e) for e in attrs["episodes"]]


def dataset_stats(entries: Iterable[EpisodeEntry]) -> dict[str, dict[str, Any]]:
    """Normalisation statistics per robot model and key, over accepted episodes."""
    merged: dict[str, dict[str, KeyStats]] = {}
    for e in entries:
        if not e.accepted:
            continue
        per_model = merged.setdefault(e.model, {})
        for key, raw in e.stats.items():
            stats = KeyStats(**raw)
            per_model[key] = per_model[key].merge(stats) if key in per_model else stats
    return {model: {key: s.summary() | {"count": s.count} for key, s in keys.items()} for model, keys in merged.items()}


def dataset_card(entries: list[EpisodeEntry], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """What went in, what came out, what was rejected and why."""
    accepted = [e for e in entries if e.accepted]
    rejected = [e for e in entries if not e.accepted]
    reasons = Counter(r.split(":")[0] for e in rejected for r in e.reasons)
    hours = sum(e.length / e.rate_hz for e in accepted) / 3600
    return {
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "raw_episodes": len({e.raw_episode_id for e in entries}),
        "episodes_accepted": len(accepted),
        "episodes_rejected": len(rejected),
        "hours_accepted": round(hours, 4),
        "robots": sorted({e.robot_id for e in entries}),
        "models": sorted({e.model for e in entries}),
        "tasks": sorted({e.task for e in accepted if e.task}),
        "grades": dict(sorted(Counter(e.grade for e in accepted).items())),
        "rejection_reasons": dict(reasons.most_common()),
        "last_job": jobs[-1] if jobs else {},
    }


GRADES = ("A", "B", "C", "D", "F")
"""Grade letters, best first (the score stage's scale)."""
TIMESTAMPS_KEY = "timestamps_ns"
CAMERA_PREFIX = "cameras/"


def name_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    """A filter argument (one name, several, or None for any) as a set."""
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def episode_keys(entry: EpisodeEntry) -> set[str]:
    """Array keys an episode holds, from its index entry (no store access)."""
    return {TIMESTAMPS_KEY, *entry.stats, *(f"{CAMERA_PREFIX}{camera}" for camera in entry.cameras)}


def select_episodes(
    dataset: Path | str,
    entries: list[EpisodeEntry],
    *,
    min_grade: str | None = None,
    models: str | Iterable[str] | None = None,
    robots: str | Iterable[str] | None = None,
    tasks: str | Iterable[str] | None = None,
    accepted_only: bool = True,
) -> list[EpisodeEntry]:
    """The index entries with data that pass the filters (loader and exports share this).

    Raises:
        DatasetError: an unknown grade letter, or nothing passes (the message
            lists what the dataset has).
    """
    from pipeline.errors import DatasetError

    model_set, robot_set, task_set = name_set(models), name_set(robots), name_set(tasks)
    if min_grade is not None and min_grade not in GRADES:
        raise DatasetError(str(dataset), f"min_grade={min_grade!r} is not a grade; use one of {', '.join(GRADES)} or None")
    worst = GRADES.index(min_grade) if min_grade is not None else len(GRADES) - 1
    with_data = [e for e in entries if e.key and e.length > 0]
    selected = [
        e
        for e in with_data
        if (e.accepted or not accepted_only)
        and (min_grade is None or (e.grade in GRADES and GRADES.index(e.grade) <= worst))
        and (model_set is None or e.model in model_set)
        and (robot_set is None or e.robot_id in robot_set)
        and (task_set is None or e.task in task_set)
    ]
    if not selected:
        asked = {"min_grade": min_grade, "models": model_set, "robots": robot_set, "tasks": task_set,
                 "accepted_only": accepted_only}
        filters = ", ".join(f"{k}={sorted(v) if isinstance(v, frozenset) else v!r}" for k, v in asked.items())
        there = (
            f"{len(with_data)} episodes with data: grades {sorted({e.grade for e in with_data})}, "
            f"models {sorted({e.model for e in with_data})}, robots {sorted({e.robot_id for e in with_data})}, "
            f"tasks {sorted({e.task for e in with_data})}"
        )
        raise DatasetError(str(dataset), f"no episodes match the filters ({filters}); the dataset has {there}")
    return selected

"""Merging datasets into one, with one consistent index and statistics.

Data segments are immutable, so a merge never rewrites them: each segment a
kept episode lives in is hard-linked into the new dataset (no bytes copied
on the same file system) or copied (``copy=True``, or across file systems).
The index rows are appended in input order with new entry ids; a raw
episode present in several inputs (same id and checksum) is kept once, from
the first input that has it; exclusions come along. Episode offsets stay
valid because segments keep their names and contents (a segment's name is
derived from what went into it, so two inputs holding a segment of the same
name hold the same bytes).

The result is built under a temporary name beside ``out`` and renamed into
place when complete: ``out`` is absent or whole.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.dataset.index import DATA_DIR, DatasetIndex, EpisodeEntry
from pipeline.dataset.store import Dataset, create_dataset
from pipeline.errors import DatasetError, StoreError
from pipeline.record_log import fsync_dir


@dataclass
class MergeSummary:
    inputs: int = 0
    rows: int = 0
    duplicates: int = 0
    segments_linked: int = 0
    segments_copied: int = 0
    excluded: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"merged {self.inputs} datasets: {self.rows} index rows ({self.duplicates} duplicates of raw episodes skipped, "
            f"{self.excluded} exclusions kept)",
            f"data segments: {self.segments_linked} hard-linked, {self.segments_copied} copied",
            *self.notes,
        ]


def merge_datasets(inputs: Sequence[Path], out: Path, *, copy: bool = False) -> MergeSummary:
    """Merge ``inputs`` (in order) into a new dataset ``out``.

    Raises:
        StoreError: ``out`` exists, or an input is not a dataset of this format.
    """
    if len(inputs) < 2:
        raise DatasetError(str(out), "merge needs at least two datasets")
    if out.exists():
        raise StoreError(str(out), "exists; merge writes a new dataset (choose another --out or remove it)")
    sources = [Dataset(path) for path in inputs]
    summary = MergeSummary(inputs=len(sources))
    fractions = {source.val_fraction for source in sources}
    if len(fractions) > 1:
        summary.notes.append(
            f"inputs have different validation fractions {sorted(fractions)}: each episode keeps the split its input gave it"
        )
    staging = out.with_name(f".{out.name}.merging-{uuid.uuid4().hex[:8]}")
    try:
        create_dataset(staging, val_fraction=sources[0].val_fraction)
        index = DatasetIndex(staging)
        seen: set[tuple[str, str]] = set()
        for source in sources:
            rows = source.index.entries()
            fresh: list[EpisodeEntry] = []
            for entry in rows:
                identity = (entry.raw_episode_id, entry.raw_checksum)
                if identity in seen:  # from an earlier input (the parts of a split episode come together)
                    summary.duplicates += 1
                    continue
                fresh.append(entry)
            seen.update((e.raw_episode_id, e.raw_checksum) for e in fresh)
            for segment in sorted({e.data_segment for e in fresh if e.data_segment}):
                if (staging / DATA_DIR / segment).exists():
                    continue
                linked = _bring_segment(source.path / DATA_DIR / segment, staging / DATA_DIR / segment, copy)
                summary.segments_linked += linked
                summary.segments_copied += not linked
            excluded = [(e, e.exclude_reason) for e in fresh if e.excluded]
            for e in fresh:
                e.excluded, e.exclude_reason = False, ""
            committed = index.commit(fresh, {"merged_from": str(source.path)})
            summary.rows += len(committed)
            by_reason: dict[str, list[int]] = {}
            for entry, reason in excluded:
                by_reason.setdefault(reason, []).append(entry.entry_id)  # commit assigned the new id
            for reason, ids in by_reason.items():
                summary.excluded += index.curate(ids, excluded=True, reason=reason)
        fsync_dir(staging / DATA_DIR)
        os.rename(staging, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _bring_segment(source: Path, target: Path, copy: bool) -> bool:
    """Hard-link (or copy) a segment's files; True if linked."""
    linked = not copy
    for folder, _, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in files:
            src, dst = Path(folder) / name, target / relative / name
            if linked:
                try:
                    os.link(src, dst)
                    continue
                except OSError:
                    linked = False  # another file system: copy from here on
            shutil.copy2(src, dst)
    return linked

"""``refinery upgrade``: a format-version-1 dataset rewritten in the current layout.

Version 1 kept a group per episode (``episodes/<key>/``), a group of
attributes per rejected raw episode (``rejected/<raw id>/``) and the whole
index in the root attributes. The upgrade reads each episode once and writes
it into data segments of many episodes (same arrays, the stored JPEG bytes
copied as they are), then commits the index rows, statistics and card in the
new form. The old dataset is only read; the new one is built under a
temporary name and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.dataset.frame_shards import read_jpeg_bytes
from pipeline.dataset.index import DATASET_FORMAT, NUMERIC_KEYS, TIMESTAMPS_KEY, DatasetIndex, EpisodeEntry
from pipeline.dataset.segment import EpisodeArrays, SegmentWriter
from pipeline.dataset.store import DEFAULT_VAL_FRACTION, create_dataset, read_root_attrs
from pipeline.errors import DatasetError, StoreError
from pipeline.record_log import fsync_dir

_V1_ENTRY_FIELDS = ("key", "raw_episode_id", "raw_checksum", "robot_id", "model", "task", "operator", "outcome",
                    "length", "rate_hz", "start_ns", "grade", "overall", "accepted", "reasons", "segment", "decisions",
                    "cameras", "stats")


@dataclass
class UpgradeSummary:
    episodes: int = 0
    rejected: int = 0
    segments: int = 0
    frames: int = 0

    def lines(self) -> list[str]:
        return [f"upgraded {self.episodes} episodes and {self.rejected} rejected raw episodes "
                f"into {self.segments} data segments ({self.frames} frames copied as stored)"]


def upgrade_dataset(old: Path, new: Path, *, segment_mb: int = 1024, val_fraction: float = DEFAULT_VAL_FRACTION) -> UpgradeSummary:
    """Rewrite the version-1 dataset ``old`` as a current dataset ``new``.

    Raises:
        StoreError: ``old`` is not a version-1 dataset, or ``new`` exists.
    """
    attrs = read_root_attrs(old)
    if attrs.get("format") != DATASET_FORMAT or attrs.get("format_version") != 1:
        version = attrs.get("format_version")
        raise StoreError(str(old), f"not a version-1 Refinery dataset (format_version {version!r}); nothing to upgrade")
    if new.exists():
        raise StoreError(str(new), "exists; upgrade writes a new dataset (choose another name or remove it)")
    summary = UpgradeSummary()
    staging = new.with_name(f".{new.name}.upgrading-{uuid.uuid4().hex[:8]}")
    root = zarr.open_group(str(old), mode="r")
    try:
        create_dataset(staging, val_fraction=val_fraction)
        index = DatasetIndex(staging)
        rows = [_entry(e) for e in attrs.get("episodes", [])]
        pending: list[EpisodeEntry] = []
        writer: SegmentWriter | None = None
        segment_attrs: dict[str, Any] = {}
        layout: Any = None
        size = 0
        for entry in rows:
            if not (entry.accepted and entry.key):
                entry.quality_json, entry.decisions_json, entry.attrs_json = _rejected_details(root, entry)
                pending.append(entry)
                summary.rejected += 1
                continue
            group = root[f"episodes/{entry.key}"]
            arrays, details = _episode(group, entry)
            this_layout = (entry.model, sorted((c, arrays.frame_size[c]) for c in arrays.frames))
            if writer is not None and (this_layout != layout or size >= segment_mb * 1024 * 1024):
                _publish(writer, segment_attrs, pending, index, summary)
                pending, writer, size = [], None, 0
            if writer is None:
                writer = SegmentWriter(staging, f"seg-v1-{uuid.uuid4().hex[:16]}")
                layout = this_layout
                segment_attrs = {"model": entry.model, "joint_names": details["joint_names"],
                                 "standard_names": details["standard_names"], "upgraded_from": str(old)}
            entry.quality_json, entry.decisions_json, entry.attrs_json = details["quality"], details["decisions"], details["attrs"]
            entry.data_segment = writer.segment_id
            entry.offset = writer.add(entry.key, arrays)
            size += sum(len(f) for frames in arrays.frames.values() for f in frames)
            summary.frames += sum(len(frames) for frames in arrays.frames.values())
            summary.episodes += 1
            pending.append(entry)
        if writer is not None or pending:
            _publish(writer, segment_attrs, pending, index, summary)
        fsync_dir(staging)
        os.rename(staging, new)
        fsync_dir(new.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _publish(
    writer: SegmentWriter | None, attrs: dict[str, Any], pending: list[EpisodeEntry], index: DatasetIndex,
    summary: UpgradeSummary,
) -> None:
    if writer is not None:
        writer.publish(attrs)
        summary.segments += 1
    index.commit(pending, {"upgraded": "format version 1 -> 2"})


def _entry(raw: dict[str, Any]) -> EpisodeEntry:
    missing = [f for f in _V1_ENTRY_FIELDS if f not in raw and f not in ("segment", "decisions", "cameras", "stats", "reasons")]
    if missing:
        raise DatasetError("version-1 index", f"an entry lacks {missing}: the dataset is damaged")
    return EpisodeEntry.from_dict({k: raw[k] for k in _V1_ENTRY_FIELDS if k in raw})


def _episode(group: zarr.Group, entry: EpisodeEntry) -> tuple[EpisodeArrays, dict[str, Any]]:
    numeric = {key: np.asarray(group[key][...]) for key in NUMERIC_KEYS if key in group}
    frames: dict[str, list[bytes]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    if "cameras" in group:
        for camera in sorted(group["cameras"].array_keys()):
            array = group["cameras"][camera]
            frames[camera] = read_jpeg_bytes(array, range(array.shape[0]))
            sizes[camera] = (int(array.shape[1]), int(array.shape[2]))
    arrays = EpisodeArrays(np.asarray(group[TIMESTAMPS_KEY][...]), numeric, frames, sizes)
    if arrays.length != entry.length:
        raise DatasetError(f"episodes/{entry.key}", f"holds {arrays.length} steps, its index entry says {entry.length}")
    attrs = dict(group.attrs)
    details = {
        "quality": json.dumps(attrs.get("quality", {})),
        "decisions": json.dumps(attrs.get("decisions", [])),
        "attrs": json.dumps({k: attrs.get(k) for k in ("raw_file", "joint_names", "standard_names", "deidentify")}),
        "joint_names": attrs.get("joint_names", []),
        "standard_names": attrs.get("standard_names", []),
    }
    return arrays, details


def _rejected_details(root: zarr.Group, entry: EpisodeEntry) -> tuple[str, str, str]:
    try:
        attrs = dict(root[f"rejected/{entry.raw_episode_id}"].attrs)
    except KeyError:
        return "{}", "[]", "{}"
    keep = {k: attrs.get(k) for k in ("raw_file", "joint_names", "standard_names", "deidentify")}
    return json.dumps(attrs.get("quality", {})), json.dumps(attrs.get("decisions", [])), json.dumps(keep)

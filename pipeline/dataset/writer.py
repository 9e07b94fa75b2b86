"""Writing one processed episode into the dataset, whole or not at all.

An episode is written into ``_staging/<key>-<random>`` and then renamed to
``episodes/<key>``: until the rename nothing under ``episodes/`` points at it,
and the driver adds it to the index only after the rename. A worker killed
half-way leaves a staging folder that the next job discards. Each episode's
camera shards hold only that episode's frames, so no shard ever has two
writers (DESIGN: Zarr 3 loses data when processes share a shard).

Layout of ``episodes/<key>/`` (README, "Dataset layout"):

    attrs                 episode metadata, quality report, cleaning decisions
    timestamps_ns         int64 (T,)           ingest clock of each step
    state/position        float32 (T, dof)     joints in the robot model's order
    state/velocity        float32 (T, dof)
    state/effort          float32 (T, dof)
    action/position       float32 (T, dof)     teleop targets
    cameras/<camera>      uint8 (T, H, W, 3)   RGB, one JPEG per chunk, sharded along time
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.dataset.frame_shards import write_jpeg_frames
from pipeline.dataset.index import EPISODES_GROUP, REJECTED_GROUP, STAGING_GROUP, KeyStats
from pipeline.record_log import fsync_dir

NUMERIC_CHUNK_STEPS = 1024


@dataclass
class EpisodeArrays:
    """What a processed episode stores: every array at one step rate."""

    timestamps_ns: np.ndarray  # int64 (T,)
    numeric: dict[str, np.ndarray]  # "state/position", "action/position", ... -> (T, dof)
    frames: dict[str, list[bytes]]  # camera -> T JPEGs (one per step, bytes as received where unchanged)
    frame_size: dict[str, tuple[int, int]]  # camera -> (height, width)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.timestamps_ns.shape[0])

    def stats(self) -> dict[str, dict[str, Any]]:
        """Mergeable statistics of every numeric key, for the dataset's normalisation stats."""
        return {key: KeyStats.of(values).__dict__ for key, values in self.numeric.items()}


def write_episode(
    dataset: Path,
    key: str,
    episode: EpisodeArrays,
    *,
    frames_per_shard: int = 128,
    before_publish: Callable[[], None] | None = None,
) -> Path:
    """Write ``episode`` as ``episodes/<key>`` and return that folder.

    ``before_publish`` runs after everything is written and before the rename
    (fault-injection tests kill the worker there).
    """
    root = zarr.open_group(str(dataset), mode="r+")
    staging_name = f"{key}-{uuid.uuid4().hex[:8]}"
    group = root.create_group(f"{STAGING_GROUP}/{staging_name}")
    group.attrs.update(episode.attrs)
    steps = max(1, min(episode.length, NUMERIC_CHUNK_STEPS))
    group.create_array("timestamps_ns", data=episode.timestamps_ns.astype(np.int64), chunks=(steps,))
    for name, values in episode.numeric.items():
        values = np.asarray(values, dtype=np.float32)
        group.create_array(name, data=values, chunks=(steps, *values.shape[1:]))
    if episode.frames:
        cameras = group.create_group("cameras")
        for camera, frames in episode.frames.items():
            height, width = episode.frame_size[camera]
            write_jpeg_frames(cameras, camera, frames, height, width, frames_per_shard=frames_per_shard)
    if before_publish is not None:
        before_publish()
    return _publish(dataset, staging_name, EPISODES_GROUP, key)


def write_rejected(dataset: Path, key: str, attrs: dict[str, Any]) -> Path:
    """Record a rejected raw episode as ``rejected/<key>``: attributes only (report, reasons)."""
    root = zarr.open_group(str(dataset), mode="r+")
    staging_name = f"{key}-{uuid.uuid4().hex[:8]}"
    group = root.create_group(f"{STAGING_GROUP}/{staging_name}")
    group.attrs.update(attrs)
    return _publish(dataset, staging_name, REJECTED_GROUP, key)


def _publish(dataset: Path, staging_name: str, parent: str, key: str) -> Path:
    staged = dataset / STAGING_GROUP / staging_name
    _fsync_tree(staged)  # the index may point here as soon as it is renamed: make it durable first
    final = dataset / parent / key
    if final.exists():
        # A previous attempt published this episode but its job died before the
        # commit; this attempt's copy replaces it (same input, same result).
        shutil.rmtree(final)
    os.rename(staged, final)
    fsync_dir(final.parent)
    return final


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))

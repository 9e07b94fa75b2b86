"""Writing a data segment: many episodes' arrays concatenated along time, published whole.

A dataset's data is a set of segments, ``data/<segment>/``, each written by
one task and never changed after (DESIGN: files grow with bytes, not with
episodes; one writer per shard)::

    data/<segment>/zarr.json      attributes: model, episodes [[key, offset, length], ...],
                                  joint_names, standard_names
    timestamps_ns                 int64 (T,)            ingest clock of each step
    state/position                float32 (T, dof)      joints in the robot model's order
    state/velocity, state/effort  float32 (T, dof)
    action/position               float32 (T, dof)      teleop targets
    cameras/<camera>              uint8 (T, H, W, 3)    RGB, one JPEG per chunk, sharded

Episode ``i`` of the segment is steps ``[offset, offset + length)`` of every
array (Diffusion Policy's ``episode_ends`` and LeRobot v3's per-episode
offsets are the same idea). Numeric arrays are one shard file each; camera
shards hold about ``shard_bytes`` of JPEG frames, so a segment of a gigabyte
is a few dozen files. An episode without some camera or key leaves empty
slots (fill value) or NaN rows there; its index row says what it holds.

The segment is written under ``_staging/`` and renamed into ``data/`` when
complete; the driver adds its episodes to the index only after that, so a
killed worker leaves a staging folder the next job discards. Camera shards are
written as they fill, so a worker holds about one shard per camera in memory,
however long the segment.
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

from pipeline.dataset.frame_shards import DIMENSION_NAMES, check_frame, encode_shard
from pipeline.dataset.index import DATA_DIR, STAGING_DIR, TIMESTAMPS_KEY
from pipeline.dataset.jpeg_codec import JpegCodec
from pipeline.dataset.stats import KeyStats
from pipeline.errors import DatasetError
from pipeline.record_log import fsync_dir

NUMERIC_CHUNK_STEPS = 4096
DEFAULT_SHARD_BYTES = 64 * 1024 * 1024
_MIN_FRAMES_PER_SHARD = 16
_MAX_FRAMES_PER_SHARD = 4096


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
        return {key: KeyStats.of(values).to_dict() for key, values in self.numeric.items()}


def frames_per_shard_for(frames: list[bytes], shard_bytes: int) -> int:
    """Frames per shard so that a shard holds about ``shard_bytes`` of frames like these."""
    mean = sum(len(f) for f in frames) / max(len(frames), 1)
    return int(np.clip(shard_bytes // max(mean, 1), _MIN_FRAMES_PER_SHARD, _MAX_FRAMES_PER_SHARD))


class _CameraShards:
    """One camera array of a segment, written a shard at a time."""

    def __init__(self, folder: Path, height: int, width: int, frames_per_shard: int, empty_steps: int) -> None:
        self.folder = folder
        self.height = height
        self.width = width
        self.frames_per_shard = frames_per_shard
        self.pending: list[bytes | None] = []
        self.shards = 0
        self.length = 0
        self.skip(empty_steps)

    def add(self, frames: list[bytes | None]) -> None:
        for frame in frames:
            self.pending.append(frame)
            self.length += 1
            if len(self.pending) == self.frames_per_shard:
                self._flush()

    def skip(self, steps: int) -> None:
        """Steps without a frame of this camera (another episode of the segment)."""
        self.add([None] * steps)

    def _flush(self) -> None:
        if any(frame is not None for frame in self.pending):
            # The key zarr's default chunk key encoding gives chunk (shard, 0, 0, 0).
            path = self.folder / "c" / str(self.shards) / "0" / "0" / "0"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(encode_shard(self.pending, self.frames_per_shard))
        self.shards += 1
        self.pending = []

    def finish(self, group: zarr.Group, name: str, quality: int) -> None:
        if self.pending:
            self._flush()
        group.create_array(
            name,
            shape=(self.length, self.height, self.width, 3),
            dtype=np.uint8,
            chunks=(1, self.height, self.width, 3),
            shards=(self.frames_per_shard, self.height, self.width, 3),
            serializer=JpegCodec(quality=quality),
            compressors=None,
            fill_value=0,
            dimension_names=DIMENSION_NAMES,
        )


class SegmentWriter:
    """Write episodes into a new data segment, then :meth:`publish` it.

    Args:
        dataset: The dataset folder.
        segment_id: The segment's name under ``data/``: derived from what goes
            in, so a retried task writes the same segment again.
        shard_bytes: About how many bytes of frames a camera shard holds.
        frames_per_shard: Fixed frames per shard instead (tests, tuning).
        jpeg_quality: The codec's level, used only if zarr itself ever encodes a frame.
    """

    def __init__(
        self,
        dataset: Path,
        segment_id: str,
        *,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        frames_per_shard: int | None = None,
        jpeg_quality: int = 90,
    ) -> None:
        self.dataset = dataset
        self.segment_id = segment_id
        self.staging = dataset / STAGING_DIR / f"{segment_id}-{uuid.uuid4().hex[:8]}"
        self.shard_bytes = shard_bytes
        self.frames_per_shard = frames_per_shard
        self.jpeg_quality = jpeg_quality
        self.length = 0
        self.episodes: list[tuple[str, int, int]] = []
        self._numeric: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._cameras: dict[str, _CameraShards] = {}
        self.staging.mkdir(parents=True)

    def add(self, key: str, episode: EpisodeArrays) -> int:
        """Append one episode; returns its offset (first step) in the segment."""
        where = f"{self.staging.name}, episode {key!r}"
        length = episode.length
        for camera, frames in episode.frames.items():
            if len(frames) != length:
                raise DatasetError(where, f"camera {camera!r} has {len(frames)} frames for {length} steps")
            height, width = episode.frame_size[camera]
            checked: set[int] = set()  # a frame held over several steps is one bytes object: check it once
            for n, frame in enumerate(frames):
                if id(frame) in checked:
                    continue
                try:
                    check_frame(frame, height, width)
                except DatasetError as err:
                    raise DatasetError(f"{where}, camera {camera!r}", err.problem, index=n) from err
                checked.add(id(frame))
            shards = self._cameras.get(camera)
            if shards is None:
                per_shard = self.frames_per_shard or frames_per_shard_for(frames, self.shard_bytes)
                shards = self._cameras[camera] = _CameraShards(
                    self.staging / "cameras" / camera, height, width, per_shard, self.length
                )
            elif (shards.height, shards.width) != (height, width):
                raise DatasetError(
                    where, f"camera {camera!r} is {width}x{height}, the segment's is {shards.width}x{shards.height}"
                )
        for name, values in {TIMESTAMPS_KEY: episode.timestamps_ns, **episode.numeric}.items():
            values = np.asarray(values)
            if values.shape[0] != length:
                raise DatasetError(where, f"{name} has {values.shape[0]} rows for {length} steps")
            known = self._numeric.get(name)
            if known and known[0][1].shape[1:] != values.shape[1:]:
                raise DatasetError(where, f"{name} has rows of {values.shape[1:]}, the segment's are {known[0][1].shape[1:]}")
            self._numeric.setdefault(name, []).append((self.length, values))
        for camera, shards in self._cameras.items():
            if camera in episode.frames:
                shards.add(list(episode.frames[camera]))
            else:
                shards.skip(length)
        offset = self.length
        self.length += length
        self.episodes.append((key, offset, length))
        return offset

    def publish(self, attrs: dict[str, Any], before_publish: Callable[[], None] | None = None) -> Path:
        """Write the arrays' metadata, make everything durable and rename the segment into ``data/``.

        ``before_publish`` runs after everything is written and before the
        rename (fault-injection tests kill the worker there).
        """
        group = zarr.open_group(str(self.staging), mode="a", zarr_format=3)
        group.attrs.update({**attrs, "episodes": [list(e) for e in self.episodes]})
        for name, parts in self._numeric.items():
            integer = name == TIMESTAMPS_KEY
            row_shape = parts[0][1].shape[1:]
            values = np.full((self.length, *row_shape), 0 if integer else np.nan,
                             dtype=np.int64 if integer else np.float32)
            for offset, part in parts:
                values[offset : offset + part.shape[0]] = part
            chunk = max(1, min(self.length, NUMERIC_CHUNK_STEPS))
            shard = -(-self.length // chunk) * chunk
            group.create_array(name, data=values, chunks=(chunk, *row_shape), shards=(shard, *row_shape))
        for camera, shards in self._cameras.items():
            shards.finish(group, f"cameras/{camera}", self.jpeg_quality)
        if before_publish is not None:
            before_publish()
        _fsync_tree(self.staging)
        final = self.dataset / DATA_DIR / self.segment_id
        if final.exists():
            # A previous attempt published this segment but its job died before
            # the commit; this attempt's copy replaces it (same input, same result).
            shutil.rmtree(final)
        os.rename(self.staging, final)
        fsync_dir(final.parent)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))

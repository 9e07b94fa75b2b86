"""Export a Refinery dataset as a LeRobotDataset (codebase version v3.0).

What LeRobot 0.6.1 reads (``LeRobotDataset(repo_id, root=OUT)``; the layout
is in :mod:`pipeline.interop.lerobot_layout`)::

    OUT/meta/info.json                  fps, robot_type (the robot model), features, totals, splits
    OUT/meta/stats.json                 per feature: min, max, mean, std, count, q01, q10, q50, q90, q99
    OUT/meta/tasks.parquet              task text (pandas index) -> task_index
    OUT/meta/episodes/chunk-000/file-000.parquet
                                        one row per episode: its frames (dataset_from_index,
                                        dataset_to_index, data/chunk_index, data/file_index), its
                                        video span per camera (videos/<key>/chunk_index, file_index,
                                        from_timestamp, to_timestamp), tasks, length, stats/<key>/<stat>,
                                        and Refinery's columns refinery/* (below)
    OUT/data/chunk-000/file-000.parquet one row per step, many episodes per file (one row group each)
    OUT/videos/<key>/chunk-000/file-000.mp4
                                        one camera's frames, many episodes back to back
    OUT/meta/refinery.json              what LeRobot has no field for, per dataset (below)

Features (default names; ``keys`` renames or selects, as for the Diffusion
Policy export)::

    state/position   -> observation.state          float32 (dof,)  names: the robot's joint names
    state/velocity   -> observation.velocity       float32 (dof,)
    state/effort     -> observation.effort         float32 (dof,)
    action/position  -> action                     float32 (dof,)
    timestamps_ns    -> refinery.timestamp_ns      int64 (1,)  the step's time on the ingest clock
    cameras/<camera> -> observation.images.<camera>  video (H, W, 3)
    (always)            timestamp, frame_index, episode_index, index, task_index

``timestamp`` is ``frame_index / fps`` (what LeRobot queries its videos
with); the time each step was recorded is ``refinery.timestamp_ns``. A
feature not under ``observation.`` or ``action`` is not an input to
LeRobot's policies (``dataset_to_policy_features`` skips it), so the extra
column is carried without changing what a policy sees.

Video: every frame is decoded once from the dataset's JPEG bytes (resized
with ``image_size``) and encoded with PyAV, ``yuv420p``, at the dataset's
rate, one frame per 1/fps: frame ``i`` of a file is at ``i / fps`` s, and an
episode's ``from_timestamp`` is where its first frame lies in its file. The
default codec is H.264 (libx264, ``crf`` 23), which every FFmpeg decodes (PyAV,
which LeRobot falls back to, and torchcodec with any system FFmpeg);
``libsvtav1`` is LeRobot's own default (``crf`` 30; at ``gop`` 2 about the
same size and PSNR here, slower to encode). ``gop`` (keyframe interval) is 2
by default, as LeRobot's: a random frame costs at most one extra decode; a
longer one makes files several times smaller and random frames dearer.

Refinery's extras, where LeRobot ignores them:

* episodes parquet: ``refinery/episode_key``, ``refinery/raw_episode_id``,
  ``refinery/robot_id``, ``refinery/model``, ``refinery/grade``,
  ``refinery/overall``, ``refinery/split``, ``refinery/operator``,
  ``refinery/start_ns`` (ingest clock of step 0), ``refinery/indicators``
  (JSON ``{name: {"value", "score"}}`` of the quality report);
  ``load_episodes`` keeps every column but ``stats/*`` and reads none of these;
* ``meta/refinery.json``: the source dataset, the key mapping, the joint
  names and their standard humanoid names, the video settings. LeRobot
  reads ``meta/info.json``, ``stats.json``, ``tasks.parquet`` and
  ``episodes/`` only; an extra key in ``info.json`` would be logged as an
  unknown field on every load, so the extras stay out of it.

Splits: Refinery's train/val split is per episode; episodes are written train
first, then val, so ``info.json`` ``splits`` gives each as a range of episode
indices (``{"train": "0:8", "val": "8:10"}``).

One robot model per export (the features, the rate and the joint names are
one schema), one rate, and one frame size per camera (``image_size``). The
export is written under a temporary name beside ``out`` and renamed into
place when complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.frame_shards import read_jpeg_bytes
from pipeline.dataset.index import (
    CAMERA_PREFIX,
    KEY_COUNT_COLUMNS,
    LIGHT_COLUMNS,
    TIMESTAMPS_KEY,
    EpisodeEntry,
    select_episodes,
)
from pipeline.dataset.jpeg_codec import decode_jpeg_chunk
from pipeline.dataset.store import Dataset
from pipeline.errors import DatasetError
from pipeline.interop import Format
from pipeline.interop import lerobot_layout as layout
from pipeline.interop.selection import (
    check_image_size,
    output_path,
    publish,
    selection_from_args,
    size_on_disk,
    staging_path,
)
from pipeline.interop.source_rows import (
    Run,
    check_keys_present,
    common_keys,
    row_shapes,
    runs,
    segment_arrays,
)

EXPORT_FORMAT = "refinery-lerobot-export"
EXPORT_FORMAT_VERSION = 1
REFINERY_META_PATH = "meta/refinery.json"
DEFAULT_NAMES: dict[str, str] = {
    "state/position": layout.OBS_STATE,
    "state/velocity": "observation.velocity",
    "state/effort": "observation.effort",
    "action/position": layout.ACTION,
    TIMESTAMPS_KEY: "refinery.timestamp_ns",
}
"""LeRobot feature names of the dataset's numeric keys (cameras: ``observation.images.<camera>``)."""

VCODECS: dict[str, tuple[str, int]] = {
    "h264": ("libx264", 23),
    "libsvtav1": ("libsvtav1", 30),
    "hevc": ("libx265", 28),
}
"""``--vcodec`` -> (PyAV encoder, default ``crf``)."""
PIX_FMT = "yuv420p"
DEFAULT_GOP = 2

INDEX_COLUMNS = (*LIGHT_COLUMNS, *KEY_COUNT_COLUMNS, "attrs_json", "quality_json")
# A feature name is one path segment (video keys name folders) without "/" (LeRobot refuses "/").
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
# Steps read per request from a run of episodes: bounds memory on long runs.
_ROWS_PER_READ = 1 << 16
_FRAMES_PER_READ = 256
_EPISODE_ROWS_PER_WRITE = 1000
# LeRobot's image statistics (compute_stats.py): sampled frames, downsampled to ~150 px.
_STATS_MIN_SAMPLES, _STATS_MAX_SAMPLES, _STATS_POWER = 100, 10_000, 0.75
_STATS_TARGET_SIZE, _STATS_DOWNSAMPLE_ABOVE = 150, 300


@dataclass(frozen=True)
class VideoSettings:
    """How camera frames are encoded.

    Attributes:
        vcodec: ``h264`` (libx264), ``libsvtav1`` (AV1) or ``hevc`` (libx265).
        crf: Constant rate factor: lower is better quality and larger files.
        gop: Frames per group of pictures (keyframe interval).
    """

    vcodec: str = "h264"
    crf: int | None = None
    gop: int = DEFAULT_GOP

    @property
    def encoder(self) -> str:
        return VCODECS[self.vcodec][0]

    @property
    def quality(self) -> int:
        return VCODECS[self.vcodec][1] if self.crf is None else self.crf

    def options(self) -> dict[str, str]:
        opts = {"g": str(self.gop), "crf": str(self.quality)}
        if self.vcodec == "libsvtav1":
            opts["preset"] = "12"  # LeRobot's LIBSVTAV1_DEFAULT_PRESET
        elif self.vcodec == "h264":
            opts["preset"] = "veryfast"
        return opts

    def check(self, out: Path) -> None:
        if self.vcodec not in VCODECS:
            raise DatasetError(str(out), f"vcodec {self.vcodec!r} is not supported; use one of {list(VCODECS)}")
        top = 63 if self.vcodec == "libsvtav1" else 51
        if self.crf is not None and (isinstance(self.crf, bool) or not isinstance(self.crf, int)
                                     or not 0 <= self.crf <= top):
            raise DatasetError(str(out), f"crf must be an integer 0-{top} for {self.vcodec}, got {self.crf!r}")
        if isinstance(self.gop, bool) or not isinstance(self.gop, int) or not 1 <= self.gop <= 1000:
            raise DatasetError(str(out), f"gop must be an integer 1-1000, got {self.gop!r}")
        import av

        try:
            av.codec.Codec(self.encoder, "w")
        except Exception as err:  # PyAV raises its own error types for an unknown codec
            raise DatasetError(str(out), f"this PyAV (FFmpeg {av.ffmpeg_version_info}) has no {self.encoder} "
                               f"encoder for --vcodec {self.vcodec}: choose another --vcodec") from err


@dataclass(frozen=True)
class LeRobotExportSummary:
    """What an export wrote.

    Attributes:
        path: The LeRobotDataset folder.
        episodes: Episodes exported.
        frames: Frames (steps) in total.
        fps: Frames per second.
        keys: Dataset key -> LeRobot feature name.
        shapes: Feature name -> per-frame shape.
        files: Data parquet files, and video files per camera feature.
        bytes: Size on disk.
        episode_keys: Dataset episode keys, in ``episode_index`` order.
    """

    path: Path
    episodes: int
    frames: int
    fps: int
    keys: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    files: dict[str, int]
    bytes: int
    episode_keys: tuple[str, ...]

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        head = (f"wrote {self.path}: LeRobotDataset {layout.CODEBASE_VERSION}, {self.episodes} episodes, "
                f"{self.frames} frames at {self.fps} fps, {self.bytes / 1e6:.1f} MB")
        out = [head]
        for key, name in self.keys.items():
            files = f", {self.files[name]} file(s)" if name in self.files else ""
            out.append(f"  {name:<32} {self.shapes[name]}{files}  <- {key}")
        return out


def default_key_names(keys: Iterable[str]) -> dict[str, str]:
    """The default LeRobot feature name of each dataset key (see the module docstring)."""
    names = {}
    for key in sorted(set(keys)):
        if key.startswith(CAMERA_PREFIX):
            names[key] = f"{layout.OBS_IMAGES}.{key.removeprefix(CAMERA_PREFIX)}"
        else:
            names[key] = DEFAULT_NAMES.get(key, key.replace("/", "."))
    return names


def export_lerobot(
    dataset: Path,
    out: Path,
    *,
    keys: Mapping[str, str] | None = None,
    min_grade: str | None = None,
    models: str | Iterable[str] | None = None,
    robots: str | Iterable[str] | None = None,
    tasks: str | Iterable[str] | None = None,
    split: str | None = None,
    image_size: tuple[int, int] | None = None,
    video: VideoSettings = VideoSettings(),
    data_file_size_mb: float = layout.DEFAULT_DATA_FILE_SIZE_IN_MB,
    video_file_size_mb: float = layout.DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> LeRobotExportSummary:
    """Write the accepted episodes of ``dataset`` as a LeRobotDataset v3.0 folder.

    Args:
        dataset: A Refinery Zarr dataset.
        out: The folder to write (``LeRobotDataset(repo_id, root=out)`` opens it).
        keys: Dataset key -> feature name; only these keys are exported. None:
            every key all selected episodes have, named by :func:`default_key_names`.
        min_grade, models, robots, tasks, split: Episode filters, as for
            :func:`~pipeline.dataset.index.select_episodes`.
        image_size: ``(height, width)`` to resize every frame to; None keeps them.
        video: Codec, quality and keyframe interval.
        data_file_size_mb: Start a new data parquet file past this size.
        video_file_size_mb: Start a new video file past this size.
        overwrite: Replace ``out`` if it exists.
        progress: Called with (episodes done, episodes in total, episode key).

    Returns:
        What was written.

    Raises:
        DatasetError: No episode passes the filters, episodes of several
            robot models or rates, a key missing from an episode, a bad
            feature name or setting, an odd frame size, or ``out`` exists.
        StoreError: ``dataset`` is not a Refinery dataset.
    """
    dataset = Path(dataset)
    out = Path(out)
    video.check(out)
    for name, value in (("data_file_size_mb", data_file_size_mb), ("video_file_size_mb", video_file_size_mb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100_000:
            raise DatasetError(str(out), f"{name} must be a number of MB above 0, got {value!r}")
    size = check_image_size(out, image_size)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DatasetError(str(out), "already exists: remove it, choose another path, or pass --overwrite")

    source = Dataset(dataset)
    entries = select_episodes(
        dataset, columns=INDEX_COLUMNS, min_grade=min_grade, models=models, robots=robots, tasks=tasks, split=split
    )
    fps = _one_model_and_rate(dataset, entries)
    # Train episodes first, then val: info.json's splits are ranges of episode indices.
    entries = sorted(entries, key=lambda e: {"train": 0, "val": 1}.get(e.split, 2))
    mapping = _key_mapping(dataset, entries, keys)
    arrays = segment_arrays(source, entries, mapping)
    shapes = row_shapes(dataset, entries, arrays, size, "a LeRobotDataset")
    for key, shape in shapes.items():
        if key.startswith(CAMERA_PREFIX) and (shape[0] % 2 or shape[1] % 2):
            raise DatasetError(f"{dataset} key {key!r}", f"frames of {shape[1]}x{shape[0]} pixels: {PIX_FMT} video "
                               "needs an even width and height; resize them (--resize HxW)")

    staging = staging_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = _LeRobotWriter(staging, dataset, entries, arrays, mapping, shapes, size, fps, video,
                                data_file_size_mb, video_file_size_mb)
        files = writer.write(progress)
        publish(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return LeRobotExportSummary(
        path=out,
        episodes=len(entries),
        frames=int(sum(e.length for e in entries)),
        fps=fps,
        keys=dict(mapping),
        shapes={name: shapes[key] if key.startswith(CAMERA_PREFIX) else (shapes[key] or (1,))
                for key, name in mapping.items()},
        files=files,
        bytes=size_on_disk(out),
        episode_keys=tuple(e.key for e in entries),
    )


def _one_model_and_rate(dataset: Path, entries: list[EpisodeEntry]) -> int:
    models = sorted({e.model for e in entries})
    if len(models) > 1:
        raise DatasetError(str(dataset), f"the selected episodes are of robot models {models}; a LeRobotDataset "
                           "holds one robot's features: export one model at a time (--model NAME)")
    rates = sorted({e.rate_hz for e in entries})
    if len(rates) > 1:
        raise DatasetError(str(dataset), f"the selected episodes have rates {rates} Hz; a LeRobotDataset has one fps: "
                           "select episodes of one rate (e.g. by --robot or --task)")
    fps = rates[0]
    if not (fps > 0 and float(fps).is_integer()):
        raise DatasetError(str(dataset), f"rate {fps} Hz is not a whole number of frames per second, which "
                           "LeRobot's fps must be: reprocess at a whole rate")
    return int(fps)


def _key_mapping(dataset: Path, entries: list[EpisodeEntry], keys: Mapping[str, str] | None) -> dict[str, str]:
    if keys is None:
        mapping = default_key_names(common_keys(entries))
    else:
        mapping = dict(keys)
        if not mapping:
            raise DatasetError(str(dataset), "keys is empty: name at least one dataset key to export")
        check_keys_present(dataset, entries, mapping)
    names = list(mapping.values())
    for name in names:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DatasetError(str(dataset), f"feature name {name!r} must be 1-128 letters, digits, '_', '.' or '-' "
                               "(no '/'), not starting with '.' or '-'")
        if name in layout.DEFAULT_FEATURES:
            raise DatasetError(str(dataset), f"feature name {name!r} is one LeRobot writes itself; choose another")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(str(dataset), f"feature names {duplicates} are given to more than one key")
    return mapping


@dataclass
class _EpisodeRow:
    """What the episodes parquet says of one episode, filled in as its data and videos are written."""

    columns: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


class _LeRobotWriter:
    """Writes one LeRobotDataset folder from the selected episodes, run by run."""

    def __init__(
        self,
        root: Path,
        dataset: Path,
        entries: list[EpisodeEntry],
        arrays: Mapping[str, Mapping[str, Any]],
        mapping: Mapping[str, str],
        shapes: Mapping[str, tuple[int, ...]],
        size: tuple[int, int] | None,
        fps: int,
        video: VideoSettings,
        data_file_size_mb: float,
        video_file_size_mb: float,
    ) -> None:
        self.root = root
        self.dataset = dataset
        self.entries = entries
        self.arrays = arrays
        self.mapping = mapping
        self.shapes = shapes
        self.size = size
        self.fps = fps
        self.video = video
        self.data_file_size_mb = data_file_size_mb
        self.video_file_size_mb = video_file_size_mb
        self.numeric = [k for k in mapping if not k.startswith(CAMERA_PREFIX)]
        self.cameras = [k for k in mapping if k.startswith(CAMERA_PREFIX)]
        self.task_index: dict[str, int] = {}
        for entry in entries:
            self.task_index.setdefault(entry.task, len(self.task_index))
        self.attrs = entries[0].attrs
        self.features = self._features()

    # -- schema ---------------------------------------------------------------

    def _features(self) -> dict[str, dict[str, Any]]:
        joints = self.attrs.get("joint_names")
        features: dict[str, dict[str, Any]] = {}
        for key in self.numeric:
            shape = list(self.shapes[key]) or [1]
            per_joint = isinstance(joints, list) and shape == [len(joints)] and key != TIMESTAMPS_KEY
            names = list(joints) if per_joint else None
            dtype = "int64" if key == TIMESTAMPS_KEY else "float32"
            features[self.mapping[key]] = {"dtype": dtype, "shape": shape, "names": names}
        for key in self.cameras:
            height, width, channels = self.shapes[key]
            features[self.mapping[key]] = {
                "dtype": "video",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": height,
                    "video.width": width,
                    "video.codec": _canonical_codec(self.video.encoder),
                    "video.pix_fmt": PIX_FMT,
                    "video.fps": self.fps,
                    "video.channels": channels,
                    "has_audio": False,
                    "video.g": self.video.gop,
                    "video.crf": self.video.quality,
                    "video.preset": self.video.options().get("preset"),
                    "video.fast_decode": 0,
                    "video.video_backend": "pyav",
                    "video.extra_options": {},
                    "is_depth_map": False,
                },
            }
        features.update(json.loads(json.dumps(layout.DEFAULT_FEATURES)))
        return features

    def _arrow_schema(self) -> pa.Schema:
        fields = []
        for name, feature in self.features.items():
            if feature["dtype"] == "video":
                continue
            value = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
            shape = feature["shape"]
            fields.append(pa.field(name, value if shape == [1] else pa.list_(value, shape[0])))
        hf = {name: ({"dtype": f["dtype"], "_type": "Value"} if f["shape"] == [1] else
                     {"feature": {"dtype": f["dtype"], "_type": "Value"}, "length": f["shape"][0], "_type": "List"})
              for name, f in self.features.items() if f["dtype"] != "video"}
        # The schema Hugging Face datasets writes for these features (LeRobot reads it with the same).
        return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf}})})

    # -- writing --------------------------------------------------------------

    def write(self, progress: Callable[[int, int, str], None] | None) -> dict[str, int]:
        self.root.mkdir(parents=True)
        schema = self._arrow_schema()
        data = _RollingParquet(self.root, layout.data_path, schema, self.data_file_size_mb)
        videos = {key: _VideoFiles(self.root, self.mapping[key], self.shapes[key], self.fps, self.video,
                                   self.video_file_size_mb) for key in self.cameras}
        rows: list[_EpisodeRow] = []
        index = 0
        try:
            for run in runs(self.entries):
                for part in _split_run(run, _ROWS_PER_READ):
                    numeric = {key: np.asarray(self.arrays[part.segment][key][part.start:part.stop])
                               for key in self.numeric}
                    for entry in part.entries:
                        episode_index = len(rows)
                        row = _EpisodeRow()
                        at = slice(entry.offset - part.start, entry.end - part.start)
                        table, row.stats = self._frame_table(schema, entry, episode_index, index,
                                                             {k: v[at] for k, v in numeric.items()})
                        chunk, file = data.add(table)
                        row.columns.update({
                            "episode_index": episode_index,
                            "data/chunk_index": chunk, "data/file_index": file,
                            "dataset_from_index": index, "dataset_to_index": index + entry.length,
                        })
                        for key, files in videos.items():
                            name = self.mapping[key]
                            sampled = self._encode_episode(part.segment, key, entry, files)
                            row.columns.update({layout.video_column(name, k): v for k, v in files.last.items()})
                            row.stats[name] = _image_stats(sampled)
                        rows.append(row)
                        index += entry.length
                        if progress is not None:
                            progress(len(rows), len(self.entries), entry.key)
        finally:
            data.close()
            for files in videos.values():
                files.close()
        self._write_meta(rows, index)
        counts = {self.mapping[key]: files.count for key, files in videos.items()}
        counts["data"] = data.count
        return counts

    def _frame_table(
        self, schema: pa.Schema, entry: EpisodeEntry, episode_index: int, first_index: int,
        numeric: Mapping[str, np.ndarray],
    ) -> tuple[pa.Table, dict[str, dict[str, np.ndarray]]]:
        n = entry.length
        frame_index = np.arange(n, dtype=np.int64)
        columns: dict[str, np.ndarray] = {}
        for key in self.numeric:
            name = self.mapping[key]
            values = numeric[key]
            columns[name] = values.astype(np.int64 if key == TIMESTAMPS_KEY else np.float32, copy=False)
        columns["timestamp"] = (frame_index / self.fps).astype(np.float32)
        columns["frame_index"] = frame_index
        columns["episode_index"] = np.full(n, episode_index, dtype=np.int64)
        columns["index"] = np.arange(first_index, first_index + n, dtype=np.int64)
        columns["task_index"] = np.full(n, self.task_index[entry.task], dtype=np.int64)
        arrays = []
        for f in schema:
            values = columns[f.name]
            if values.ndim == 1 and not pa.types.is_fixed_size_list(f.type):
                arrays.append(pa.array(values, type=f.type))
            else:
                flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=f.type.value_type)
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
        stats = {name: _vector_stats(values) for name, values in columns.items()}
        return pa.Table.from_arrays(arrays, schema=schema), stats

    def _encode_episode(self, segment: str, key: str, entry: EpisodeEntry, files: _VideoFiles) -> list[np.ndarray]:
        """Encodes one episode's frames of one camera; returns LeRobot's stats sample of them (CHW, downsampled)."""
        array = self.arrays[segment][key]
        stored = (int(array.shape[1]), int(array.shape[2]), 3)
        picks = set(_sample_indices(entry.length))
        sampled = []
        files.start_episode()
        for first in range(entry.offset, entry.end, _FRAMES_PER_READ):
            last = min(entry.end, first + _FRAMES_PER_READ)
            jpegs = read_jpeg_bytes(array, range(first, last))
            for i, jpeg in enumerate(jpegs):
                step = first - entry.offset + i
                try:
                    image = decode_jpeg_chunk(jpeg, stored)
                except DatasetError as err:
                    raise DatasetError(f"{self.dataset} episode {entry.key!r} {key}", err.problem, index=step) from err
                if self.size is not None and image.shape[:2] != self.size:
                    shrinking = image.shape[0] * image.shape[1] > self.size[0] * self.size[1]
                    image = cv2.resize(image, (self.size[1], self.size[0]),
                                       interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
                files.add_frame(image)
                if step in picks:
                    sampled.append(_downsample(image.transpose(2, 0, 1)))
        files.end_episode()
        return sampled

    def _write_meta(self, rows: list[_EpisodeRow], total_frames: int) -> None:
        meta = self.root / "meta"
        meta.mkdir(exist_ok=True)
        entries = self.entries
        splits = {}
        for name in ("train", "val"):
            where = [i for i, e in enumerate(entries) if e.split == name]
            if where:
                splits[name] = f"{where[0]}:{where[-1] + 1}"
        if not splits:
            splits = {"train": f"0:{len(entries)}"}
        info = {
            "codebase_version": layout.CODEBASE_VERSION,
            "robot_type": entries[0].model,
            "total_episodes": len(entries),
            "total_frames": total_frames,
            "total_tasks": len(self.task_index),
            "chunks_size": layout.DEFAULT_CHUNK_SIZE,
            "data_files_size_in_mb": self.data_file_size_mb,
            "video_files_size_in_mb": self.video_file_size_mb,
            "fps": self.fps,
            "splits": splits,
            "data_path": layout.DATA_PATH,
            "video_path": layout.VIDEO_PATH if self.cameras else None,
            "features": self.features,
        }
        _write_json(self.root / layout.INFO_PATH, info)
        _write_json(self.root / layout.STATS_PATH, _jsonable(_aggregate_stats([r.stats for r in rows])))
        _write_tasks(self.root / layout.TASKS_PATH, self.task_index)
        self._write_episodes(rows)
        joints = self.attrs.get("joint_names")
        standard = self.attrs.get("standard_names")
        _write_json(self.root / REFINERY_META_PATH, {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "source": str(self.dataset.resolve()),
            "robot_model": entries[0].model,
            "keys": dict(self.mapping),
            "joint_names": joints if isinstance(joints, list) else None,
            "standard_joint_names": standard if isinstance(standard, list) else None,
            "image_size": list(self.size) if self.size else None,
            "video": {"vcodec": self.video.vcodec, "encoder": self.video.encoder, "crf": self.video.quality,
                      "gop": self.video.gop, "pix_fmt": PIX_FMT},
            "timestamp": "frame_index / fps; the ingest clock of each step is refinery.timestamp_ns when exported",
            "episode_columns": list(_extra_columns(entries[0])),
        })

    def _write_episodes(self, rows: list[_EpisodeRow]) -> None:
        for number, start in enumerate(range(0, len(rows), _EPISODE_ROWS_PER_WRITE)):
            chunk, file = layout.chunk_and_file(number)
            batch = rows[start:start + _EPISODE_ROWS_PER_WRITE]
            records = []
            for row, entry in zip(batch, self.entries[start:start + _EPISODE_ROWS_PER_WRITE], strict=True):
                record = dict(row.columns)
                record["tasks"] = [entry.task]
                record["length"] = entry.length
                for feature, stats in row.stats.items():
                    for stat, value in stats.items():
                        record[layout.stats_column(feature, stat)] = value.tolist()
                record["meta/episodes/chunk_index"] = chunk
                record["meta/episodes/file_index"] = file
                record.update(_extra_columns(entry))
                records.append(record)
            path = self.root / layout.episodes_path(chunk, file)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(records), path, compression="snappy")


def _extra_columns(entry: EpisodeEntry) -> dict[str, Any]:
    indicators = {}
    for item in entry.quality.get("indicators", []):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            indicators[item["name"]] = {"value": item.get("value"), "score": item.get("score")}
    return {
        "refinery/episode_key": entry.key,
        "refinery/raw_episode_id": entry.raw_episode_id,
        "refinery/robot_id": entry.robot_id,
        "refinery/model": entry.model,
        "refinery/grade": entry.grade,
        "refinery/overall": float(entry.overall),
        "refinery/split": entry.split,
        "refinery/operator": entry.operator,
        "refinery/start_ns": int(entry.start_ns),
        "refinery/indicators": json.dumps(indicators, sort_keys=True),
    }


def _split_run(run: Run, rows: int) -> list[Run]:
    """A run cut at episode boundaries into parts of about ``rows`` steps (one read per key each)."""
    parts: list[Run] = []
    group: list[EpisodeEntry] = []
    for entry in run.entries:
        if group and entry.end - group[0].offset > rows:
            parts.append(Run(run.segment, group[0].offset, group[-1].end, tuple(group)))
            group = []
        group.append(entry)
    parts.append(Run(run.segment, group[0].offset, group[-1].end, tuple(group)))
    return parts


class _RollingParquet:
    """Frame rows into ``data/chunk-*/file-*.parquet``, one row group per episode, a new file past the size limit."""

    def __init__(self, root: Path, path_of: Callable[[int, int], str], schema: pa.Schema, limit_mb: float) -> None:
        self.root = root
        self.path_of = path_of
        self.schema = schema
        self.limit = limit_mb * 1024 * 1024
        self.count = 0
        self.writer: pq.ParquetWriter | None = None
        self.path: Path | None = None

    def add(self, table: pa.Table) -> tuple[int, int]:
        if self.writer is not None and self.path is not None and self._written() >= self.limit:
            self.writer.close()
            self.writer = None
        if self.writer is None:
            chunk, file = layout.chunk_and_file(self.count)
            self.path = self.root / self.path_of(chunk, file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="snappy", use_dictionary=True)
            self.count += 1
        self.writer.write_table(table)
        return layout.chunk_and_file(self.count - 1)

    def _written(self) -> int:
        return self.path.stat().st_size if self.path is not None else 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _VideoFiles:
    """One camera's frames into ``videos/<key>/chunk-*/file-*.mp4``, episodes back to back, a new file past the limit."""

    def __init__(self, root: Path, name: str, shape: tuple[int, ...], fps: int, video: VideoSettings,
                 limit_mb: float) -> None:
        self.root = root
        self.name = name
        self.height, self.width = int(shape[0]), int(shape[1])
        self.fps = fps
        self.video = video
        self.limit = limit_mb * 1024 * 1024
        self.count = 0
        self.container: Any = None
        self.stream: Any = None
        self.path: Path | None = None
        self.frames = 0  # frames in the open file
        self.bytes = 0  # encoded bytes in the open file
        self.first = 0  # the current episode's first frame in the open file
        self.last: dict[str, Any] = {}

    def start_episode(self) -> None:
        if self.container is not None and self.bytes >= self.limit:
            self._close_file()
        if self.container is None:
            self._open_file()
        self.first = self.frames

    def add_frame(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames
        self._mux(self.stream.encode(frame))
        self.frames += 1

    def _mux(self, packets: list[Any]) -> None:
        # Counted as muxed: the file on disk lags behind by the muxer's buffer.
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)

    def end_episode(self) -> None:
        chunk, file = layout.chunk_and_file(self.count - 1)
        self.last = {"chunk_index": chunk, "file_index": file,
                     "from_timestamp": self.first / self.fps, "to_timestamp": self.frames / self.fps}

    def _open_file(self) -> None:
        import av

        # SVT-AV1 prints its configuration to stderr unless told otherwise (1: errors only).
        os.environ.setdefault("SVT_LOG", "1")
        chunk, file = layout.chunk_and_file(self.count)
        self.path = self.root / layout.video_path(self.name, chunk, file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w", format="mp4")
        self.stream = self.container.add_stream(self.video.encoder, rate=self.fps, options=self.video.options())
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = PIX_FMT
        self.count += 1
        self.frames = 0
        self.bytes = 0

    def _close_file(self) -> None:
        self._mux(self.stream.encode())
        self.container.close()
        self.container = self.stream = None

    def close(self) -> None:
        if self.container is not None:
            self._close_file()


# -- statistics, as LeRobot's compute_stats.py lays them out ------------------------------


def _vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std, count, quantiles per column (a 1-D feature gives shape (1,))."""
    data = values.reshape(len(values), -1).astype(np.float64)
    stats = {
        "min": data.min(axis=0), "max": data.max(axis=0), "mean": data.mean(axis=0), "std": data.std(axis=0),
        "count": np.array([len(values)], dtype=np.int64),
    }
    for name, q in zip(layout.STAT_NAMES[5:], np.quantile(data, layout.QUANTILES, axis=0), strict=True):
        stats[name] = q
    return stats


def _image_stats(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel stats in [0, 1] over sampled uint8 CHW frames, shaped (3, 1, 1); count is the frames sampled.

    Exact, from a 256-bin histogram per channel: a float copy and a sort of
    millions of pixels per episode cost more than encoding the video.
    """
    channels = frames[0].shape[0]
    histograms = np.zeros((channels, 256), dtype=np.int64)
    for frame in frames:
        for c in range(channels):
            histograms[c] += np.bincount(frame[c].reshape(-1), minlength=256)
    levels = np.arange(256, dtype=np.float64)
    stats: dict[str, list[float]] = {name: [] for name in layout.STAT_NAMES if name != "count"}
    for counts in histograms:
        n = int(counts.sum())
        mean = float(counts @ levels) / n
        present = np.flatnonzero(counts)
        stats["min"].append(float(present[0]))
        stats["max"].append(float(present[-1]))
        stats["mean"].append(mean)
        stats["std"].append(float(np.sqrt(max(0.0, float(counts @ (levels - mean) ** 2) / n))))
        ends = np.cumsum(counts)  # the sorted pixels: value v fills positions [ends[v-1], ends[v])
        for name, q in zip(layout.STAT_NAMES[5:], layout.QUANTILES, strict=True):
            position = q * (n - 1)  # numpy's default (linear) quantile
            below, above = (int(np.searchsorted(ends, k, side="right")) for k in (math.floor(position),
                                                                                  math.ceil(position)))
            stats[name].append(below + (position - math.floor(position)) * (above - below))
    shaped = {name: np.array(values).reshape(-1, 1, 1) / 255.0 for name, values in stats.items()}
    shaped["count"] = np.array([len(frames)], dtype=np.int64)
    return shaped


def _sample_indices(length: int) -> list[int]:
    samples = max(min(_STATS_MIN_SAMPLES, length), min(int(length**_STATS_POWER), _STATS_MAX_SAMPLES))
    return np.round(np.linspace(0, length - 1, samples)).astype(int).tolist()


def _downsample(image: np.ndarray) -> np.ndarray:
    _, height, width = image.shape
    if max(height, width) < _STATS_DOWNSAMPLE_ABOVE:
        return image
    factor = int(width / _STATS_TARGET_SIZE) if width > height else int(height / _STATS_TARGET_SIZE)
    return image[:, ::factor, ::factor]


def _aggregate_stats(per_episode: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """LeRobot's aggregate_stats: count-weighted means, pooled variance, extreme min/max, weighted quantiles."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for feature in per_episode[0]:
        items = [s[feature] for s in per_episode]
        counts = np.stack([s["count"] for s in items]).astype(np.float64)
        means = np.stack([s["mean"] for s in items])
        weights = counts.reshape(counts.shape + (1,) * (means.ndim - counts.ndim))
        total = counts.sum(axis=0)
        mean = (means * weights).sum(axis=0) / total
        variance = ((np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
        agg = {
            "min": np.min(np.stack([s["min"] for s in items]), axis=0),
            "max": np.max(np.stack([s["max"] for s in items]), axis=0),
            "mean": mean, "std": np.sqrt(variance), "count": total.astype(np.int64),
        }
        for name in layout.STAT_NAMES[5:]:
            agg[name] = (np.stack([s[name] for s in items]) * weights).sum(axis=0) / total
        out[feature] = agg
    return out


# -- small writers ----------------------------------------------------------------------------


def _canonical_codec(encoder: str) -> str:
    import av

    return str(av.codec.Codec(encoder, "w").canonical_name)


def _jsonable(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {k: {s: v.tolist() for s, v in d.items()} for k, d in stats.items()}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, allow_nan=False) + "\n")


def _write_tasks(path: Path, task_index: Mapping[str, int]) -> None:
    """tasks.parquet as pandas writes ``DataFrame({"task_index": ...}, index=Index(tasks, name="task"))``.

    LeRobot reads it with ``pandas.read_parquet`` and looks tasks up by the
    index, so the pandas metadata naming ``task`` as the index is part of the format.
    """
    tasks = sorted(task_index, key=task_index.__getitem__)
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    schema = pa.schema([pa.field("task_index", pa.int64()), pa.field("task", pa.string())],
                       metadata={"pandas": json.dumps(pandas_meta)})
    table = pa.Table.from_arrays([pa.array([task_index[t] for t in tasks], pa.int64()), pa.array(tasks, pa.string())],
                                 schema=schema)
    pq.write_table(table, path)


# -- command line -------------------------------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vcodec", choices=list(VCODECS), default="h264",
                   help="video codec: h264 (libx264; every FFmpeg decodes it), libsvtav1 (AV1, LeRobot's own "
                        "default: smaller, slower to encode) or hevc (default: %(default)s)")
    p.add_argument("--crf", type=int, help="video quality, lower is better and larger (default: 23 for h264, "
                                           "30 for libsvtav1, 28 for hevc)")
    p.add_argument("--gop", type=int, default=DEFAULT_GOP,
                   help="keyframe interval in frames: small makes random frames cheap to decode (default: %(default)s)")
    p.add_argument("--data-file-size-mb", type=float, default=layout.DEFAULT_DATA_FILE_SIZE_IN_MB,
                   help="start a new data parquet file past this size (default: %(default)s)")
    p.add_argument("--video-file-size-mb", type=float, default=layout.DEFAULT_VIDEO_FILE_SIZE_IN_MB,
                   help="start a new video file past this size (default: %(default)s)")


def _run(args: argparse.Namespace) -> list[str]:
    from pipeline.console import ProgressBar

    chosen = selection_from_args(args)
    summary = export_lerobot(
        args.dataset, output_path(args), keys=chosen.keys, min_grade=chosen.min_grade, models=chosen.models,
        robots=chosen.robots, tasks=chosen.tasks, split=chosen.split, image_size=chosen.image_size,
        video=VideoSettings(args.vcodec, args.crf, args.gop), data_file_size_mb=args.data_file_size_mb,
        video_file_size_mb=args.video_file_size_mb, overwrite=args.overwrite, progress=ProgressBar("exporting"),
    )
    return summary.lines()


FORMAT = Format(
    name="lerobot",
    direction="export",
    summary="LeRobotDataset v3.0 (parquet + mp4, what lerobot's LeRobotDataset opens)",
    description="meta/info.json, stats.json, tasks.parquet, episodes/; data/chunk-*/file-*.parquet; "
                "videos/<camera>/chunk-*/file-*.mp4 (frames decoded once from the dataset's JPEGs and encoded with "
                "PyAV). Open it with LeRobotDataset(repo_id, root=OUT). Refinery's grade, quality indicators, ids "
                "and ingest-clock times go in refinery/* episode columns, refinery.timestamp_ns and "
                "meta/refinery.json. One robot model and rate per export.",
    add_arguments=_add_arguments,
    run=_run,
)

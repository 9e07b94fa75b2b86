"""Export a Refinery dataset as a Diffusion Policy replay buffer (Zarr format 2).

Diffusion Policy (``diffusion_policy/common/replay_buffer.py``) reads one
layout: every time step of every episode concatenated along axis 0, with the
episode boundaries beside them::

    <out>.zarr/                 or <out>.zarr.zip (the same keys in a ZIP_STORED archive)
        .zattrs                 {"refinery": {...}}: source, episodes, key mapping
        meta/episode_ends       int64 (E,)   cumulative exclusive ends: episode i is
                                             steps [ends[i-1], ends[i]) (ends[-1] = T)
        data/<name>             (T, ...)     one array per exported key, chunked along
                                             time only
        data/camera_<i>         uint8 (T, H, W, 3) RGB, one frame per chunk

What the upstream reader accepts was tested elsewhere (DESIGN, "Diffusion
Policy export"): zarr format 2 written by zarr-python 3; root groups ``data``
and ``meta`` only, nothing but arrays in either; ``shape[0] ==
episode_ends[-1]`` for every data array; numeric arrays with Blosc (lz4) and
camera arrays with one frame per chunk.

Camera frames (``image_codec``)
    ``"jpeg"`` (default): each chunk is one JPEG file under imagecodecs'
    numcodecs codec ``imagecodecs_jpeg``, the codec Diffusion Policy registers
    (``diffusion_policy/codecs/imagecodecs_numcodecs.py``, a copy of
    ``imagecodecs/numcodecs.py``). That codec's chunk bytes are exactly a JPEG
    file, so the frames the dataset stores are written as they are: no decode,
    no re-encode (DESIGN: passthrough is the difference between minutes and
    hours). The compressor entry is ``{"id": "imagecodecs_jpeg", "level": q}``
    and nothing else: current imagecodecs writes more keys (``bitspersample``,
    ``lossless``, ...) that older readers' ``Jpeg.__init__`` rejects with a
    TypeError; ``level`` has been accepted by every release. Readers need
    imagecodecs (Diffusion Policy's environment has it).

    ``"blosc"``: frames decoded to raw RGB and stored with Blosc lz4, readable
    by any zarr 2 without imagecodecs; about 10-20x larger.

    ``image_size`` resizes every frame (decode, ``INTER_AREA`` when shrinking,
    encode at ``jpeg_quality``): the slow path, needed when episodes of several
    camera sizes go into one buffer.

Numeric arrays are written by zarr itself with ``Blosc(cname="lz4",
clevel=5, shuffle=NOSHUFFLE)``, Diffusion Policy's ``resolve_compressor
("default")``; numcodecs writes no ``typesize`` key for it (older readers
reject one).

Key names (``keys``) map dataset keys to replay-buffer names; only the keys
named are exported. The default (:func:`default_key_names`) exports every key
all selected episodes have, named as Diffusion Policy's real-robot recorder
names them (``real_world/real_env.py``, ``DEFAULT_OBS_KEY_MAP``)::

    state/position    -> robot_joint          float32 (T, dof)
    state/velocity    -> robot_joint_vel      float32 (T, dof)
    state/effort      -> robot_joint_effort   float32 (T, dof)
    action/position   -> action               float32 (T, dof)
    timestamps_ns     -> timestamp            float64 (T,) seconds on the ingest clock
                                              (DP stores time.time() seconds)
    cameras/<camera>  -> camera_<i>           uint8 (T, H, W, 3), i in camera-name order

Any other key maps to its name with ``/`` replaced by ``_``. The mapping used
is stored in the root attributes (``refinery.keys``).

Reading the dataset (format version 2): the episodes are chosen from the
index first (:func:`~pipeline.dataset.index.select_episodes`: only the index
columns this needs, filters pushed down to the Parquet files, excluded
episodes left out), so nothing of an unselected episode is read. Episodes
that lie next to each other in a data segment are read as one run: numeric
rows in blocks of many episodes, camera frames in batches whose JPEG bytes
come out of the segment's shards with coalesced reads.

The export is written under a temporary name beside ``out`` and renamed into
place when complete, so ``out`` is either absent or whole.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zarr
from numcodecs import Blosc

from pipeline.dataset.frame_shards import conform_frame, read_jpeg_bytes
from pipeline.dataset.index import (
    CAMERA_PREFIX,
    KEY_COUNT_COLUMNS,
    TIMESTAMPS_KEY,
    EpisodeEntry,
    select_episodes,
)
from pipeline.dataset.jpeg_codec import decode_jpeg_chunk, read_jpeg_header
from pipeline.dataset.store import Dataset
from pipeline.errors import DatasetError
from pipeline.interop import Format
from pipeline.interop.selection import (
    check_image_size,
    output_path,
    publish,
    selection_from_args,
    size_on_disk,
    staging_path,
)
from pipeline.interop.source_rows import (
    check_keys_present,
    common_keys,
    row_shapes,
    runs,
    segment_arrays,
)

EXPORT_FORMAT = "refinery-diffusion-policy-export"
EXPORT_FORMAT_VERSION = 1
IMAGE_CODECS = ("jpeg", "blosc")
JPEG_CODEC_ID = "imagecodecs_jpeg"
DEFAULT_NAMES: dict[str, str] = {
    "state/position": "robot_joint",
    "state/velocity": "robot_joint_vel",
    "state/effort": "robot_joint_effort",
    "action/position": "action",
    TIMESTAMPS_KEY: "timestamp",
}
"""Replay-buffer names of the dataset's numeric keys (cameras: ``camera_<i>``)."""

# The index columns an export reads: what it records of an episode, where its
# rows are, and the per-key step counts that say which numeric keys it holds
# (not the statistics themselves, nor the quality reports).
INDEX_COLUMNS = (
    "key", "robot_id", "model", "task", "grade", "length", "rate_hz", "start_ns", "cameras", "data_segment", "offset",
    *KEY_COUNT_COLUMNS,
)
# Numeric chunks of about this many bytes (Diffusion Policy's get_optimal_chunks
# aims at 2 MB; a chunk is decompressed whole for every window it serves).
_NUMERIC_CHUNK_BYTES = 1 << 20
# Frames read from the dataset per request: bounds memory on long runs.
_FRAMES_PER_READ = 256
# Numeric rows read per request (a few MB for a humanoid's joints).
_ROWS_PER_READ = 1 << 16
# A replay-buffer name is one path segment zarr 2 accepts as an array name.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_NUMERIC_COMPRESSOR = Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote.

    Attributes:
        path: The replay buffer (a ``.zarr`` folder or a ``.zarr.zip`` file).
        episodes: Episodes exported.
        steps: Time steps in total (``meta/episode_ends[-1]``).
        keys: Dataset key -> replay-buffer name, as exported.
        shapes: Replay-buffer name -> array shape.
        bytes: Size on disk.
        episode_keys: Dataset episode keys, in replay-buffer order.
    """

    path: Path
    episodes: int
    steps: int
    keys: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    bytes: int
    episode_keys: tuple[str, ...]

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        out = [f"wrote {self.path}: {self.episodes} episodes, {self.steps} steps, {self.bytes / 1e6:.1f} MB"]
        for key, name in self.keys.items():
            out.append(f"  data/{name:<22} {self.shapes[name]}  <- {key}")
        return out


def default_key_names(keys: Iterable[str]) -> dict[str, str]:
    """The default replay-buffer name of each dataset key (see the module docstring).

    Args:
        keys: Dataset keys (``state/position``, ``cameras/head_left``, ...).

    Returns:
        Dataset key -> replay-buffer name, numeric keys first, then cameras as
        ``camera_0``, ``camera_1``, ... in camera-name order.
    """
    keys = sorted(set(keys))
    names = {k: DEFAULT_NAMES.get(k, k.replace("/", "_")) for k in keys if not k.startswith(CAMERA_PREFIX)}
    cameras = [k for k in keys if k.startswith(CAMERA_PREFIX)]
    names.update({k: f"camera_{i}" for i, k in enumerate(cameras)})
    return names


def export_diffusion_policy(
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
    image_codec: str = "jpeg",
    jpeg_quality: int = 90,
    zip: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> ExportSummary:
    """Write the accepted episodes of ``dataset`` as a Diffusion Policy replay buffer.

    Args:
        dataset: A Refinery Zarr dataset.
        out: The replay buffer to write: a folder (``name.zarr``), or with
            ``zip`` (or a name ending in ``.zip``) a ``name.zarr.zip`` file.
        keys: Dataset key -> replay-buffer name; only these keys are exported.
            None: every key all selected episodes have, named by
            :func:`default_key_names`.
        min_grade: Keep episodes graded this letter or better (``"B"`` keeps A
            and B).
        models: Keep episodes of these robot models.
        robots: Keep episodes of these robot ids.
        tasks: Keep episodes of these task instructions.
        split: Keep episodes of this split (``"train"`` or ``"val"``, as the
            index records them); None keeps both.
        image_size: ``(height, width)`` to resize every camera frame to
            (re-encodes); None keeps the stored frames as they are.
        image_codec: ``"jpeg"`` (frames as JPEG files, ``imagecodecs_jpeg``) or
            ``"blosc"`` (raw RGB, Blosc lz4).
        jpeg_quality: Quality of re-encoded frames (with ``image_size``), and
            the ``level`` recorded in the JPEG codec's settings.
        zip: Write a ``.zarr.zip`` archive instead of a folder.
        overwrite: Replace ``out`` if it exists.
        progress: Called with (episodes done, episodes in total, episode key).

    Returns:
        What was written.

    Raises:
        DatasetError: No episode passes the filters, a key is missing from an
            episode, episodes disagree on a key's shape (one robot model and
            one camera size per export: use ``models`` or ``image_size``), bad
            arguments, or ``out`` exists.
        StoreError: ``dataset`` is not a Refinery dataset (of this format version).
    """
    dataset = Path(dataset)
    out = Path(out)
    zip = zip or out.name.endswith(".zip")
    if image_codec not in IMAGE_CODECS:
        raise DatasetError(str(out), f"image_codec {image_codec!r} is not supported; use one of {list(IMAGE_CODECS)}")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise DatasetError(str(out), f"jpeg_quality must be an integer 1-100, got {jpeg_quality!r}")
    size = check_image_size(out, image_size)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DatasetError(str(out), "already exists: remove it, choose another path, or pass --overwrite")

    source = Dataset(dataset)
    entries = select_episodes(
        dataset, columns=INDEX_COLUMNS, min_grade=min_grade, models=models, robots=robots, tasks=tasks, split=split
    )
    mapping = _key_mapping(dataset, entries, keys)
    arrays = segment_arrays(source, entries, mapping)
    shapes = row_shapes(dataset, entries, arrays, size, "a replay buffer")
    lengths = [e.length for e in entries]

    staging = staging_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = staging.with_name(staging.name + ".zarr") if zip else staging
    try:
        _write_buffer(folder, dataset, entries, arrays, mapping, shapes, size, image_codec, jpeg_quality, progress)
        if zip:
            _zip_folder(folder, staging)
            shutil.rmtree(folder)
        publish(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        if staging.is_file():
            staging.unlink()
        elif staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    total = int(np.sum(lengths))
    return ExportSummary(
        path=out,
        episodes=len(entries),
        steps=total,
        keys=dict(mapping),
        shapes={name: (total, *shapes[key]) for key, name in mapping.items()},
        bytes=size_on_disk(out),
        episode_keys=tuple(e.key for e in entries),
    )


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
            raise DatasetError(
                str(dataset), f"replay-buffer name {name!r} must be 1-128 letters, digits, '_', '.' or '-' (no '/')"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(str(dataset), f"replay-buffer names {duplicates} are given to more than one key")
    return mapping


def _time_chunk(total: int, row_shape: tuple[int, ...], itemsize: int) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    return max(1, min(total, _NUMERIC_CHUNK_BYTES // row_bytes))


def _write_buffer(
    folder: Path,
    dataset: Path,
    entries: list[EpisodeEntry],
    arrays: Mapping[str, Mapping[str, zarr.Array]],
    mapping: Mapping[str, str],
    shapes: Mapping[str, tuple[int, ...]],
    size: tuple[int, int] | None,
    image_codec: str,
    jpeg_quality: int,
    progress: Callable[[int, int, str], None] | None,
) -> None:
    ends = np.cumsum([e.length for e in entries], dtype=np.int64)
    total = int(ends[-1])
    root = zarr.open_group(str(folder), mode="w-", zarr_format=2)
    root.attrs["refinery"] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "source": str(dataset.resolve()),
        "keys": dict(mapping),
        "image_codec": image_codec,
        "episodes": [
            {"key": e.key, "robot_id": e.robot_id, "model": e.model, "task": e.task, "grade": e.grade,
             "length": e.length, "rate_hz": e.rate_hz, "start_ns": e.start_ns}
            for e in entries
        ],
    }
    data = root.create_group("data")
    meta = root.create_group("meta")
    meta.create_array("episode_ends", data=ends, chunks=(len(ends),), compressors=None)

    numeric: dict[str, _NumericWriter] = {}
    for key in mapping:
        if key.startswith(CAMERA_PREFIX):
            continue
        dtype = np.dtype(np.float64 if key == TIMESTAMPS_KEY else np.float32)
        chunk = _time_chunk(total, shapes[key], dtype.itemsize)
        array = data.create_array(
            mapping[key], shape=(total, *shapes[key]), dtype=dtype, chunks=(chunk, *shapes[key]),
            compressors=_NUMERIC_COMPRESSOR,
        )
        numeric[key] = _NumericWriter(array, chunk)
    cameras: dict[str, _FrameWriter] = {}
    for key in mapping:
        if not key.startswith(CAMERA_PREFIX):
            continue
        height, width, _ = shapes[key]
        name = mapping[key]
        array = data.create_array(
            name,
            shape=(total, height, width, 3),
            dtype=np.uint8,
            chunks=(1, height, width, 3),
            compressors=_NUMERIC_COMPRESSOR if image_codec == "blosc" else None,
            fill_value=0,
        )
        cameras[key] = _FrameWriter(folder / "data" / name, array, image_codec, size, jpeg_quality)

    position = 0  # replay-buffer step of the run's first row
    done = 0
    for run in runs(entries):
        source = arrays[run.segment]
        for key, writer in numeric.items():
            for first in range(run.start, run.stop, _ROWS_PER_READ):
                rows = np.asarray(source[key][first : min(run.stop, first + _ROWS_PER_READ)])
                writer.add(rows.astype(np.int64).astype(np.float64) / 1e9 if key == TIMESTAMPS_KEY else rows)
        # Camera frames in batches over the whole run; an episode counts as done
        # once the batches have passed its last step.
        finished = 0
        for first in range(run.start, run.stop, _FRAMES_PER_READ):
            last = min(run.stop, first + _FRAMES_PER_READ)
            for key, frames in cameras.items():
                jpegs = read_jpeg_bytes(source[key], range(first, last))
                where = f"{dataset} data segment {run.segment!r} {key} rows {first}..{last}"
                frames.write(position + first - run.start, jpegs, where)
            while finished < len(run.entries) and run.entries[finished].end <= last:
                finished += 1
                done += 1
                if progress is not None:
                    progress(done, len(entries), run.entries[finished - 1].key)
        position += run.stop - run.start
    for writer in numeric.values():
        writer.finish()
    for frames in cameras.values():
        frames.finish()


class _NumericWriter:
    """Fills one numeric replay-buffer array front to back, a whole chunk per write.

    Rows arrive a run at a time; writing only whole chunks (and the last,
    partial one at the end) never reads a chunk back, and memory stays at
    about one chunk plus one read.
    """

    def __init__(self, array: zarr.Array, chunk: int) -> None:
        self.array = array
        self.chunk = chunk
        self.position = 0
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0

    def add(self, rows: np.ndarray) -> None:
        self.pending.append(rows.astype(self.array.dtype, copy=False))
        self.pending_rows += rows.shape[0]
        if self.pending_rows >= self.chunk:
            block = np.concatenate(self.pending)
            whole = block.shape[0] // self.chunk * self.chunk
            self._write(block[:whole])
            self.pending = [block[whole:]]
            self.pending_rows = block.shape[0] - whole

    def finish(self) -> None:
        if self.pending_rows:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_rows = [], 0
        if self.position != self.array.shape[0]:
            raise DatasetError(str(self.array.path), f"wrote {self.position} rows of {self.array.shape[0]}")

    def _write(self, block: np.ndarray) -> None:
        self.array[self.position : self.position + block.shape[0]] = block
        self.position += block.shape[0]


class _FrameWriter:
    """Writes one camera array of the replay buffer, frame chunks by position."""

    def __init__(
        self, folder: Path, array: zarr.Array, codec: str, size: tuple[int, int] | None, quality: int
    ) -> None:
        self.folder = folder
        self.array = array
        self.codec = codec
        self.size = size
        self.quality = quality
        self.height, self.width = int(array.shape[1]), int(array.shape[2])

    def _key(self, index: int) -> str:
        return str(self.array.metadata.encode_chunk_key((index, 0, 0, 0)))

    def write(self, position: int, jpegs: list[bytes], where: str) -> None:
        if self.codec == "jpeg":
            for i, jpeg in enumerate(jpegs):
                if self.size is not None:
                    jpeg = conform_frame(jpeg, self.height, self.width, self.quality)
                # The whole buffer is staged under a temporary name and renamed
                # when complete, so plain writes are enough here.
                (self.folder / self._key(position + i)).write_bytes(jpeg)
            return
        frames = np.empty((len(jpegs), self.height, self.width, 3), dtype=np.uint8)
        for i, jpeg in enumerate(jpegs):
            try:
                if self.size is None:
                    frames[i] = decode_jpeg_chunk(jpeg, (self.height, self.width, 3))
                else:
                    frames[i] = _decode_resized(jpeg, self.height, self.width)
            except DatasetError as err:
                raise DatasetError(where, err.problem, index=i) from err
        self.array[position : position + len(jpegs)] = frames

    def finish(self) -> None:
        """Record the JPEG codec in the array's metadata (``level`` only: see the module docstring)."""
        if self.codec != "jpeg":
            return
        path = self.folder / ".zarray"
        meta = json.loads(path.read_text())
        meta["compressor"] = {"id": JPEG_CODEC_ID, "level": self.quality}
        path.write_text(json.dumps(meta, indent=4, sort_keys=True))


def _decode_resized(jpeg: bytes, height: int, width: int) -> np.ndarray:
    header = read_jpeg_header(jpeg)
    image = decode_jpeg_chunk(jpeg, (header.height, header.width, 3))
    if image.shape[:2] != (height, width):
        shrinking = image.shape[0] * image.shape[1] > height * width
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return image


def _zip_folder(folder: Path, archive: Path) -> None:
    """Pack a zarr folder into a ZIP_STORED archive (what zarr's ZipStore writes and reads)."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    with open(archive, "rb+") as fh:
        os.fsync(fh.fileno())


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-codec", choices=list(IMAGE_CODECS), default="jpeg",
                   help="jpeg: frames as JPEG files (readers need imagecodecs); blosc: raw RGB (default: %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="quality of re-encoded frames (default: %(default)s)")
    p.add_argument("--zip", action="store_true", help="write a .zarr.zip archive (also when OUT ends in .zip)")


def _run(args: argparse.Namespace) -> list[str]:
    from pipeline.console import ProgressBar

    chosen = selection_from_args(args)
    summary = export_diffusion_policy(
        args.dataset, output_path(args), keys=chosen.keys, min_grade=chosen.min_grade, models=chosen.models,
        robots=chosen.robots, tasks=chosen.tasks, split=chosen.split, image_size=chosen.image_size,
        image_codec=args.image_codec, jpeg_quality=args.jpeg_quality, zip=args.zip, overwrite=args.overwrite,
        progress=ProgressBar("exporting"),
    )
    return summary.lines()


FORMAT = Format(
    name="diffusion-policy",
    direction="export",
    summary="Diffusion Policy replay buffer (Zarr format 2)",
    description="data/<name> concatenated over episodes, meta/episode_ends; camera frames as the dataset's JPEG "
                "bytes (codec imagecodecs_jpeg) unless --resize or --image-codec blosc. OUT is a .zarr folder or a "
                ".zarr.zip file. One robot model and one camera size per export.",
    add_arguments=_add_arguments,
    run=_run,
)

"""Reading a LeRobotDataset on disk (v3.0, v2.0/v2.1), treating every field as hostile.

What :mod:`pipeline.interop.lerobot_import` needs, checked: ``meta/info.json``
(version, fps, features, path templates), the task table, the episode table
with each episode's data and video files resolved inside the dataset folder,
and each episode's rows. Sizes are bounded, names checked, and a path built
from a template never leaves the dataset folder (also through symlinks).

A problem with the dataset as a whole raises :class:`LeRobotFormatError`; a
problem with one episode's rows raises :class:`BrokenEpisode`, so the caller
can skip that episode and go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import RefineryError, StoreError
from pipeline.interop import lerobot_layout as layout
from pipeline.interop.lerobot_layout import EPISODES_DIR, INFO_PATH, TASKS_PATH
from pipeline.streams import RESERVED_STREAMS

log = logging.getLogger("refinery.import")

# LeRobot's on-disk names (lerobot/datasets/utils.py): v3.0 from the layout module the exporter
# writes by, and the v2.x legacy files only a reader needs.
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
STATE = layout.OBS_STATE
ACTION_KEY = layout.ACTION
VELOCITY = "observation.velocity"  # LeRobot's ALOHA datasets have these two
EFFORT = "observation.effort"
CAMERA_PREFIX = layout.OBS_IMAGES + "."
V3 = layout.CODEBASE_VERSION
V2 = ("v2.0", "v2.1")

# Bounds on what a foreign dataset may make us read or hold.
MAX_JSON_BYTES = 16 << 20  # info.json
MAX_JSON_LINES_BYTES = 128 << 20  # each line file of v2.x (episodes.jsonl, tasks.jsonl)
MAX_META_PARQUET_BYTES = 512 << 20  # tasks.parquet, each episode-table file
MAX_DATA_PARQUET_BYTES = 8 << 30  # each data file (LeRobot cuts them at 100 MB)
MAX_FEATURES = 512
MAX_JOINTS = 256
MAX_CAMERAS = 16
MAX_EPISODES = 1_000_000
MAX_EPISODE_ROWS = 1_000_000
MAX_TASK_CHARS = 2000
MAX_FPS = 10_000.0
MAX_TEMPLATE_CHARS = 256
MAX_FILE_INDEX = 10_000_000
MAX_TIMESTAMP_S = 1e7  # ~115 days of video in one file

_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_FORMAT_SPEC_RE = re.compile(r"^0?[0-9]{0,2}d?\Z")  # {chunk_index:03d}; nothing that could pad to gigabytes
_V3_TEMPLATE_FIELDS = {"data_path": {"chunk_index", "file_index"},
                       "video_path": {"video_key", "chunk_index", "file_index"}}
_V2_TEMPLATE_FIELDS = {"data_path": {"episode_chunk", "episode_index"},
                       "video_path": {"video_key", "episode_chunk", "episode_index"}}


class LeRobotFormatError(StoreError):
    """A LeRobot dataset cannot be imported: names the file and the field inside it.

    Attributes:
        file: The file (``meta/info.json``, a Parquet or video file).
        field: What inside it (``features.observation.state.names``, a column), or ``/``.
    """

    def __init__(self, file: Path, field: str, problem: str) -> None:
        self.file = Path(file)
        self.field = field
        super().__init__(f"{file} [{field}]", problem)


class BrokenEpisode(RefineryError):
    """One episode cannot be read; the message says why (the others can still be)."""


@dataclass(frozen=True)
class Camera:
    key: str  # the feature key, observation.images.<name>
    name: str  # the camera name in Refinery
    height: int
    width: int


@dataclass(frozen=True)
class Layout:
    """What ``meta/info.json`` says, checked."""

    root: Path
    version: str
    fps: float
    robot_type: str
    joints: tuple[str, ...]
    state_width: int
    joint_fields: tuple[str, ...]  # of VELOCITY, EFFORT: those the dataset has, one value per joint
    cameras: tuple[Camera, ...]
    data_path: str
    video_path: str
    chunks_size: int
    identity: str  # hash of fps and features: tells datasets in same-named folders apart


@dataclass(frozen=True)
class EpisodeRef:
    """One row of the episode table, its files resolved inside SRC_DIR."""

    index: int
    length: int
    data_file: Path
    first_row: int | None  # dataset_from_index (v3); None: the data file holds this episode only
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # camera -> (file, from_timestamp)


# -- meta/info.json --------------------------------------------------------------------------


def read_layout(src: Path) -> Layout:
    """Read and check ``meta/info.json``: version, fps, features, templates.

    Raises:
        LeRobotFormatError: naming ``meta/info.json`` and the field.
    """
    src = Path(src)
    if not src.is_dir():
        raise StoreError(str(src), "no such folder; point at a LeRobot dataset's root (the folder holding meta/)")
    info_file = src / INFO_PATH
    info = _read_json(info_file, src)
    if not isinstance(info, dict):
        raise LeRobotFormatError(info_file, "/", f"expected a JSON object, got {type(info).__name__}")
    version = info.get("codebase_version")
    if version != V3 and version not in V2:
        raise LeRobotFormatError(info_file, "codebase_version",
                                 f"{version!r} is not a version this importer reads ({V3}, {', '.join(V2)}); "
                                 "convert the dataset with LeRobot's conversion scripts")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (0 < fps <= MAX_FPS):
        raise LeRobotFormatError(info_file, "fps", f"expected a frame rate in (0, {MAX_FPS:g}], got {fps!r}")
    features = info.get("features")
    if not isinstance(features, dict) or not features:
        raise LeRobotFormatError(info_file, "features", "expected a non-empty object of features")
    if len(features) > MAX_FEATURES:
        raise LeRobotFormatError(info_file, "features", f"has {len(features)} features; at most {MAX_FEATURES}")
    for key in features:
        if not _KEY_RE.match(key) or ".." in key:
            raise LeRobotFormatError(info_file, "features", f"feature key {key!r} is not 1-128 letters, digits, "
                                                            "'_', '.' or '-' (nor holds '..')")
    joints, width = _state(info_file, features)
    if ACTION_KEY not in features:
        raise LeRobotFormatError(info_file, f"features.{ACTION_KEY}", "missing: an episode needs its actions")
    _, action_width = _vector(info_file, features, ACTION_KEY)
    if action_width != width:
        raise LeRobotFormatError(info_file, f"features.{ACTION_KEY}.shape",
                                 f"has {action_width} values, {STATE} has {width}: Refinery's action is one "
                                 "target per joint")
    joint_fields = []
    for key in (VELOCITY, EFFORT):
        if key in features:
            if _vector(info_file, features, key)[1] == width:
                joint_fields.append(key)
            else:
                log.warning("%s: %s does not have one value per joint; not imported", info_file, key)
    robot_type = info.get("robot_type") or ""
    if not isinstance(robot_type, str) or len(robot_type) > 128:
        raise LeRobotFormatError(info_file, "robot_type",
                                 f"expected text of at most 128 characters, got {robot_type!r:.200}")
    chunks_size = info.get("chunks_size", 1000)
    if isinstance(chunks_size, bool) or not isinstance(chunks_size, int) or not 1 <= chunks_size <= MAX_FILE_INDEX:
        raise LeRobotFormatError(info_file, "chunks_size", f"expected a positive integer, got {chunks_size!r}")
    fields_of = _V3_TEMPLATE_FIELDS if version == V3 else _V2_TEMPLATE_FIELDS
    cameras = _cameras(info_file, features)
    data_path = _template(info_file, info, "data_path", fields_of["data_path"])
    video_path = _template(info_file, info, "video_path", fields_of["video_path"]) if cameras else ""
    identity = hashlib.sha256(json.dumps([fps, features], sort_keys=True).encode()).hexdigest()[:8]
    return Layout(src, version, float(fps), robot_type, joints, width, tuple(joint_fields), cameras, data_path,
                   video_path, chunks_size, identity)


def _check_size(path: Path, limit: int, hint: str = "") -> None:
    """Refuse a file larger than ``limit`` bytes before reading it."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise LeRobotFormatError(path, "/", f"cannot read ({err.strerror}){hint}") from err
    if size > limit:
        raise LeRobotFormatError(path, "/", f"{size} bytes; at most {limit} are read")


def _read_json(path: Path, src: Path) -> Any:
    inside(src, path.relative_to(src).as_posix(), path)
    _check_size(path, MAX_JSON_BYTES, "; is this a LeRobot dataset?")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # RecursionError: nesting a JSON bomb uses
        raise LeRobotFormatError(path, "/", f"not valid JSON: {err}") from err


def _vector(info_file: Path, features: dict, key: str) -> tuple[Any, int]:
    spec = features[key]
    if not isinstance(spec, dict):
        raise LeRobotFormatError(info_file, f"features.{key}", "expected an object")
    dtype = spec.get("dtype")
    if dtype not in ("float32", "float64", "float16", "int32", "int64", "int16", "int8", "uint8", "bool"):
        raise LeRobotFormatError(info_file, f"features.{key}.dtype", f"expected a numeric dtype, got {dtype!r}")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) != 1 or isinstance(shape[0], bool)
            or not isinstance(shape[0], int) or not 1 <= shape[0] <= MAX_JOINTS):
        raise LeRobotFormatError(info_file, f"features.{key}.shape",
                                 f"expected [n] with 1 <= n <= {MAX_JOINTS}, got {shape!r}")
    return spec.get("names"), shape[0]


def _state(info_file: Path, features: dict) -> tuple[tuple[str, ...], int]:
    """The joint names (from ``names``; ``joint_<i>`` when there are none) and the state width."""
    if STATE not in features:
        raise LeRobotFormatError(info_file, f"features.{STATE}", "missing: the importer needs the joint state")
    names, width = _vector(info_file, features, STATE)
    where = f"features.{STATE}.names"
    if isinstance(names, dict) and len(names) == 1:  # older datasets: {"motors": [...]}
        names = next(iter(names.values()))
    if names is None:
        return tuple(f"joint_{i}" for i in range(width)), width
    if not isinstance(names, list) or len(names) != width or not all(isinstance(n, str) for n in names):
        raise LeRobotFormatError(info_file, where, f"expected {width} joint names, got {names!r:.200}")
    joints = tuple(_joint_name(n, i) for i, n in enumerate(names))
    if len(set(joints)) != len(joints):
        seen = [n for i, n in enumerate(joints) if n in joints[:i]]
        raise LeRobotFormatError(info_file, where, f"joint name {seen[0]!r} appears twice (after replacing "
                                                   "characters a robot config does not allow with '_')")
    return joints, width


def _joint_name(name: str, index: int) -> str:
    """A robot-config joint name for a LeRobot name: other characters become '_', at most 64."""
    cleaned = _BAD_ID_CHARS.sub("_", name.strip())[:64]
    if not cleaned or cleaned[0] in ".-":
        cleaned = f"joint_{index}_{cleaned}"[:64]
    return cleaned


def _cameras(info_file: Path, features: dict) -> tuple[Camera, ...]:
    cameras = []
    for key, spec in features.items():
        if not isinstance(spec, dict) or spec.get("dtype") != "video":
            if isinstance(spec, dict) and spec.get("dtype") == "image":
                log.warning("%s: image feature %r (frames stored in Parquet) is not imported", info_file, key)
            continue
        name = _BAD_ID_CHARS.sub("_", key.removeprefix(CAMERA_PREFIX))[:64]
        if not name or name[0] in ".-" or name in RESERVED_STREAMS:
            raise LeRobotFormatError(info_file, f"features.{key}", f"camera name {name!r} cannot be used")
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) for v in shape):
            raise LeRobotFormatError(info_file, f"features.{key}.shape", f"expected 3 integers, got {shape!r}")
        names = spec.get("names")
        channels_first = isinstance(names, list) and names[:1] in (["channels"], ["channel"])
        height, width = (shape[1], shape[2]) if channels_first else shape[:2]
        if not (16 <= height <= 8192 and 16 <= width <= 8192):
            raise LeRobotFormatError(info_file, f"features.{key}.shape",
                                     f"{width}x{height}: Refinery takes cameras of 16-8192 pixels a side")
        cameras.append(Camera(key, name, height, width))
    if len(cameras) > MAX_CAMERAS:
        raise LeRobotFormatError(info_file, "features", f"has {len(cameras)} video features; at most {MAX_CAMERAS}")
    if len({c.name for c in cameras}) != len(cameras):
        raise LeRobotFormatError(info_file, "features", "two video features give the same camera name")
    return tuple(cameras)


def _template(info_file: Path, info: dict, key: str, allowed: set[str]) -> str:
    """A path template of info.json, checked: only the known fields, plain integer formats."""
    template = info.get(key)
    if not isinstance(template, str) or not template or len(template) > MAX_TEMPLATE_CHARS:
        raise LeRobotFormatError(info_file, key, f"expected a path template of at most {MAX_TEMPLATE_CHARS} "
                                                 f"characters, got {template!r:.300}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise LeRobotFormatError(info_file, key, f"{template!r} is not a format string: {err}") from err
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed or conversion:
            raise LeRobotFormatError(info_file, key, f"{template!r} uses {{{name}}}; a {key} may use only "
                                                     + ", ".join(f"{{{a}}}" for a in sorted(allowed)))
        if name != "video_key" and not _FORMAT_SPEC_RE.match(spec or ""):
            raise LeRobotFormatError(info_file, key, f"{template!r}: format {spec!r} of {{{name}}} is not a "
                                                     "plain integer format like 03d")
        if name == "video_key" and spec:
            raise LeRobotFormatError(info_file, key, f"{template!r}: {{video_key}} takes no format")
    return template


def inside(src: Path, relative: str, where: Path, origin: str = "") -> Path:
    """``src / relative``, refused unless it stays inside ``src`` (also through symlinks).

    ``origin`` says where the path came from (a template of meta/info.json).

    Raises:
        LeRobotFormatError: naming ``where`` (the file whose field gave the path).
    """
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts or "\x00" in relative:
        raise LeRobotFormatError(where, "path", f"{relative!r}{origin} leaves the dataset folder {src}")
    full = src / path
    try:
        full.resolve().relative_to(src.resolve())
    except ValueError as err:
        raise LeRobotFormatError(where, "path", f"{relative!r}{origin} leads out of the dataset folder {src} "
                                                "(a symlink?)") from err
    return full


# -- tasks and the episode table ---------------------------------------------------------------


def read_tasks(layout: Layout) -> dict[int, str]:
    """task_index -> task text (cut to MAX_TASK_CHARS)."""
    if layout.version == V3:
        path = inside(layout.root, TASKS_PATH, layout.root / INFO_PATH)
        table = _read_parquet(path, None)
        names = table.column_names
        text_column = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
        if "task_index" not in names or text_column is None:
            raise LeRobotFormatError(path, "/", f"expected columns task_index and task, got {names}")
        if table.num_rows > MAX_EPISODES:
            raise LeRobotFormatError(path, "/", f"{table.num_rows} tasks; at most {MAX_EPISODES}")
        rows = zip(table.column("task_index").to_pylist(), table.column(text_column).to_pylist(), strict=True)
    else:
        path = inside(layout.root, LEGACY_TASKS_PATH, layout.root / INFO_PATH)
        rows = ((r.get("task_index"), r.get("task")) for r in _json_lines(path))
    tasks: dict[int, str] = {}
    for index, text in rows:
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(text, str):
            raise LeRobotFormatError(path, "task_index", f"expected an integer index and a text, got "
                                                         f"{index!r:.50} and {text!r:.100}")
        tasks[index] = text[:MAX_TASK_CHARS]
    return tasks


def _json_lines(path: Path) -> Iterator[dict]:
    _check_size(path, MAX_JSON_LINES_BYTES)
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:
                raise LeRobotFormatError(path, f"line {number}", f"not valid JSON: {err}") from err
            if not isinstance(row, dict):
                raise LeRobotFormatError(path, f"line {number}", "expected a JSON object")
            yield row


def _require_columns(path: Path, columns: list[str], what: str) -> None:
    """The Parquet file's footer is readable and names every one of ``columns``."""
    import pyarrow.parquet as pq

    try:
        present = set(pq.read_schema(path).names)
    except Exception as err:  # pyarrow raises several types for a broken footer
        raise LeRobotFormatError(path, "/", f"not a readable Parquet file: {err}") from err
    missing = [c for c in columns if c not in present]
    if missing:
        raise LeRobotFormatError(path, missing[0], f"column missing from {what}")


def _read_parquet(path: Path, columns: list[str] | None, limit: int = MAX_META_PARQUET_BYTES) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_size(path, limit)
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException, ValueError) as err:
        raise LeRobotFormatError(path, ",".join(columns or ["/"]), f"not a readable Parquet file: {err}") from err


def read_episodes(layout: Layout) -> list[EpisodeRef]:
    """The episode table (v3: meta/episodes/*/*.parquet; v2.x: meta/episodes.jsonl), paths resolved."""
    info_file = layout.root / INFO_PATH
    if layout.version == V3:
        folder = inside(layout.root, EPISODES_DIR, info_file)
        files = sorted(folder.glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotFormatError(folder, "/", "no chunk-*/file-*.parquet here: the episode table is missing")
        rows: list[tuple[Path, dict]] = []
        for path in files:
            inside(layout.root, path.relative_to(layout.root).as_posix(), path)
            columns = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index"]
            for camera in layout.cameras:
                columns += [f"videos/{camera.key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
            _require_columns(path, columns, "the episode table")
            table = _read_parquet(path, columns)
            rows += [(path, row) for row in table.to_pylist()]
            if len(rows) > MAX_EPISODES:
                raise LeRobotFormatError(path, "/", f"more than {MAX_EPISODES} episodes")
        episodes = [_v3_episode(layout, path, row) for path, row in rows]
    else:
        path = inside(layout.root, LEGACY_EPISODES_PATH, info_file)
        episodes = []
        for row in _json_lines(path):
            episodes.append(_v2_episode(layout, path, row))
            if len(episodes) > MAX_EPISODES:
                raise LeRobotFormatError(path, "/", f"more than {MAX_EPISODES} episodes")
    episodes.sort(key=lambda e: e.index)
    indices = [e.index for e in episodes]
    if len(set(indices)) != len(indices):
        twice = next(i for n, i in enumerate(indices) if i in indices[:n])
        raise LeRobotFormatError(info_file, "episode_index", f"episode {twice} appears twice in the episode table")
    if not episodes:
        raise LeRobotFormatError(info_file, "total_episodes", "the episode table is empty")
    return episodes


def _integer(path: Path, row: dict, key: str, lo: int, hi: int) -> int:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        episode = row.get("episode_index")
        raise LeRobotFormatError(path, f"episode {episode!r:.20} {key}", f"expected an integer in [{lo}, {hi}], "
                                                                          f"got {value!r:.50}")
    return value


def _origin(key: str, template: str) -> str:
    return f" (from {key} {template!r} of {INFO_PATH})"


def _v3_episode(layout: Layout, path: Path, row: dict) -> EpisodeRef:
    index = _integer(path, row, "episode_index", 0, MAX_EPISODES * 100)
    length = _integer(path, row, "length", 1, MAX_EPISODE_ROWS)
    first = _integer(path, row, "dataset_from_index", 0, 1 << 50)
    chunk = _integer(path, row, "data/chunk_index", 0, MAX_FILE_INDEX)
    number = _integer(path, row, "data/file_index", 0, MAX_FILE_INDEX)
    data = inside(layout.root, layout.data_path.format(chunk_index=chunk, file_index=number), path,
                  _origin("data_path", layout.data_path))
    videos = {}
    for camera in layout.cameras:
        prefix = f"videos/{camera.key}/"
        chunk = _integer(path, row, prefix + "chunk_index", 0, MAX_FILE_INDEX)
        number = _integer(path, row, prefix + "file_index", 0, MAX_FILE_INDEX)
        start = row.get(prefix + "from_timestamp")
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start <= MAX_TIMESTAMP_S:
            raise LeRobotFormatError(path, f"episode {index} {prefix}from_timestamp",
                                     f"expected seconds in [0, {MAX_TIMESTAMP_S:g}], got {start!r:.50}")
        relative = layout.video_path.format(video_key=camera.key, chunk_index=chunk, file_index=number)
        videos[camera.name] = (inside(layout.root, relative, path, _origin("video_path", layout.video_path)),
                               float(start))
    return EpisodeRef(index, length, data, first, videos)


def _v2_episode(layout: Layout, path: Path, row: dict) -> EpisodeRef:
    index = _integer(path, row, "episode_index", 0, MAX_EPISODES * 100)
    length = _integer(path, row, "length", 1, MAX_EPISODE_ROWS)
    chunk = index // layout.chunks_size
    data = inside(layout.root, layout.data_path.format(episode_chunk=chunk, episode_index=index), path,
                  _origin("data_path", layout.data_path))
    videos = {}
    for camera in layout.cameras:
        relative = layout.video_path.format(video_key=camera.key, episode_chunk=chunk, episode_index=index)
        videos[camera.name] = (inside(layout.root, relative, path, _origin("video_path", layout.video_path)), 0.0)
    return EpisodeRef(index, length, data, None, videos)


def check_files(layout: Layout, episodes: list[EpisodeRef]) -> None:
    """Every data file has the columns, every video file a stream of the camera's size."""

    needed = [STATE, ACTION_KEY, "timestamp", "episode_index", "frame_index"]
    for path in sorted({e.data_file for e in episodes}):
        if not path.is_file():
            raise LeRobotFormatError(path, "/", "data file missing (the episode table points at it)")
        _require_columns(path, needed, "the data file")
    by_file = {(name, video[0]) for e in episodes for name, video in e.videos.items()}
    cameras = {c.name: c for c in layout.cameras}
    for name, path in sorted(by_file):
        camera = cameras[name]
        if not path.is_file():
            raise LeRobotFormatError(path, camera.key, "video file missing (the episode table points at it)")
        width, height = _video_size(path, camera.key)
        if (width, height) != (camera.width, camera.height):
            raise LeRobotFormatError(path, camera.key, f"video is {width}x{height}, info.json says "
                                                       f"{camera.width}x{camera.height}")


def _video_size(path: Path, key: str) -> tuple[int, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise LeRobotFormatError(path, key, "the file has no video stream")
            stream = container.streams.video[0]
            return int(stream.codec_context.width), int(stream.codec_context.height)
    except av.error.FFmpegError as err:
        raise LeRobotFormatError(path, key, f"not a readable video file: {err}") from err


# -- one episode's rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeRows:
    timestamp: np.ndarray  # float64 seconds from the episode's start
    state: np.ndarray  # float64 (n, width), dataset column order
    action: np.ndarray
    task_index: np.ndarray | None
    velocity: np.ndarray | None = None
    effort: np.ndarray | None = None


class DataTable:
    """The data file of the episode asked for, kept while the next episodes ask for the same file."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._path: Path | None = None
        self._columns: dict[str, np.ndarray] = {}
        self._error = ""

    def episode(self, episode: EpisodeRef) -> EpisodeRows:
        if episode.data_file != self._path:
            self._load(episode.data_file)
        if self._error:
            raise BrokenEpisode(self._error)
        cols = self._columns
        rows = np.flatnonzero(cols["episode_index"] == episode.index)
        name = episode.data_file.relative_to(self.layout.root)
        if rows.size != episode.length:
            raise BrokenEpisode(f"{name} holds {rows.size} rows of episode {episode.index}, the episode table "
                                 f"says {episode.length}")
        if rows[-1] - rows[0] + 1 != rows.size:
            raise BrokenEpisode(f"{name}: the rows of episode {episode.index} are not contiguous")
        frame_index = cols["frame_index"][rows]
        if not np.array_equal(frame_index, np.arange(rows.size)):
            bad = int(np.flatnonzero(frame_index != np.arange(rows.size))[0])
            raise BrokenEpisode(f"{name}: row {bad} of episode {episode.index} has frame_index "
                                 f"{int(frame_index[bad])}")
        if episode.first_row is not None and "index" in cols and int(cols["index"][rows[0]]) != episode.first_row:
            raise BrokenEpisode(f"{name}: episode {episode.index} starts at index {int(cols['index'][rows[0]])}, "
                                 f"the episode table says dataset_from_index {episode.first_row}")
        timestamp = cols["timestamp"][rows]
        if not np.isfinite(timestamp).all() or timestamp[0] < 0 or timestamp[-1] > MAX_TIMESTAMP_S:
            raise BrokenEpisode(f"{name}: episode {episode.index} has a timestamp that is not a number of seconds "
                                 f"in [0, {MAX_TIMESTAMP_S:g}]")
        if rows.size > 1 and not (np.diff(timestamp) > 0).all():
            bad = int(np.flatnonzero(np.diff(timestamp) <= 0)[0]) + 1
            raise BrokenEpisode(f"{name}: episode {episode.index} row {bad}: timestamp {timestamp[bad]:.6f} s "
                                 f"does not follow {timestamp[bad - 1]:.6f} s")
        tasks = cols.get("task_index")
        velocity, effort = (cols[key][rows] if key in cols else None for key in (VELOCITY, EFFORT))
        return EpisodeRows(timestamp, cols[STATE][rows], cols[ACTION_KEY][rows], None if tasks is None else tasks[rows],
                     velocity, effort)

    def _load(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self._path, self._columns, self._error = path, {}, ""
        name = path.relative_to(self.layout.root)
        present = set(pq.read_schema(path).names)
        wanted = [STATE, ACTION_KEY, "timestamp", "episode_index", "frame_index"]
        wanted += [c for c in ("index", "task_index", *self.layout.joint_fields) if c in present]
        try:
            table = _read_parquet(path, wanted, MAX_DATA_PARQUET_BYTES)
            columns: dict[str, np.ndarray] = {}
            for key in wanted:
                column = table.column(key)
                if column.null_count:
                    raise BrokenEpisode(f"{name}: column {key} has {column.null_count} empty values")
                if key in (STATE, ACTION_KEY, VELOCITY, EFFORT):
                    columns[key] = _matrix(column, self.layout.state_width, f"{name}: column {key}")
                else:
                    columns[key] = _scalars(column, f"{name}: column {key}", key == "timestamp")
            self._columns = columns
        except (BrokenEpisode, LeRobotFormatError) as err:
            self._error = str(err)


def _matrix(column: Any, width: int, where: str) -> np.ndarray:
    """A list column of ``width`` numbers per row as float64 (rows, width)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
            or pa.types.is_large_list(column.type)):
        raise BrokenEpisode(f"{where} is {column.type}, not a list of numbers")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if lengths.size and not (lengths == width).all():
        bad = int(np.flatnonzero(lengths != width)[0])
        raise BrokenEpisode(f"{where}: row {bad} has {int(lengths[bad])} values, info.json says {width}")
    values = pc.list_flatten(column)
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)):
        raise BrokenEpisode(f"{where} holds {values.type}, not numbers")
    return values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, width)


def _scalars(column: Any, where: str, real: bool) -> np.ndarray:
    import pyarrow as pa

    kind = pa.types.is_floating if real else pa.types.is_integer
    if not (kind(column.type) or (real and pa.types.is_integer(column.type))):
        raise BrokenEpisode(f"{where} is {column.type}, not {'seconds' if real else 'integers'}")
    return column.to_numpy().astype(np.float64 if real else np.int64)


def id_text(text: str) -> str:
    """Text made an id: other characters become '_', at most 64, not starting with '.' or '-'."""
    cleaned = _BAD_ID_CHARS.sub("_", text)[:64].lstrip(".-")
    return cleaned or "lerobot"

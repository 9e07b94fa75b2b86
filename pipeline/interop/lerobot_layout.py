"""The on-disk layout of a LeRobotDataset, codebase version v3.0 (what the exporter writes and the importer reads).

Taken from LeRobot 0.6.1 (``lerobot/datasets/utils.py``, ``dataset_metadata.py``,
``dataset_writer.py``, ``compute_stats.py``, ``lerobot/utils/constants.py``)::

    meta/info.json                                  codebase_version, fps, features, totals, path templates
    meta/stats.json                                 {feature: {min, max, mean, std, count, q01..q99}}
    meta/tasks.parquet                              one row per task: task (the pandas index), task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode (see EPISODE_COLUMNS)
    data/chunk-000/file-000.parquet                 one row per frame, many episodes per file
    videos/<video key>/chunk-000/file-000.mp4       many episodes per file, back to back in time

A file number ``n`` (the n-th file of its kind) sits in chunk ``n // chunks_size``
as file ``n % chunks_size``. Episode rows must be in ``episode_index`` order
(LeRobot indexes the episodes table by position), and ``index`` counts frames
over the whole dataset.
"""

from __future__ import annotations

CODEBASE_VERSION = "v3.0"

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
VIDEO_DIR = "videos"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = DATA_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = VIDEO_DIR + "/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"

DEFAULT_CHUNK_SIZE = 1000  # files per chunk folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200

INFO_FIELDS = (
    "codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
    "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path", "features",
)
"""The keys of ``info.json`` LeRobot's ``DatasetInfo`` knows (any other key is logged as unknown and ignored)."""

DEFAULT_FEATURES: dict[str, dict[str, object]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
"""Columns every frame row has; ``timestamp`` is ``frame_index / fps`` seconds from the episode's start."""

# Feature keys LeRobot's policies read by name (lerobot/utils/constants.py).
OBS_STATE = "observation.state"
OBS_IMAGES = "observation.images"
ACTION = "action"

EPISODE_COLUMNS = (
    "episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
    "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index",
)
"""Columns of every episodes row; per video key also VIDEO_EPISODE_COLUMNS, per feature ``stats/<key>/<stat>``."""
VIDEO_EPISODE_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
"""``videos/<video key>/<name>``: the file of the episode's frames and where they lie in it (seconds)."""

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
STAT_NAMES = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
"""Statistics of each feature in ``stats.json`` and in the episodes' ``stats/<key>/<stat>`` columns."""


def chunk_and_file(number: int, chunks_size: int = DEFAULT_CHUNK_SIZE) -> tuple[int, int]:
    """``(chunk_index, file_index)`` of the ``number``-th file (from 0) of its kind."""
    return divmod(number, chunks_size)


def data_path(chunk_index: int, file_index: int) -> str:
    return DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)


def episodes_path(chunk_index: int, file_index: int) -> str:
    return EPISODES_PATH.format(chunk_index=chunk_index, file_index=file_index)


def video_path(video_key: str, chunk_index: int, file_index: int) -> str:
    return VIDEO_PATH.format(video_key=video_key, chunk_index=chunk_index, file_index=file_index)


def video_column(video_key: str, name: str) -> str:
    """An episodes column about one video key, e.g. ``videos/observation.images.top/from_timestamp``."""
    return f"videos/{video_key}/{name}"


def stats_column(feature: str, stat: str) -> str:
    """An episodes column holding one statistic of one feature over the episode, e.g. ``stats/action/mean``."""
    return f"stats/{feature}/{stat}"

"""Import a local LeRobotDataset (v3.0, or v2.0/v2.1) as sealed raw episodes.

What is read (every field of the foreign dataset is hostile: sizes bounded,
names checked, paths resolved inside SRC_DIR)::

    meta/info.json             codebase_version, fps, robot_type, features, path templates
    meta/tasks.parquet         task_index -> task text            (v2.x: meta/tasks.jsonl)
    meta/episodes/*/*.parquet  per episode: length, data file, video file and its from_timestamp
                                                                   (v2.x: meta/episodes.jsonl,
                                                                    one data and video file per episode)
    data/*/*.parquet           observation.state, action, timestamp, episode_index, frame_index, task_index
    videos/<key>/*/*.mp4       one stream per camera feature (dtype "video"), many episodes per file

Each episode becomes one raw episode through :class:`~pipeline.raw_builder.RawEpisodeBuilder`:

* ``joint_state``: ``observation.state`` as positions, ``observation.velocity``
  and ``observation.effort`` when the dataset has them with the state's width
  (zeros otherwise, as for ALOHA files without them);
  ``action``: the ``action`` column, which must hold one value per joint;
  both stamped ``base + timestamp``;
* one frame per camera per row: the video frame at the episode's
  ``from_timestamp + timestamp`` in the video file (within 0.4 of a frame
  period), decoded with PyAV and re-encoded as JPEG. Each video file is
  decoded once, front to back, however many episodes it holds;
* events: ``start`` with the task of the first row (tasks.parquet), a
  ``label`` naming the dataset and episode, one ``label`` per later task
  change, ``stop`` (outcome ``success``) one frame period after the last row;
  clock samples every 0.5 s with zero offset.

The dataset holds no wall-clock time: episode 0 starts at ``start_ns`` or, by
default, at the modification time of ``meta/info.json``; each later episode
starts one second after the previous one ended. Episode ids are
``<robot-id>-<dataset folder>-<hash of fps and features>-<episode index>``,
so re-running the import skips the episodes already imported.

Robot config: generated from the features (joint names from the state's
``names``, rates and camera fps from ``fps``, cameras at the video size, latency
0) with every limit unknown (``null``): cleaning and scoring skip the limit
rules and say so. ``config`` gives a real config instead: its joint names
must be the state's names (any order; the columns are reordered to it).

Lost: other features (``observation.environment_state``, rewards, done
flags, image features stored in Parquet), statistics, language annotations,
and anything the dataset's hub card says.

Checks: ``meta/info.json``, the tasks and the episode table, the path
templates and every referenced file (present, inside SRC_DIR, Parquet columns,
video stream size) are checked before anything is written; such a problem
stops the import (:class:`LeRobotFormatError`). A problem found while reading
one episode (rows that disagree with the episode table, a timestamp that goes
back, a video that ends early or does not decode) skips that episode with its
reason; the others are imported.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import protocol
from pipeline.dataset.jpeg_codec import encode_jpeg_chunk
from pipeline.errors import ConfigError, DatasetError, StoreError
from pipeline.interop import Format, add_destination_arguments, destination
from pipeline.interop.lerobot_reader import (
    INFO_PATH,
    STATE,
    BrokenEpisode,
    DataTable,
    EpisodeRef,
    EpisodeRows,
    Layout,
    LeRobotFormatError,
    check_files,
    id_text,
    read_episodes,
    read_layout,
    read_tasks,
)
from pipeline.interop.video_frames import VideoCursor, VideoFrameError
from pipeline.journal import JOURNAL_SUFFIX
from pipeline.raw_builder import RawEpisodeBuilder
from pipeline.raw_store import raw_path
from pipeline.robot_config import RobotConfig, load_robot_config, parse_robot_config
from pipeline.standard_joints import STANDARD_INDEX
from pipeline.streams import ACTION, JOINT_STATE

__all__ = ["LeRobotFormatError", "LeRobotImport", "episode_config", "generated_config", "import_lerobot"]

log = logging.getLogger("refinery.import")

_STEPS_PER_BATCH = 50
_EPISODE_GAP_NS = 1_000_000_000


@dataclass
class LeRobotImport:
    """What an import did.

    Attributes:
        imported: Raw episodes written now, in episode order.
        existing: Raw episodes imported by an earlier run (not written again).
        failed: ``(episode index, reason)`` of each episode that was skipped.
        config: The robot config of the episodes (generated or given).
        robot_id: The robot id of the episodes.
    """

    imported: list[Path]
    existing: list[Path]
    failed: list[tuple[int, str]]
    config: RobotConfig
    robot_id: str


def import_lerobot(
    src_dir: Path,
    raw_dir: Path,
    *,
    robot_id: str | None = None,
    config: RobotConfig | str | Path | None = None,
    operator: str = "",
    start_ns: int | None = None,
    quality: int = 90,
) -> LeRobotImport:
    """Import every episode of the LeRobotDataset in ``src_dir`` into ``raw_dir``.

    Args:
        src_dir: The dataset's root folder (the one holding ``meta/info.json``).
        raw_dir: The data folder raw episodes go to (``<raw_dir>/raw/<robot_id>/``).
        robot_id: Robot id of every episode; default: the dataset's
            ``robot_type`` (``lerobot`` when it has none).
        config: A real robot config (object, shipped model or YAML path) whose
            joint names are the state's names; default: one generated from the
            features, with limits unknown.
        operator: Operator id recorded with every episode.
        start_ns: Time of episode 0's first row (ns since the epoch); default:
            the modification time of ``meta/info.json``.
        quality: JPEG quality of the re-encoded frames (1-100).

    Raises:
        LeRobotFormatError: The dataset's metadata or files cannot be imported
            (names the file and field); nothing is written.
        ConfigError: ``config`` is malformed or its joints are not the state's.
        ProtocolError: ``robot_id`` is not a valid id.
    """
    src = Path(src_dir)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise StoreError(str(src), f"quality must be an integer 1-100, got {quality!r}")
    layout = read_layout(src)
    robot_id = protocol.check_id(robot_id or id_text(layout.robot_type or "lerobot"), "robot_id")
    robot, order = episode_config(layout, config)
    tasks = read_tasks(layout)
    episodes = read_episodes(layout)
    check_files(layout, episodes)
    base_ns = start_ns if start_ns is not None else (src / INFO_PATH).stat().st_mtime_ns
    period_ns = 1e9 / layout.fps
    result = LeRobotImport([], [], [], robot, robot_id)
    cursors = {camera.name: VideoCursor(layout.fps) for camera in layout.cameras}
    table = DataTable(layout)
    try:
        for episode in episodes:
            episode_id = _episode_id(robot_id, layout, episode.index)
            out = raw_path(Path(raw_dir), robot_id, episode_id)
            if out.exists():
                log.info("%s episode %d: already imported as %s; skipped", src, episode.index, out)
                result.existing.append(out)
            else:
                try:
                    rows = table.episode(episode)
                    _import_episode(layout, episode, rows, tasks, Path(raw_dir), robot_id, episode_id, robot, order,
                                    base_ns, operator, quality, cursors)
                    result.imported.append(out)
                    log.info("%s episode %d: imported as %s (%d rows)", src, episode.index, out, episode.length)
                except (BrokenEpisode, VideoFrameError) as err:
                    log.warning("%s episode %d: not imported: %s", src, episode.index, err)
                    result.failed.append((episode.index, str(err)))
            base_ns += round(episode.length * period_ns) + _EPISODE_GAP_NS
    finally:
        for cursor in cursors.values():
            cursor.close()
    return result


# -- the robot config ------------------------------------------------------------------------


def generated_config(layout: Layout) -> RobotConfig:
    """A robot config from the dataset's features: its joints and cameras, every limit unknown."""
    model = id_text(layout.robot_type or "lerobot")[:64]
    raw = {
        "model": model,
        "vendor": "unknown",
        "source": f"generated by `refinery import lerobot` from {layout.root / INFO_PATH}: joint names from "
                  f"features[{STATE}].names, rates from fps; limits unknown",
        "streams": {"joint_state_hz": layout.fps, "action_hz": layout.fps},
        "joints": [{"name": name, "standard": name if name in STANDARD_INDEX else None,
                    "position": None, "velocity": None, "effort": None} for name in layout.joints],
        "cameras": [],
    }
    return parse_robot_config(raw, f"{layout.root / INFO_PATH} (generated config)")


def episode_config(layout: Layout, config: RobotConfig | str | Path | None) -> tuple[RobotConfig, np.ndarray]:
    """The robot config stored with the episodes, and the state column of each of its joints.

    Raises:
        ConfigError: ``config`` does not have exactly the dataset's joints.
    """
    if config is None:
        robot = generated_config(layout)
    else:
        robot = config if isinstance(config, RobotConfig) else load_robot_config(config)
    if set(robot.joint_names) != set(layout.joints):
        missing = sorted(set(layout.joints) - set(robot.joint_names))
        extra = sorted(set(robot.joint_names) - set(layout.joints))
        raise ConfigError(robot.path or robot.model, "joints",
                          f"must be the dataset's joints {list(layout.joints)}; "
                          f"not in the config: {missing}, not in the dataset: {extra}")
    order = np.array([layout.joints.index(name) for name in robot.joint_names], dtype=np.int64)
    known = {c.name: c for c in robot.cameras}
    cameras = []
    for camera in layout.cameras:
        spec = known.get(camera.name)
        cameras.append({"name": camera.name, "width": camera.width, "height": camera.height,
                        "fps": layout.fps, "latency_ms": spec.latency_ms if spec else 0.0})
    raw = robot.to_dict()
    raw["streams"] = {"joint_state_hz": layout.fps, "action_hz": layout.fps}
    raw["cameras"] = cameras
    return parse_robot_config(raw, f"{robot.path or robot.model} (cameras of {layout.root})"), order


# -- one episode ------------------------------------------------------------------------------


def _import_episode(
    layout: Layout,
    episode: EpisodeRef,
    rows: EpisodeRows,
    tasks: dict[int, str],
    raw_dir: Path,
    robot_id: str,
    episode_id: str,
    robot: RobotConfig,
    order: np.ndarray,
    base_ns: int,
    operator: str,
    quality: int,
    cursors: dict[str, VideoCursor],
) -> None:
    # A journal of this episode left by a killed import is ours to replace.
    stale = raw_dir / "journal" / robot_id / f"{episode_id}{JOURNAL_SUFFIX}"
    stale.unlink(missing_ok=True)
    builder = RawEpisodeBuilder(raw_dir, robot_id, robot, episode_id=episode_id)
    try:
        end_ns = _write_streams(builder, layout, episode, rows, tasks, base_ns, order, operator, quality, cursors)
        builder.seal("success", end_ns)
    except BaseException:
        builder.journal.close()
        builder.journal.path.unlink(missing_ok=True)
        raise


def _jpegs(frames: Iterator[np.ndarray], quality: int) -> Iterator[bytes]:
    for index, rgb in enumerate(frames):
        try:
            yield encode_jpeg_chunk(rgb, quality)
        except DatasetError as err:
            raise BrokenEpisode(f"frame {index}: {err}") from err


def _task_text(tasks: dict[int, str], index: int, episode: int) -> str:
    if index not in tasks:
        raise BrokenEpisode(f"episode {episode}: task_index {index} is not in the task table")
    return tasks[index]


def _write_streams(
    builder: RawEpisodeBuilder,
    layout: Layout,
    episode: EpisodeRef,
    rows: EpisodeRows,
    tasks: dict[int, str],
    base_ns: int,
    order: np.ndarray,
    operator: str,
    quality: int,
    cursors: dict[str, VideoCursor],
) -> int:
    length = episode.length
    stamps = base_ns + np.round(rows.timestamp * 1e9).astype(np.int64)
    end_ns = int(stamps[-1]) + round(1e9 / layout.fps)
    task_index = rows.task_index
    task = _task_text(tasks, int(task_index[0]), episode.index) if task_index is not None else ""
    builder.event({"kind": "start", "task": task, "operator": operator, "t0_ns": int(base_ns)}, int(base_ns))
    builder.event({"kind": "label", "text": f"imported from LeRobot dataset {layout.root.name[:200]} "
                                            f"episode {episode.index}"}, int(base_ns))
    frames = {name: _jpegs(cursors[name].frames(path, start + rows.timestamp), quality)
              for name, (path, start) in episode.videos.items()}
    zeros = np.zeros((length, len(order)), dtype=np.float64)
    state = rows.state[:, order]
    velocity = zeros if rows.velocity is None else rows.velocity[:, order]
    effort = zeros if rows.effort is None else rows.effort[:, order]
    action = rows.action[:, order]
    next_clock = int(base_ns)
    for first in range(0, length, _STEPS_PER_BATCH):
        last = min(length, first + _STEPS_PER_BATCH)
        next_clock = builder.same_clock_until(next_clock, int(stamps[last - 1]))
        if task_index is not None:
            for i in range(max(first, 1), last):
                if task_index[i] != task_index[i - 1]:
                    text = _task_text(tasks, int(task_index[i]), episode.index)
                    builder.event({"kind": "label", "text": f"task: {text}"}, int(stamps[i]))
        t = stamps[first:last]
        index = np.arange(first, last, dtype=np.int64)
        builder.samples(JOINT_STATE, t, index, np.concatenate([state[first:last], velocity[first:last],
                                                               effort[first:last]], axis=1))
        builder.samples(ACTION, t, index, action[first:last])
        for camera, produce in frames.items():
            for i in range(first, last):
                builder.frame(camera, int(stamps[i]), i, next(produce))
    builder.same_clock(end_ns)
    return end_ns


# -- names -------------------------------------------------------------------------------------




def _episode_id(robot_id: str, layout: Layout, index: int) -> str:
    name = id_text(layout.root.resolve().name)
    episode_id = f"{robot_id}-{name}-{layout.identity}-{index:06d}"
    if len(episode_id) > 64:
        digest = hashlib.sha1(f"{robot_id}/{name}".encode()).hexdigest()[:8]
        episode_id = f"{digest}-{layout.identity}-{index:06d}"
    return protocol.check_id(episode_id, "episode_id")


# -- command line ------------------------------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, metavar="SRC_DIR", help="the LeRobot dataset's root folder (holding meta/)")
    add_destination_arguments(p)
    p.add_argument("--robot-id", default=None,
                   help="robot id recorded with the episodes (default: the dataset's robot_type)")
    p.add_argument("--robot", default=None,
                   help="a real robot config (shipped model or YAML path) whose joints are the dataset's state "
                        "names (default: one generated from the features, limits unknown)")
    p.add_argument("--operator", default="", help="operator id recorded with each episode")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded frames (default: 90)")


def _run(args: argparse.Namespace) -> list[str]:
    data_dir = destination(args)
    result = import_lerobot(args.src, data_dir, robot_id=args.robot_id, config=args.robot, operator=args.operator,
                            quality=args.quality)
    lines = [f"{len(result.imported)} episodes imported, {len(result.existing)} imported before, "
             f"{len(result.failed)} not imported; robot config {result.config.model}"
             + ("" if args.robot else " (generated: limits unknown)")]
    lines += [f"  episode {index}: {reason}" for index, reason in result.failed]
    lines.append(f"raw episodes in {data_dir / 'raw' / result.robot_id}")
    lines.append(f"refine them with: refinery process {data_dir} --out DATASET.zarr")
    return lines


FORMAT = Format(
    name="lerobot",
    direction="import",
    summary="a local LeRobotDataset (v3.0, v2.1)",
    description="One raw episode per LeRobot episode: observation.state, action, timestamps, task text and the "
                "camera videos (decoded, re-encoded as JPEG); a robot config generated from the features with "
                "limits unknown, or --robot. A broken episode is skipped with its reason; re-running skips "
                "episodes already imported.",
    add_arguments=_add_arguments,
    run=_run,
)

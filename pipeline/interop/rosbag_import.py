"""Import ROS 2 bags (MCAP or SQLite3 storage) as sealed raw episodes.

A mapping file (:mod:`pipeline.interop.rosbag_map`) says which topic is the
joint state, which the command, which the cameras, and how a bag is cut into
episodes. Bags are read with ``rosbags`` (pure Python, no ROS installation):
a bag folder (``metadata.yaml`` beside ``.mcap``/``.db3`` files), one
``.mcap``/``.db3`` file, or a folder of either.

What a raw episode gets, per message:

* ``joint_state`` (``sensor_msgs/msg/JointState``): one row per message,
  position ++ velocity ++ effort in the robot config's joint order, matched by
  name (extra names are left out and listed in an event; robot joints a message
  lacks skip it, or take ``fill_missing``); empty velocity/effort are zeros.
* ``action``: ``JointState`` (positions by name), ``JointTrajectory`` (the
  first point, by name) or ``Float64MultiArray`` (columns in the mapping's
  ``joints`` order, default the robot's).
* cameras: ``CompressedImage`` JPEGs pass through byte for byte; PNGs and raw
  ``Image`` messages (rgb8, bgr8, mono8, mono16, ...) are encoded as JPEG.
* capture time = the header stamp; arrival time = the bag's receive (log)
  time. A message without a usable stamp (zero, or a type without header) is
  given its receive time as capture time, and the episode records that decision
  in a ``label`` event (stream, count, first sample indices).
* source index = the message's index among its topic's messages in the bag,
  so a message skipped here leaves a gap a reader can see.
* events: ``start`` (task, operator), a ``label`` naming the bag, ``label``
  events for every decision and skipped-message reason, ``stop``.
* clock samples every 0.5 s with zero offset: the header stamps and the
  receive times are taken to be on one clock (true when recorder and drivers
  share the robot's clock; a bag recorded in simulated time should use
  ``capture_time: receive``).

Every field is hostile: each message is bounded (:class:`~pipeline.interop.rosbag_map.Limits`)
before it is deserialized, and a message that fails any check is skipped with
its reason. A bag that cannot be opened, lacks a mapped topic, carries it with
another type, or whose joint names do not match the robot is refused with its
reason (:mod:`pipeline.interop.rosbag_plan` checks all that before anything is
written) and the other bags are imported. Episodes already imported (same id,
derived from the bag's name and identity) are skipped, so re-running is cheap.
"""

from __future__ import annotations

import argparse
import bisect
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import RefineryError, StoreError
from pipeline.interop import Format, add_destination_arguments, destination
from pipeline.interop.rosbag_map import BagMap, load_bag_map
from pipeline.interop.rosbag_messages import (
    FLOAT_ARRAY_TYPE,
    JointMatcher,
    MessageSkipped,
    command_row,
    header_stamp_ns,
    image_jpeg,
    joint_state_row,
)
from pipeline.interop.rosbag_plan import (
    PROBE_FRAMES,
    BagEpisode,
    BagPlan,
    BagTopic,
    RosbagError,
    deserialize,
    plan_bag,
    short_listing,
    shown,
)
from pipeline.journal import JOURNAL_SUFFIX
from pipeline.raw_builder import RawEpisodeBuilder
from pipeline.raw_store import raw_path
from pipeline.robot_config import RobotConfig, load_robot_config

log = logging.getLogger("refinery.import")

BAG_SUFFIXES = (".mcap", ".db3")
_INDICES_LISTED = 20  # sample indices a decision event lists
_REASONS_KEPT = 50  # distinct skip reasons an episode records one by one (a hostile bag could vary them all)

__all__ = ["BAG_SUFFIXES", "FORMAT", "RosbagError", "RosbagImport", "bag_paths", "import_rosbags"]


@dataclass
class RosbagImport:
    """What an import did.

    Attributes:
        episodes: Every raw episode of the imported bags (written now or before).
        written: How many of them were written now.
        refused: Bags not imported, with the error that says why.
        skipped: ``"topic: reason"`` -> messages skipped for it, over all bags.
    """

    episodes: list[Path] = field(default_factory=list)
    written: int = 0
    refused: list[tuple[Path, RefineryError]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def bag_paths(src: Path) -> list[Path]:
    """The bags of ``src``: a bag folder or bag file itself, or the bags inside a folder, by name.

    Raises:
        StoreError: ``src`` does not exist or holds no bag.
    """
    src = Path(src)
    if src.is_file() or (src / "metadata.yaml").is_file():
        return [src]
    if not src.is_dir():
        raise StoreError(str(src), "no such file or folder; point at a ROS 2 bag (folder or .mcap/.db3 file)")
    found = sorted(p for p in src.iterdir()
                   if (p.is_dir() and (p / "metadata.yaml").is_file()) or (p.is_file() and p.suffix in BAG_SUFFIXES))
    if not found:
        raise StoreError(str(src), "holds no ROS 2 bag (a folder with metadata.yaml, or .mcap/.db3 files)")
    return found


def import_rosbags(src: Path, raw_dir: Path, mapping: BagMap | Path | str) -> RosbagImport:
    """Import every bag of ``src`` into ``raw_dir`` as sealed raw episodes.

    Args:
        src: A bag folder, a ``.mcap``/``.db3`` file, or a folder of bags.
        raw_dir: The data folder raw episodes go to (``<raw_dir>/raw/<robot_id>/``).
        mapping: The mapping (or its YAML file).

    Returns:
        What was imported, refused and skipped. A refused bag does not stop the others.

    Raises:
        ConfigError: The mapping or the robot config it names is malformed.
        StoreError: ``src`` holds no bag.
    """
    bag_map = mapping if isinstance(mapping, BagMap) else load_bag_map(mapping)
    robot = load_robot_config(bag_map.robot_config)
    result = RosbagImport()
    for bag in bag_paths(src):
        try:
            _import_bag(bag, Path(raw_dir), bag_map, robot, result)
        except RefineryError as err:
            log.warning("%s", err)
            result.refused.append((bag, err))
    return result


# --- one bag -----------------------------------------------------------------------------


def _import_bag(bag: Path, raw_dir: Path, bag_map: BagMap, robot: RobotConfig, result: RosbagImport) -> None:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_HUMBLE)  # the types imported here are the same in every ROS 2 release
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as err:  # a foreign file: rosbags and sqlite raise many kinds of error
        raise RosbagError(bag, "", f"cannot be read as a ROS 2 bag: {shown(str(err), 300)}") from err
    try:
        try:
            plan = plan_bag(bag, reader, typestore, bag_map, robot, raw_dir)
        except RefineryError:
            raise
        except Exception as err:  # a foreign file can break anywhere the checks read it
            problem = f"breaks while it is checked ({type(err).__name__}: {shown(str(err), 300)})"
            raise RosbagError(bag, "", problem) from err
        pending = [e for e in plan.episodes if not e.done]
        for episode in plan.episodes:
            if episode.done:
                log.info("%s: episode %s already imported; skipped", bag, episode.episode_id)
                result.episodes.append(raw_path(raw_dir, bag_map.robot_id, episode.episode_id))
        if pending:
            _write_episodes(plan, reader, typestore, bag_map, robot, raw_dir, result)
    finally:
        try:
            reader.close()
        except Exception as err:  # noqa: BLE001  closing a broken bag must not hide why it broke
            log.debug("%s: closing the bag failed: %s", bag, err)


def _limit(topic: BagTopic, bag_map: BagMap) -> int:
    return bag_map.limits.max_image_bytes if topic.role == "camera" else bag_map.limits.max_message_bytes


# --- writing -----------------------------------------------------------------------------


@dataclass
class _Open:
    """The episode being written and what it has seen."""

    episode: BagEpisode
    builder: RawEpisodeBuilder
    last_ns: int
    next_clock_ns: int
    receive_stamped: Counter[str] = field(default_factory=Counter)  # stream -> samples given their receive time
    receive_stamped_first: dict[str, list[int]] = field(default_factory=dict)  # their first source indices
    skipped: Counter[str] = field(default_factory=Counter)


def _write_episodes(
    plan: BagPlan, reader: Any, typestore: Any, bag_map: BagMap, robot: RobotConfig, raw_dir: Path,
    result: RosbagImport,
) -> None:
    """Write the bag's pending episodes; each sealed one goes into ``result`` at once, so a bag that
    breaks later still reports what it gave."""
    state_matcher = JointMatcher(robot.joint_names, bag_map.joint_state.fill_missing, bag_map.limits.max_joints)
    action_matcher = JointMatcher(robot.joint_names, bag_map.action.fill_missing if bag_map.action else None,
                                  bag_map.limits.max_joints)
    starts = [e.start_ns for e in plan.episodes]
    index: Counter[str] = Counter()
    sealed = 0
    current: _Open | None = None
    wanted = [c for c in reader.connections if c.topic in plan.topics and plan.topics[c.topic].role != "marker"]
    try:
        for conn, t, data in reader.messages(wanted):
            topic = plan.topics[conn.topic]
            source_index = index[topic.topic]
            index[topic.topic] += 1
            k = bisect.bisect_right(starts, t) - 1
            episode = plan.episodes[k] if k >= 0 and t <= plan.episodes[k].end_ns else None
            if episode is None:
                result.skipped[f"{topic.topic}: received outside every episode"] += 1
                continue
            if episode.done:
                continue
            if current is None or current.episode is not episode:
                if current is not None:
                    _seal(current, plan, bag_map, result)
                    sealed += 1
                current = _open(episode, t, plan, bag_map, raw_dir)
            try:
                _write_message(current, topic, t, data, source_index, typestore, bag_map, plan,
                               state_matcher, action_matcher)
            except MessageSkipped as err:
                reason = f"{err.topic}: {err.reason}"
                if reason not in current.skipped and len(current.skipped) >= _REASONS_KEPT:
                    reason = f"{err.topic}: other reasons"
                current.skipped[reason] += 1
        if current is not None:
            _seal(current, plan, bag_map, result)
            current = None
    except Exception as err:  # a bag broken part-way: keep the episodes sealed so far
        if current is not None:
            _discard(current)
        if isinstance(err, RefineryError):
            raise
        raise RosbagError(plan.bag, "", f"breaks while reading ({type(err).__name__}: {shown(str(err), 300)}); "
                                        f"{sealed} episode(s) before the break were imported") from err


def _open(episode: BagEpisode, t: int, plan: BagPlan, bag_map: BagMap, raw_dir: Path) -> _Open:
    # A journal of this episode left by a killed import is ours to replace.
    stale = raw_dir / "journal" / bag_map.robot_id / f"{episode.episode_id}{JOURNAL_SUFFIX}"
    stale.unlink(missing_ok=True)
    builder = RawEpisodeBuilder(raw_dir, bag_map.robot_id, plan.config, episode_id=episode.episode_id)
    start = t if episode.start_ns < 0 else min(t, episode.start_ns)
    builder.event({"kind": "start", "task": bag_map.task, "operator": bag_map.operator, "t0_ns": start}, start)
    text = f"imported from ROS 2 bag {plan.bag.name}"
    builder.event({"kind": "label", "text": text[:200], "source": "rosbag"}, start)
    if plan.extra_joints:
        builder.event({"kind": "label", "text": f"joint state names not in the robot config, left out: "
                                                f"{short_listing(plan.extra_joints)}"[:900],
                       "decision": "extra_joints_left_out", "joints": plan.extra_joints[:64]}, start)
    if bag_map.capture_time == "receive":
        builder.event({"kind": "label", "text": "capture times are the bag's receive times (mapping: capture_time: "
                                                "receive); header stamps are not used",
                       "decision": "receive_time_as_capture_time", "stream": "all"}, start)
    left_out = [c.name for c in bag_map.cameras if c.name not in plan.cameras]
    if left_out:
        builder.event({"kind": "label", "text": f"cameras left out (no readable frame among the first "
                                                f"{PROBE_FRAMES}): {', '.join(left_out)}",
                       "decision": "camera_left_out", "cameras": left_out}, start)
    return _Open(episode, builder, start, start)


def _write_message(
    current: _Open, topic: BagTopic, t: int, data: bytes, source_index: int, typestore: Any, bag_map: BagMap,
    plan: BagPlan, state_matcher: JointMatcher, action_matcher: JointMatcher,
) -> None:
    builder = current.builder
    current.next_clock_ns = builder.same_clock_until(current.next_clock_ns, t)
    current.last_ns = max(current.last_ns, t)
    if topic.role == "camera" and topic.stream not in plan.cameras:
        raise MessageSkipped(topic.topic, "belongs to a camera left out (no readable first frame)")
    msg = deserialize(typestore, topic, data, _limit(topic, bag_map))
    if topic.role == "joint_state":
        value = joint_state_row(topic.topic, msg, state_matcher)
    elif topic.role == "action":
        columns = bag_map.action.joints if bag_map.action is not None else ()
        value = command_row(topic.topic, topic.msgtype, msg, action_matcher, columns)
    else:
        width, height = plan.cameras[topic.stream]
        value = image_jpeg(topic.topic, topic.msgtype, msg, width, height, bag_map.limits, bag_map.jpeg_quality)
    stamp = header_stamp_ns(msg) if bag_map.capture_time == "header" else t
    if stamp is None:
        stamp = t
        current.receive_stamped[topic.stream] += 1
        first = current.receive_stamped_first.setdefault(topic.stream, [])
        if len(first) < _INDICES_LISTED:
            first.append(source_index)
    if topic.role == "camera":
        builder.frame(topic.stream, stamp, source_index, value, arrival_ns=t)
    else:
        builder.samples(topic.stream, np.array([stamp], dtype=np.int64), np.array([source_index], dtype=np.int64),
                        value[None, :], arrival_ns=t)


def _seal(current: _Open, plan: BagPlan, bag_map: BagMap, result: RosbagImport) -> None:
    builder = current.builder
    end = current.last_ns
    types = {t.stream: t.msgtype for t in plan.topics.values()}
    for stream, count in current.receive_stamped.items():
        why = ("its type has no header" if types.get(stream) == FLOAT_ARRAY_TYPE
               else "their header stamp is zero or not a valid time")
        builder.event({
            "kind": "label",
            "text": f"{count} {stream} message(s) take their receive time as capture time: {why}",
            "decision": "receive_time_as_capture_time", "stream": stream, "count": count,
            "source_indices": current.receive_stamped_first[stream],
        }, end, arrival_ns=end)
    for reason, count in sorted(current.skipped.items()):
        builder.event({"kind": "label", "text": f"{count} message(s) skipped: {reason}"[:900],
                       "decision": "message_skipped", "count": count}, end, arrival_ns=end)
        result.skipped[reason] += count
    builder.same_clock(end)
    try:
        path = builder.seal(bag_map.outcome, end)
    except BaseException:
        _discard(current)
        raise
    log.info("%s: imported as %s", plan.bag, path)
    result.episodes.append(path)
    result.written += 1


def _discard(current: _Open) -> None:
    current.builder.journal.close()
    current.builder.journal.path.unlink(missing_ok=True)


# --- command line ------------------------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, metavar="BAG",
                   help="a ROS 2 bag folder (metadata.yaml + .mcap/.db3), one .mcap/.db3 file, or a folder of bags")
    add_destination_arguments(p)
    p.add_argument("--map", dest="bag_map", type=Path, required=True, metavar="MAP.yaml",
                   help="which topics are the joint state, the command and the cameras, and how episodes are cut "
                        "(README: Import ROS 2 bags)")


def _run(args: argparse.Namespace) -> list[str]:
    data_dir = destination(args)
    bag_map = load_bag_map(args.bag_map)
    result = import_rosbags(args.src, data_dir, bag_map)
    where = data_dir / "raw" / bag_map.robot_id
    lines = [f"{len(result.episodes)} raw episodes in {where} ({result.written} written now)"]
    lines += [f"skipped {count} message(s): {reason}" for reason, count in sorted(result.skipped.items())]
    if result.refused and not result.episodes:
        raise result.refused[0][1]  # the others were logged as they were refused
    lines += [f"refused: {err}" for _, err in result.refused]
    if result.episodes:
        lines.append(f"refine them with: refinery process {data_dir} --out DATASET.zarr")
    return lines


FORMAT = Format(
    name="rosbag",
    direction="import",
    summary="ROS 2 bags (MCAP or SQLite3), topics chosen by a mapping file",
    description="Raw episodes from ROS 2 bags: joint state, command and camera topics as a mapping file (--map) "
                "names them; header stamps become capture times, receive times arrival times. One episode per "
                "bag, or cut by a start/stop topic or a time gap. Re-running skips episodes already imported.",
    add_arguments=_add_arguments,
    run=_run,
)

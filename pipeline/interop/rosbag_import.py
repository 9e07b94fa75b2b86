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
reason and the other bags are imported. Episodes already imported (same id,
derived from the bag's name and identity) are skipped, so re-running is cheap.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import protocol
from pipeline.errors import RefineryError, StoreError
from pipeline.interop import Format, add_destination_arguments, destination
from pipeline.interop.rosbag_map import BagMap, CameraMap, load_bag_map
from pipeline.interop.rosbag_messages import (
    CAMERA_TYPES,
    COMMAND_TYPES,
    FLOAT_ARRAY_TYPE,
    MARKER_TYPES,
    STATE_TYPES,
    JointMatcher,
    MessageSkipped,
    command_row,
    header_stamp_ns,
    image_jpeg,
    image_size,
    joint_state_row,
    marker_state,
)
from pipeline.journal import JOURNAL_SUFFIX
from pipeline.raw_builder import RawEpisodeBuilder
from pipeline.raw_store import raw_path
from pipeline.robot_config import RobotConfig, load_robot_config, parse_robot_config
from pipeline.streams import ACTION, JOINT_STATE

log = logging.getLogger("refinery.import")

BAG_SUFFIXES = (".mcap", ".db3")
# A clock-sync exchange every 0.5 s, as a collector makes them; 100 us each way.
_CLOCK_EVERY_NS = 500_000_000
_CLOCK_LEG_NS = 100_000
_PROBE_FRAMES = 20  # first messages tried for the joint names and each camera's size
_RATE_PROBE = 50  # first receive times a topic's rate is measured on
_INDICES_LISTED = 20  # sample indices a decision event lists
_REASONS_KEPT = 50  # distinct skip reasons an episode records one by one (a hostile bag could vary them all)
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class RosbagError(StoreError):
    """A bag cannot be imported: names the bag and, where one is at fault, the topic.

    Attributes:
        bag: The bag folder or file.
        topic: The topic at fault, or "".
    """

    def __init__(self, bag: Path, topic: str, problem: str) -> None:
        self.bag = Path(bag)
        self.topic = topic
        super().__init__(f"{bag} [{topic}]" if topic else str(bag), problem)


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


@dataclass(frozen=True)
class _Topic:
    """A mapped topic as this bag holds it."""

    topic: str
    msgtype: str
    role: str  # joint_state | action | camera | marker
    stream: str  # the raw stream it feeds ("" for the marker)
    count: int


@dataclass
class _Episode:
    """One episode a bag is cut into: the receive-time interval it covers (inclusive)."""

    episode_id: str
    start_ns: int
    end_ns: int
    done: bool  # imported before


@dataclass
class _Plan:
    bag: Path
    topics: dict[str, _Topic]
    config: RobotConfig
    cameras: dict[str, tuple[int, int]]  # camera -> (width, height); cameras left out are absent
    extra_joints: list[str]
    episodes: list[_Episode]


def _import_bag(bag: Path, raw_dir: Path, bag_map: BagMap, robot: RobotConfig, result: RosbagImport) -> None:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_HUMBLE)  # the types imported here are the same in every ROS 2 release
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as err:  # noqa: BLE001  a foreign file: rosbags and sqlite raise many kinds of error
        raise RosbagError(bag, "", f"cannot be read as a ROS 2 bag: {_shown(str(err), 300)}") from err
    try:
        try:
            plan = _plan(bag, reader, typestore, bag_map, robot, raw_dir)
        except RefineryError:
            raise
        except Exception as err:  # noqa: BLE001  a foreign file can break anywhere the checks read it
            raise RosbagError(bag, "", f"breaks while it is checked ({type(err).__name__}: {_shown(str(err), 300)})") from err
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


def _plan(bag: Path, reader: Any, typestore: Any, bag_map: BagMap, robot: RobotConfig, raw_dir: Path) -> _Plan:
    """Check the bag against the mapping, read what sizes the episodes, cut them: nothing is written."""
    by_topic: dict[str, list[Any]] = {}
    for conn in reader.connections:
        by_topic.setdefault(conn.topic, []).append(conn)
    roles = [(bag_map.joint_state.topic, "joint_state", JOINT_STATE, STATE_TYPES)]
    if bag_map.action is not None:
        roles.append((bag_map.action.topic, "action", ACTION, COMMAND_TYPES))
    roles += [(c.topic, "camera", c.name, CAMERA_TYPES) for c in bag_map.cameras]
    if bag_map.episodes.split == "topic":
        roles.append((bag_map.episodes.topic, "marker", "", MARKER_TYPES))
    topics: dict[str, _Topic] = {}
    for topic, role, stream, allowed in roles:
        field_name = bag_map.topics[topic]
        conns = by_topic.get(topic)
        if not conns:
            known = _short(sorted(by_topic), 20) or "none"
            raise RosbagError(bag, topic, f"is not in this bag (the mapping's {field_name} names it); "
                                          f"the bag's topics: {known}")
        types = sorted({c.msgtype for c in conns})
        if len(types) > 1 or types[0] not in allowed:
            raise RosbagError(bag, topic, f"carries {_short(types)}; the mapping's {field_name} needs "
                                          f"{' or '.join(allowed)}")
        topics[topic] = _Topic(topic, types[0], role, stream, sum(int(c.msgcount) for c in conns))
    if topics[bag_map.joint_state.topic].count == 0:
        raise RosbagError(bag, bag_map.joint_state.topic, "has no messages")

    extra = _check_joint_names(bag, reader, typestore, topics[bag_map.joint_state.topic], bag_map, robot)
    cameras = {c.name: size for c in bag_map.cameras
               if (size := _camera_size(bag, reader, typestore, topics[c.topic], bag_map)) is not None}
    config = _episode_config(bag, reader, bag_map, robot, topics, cameras)
    intervals = _cut(bag, reader, typestore, bag_map, topics)
    identity = f"{reader.start_time}|{reader.duration}|{reader.message_count}"
    ids = _episode_ids(bag_map.robot_id, bag, identity, len(intervals), bag_map.episodes.split != "bag")
    episodes = [_Episode(i, a, b, raw_path(raw_dir, bag_map.robot_id, i).exists()) for i, (a, b) in zip(ids, intervals)]
    return _Plan(bag, topics, config, cameras, extra, episodes)


def _deserialize(typestore: Any, topic: _Topic, data: bytes, limit: int) -> Any:
    if len(data) > limit:
        raise MessageSkipped(topic.topic, f"is larger than the limit of {limit:,} bytes")
    try:
        return typestore.deserialize_cdr(data, topic.msgtype)
    except Exception as err:  # noqa: BLE001  rosbags' generated deserializers raise many kinds on bad bytes
        raise MessageSkipped(topic.topic, f"does not deserialize as {topic.msgtype}") from err


def _limit(topic: _Topic, bag_map: BagMap) -> int:
    return bag_map.limits.max_image_bytes if topic.role == "camera" else bag_map.limits.max_message_bytes


def _first_messages(reader: Any, topic: _Topic, most: int) -> Iterator[tuple[int, bytes]]:
    conns = [c for c in reader.connections if c.topic == topic.topic]
    for n, (_, t, data) in enumerate(reader.messages(conns)):
        if n >= most:
            return
        yield t, data


def _check_joint_names(
    bag: Path, reader: Any, typestore: Any, topic: _Topic, bag_map: BagMap, robot: RobotConfig
) -> list[str]:
    """Compare the first joint state's names with the robot's; return the names the robot lacks."""
    for _, data in _first_messages(reader, topic, _PROBE_FRAMES):
        try:
            msg = _deserialize(typestore, topic, data, bag_map.limits.max_message_bytes)
        except MessageSkipped:
            continue
        names = [str(n)[:128] for n in msg.name[: bag_map.limits.max_joints]]
        shared = [n for n in robot.joint_names if n in names]
        missing = [n for n in robot.joint_names if n not in names]
        if not shared:
            raise RosbagError(bag, topic.topic, f"names joints {_short(names)}, none of robot model "
                                                f"{robot.model!r}'s ({_short(robot.joint_names)}): map the bag "
                                                "to the robot config it was recorded with")
        if missing and bag_map.joint_state.fill_missing is None:
            raise RosbagError(bag, topic.topic, f"lacks joints {_short(missing)} of robot model {robot.model!r}; "
                                                "set joint_state.fill_missing in the mapping to fill them")
        return [n for n in names if n not in robot.joint_names]
    raise RosbagError(bag, topic.topic, f"none of its first {_PROBE_FRAMES} messages can be read")


def _camera_size(bag: Path, reader: Any, typestore: Any, topic: _Topic, bag_map: BagMap) -> tuple[int, int] | None:
    """The camera's frame size, from its first readable frame; None (camera left out) when none is."""
    for _, data in _first_messages(reader, topic, _PROBE_FRAMES):
        try:
            msg = _deserialize(typestore, topic, data, bag_map.limits.max_image_bytes)
            return image_size(topic.topic, topic.msgtype, msg, bag_map.limits)
        except MessageSkipped:
            continue
    log.warning("%s [%s]: no readable frame among the first %d; camera %r left out", bag, topic.topic,
                _PROBE_FRAMES, topic.stream)
    return None


def _rate(reader: Any, topic: _Topic) -> float:
    """A topic's message rate (Hz): the median interval of its first receive times, so a dropped message
    or a pause later in the bag does not change it."""
    times = [t for t, _ in _first_messages(reader, topic, _RATE_PROBE)]
    steps = np.diff(np.asarray(times, dtype=np.int64))
    steps = steps[steps > 0]
    return round(1e9 / float(np.median(steps)), 3) if steps.size else 1.0


def _episode_config(
    bag: Path, reader: Any, bag_map: BagMap, robot: RobotConfig, topics: dict[str, _Topic],
    cameras: dict[str, tuple[int, int]],
) -> RobotConfig:
    """The robot config stored with the bag's episodes: its cameras at their size, rates measured in the bag."""
    known = {c.name: c for c in robot.cameras}
    listed = []
    for camera in bag_map.cameras:
        if camera.name not in cameras:
            continue
        width, height = cameras[camera.name]
        latency = _latency(camera, known, robot)
        listed.append({"name": camera.name, "width": width, "height": height,
                       "fps": _rate(reader, topics[camera.topic]), "latency_ms": latency})
    raw = robot.to_dict()
    action = topics[bag_map.action.topic] if bag_map.action is not None else topics[bag_map.joint_state.topic]
    raw["streams"] = {"joint_state_hz": _rate(reader, topics[bag_map.joint_state.topic]),
                      "action_hz": _rate(reader, action)}
    raw["cameras"] = listed
    try:
        return parse_robot_config(raw, f"{robot.path or robot.model} (cameras of {bag})")
    except RefineryError as err:
        raise RosbagError(bag, "", str(err)) from err


def _latency(camera: CameraMap, known: dict[str, Any], robot: RobotConfig) -> float:
    if camera.latency_ms is not None:
        return camera.latency_ms
    if camera.name in known:
        return known[camera.name].latency_ms
    log.warning("camera %r is not in robot config %r and the mapping gives no latency_ms; taken as 0 ms",
                camera.name, robot.model)
    return 0.0


def _cut(bag: Path, reader: Any, typestore: Any, bag_map: BagMap, topics: dict[str, _Topic]) -> list[tuple[int, int]]:
    """Receive-time intervals (inclusive) of the bag's episodes."""
    cut = bag_map.episodes
    if cut.split == "bag":
        return [(-(1 << 63), (1 << 63) - 1)]
    if cut.split == "gap":
        conns = [c for c in reader.connections if c.topic == bag_map.joint_state.topic]
        times = np.fromiter((t for _, t, _ in reader.messages(conns)), dtype=np.int64)
        breaks = np.flatnonzero(np.diff(times) > cut.gap_s * 1e9)
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(times) - 1]])
        return [(int(times[a]), int(times[b])) for a, b in zip(starts, ends)]
    marker = topics[cut.topic]
    intervals: list[tuple[int, int]] = []
    opened: int | None = None
    for _, t, data in reader.messages([c for c in reader.connections if c.topic == cut.topic]):
        try:
            state = marker_state(marker.msgtype, _deserialize(typestore, marker, data, bag_map.limits.max_message_bytes))
        except MessageSkipped as err:
            log.warning("%s [%s]: a marker message is skipped: %s", bag, cut.topic, err.reason)
            continue
        if state == "start":
            if opened is not None:  # a start without a stop: the previous episode ends here
                intervals.append((opened, t - 1))
            opened = t
        elif state == "stop" and opened is not None:
            intervals.append((opened, t))
            opened = None
    if opened is not None:
        intervals.append((opened, (1 << 63) - 1))
    if not intervals:
        raise RosbagError(bag, cut.topic, "marks no episode: expected String 'start'/'stop' or Bool true/false")
    return intervals


def _episode_ids(robot_id: str, bag: Path, identity: str, count: int, numbered: bool) -> list[str]:
    """Ids from the bag's name and a digest of its identity (start time, duration, message count), so bags
    of the same name in different folders stay apart and importing the same bag again finds its episodes."""
    stem = _BAD_ID_CHARS.sub("_", bag.stem if bag.is_file() else bag.name).lstrip(".-") or "bag"
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    ids = []
    for k in range(count):
        tail = f"-{digest}" + (f"-{k:03d}" if numbered else "")
        room = 64 - len(robot_id) - 1 - len(tail)
        ids.append(protocol.check_id(f"{robot_id}-{stem[:max(room, 1)]}{tail}", "episode_id"))
    return ids


def _short(names: Any, most: int = 8) -> str:
    """A listing of names read from a bag, for one line of text: control characters and length defused."""
    names = [_shown(n) for n in names]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _shown(text: str, most: int = 64) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(text)[:most])
    return text if len(text) < most else text + "…"


# --- writing -----------------------------------------------------------------------------


@dataclass
class _Open:
    """The episode being written and what it has seen."""

    episode: _Episode
    builder: RawEpisodeBuilder
    last_ns: int
    next_clock_ns: int
    receive_stamped: Counter[str] = field(default_factory=Counter)  # stream -> samples given their receive time
    receive_stamped_first: dict[str, list[int]] = field(default_factory=dict)  # their first source indices
    skipped: Counter[str] = field(default_factory=Counter)


def _write_episodes(
    plan: _Plan, reader: Any, typestore: Any, bag_map: BagMap, robot: RobotConfig, raw_dir: Path,
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
    except Exception as err:  # noqa: BLE001  a bag broken part-way: keep the episodes sealed so far
        if current is not None:
            _discard(current)
        if isinstance(err, RefineryError):
            raise
        raise RosbagError(plan.bag, "", f"breaks while reading ({type(err).__name__}: {_shown(str(err), 300)}); "
                                        f"{sealed} episode(s) before the break were imported") from err


def _open(episode: _Episode, t: int, plan: _Plan, bag_map: BagMap, raw_dir: Path) -> _Open:
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
                                                f"{_short(plan.extra_joints)}"[:900],
                       "decision": "extra_joints_left_out", "joints": plan.extra_joints[:64]}, start)
    if bag_map.capture_time == "receive":
        builder.event({"kind": "label", "text": "capture times are the bag's receive times (mapping: capture_time: "
                                                "receive); header stamps are not used",
                       "decision": "receive_time_as_capture_time", "stream": "all"}, start)
    left_out = [c.name for c in bag_map.cameras if c.name not in plan.cameras]
    if left_out:
        builder.event({"kind": "label", "text": f"cameras left out (no readable frame among the first "
                                                f"{_PROBE_FRAMES}): {', '.join(left_out)}",
                       "decision": "camera_left_out", "cameras": left_out}, start)
    return _Open(episode, builder, start, start)


def _write_message(
    current: _Open, topic: _Topic, t: int, data: bytes, source_index: int, typestore: Any, bag_map: BagMap,
    plan: _Plan, state_matcher: JointMatcher, action_matcher: JointMatcher,
) -> None:
    builder = current.builder
    while current.next_clock_ns <= t:
        c = current.next_clock_ns
        builder.clock(c, c + _CLOCK_LEG_NS, c + _CLOCK_LEG_NS, c + 2 * _CLOCK_LEG_NS)
        current.next_clock_ns += _CLOCK_EVERY_NS
    current.last_ns = max(current.last_ns, t)
    if topic.role == "camera" and topic.stream not in plan.cameras:
        raise MessageSkipped(topic.topic, "belongs to a camera left out (no readable first frame)")
    msg = _deserialize(typestore, topic, data, _limit(topic, bag_map))
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


def _seal(current: _Open, plan: _Plan, bag_map: BagMap, result: RosbagImport) -> None:
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
    builder.clock(end, end + _CLOCK_LEG_NS, end + _CLOCK_LEG_NS, end + 2 * _CLOCK_LEG_NS)
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
    lines = [f"{len(result.episodes)} raw episodes in {data_dir / 'raw' / bag_map.robot_id} "
             f"({result.written} written now)"]
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

"""Checking a ROS 2 bag against a mapping file, and cutting it into episodes: nothing is written here.

Before a bag's first episode is written, :func:`plan_bag` checks that every
mapped topic is in the bag with a type it can import, that the joint state's
names match the robot config, reads each camera's frame size and each topic's
rate from the first messages, and cuts the bag into receive-time intervals
(one per bag, between start/stop markers, or at gaps of the joint state). A bag
that fails is refused with a :class:`RosbagError` naming the bag, the topic and
the mapping field.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import protocol
from pipeline.errors import RefineryError, StoreError
from pipeline.interop.rosbag_map import BagMap, CameraMap
from pipeline.interop.rosbag_messages import (
    CAMERA_TYPES,
    COMMAND_TYPES,
    MARKER_TYPES,
    STATE_TYPES,
    MessageSkipped,
    image_size,
    marker_state,
)
from pipeline.raw_store import raw_path
from pipeline.robot_config import RobotConfig, parse_robot_config
from pipeline.streams import ACTION, JOINT_STATE

log = logging.getLogger("refinery.import")

PROBE_FRAMES = 20  # first messages tried for the joint names and each camera's size
_RATE_PROBE = 50  # first receive times a topic's rate is measured on
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


@dataclass(frozen=True)
class BagTopic:
    """A mapped topic as this bag holds it."""

    topic: str
    msgtype: str
    role: str  # joint_state | action | camera | marker
    stream: str  # the raw stream it feeds ("" for the marker)
    count: int


@dataclass
class BagEpisode:
    """One episode a bag is cut into: the receive-time interval it covers (inclusive)."""

    episode_id: str
    start_ns: int
    end_ns: int
    done: bool  # imported before


@dataclass
class BagPlan:
    bag: Path
    topics: dict[str, BagTopic]
    config: RobotConfig
    cameras: dict[str, tuple[int, int]]  # camera -> (width, height); cameras left out are absent
    extra_joints: list[str]
    episodes: list[BagEpisode]


def plan_bag(bag: Path, reader: Any, typestore: Any, bag_map: BagMap, robot: RobotConfig, raw_dir: Path) -> BagPlan:
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
    topics: dict[str, BagTopic] = {}
    for topic, role, stream, allowed in roles:
        field_name = bag_map.topics[topic]
        conns = by_topic.get(topic)
        if not conns:
            known = short_listing(sorted(by_topic), 20) or "none"
            raise RosbagError(bag, topic, f"is not in this bag (the mapping's {field_name} names it); "
                                          f"the bag's topics: {known}")
        types = sorted({c.msgtype for c in conns})
        if len(types) > 1 or types[0] not in allowed:
            raise RosbagError(bag, topic, f"carries {short_listing(types)}; the mapping's {field_name} needs "
                                          f"{' or '.join(allowed)}")
        topics[topic] = BagTopic(topic, types[0], role, stream, sum(int(c.msgcount) for c in conns))
    if topics[bag_map.joint_state.topic].count == 0:
        raise RosbagError(bag, bag_map.joint_state.topic, "has no messages")

    extra = _check_joint_names(bag, reader, typestore, topics[bag_map.joint_state.topic], bag_map, robot)
    cameras = {c.name: size for c in bag_map.cameras
               if (size := _camera_size(bag, reader, typestore, topics[c.topic], bag_map)) is not None}
    config = _episode_config(bag, reader, bag_map, robot, topics, cameras)
    intervals = _cut(bag, reader, typestore, bag_map, topics)
    identity = f"{reader.start_time}|{reader.duration}|{reader.message_count}"
    ids = _episode_ids(bag_map.robot_id, bag, identity, len(intervals), bag_map.episodes.split != "bag")
    episodes = [BagEpisode(i, a, b, raw_path(raw_dir, bag_map.robot_id, i).exists())
                for i, (a, b) in zip(ids, intervals)]
    return BagPlan(bag, topics, config, cameras, extra, episodes)


def deserialize(typestore: Any, topic: BagTopic, data: bytes, limit: int) -> Any:
    """One message's CDR bytes as a message object, if they are at most ``limit`` bytes and decode.

    Raises:
        MessageSkipped: Too large, or not a message of the topic's type.
    """
    if len(data) > limit:
        raise MessageSkipped(topic.topic, f"is larger than the limit of {limit:,} bytes")
    try:
        return typestore.deserialize_cdr(data, topic.msgtype)
    except Exception as err:  # rosbags' generated deserializers raise many kinds on bad bytes
        raise MessageSkipped(topic.topic, f"does not deserialize as {topic.msgtype}") from err


def first_messages(reader: Any, topic: BagTopic, most: int) -> Iterator[tuple[int, bytes]]:
    """The receive time and bytes of a topic's first ``most`` messages."""
    conns = [c for c in reader.connections if c.topic == topic.topic]
    for n, (_, t, data) in enumerate(reader.messages(conns)):
        if n >= most:
            return
        yield t, data


def _check_joint_names(
    bag: Path, reader: Any, typestore: Any, topic: BagTopic, bag_map: BagMap, robot: RobotConfig
) -> list[str]:
    """Compare the first joint state's names with the robot's; return the names the robot lacks."""
    for _, data in first_messages(reader, topic, PROBE_FRAMES):
        try:
            msg = deserialize(typestore, topic, data, bag_map.limits.max_message_bytes)
        except MessageSkipped:
            continue
        names = [str(n)[:128] for n in msg.name[: bag_map.limits.max_joints]]
        shared = [n for n in robot.joint_names if n in names]
        missing = [n for n in robot.joint_names if n not in names]
        if not shared:
            raise RosbagError(bag, topic.topic, f"names joints {short_listing(names)}, none of robot model "
                                                f"{robot.model!r}'s ({short_listing(robot.joint_names)}): map the bag "
                                                "to the robot config it was recorded with")
        if missing and bag_map.joint_state.fill_missing is None:
            raise RosbagError(bag, topic.topic, f"lacks joints {short_listing(missing)} of robot model "
                                                f"{robot.model!r}; set joint_state.fill_missing in the mapping "
                                                "to fill them")
        return [n for n in names if n not in robot.joint_names]
    raise RosbagError(bag, topic.topic, f"none of its first {PROBE_FRAMES} messages can be read")


def _camera_size(bag: Path, reader: Any, typestore: Any, topic: BagTopic, bag_map: BagMap) -> tuple[int, int] | None:
    """The camera's frame size, from its first readable frame; None (camera left out) when none is."""
    for _, data in first_messages(reader, topic, PROBE_FRAMES):
        try:
            msg = deserialize(typestore, topic, data, bag_map.limits.max_image_bytes)
            return image_size(topic.topic, topic.msgtype, msg, bag_map.limits)
        except MessageSkipped:
            continue
    log.warning("%s [%s]: no readable frame among the first %d; camera %r left out", bag, topic.topic,
                PROBE_FRAMES, topic.stream)
    return None


def _rate(reader: Any, topic: BagTopic) -> float:
    """A topic's message rate (Hz): the median interval of its first receive times, so a dropped message
    or a pause later in the bag does not change it."""
    times = [t for t, _ in first_messages(reader, topic, _RATE_PROBE)]
    steps = np.diff(np.asarray(times, dtype=np.int64))
    steps = steps[steps > 0]
    return round(1e9 / float(np.median(steps)), 3) if steps.size else 1.0


def _episode_config(
    bag: Path, reader: Any, bag_map: BagMap, robot: RobotConfig, topics: dict[str, BagTopic],
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


def _cut(bag: Path, reader: Any, typestore: Any, bag_map: BagMap, topics: dict[str, BagTopic]) -> list[tuple[int, int]]:
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
            state = marker_state(marker.msgtype, deserialize(typestore, marker, data, bag_map.limits.max_message_bytes))
        except MessageSkipped as err:
            log.warning("%s [%s]: a marker message is skipped: %s", bag, cut.topic, err.reason)
            continue
        # The marker is a state, not an edge: a Bool published over and over while recording (or a
        # repeated "start") continues the episode it opened; a stop with none open changes nothing.
        if state == "start" and opened is None:
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


def short_listing(names: Any, most: int = 8) -> str:
    """A listing of names read from a bag, for one line of text: control characters and length defused."""
    names = [shown(n) for n in names]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def shown(text: str, most: int = 64) -> str:
    """Text read from a bag, for a message: at most ``most`` characters, control characters as '?'."""
    text = "".join(c if c.isprintable() else "?" for c in str(text)[:most])
    return text if len(text) < most else text + "…"

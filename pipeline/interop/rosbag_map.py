"""The mapping file of ``refinery import rosbag``: which topics are which stream.

A ROS 2 bag names its data by topic; a raw episode by stream. The mapping
(YAML, README "Import ROS 2 bags") says which topic is the joint state, which
the command, which the cameras, and how a bag is cut into episodes. It is read
once and validated whole: every problem is a :class:`~pipeline.errors.ConfigError`
naming the mapping file and the field, and an unknown field is refused (a
misspelled ``fill_mising`` would otherwise be silently ignored).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import protocol
from pipeline.config_fields import Fields
from pipeline.errors import ConfigError, ProtocolError
from pipeline.protocol.validation import DEFAULT_MAX_TEXT_CHARS, text_problem
from pipeline.streams import RESERVED_STREAMS

SPLITS = ("bag", "topic", "gap")
CAPTURE_TIMES = ("header", "receive")
# ROS 2 topic names: slash-separated tokens of letters, digits and '_' (rcl's rules, simplified).
_TOPIC_RE = re.compile(r"^/?[A-Za-z_~][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*\Z")
_MAX_TOPIC_CHARS = 256
_MAX_MAP_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Bounds on what one bag message may hold; a message beyond them is skipped with its reason.

    Attributes:
        max_message_bytes: Serialized size of a joint, command or marker message.
        max_image_bytes: Serialized size of an image message.
        max_image_pixels: Width x height of an image (checked before decoding).
        max_joints: Names or values in one joint message.
    """

    max_message_bytes: int = 1 << 20
    max_image_bytes: int = 32 << 20
    max_image_pixels: int = 3840 * 2160
    max_joints: int = 512


@dataclass(frozen=True)
class TopicMap:
    """A numeric stream's topic.

    Attributes:
        topic: The ROS topic.
        fill_missing: The value given to robot joints a message does not name;
            ``None``: such a message is skipped.
        joints: For messages without names (``std_msgs/msg/Float64MultiArray``):
            the joint of each column; empty: the robot's joint order.
    """

    topic: str
    fill_missing: float | None = None
    joints: tuple[str, ...] = ()


@dataclass(frozen=True)
class CameraMap:
    name: str
    topic: str
    latency_ms: float | None = None  # None: the robot config's, or 0 for a camera it does not know


@dataclass(frozen=True)
class EpisodeCut:
    """How a bag becomes episodes: one per bag, between start/stop markers, or at gaps of the joint state."""

    split: str = "bag"
    topic: str = ""
    gap_s: float = 2.0


@dataclass(frozen=True)
class BagMap:
    """A validated mapping file."""

    source: str
    robot_config: str  # a shipped model name or a YAML path (made absolute against the mapping's folder)
    robot_id: str
    joint_state: TopicMap
    action: TopicMap | None
    cameras: tuple[CameraMap, ...]
    episodes: EpisodeCut
    task: str = ""
    operator: str = ""
    outcome: str = "success"
    capture_time: str = "header"
    jpeg_quality: int = 90
    limits: Limits = Limits()

    @property
    def topics(self) -> dict[str, str]:
        """Every topic the mapping reads, with the field that names it."""
        return {topic: field_name for field_name, topic in _topic_fields(self)}


def load_bag_map(path: Path | str) -> BagMap:
    """Read and validate a mapping file.

    Raises:
        ConfigError: The file cannot be read, is not YAML, or a field is missing,
            unknown or malformed (the error names the file and the field).
    """
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(source, "<file>", f"cannot read the mapping file: {err.strerror}") from err
    if len(data) > _MAX_MAP_BYTES:
        raise ConfigError(source, "<file>", f"is {len(data):,} bytes; a mapping file is at most {_MAX_MAP_BYTES:,}")
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(source, "<file>", f"not UTF-8 text: {err.reason} at byte {err.start}") from err
    except yaml.YAMLError as err:
        raise ConfigError(source, "<file>", f"not valid YAML: {err}") from err
    return parse_bag_map(raw, source, base_dir=path.parent)


def parse_bag_map(raw: Any, source: str = "<mapping>", base_dir: Path | None = None) -> BagMap:
    """Validate an already-parsed mapping; a relative robot config path is taken from ``base_dir``."""
    top = _Fields(raw, source, "")
    top.only({"robot", "joint_state", "action", "cameras", "episodes", "task", "operator", "outcome",
              "capture_time", "jpeg_quality", "limits"})
    robot = top.sub("robot")
    robot.only({"config", "id"})
    config = robot.text("config")
    if "/" in config or config.endswith((".yaml", ".yml")):
        config_path = Path(config)
        if not config_path.is_absolute() and base_dir is not None:
            config_path = base_dir / config_path
        config = str(config_path)
    robot_id = robot.identifier("id")
    joint_state = _topic_map(top.sub("joint_state"))
    action = _topic_map(top.sub("action")) if "action" in top.raw else None
    cameras = _cameras(top, source)
    episodes = _episodes(top)
    bag_map = BagMap(
        source=source,
        robot_config=config,
        robot_id=robot_id,
        joint_state=joint_state,
        action=action,
        cameras=cameras,
        episodes=episodes,
        task=top.free_text("task"),
        operator=top.free_text("operator"),
        outcome=top.free_text("outcome", "success") or "success",
        capture_time=top.choice("capture_time", CAPTURE_TIMES, "header"),
        jpeg_quality=top.integer("jpeg_quality", 1, 100, 90),
        limits=_limits(top),
    )
    seen: dict[str, str] = {}
    for field_name, topic in _topic_fields(bag_map):
        if topic in seen:
            raise ConfigError(source, field_name, f"topic {topic!r} is already mapped by {seen[topic]}")
        seen[topic] = field_name
    return bag_map


def _topic_fields(bag_map: BagMap) -> list[tuple[str, str]]:
    fields = [("joint_state.topic", bag_map.joint_state.topic)]
    if bag_map.action is not None:
        fields.append(("action.topic", bag_map.action.topic))
    fields += [(f"cameras.{c.name}", c.topic) for c in bag_map.cameras]
    if bag_map.episodes.split == "topic":
        fields.append(("episodes.topic", bag_map.episodes.topic))
    return fields


def _topic_map(f: _Fields) -> TopicMap:
    f.only({"topic", "fill_missing", "joints"})
    fill = f.number("fill_missing") if "fill_missing" in f.raw else None
    joints: tuple[str, ...] = ()
    if "joints" in f.raw:
        names = f.raw["joints"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f.source, f.prefix + "joints", f"expected a non-empty list of joint names, got {names!r}")
        if len(set(names)) != len(names):
            raise ConfigError(f.source, f.prefix + "joints", "names a joint twice")
        joints = tuple(names)
    return TopicMap(f.topic("topic"), fill, joints)


def _cameras(top: _Fields, source: str) -> tuple[CameraMap, ...]:
    raw = top.raw.get("cameras") or {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "cameras", f"expected a mapping of camera name to topic, got {type(raw).__name__}")
    cameras = []
    for name, value in raw.items():
        where = f"cameras.{name}"
        try:
            protocol.check_id(name, "camera")
        except ProtocolError as err:
            raise ConfigError(source, where, f"camera name {name!r}: {err.problem}") from err
        if name in RESERVED_STREAMS:
            raise ConfigError(source, where, f"camera name {name!r} is reserved for another stream")
        if isinstance(value, str):
            cameras.append(CameraMap(name, _check_topic(value, source, where)))
            continue
        f = _Fields(value, source, where + ".")
        f.only({"topic", "latency_ms"})
        latency = f.number("latency_ms") if "latency_ms" in f.raw else None
        if latency is not None and latency < 0:
            raise ConfigError(source, where + ".latency_ms", f"must be >= 0, got {latency}")
        cameras.append(CameraMap(name, f.topic("topic"), latency))
    return tuple(cameras)


def _episodes(top: _Fields) -> EpisodeCut:
    if "episodes" not in top.raw:
        return EpisodeCut()
    f = top.sub("episodes")
    f.only({"split", "topic", "gap_s"})
    split = f.choice("split", SPLITS, "bag")
    if split == "topic":
        return EpisodeCut(split, topic=f.topic("topic"))
    if split == "gap":
        gap = f.number("gap_s") if "gap_s" in f.raw else EpisodeCut.gap_s
        if gap <= 0:
            raise ConfigError(f.source, f.prefix + "gap_s", f"must be > 0 seconds, got {gap}")
        return EpisodeCut(split, gap_s=gap)
    return EpisodeCut(split)


def _limits(top: _Fields) -> Limits:
    if "limits" not in top.raw:
        return Limits()
    f = top.sub("limits")
    f.only({"max_message_bytes", "max_image_bytes", "max_image_pixels", "max_joints"})
    d = Limits()
    return Limits(
        max_message_bytes=f.integer("max_message_bytes", 64, 1 << 30, d.max_message_bytes),
        max_image_bytes=f.integer("max_image_bytes", 64, 1 << 31, d.max_image_bytes),
        max_image_pixels=f.integer("max_image_pixels", 1, 1 << 28, d.max_image_pixels),
        max_joints=f.integer("max_joints", 1, 65536, d.max_joints),
    )


def _check_topic(value: Any, source: str, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(source, field, f"expected a topic name such as /joint_states, got {value!r}")
    if len(value) > _MAX_TOPIC_CHARS or not _TOPIC_RE.match(value):
        raise ConfigError(source, field, f"{value[:80]!r} is not a ROS topic name (letters, digits, '_' and '/')")
    return value if value.startswith("/") else "/" + value


class _Fields(Fields):
    """A mapping of the map file, with the field types it needs."""

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value.strip() or len(value) > 4096 or not value.isprintable():
            raise ConfigError(self.source, self.prefix + key, f"expected one line of text, got {str(value)[:80]!r}")
        return value

    def identifier(self, key: str) -> str:
        value = self._get(key)
        try:
            return protocol.check_id(value, key)
        except ProtocolError as err:
            raise ConfigError(self.source, self.prefix + key, err.problem) from err

    def free_text(self, key: str, default: str = "") -> str:
        value = self.raw.get(key, default)
        if value is None:
            return default
        problem = text_problem(value, DEFAULT_MAX_TEXT_CHARS)
        if problem is not None:
            raise ConfigError(self.source, self.prefix + key, problem)
        return value

    def topic(self, key: str) -> str:
        return _check_topic(self._get(key), self.source, self.prefix + key)

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(self.source, self.prefix + key, f"expected a finite number, got {value!r}")
        return float(value)

    def integer(self, key: str, lo: int, hi: int, default: int) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(self.source, self.prefix + key, f"expected an integer in [{lo}, {hi}], got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw.get(key, default)
        if value not in choices:
            raise ConfigError(self.source, self.prefix + key, f"{value!r} is not one of: {', '.join(choices)}")
        return str(value)

"""Small ROS 2 bags written with rosbags' own writer, and what they hold, for the import tests.

A bag records the tiny test humanoid (tests/data/robots/tiny_humanoid.yaml)
the way a ROS 2 robot would: a joint state topic at 200 Hz whose names come
in another order than the robot config's, plus one joint the config does not
know; a command topic at 50 Hz (``Float64MultiArray``, no header); cameras at
15 Hz as a JPEG ``CompressedImage``, a raw rgb8 ``Image`` and a PNG
``CompressedImage``, 32x24. Faults are placed on purpose: a dropped camera
frame, an out-of-order joint stamp and a joint state with a zero header stamp.
Receive (log) times trail the header stamps by a few milliseconds, as a
recorder's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROBOT_JOINTS = ("torso_joint", "left_shoulder_pitch_joint", "left_shoulder_roll_joint", "left_elbow_pitch_joint",
                "right_shoulder_pitch_joint", "right_elbow_pitch_joint")
BAG_JOINTS = ("right_elbow_pitch_joint", "torso_joint", "head_pan_joint", "left_shoulder_roll_joint",
              "left_shoulder_pitch_joint", "right_shoulder_pitch_joint", "left_elbow_pitch_joint")
T0_NS = 1_750_000_000_000_000_000
JOINT_HZ, COMMAND_HZ, CAMERA_HZ = 200, 50, 15
WIDTH, HEIGHT = 32, 24
JOINT_TOPIC = "/joint_states"
COMMAND_TOPIC = "/arm_controller/commands"
JPEG_TOPIC = "/camera/head/image_raw/compressed"
RAW_TOPIC = "/camera/chest/image_raw"
PNG_TOPIC = "/camera/wrist/image_raw/compressed"
MARKER_TOPIC = "/episode_marker"


@dataclass(frozen=True)
class Faults:
    """Where a bag breaks the rules (indices into the stream's messages as sent)."""

    dropped_frame: int | None = 7  # this JPEG camera frame is never recorded
    backwards_stamp: int | None = 100  # this joint state's stamp is 20 ms before its predecessor's
    zero_stamp: int | None = 150  # this joint state has no header stamp


@dataclass
class BagContent:
    """What was written, message by message, to compare the import against."""

    joint_stamp: list[int] = field(default_factory=list)  # header stamp as written (0: none)
    joint_receive: list[int] = field(default_factory=list)
    position: list[np.ndarray] = field(default_factory=list)  # robot order
    velocity: list[np.ndarray] = field(default_factory=list)
    effort: list[np.ndarray] = field(default_factory=list)
    joint_cdr: list[bytes] = field(default_factory=list)  # each joint state as serialized into the bag
    command_receive: list[int] = field(default_factory=list)
    command: list[np.ndarray] = field(default_factory=list)
    frame_stamp: list[int] = field(default_factory=list)  # per camera message written (all three cameras alike)
    frame_receive: list[int] = field(default_factory=list)
    jpeg: list[bytes] = field(default_factory=list)
    image: list[np.ndarray] = field(default_factory=list)  # RGB, as written to the raw and PNG cameras


def motion(t: np.ndarray) -> np.ndarray:
    """Joint positions (robot order) inside the tiny humanoid's limits, moving all the time."""
    phase = np.linspace(0, 2, len(ROBOT_JOINTS))
    centre = np.array([0.0, -0.3, 0.4, 1.2, -0.3, 1.2])
    return centre + 0.3 * np.sin(2 * np.pi * 0.7 * t[:, None] + phase)


def picture(i: int) -> np.ndarray:
    """An RGB frame with a red left half (to catch swapped channels) and a moving green square."""
    image = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    image[:, : WIDTH // 2] = (200, 40, 40)
    x = (i * 2) % (WIDTH - 6)
    image[8:14, x : x + 6] = (40, 200, 60)
    return image


def write_bag(
    path: Path,
    storage: str = "mcap",
    *,
    seconds: float = 1.5,
    faults: Faults = Faults(),
    distro: str = "humble",
    markers: list[tuple[float, str]] | None = None,
    joint_gap: tuple[float, float] | None = None,
    t0_ns: int = T0_NS,
    compress: bool = False,
) -> BagContent:
    """Write a bag folder at ``path`` and return what it holds.

    Args:
        storage: ``mcap`` or ``sqlite3``.
        markers: ``(seconds, "start"|"stop")`` String messages on :data:`MARKER_TOPIC`.
        joint_gap: ``(from_s, to_s)``: no message of any topic is recorded in between.
        compress: Compress each message with zstd (rosbag2's ``message`` compression mode).
    """
    from rosbags.rosbag2 import (
        CompressionFormat,
        CompressionMode,
        StoragePlugin,
        Writer,
    )
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY if distro == "jazzy" else Stores.ROS2_HUMBLE)
    T = ts.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    content = BagContent()
    messages: list[tuple[int, str, object]] = []  # (receive ns, topic, message)

    def header(stamp_ns: int) -> object:
        stamp = T["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id="base")

    def skipped(s: float) -> bool:
        return joint_gap is not None and joint_gap[0] <= s < joint_gap[1]

    n = int(seconds * JOINT_HZ)
    t = np.arange(n) / JOINT_HZ
    pos = motion(t)
    vel = np.gradient(pos, axis=0) * JOINT_HZ
    eff = 0.5 * pos
    order = [ROBOT_JOINTS.index(j) if j in ROBOT_JOINTS else -1 for j in BAG_JOINTS]
    for i in range(n):
        if skipped(t[i]):
            continue
        stamp = t0_ns + i * (10**9 // JOINT_HZ)
        if i == faults.backwards_stamp:
            stamp = content.joint_stamp[-1] - 20_000_000
        if i == faults.zero_stamp:
            stamp = 0
        receive = t0_ns + i * (10**9 // JOINT_HZ) + 1_000_000 + (i % 3) * 100_000

        def bag_order(row: np.ndarray) -> np.ndarray:
            return np.array([row[k] if k >= 0 else 0.25 for k in order])

        msg = T["sensor_msgs/msg/JointState"](
            header=header(stamp), name=list(BAG_JOINTS), position=bag_order(pos[i]), velocity=bag_order(vel[i]),
            effort=bag_order(eff[i]))
        messages.append((receive, JOINT_TOPIC, msg))
        content.joint_stamp.append(stamp)
        content.joint_receive.append(receive)
        content.position.append(pos[i])
        content.velocity.append(vel[i])
        content.effort.append(eff[i])
    for i in range(int(seconds * COMMAND_HZ)):
        s = i / COMMAND_HZ
        if skipped(s):
            continue
        receive = t0_ns + i * (10**9 // COMMAND_HZ) + 500_000
        value = motion(np.array([s + 0.05]))[0]
        layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        messages.append((receive, COMMAND_TOPIC, T["std_msgs/msg/Float64MultiArray"](layout=layout, data=value)))
        content.command_receive.append(receive)
        content.command.append(value)
    for i in range(int(seconds * CAMERA_HZ)):
        s = i / CAMERA_HZ
        if i == faults.dropped_frame or skipped(s):
            continue
        stamp = t0_ns + round(i * 1e9 / CAMERA_HZ)
        receive = stamp + 30_000_000
        rgb = picture(i)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        png = cv2.imencode(".png", bgr)[1].tobytes()
        compressed = T["sensor_msgs/msg/CompressedImage"]
        messages.append((receive, JPEG_TOPIC, compressed(header=header(stamp), format="jpeg",
                                                         data=np.frombuffer(jpeg, np.uint8))))
        messages.append((receive, PNG_TOPIC, compressed(header=header(stamp), format="png",
                                                        data=np.frombuffer(png, np.uint8))))
        messages.append((receive, RAW_TOPIC, T["sensor_msgs/msg/Image"](
            header=header(stamp), height=HEIGHT, width=WIDTH, encoding="rgb8", is_bigendian=0, step=WIDTH * 3,
            data=rgb.reshape(-1))))
        content.frame_stamp.append(stamp)
        content.frame_receive.append(receive)
        content.jpeg.append(jpeg)
        content.image.append(rgb)
    for s, text in markers or []:
        messages.append((t0_ns + round(s * 1e9), MARKER_TOPIC, T["std_msgs/msg/String"](data=text)))

    types = {JOINT_TOPIC: "sensor_msgs/msg/JointState", COMMAND_TOPIC: "std_msgs/msg/Float64MultiArray",
             JPEG_TOPIC: "sensor_msgs/msg/CompressedImage", PNG_TOPIC: "sensor_msgs/msg/CompressedImage",
             RAW_TOPIC: "sensor_msgs/msg/Image", MARKER_TOPIC: "std_msgs/msg/String"}
    writer = Writer(path, version=9, storage_plugin=plugin)
    if compress:
        writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in types.items()
                 if topic != MARKER_TOPIC or markers}
        for receive, topic, msg in sorted(messages, key=lambda m: m[0]):
            data = ts.serialize_cdr(msg, types[topic])
            if topic == JOINT_TOPIC:
                content.joint_cdr.append(data)
            writer.write(conns[topic], receive, data)
    return content


def mapping_yaml(robot_config: Path, **overrides: object) -> str:
    """A mapping file for :func:`write_bag`'s bags, as YAML text; ``overrides`` replace top-level fields."""
    import yaml

    raw: dict[str, object] = {
        "robot": {"config": str(robot_config), "id": "tiny-ros"},
        "task": "wave both arms",
        "operator": "op-ros",
        "joint_state": {"topic": JOINT_TOPIC},
        "action": {"topic": COMMAND_TOPIC},
        "cameras": {"head_left": JPEG_TOPIC, "head_right": RAW_TOPIC,
                    "wrist": {"topic": PNG_TOPIC, "latency_ms": 20}},
    }
    raw.update(overrides)
    return yaml.safe_dump(raw, sort_keys=False)


def write_messages(path: Path, storage: str, types: dict[str, str], messages: list[tuple[int, str, object]]) -> None:
    """A bag of the given messages, ``(receive ns, topic, message or raw CDR bytes)``: for broken content."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in types.items()}
        for receive, topic, msg in sorted(messages, key=lambda m: m[0]):
            data = msg if isinstance(msg, bytes) else ts.serialize_cdr(msg, types[topic])
            writer.write(conns[topic], receive, data)


def ros_types(distro: str = "humble") -> dict[str, type]:
    """The message classes of a ROS 2 release, by type name."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY if distro == "jazzy" else Stores.ROS2_HUMBLE).types

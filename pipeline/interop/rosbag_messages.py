"""ROS 2 messages to raw-episode rows and JPEG frames: pure functions, no bag I/O.

Every message comes from a foreign file, so every field is checked before it
is used: sizes against :class:`~pipeline.interop.rosbag_map.Limits`, joint names
against the robot config, image dimensions against the bytes that carry them
(before anything is decoded). A message that fails raises :class:`MessageSkipped`
with the reason; the importer counts it, records it with the episode and goes on.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.dataset.frame_shards import check_frame
from pipeline.dataset.jpeg_codec import read_jpeg_header
from pipeline.errors import DatasetError, StoreError
from pipeline.interop.rosbag_map import Limits

JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
FLOAT_ARRAY_TYPE = "std_msgs/msg/Float64MultiArray"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPE = "sensor_msgs/msg/Image"
STRING_TYPE = "std_msgs/msg/String"
BOOL_TYPE = "std_msgs/msg/Bool"

STATE_TYPES = (JOINT_STATE_TYPE,)
COMMAND_TYPES = (JOINT_STATE_TYPE, FLOAT_ARRAY_TYPE, TRAJECTORY_TYPE)
CAMERA_TYPES = (COMPRESSED_IMAGE_TYPE, IMAGE_TYPE)
MARKER_TYPES = (STRING_TYPE, BOOL_TYPE)

_NAME_LISTS_KEPT = 16
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_SIZE = struct.Struct(">II")  # IHDR width, height, right after the signature and the chunk header
# sensor_msgs/image_encodings: channels per pixel and how OpenCV turns them into BGR.
_ENCODINGS: dict[str, tuple[int, np.dtype, int | None]] = {
    "rgb8": (3, np.dtype(np.uint8), cv2.COLOR_RGB2BGR),
    "bgr8": (3, np.dtype(np.uint8), None),
    "8UC3": (3, np.dtype(np.uint8), None),  # OpenCV's own order
    "rgba8": (4, np.dtype(np.uint8), cv2.COLOR_RGBA2BGR),
    "bgra8": (4, np.dtype(np.uint8), cv2.COLOR_BGRA2BGR),
    "mono8": (1, np.dtype(np.uint8), cv2.COLOR_GRAY2BGR),
    "8UC1": (1, np.dtype(np.uint8), cv2.COLOR_GRAY2BGR),
    "mono16": (1, np.dtype(np.uint16), cv2.COLOR_GRAY2BGR),
}


class MessageSkipped(StoreError):
    """One bag message cannot be imported; it is skipped with this reason.

    Attributes:
        topic: The message's topic.
        reason: Why, in words that group alike messages (no per-message numbers).
    """

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(topic, reason)


def header_stamp_ns(msg: Any) -> int | None:
    """A message's header stamp in ns, or None when it has none, it is zero or it is not a valid time."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    if (sec == 0 and nanosec == 0) or sec < 0 or not 0 <= nanosec < 1_000_000_000:
        return None
    return sec * 1_000_000_000 + nanosec


@dataclass(frozen=True)
class JointMatcher:
    """Puts a message's joints into the robot's joint order, by name.

    Attributes:
        robot_joints: The robot config's joint names, in order.
        fill_missing: Value for robot joints a message does not name; None: skip such a message.
        max_joints: Most names one message may carry.
    """

    robot_joints: tuple[str, ...]
    fill_missing: float | None
    max_joints: int
    # Name lists seen -> their columns: a driver sends the same list in every message.
    _known: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, compare=False)

    def columns(self, topic: str, names: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """For a message's names: (the robot column of each name it shares, which names those are).

        Raises:
            MessageSkipped: Too many names, a name twice, or robot joints missing without ``fill_missing``.
        """
        if len(names) > self.max_joints:
            raise MessageSkipped(topic, f"names more than {self.max_joints} joints")
        key = tuple(names)  # rosbags decodes names as str
        found = self._known.get(key)
        if found is None:
            found = self._match(topic, key)
            if len(self._known) >= _NAME_LISTS_KEPT:
                self._known.clear()
            self._known[key] = found
        return found

    def _match(self, topic: str, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        if len(set(names)) != len(names):
            raise MessageSkipped(topic, "names a joint twice")
        where = {n: i for i, n in enumerate(names)}
        missing = [j for j in self.robot_joints if j not in where]
        if missing and self.fill_missing is None:
            raise MessageSkipped(topic, f"lacks robot joints {_listing(missing)} (set fill_missing to fill them)")
        robot_cols = np.array([c for c, j in enumerate(self.robot_joints) if j in where], dtype=np.int64)
        msg_cols = np.array([where[j] for j in self.robot_joints if j in where], dtype=np.int64)
        return robot_cols, msg_cols

    def place(self, topic: str, names: Sequence[str], fields: Sequence[tuple[Any, str, bool]]) -> list[np.ndarray]:
        """Fields of one message (``(values, what, required)``: position, velocity, ...) in robot order.

        An empty optional field is zeros; robot joints the message lacks take ``fill_missing``.
        """
        robot_cols, msg_cols = self.columns(topic, names)
        dof = len(self.robot_joints)
        out = []
        for values, what, required in fields:
            data = np.asarray(values, dtype=np.float64).reshape(-1)
            if data.size == 0 and not required:
                out.append(np.zeros(dof))
                continue
            if data.size != len(names):
                raise MessageSkipped(topic, f"has {data.size} {what} values for {len(names)} joint names")
            row = np.full(dof, np.nan if self.fill_missing is None else self.fill_missing)
            row[robot_cols] = data[msg_cols]
            out.append(row)
        return out


def joint_state_row(topic: str, msg: Any, matcher: JointMatcher) -> np.ndarray:
    """A ``sensor_msgs/msg/JointState`` as one joint_state row: position ++ velocity ++ effort (robot order).

    Empty velocity or effort (drivers that publish positions only) become zeros.
    """
    fields = [(msg.position, "position", True), (msg.velocity, "velocity", False), (msg.effort, "effort", False)]
    return np.concatenate(matcher.place(topic, msg.name, fields))


def command_row(topic: str, msgtype: str, msg: Any, matcher: JointMatcher, columns: tuple[str, ...]) -> np.ndarray:
    """A command message as one action row (joint positions in robot order).

    ``JointState``: its positions by name. ``JointTrajectory``: the first point's
    positions by name (the command for now; later points are a plan).
    ``Float64MultiArray``: its values in the order ``columns`` names (default: the
    robot's joint order).
    """
    if msgtype == JOINT_STATE_TYPE:
        return matcher.place(topic, msg.name, [(msg.position, "position", True)])[0]
    if msgtype == TRAJECTORY_TYPE:
        if not msg.points:
            raise MessageSkipped(topic, "is a trajectory without points")
        return matcher.place(topic, msg.joint_names, [(msg.points[0].positions, "position", True)])[0]
    names = columns or matcher.robot_joints
    return matcher.place(topic, names, [(msg.data, "data", True)])[0]


def marker_state(msgtype: str, msg: Any) -> str | None:
    """``start``, ``stop`` or None for a marker message (String ``start``/``stop``, Bool true/false)."""
    if msgtype == BOOL_TYPE:
        return "start" if bool(msg.data) else "stop"
    text = str(msg.data)[:32].strip().lower()
    return text if text in ("start", "stop") else None


def image_size(topic: str, msgtype: str, msg: Any, limits: Limits) -> tuple[int, int]:
    """(width, height) of an image message, from its header bytes: nothing is decoded."""
    if msgtype == IMAGE_TYPE:
        width, height = int(msg.width), int(msg.height)
    else:
        data = bytes(msg.data[:64 << 10])
        if data.startswith(_PNG_MAGIC) and len(data) >= 24:
            width, height = _PNG_SIZE.unpack_from(data, 16)
        else:
            try:
                header = read_jpeg_header(data)
            except DatasetError as err:
                raise MessageSkipped(topic, f"is neither JPEG nor PNG ({err.problem})") from err
            width, height = header.width, header.height
    if width <= 0 or height <= 0 or width * height > limits.max_image_pixels:
        raise MessageSkipped(topic, f"is {width}x{height} pixels; the limit is {limits.max_image_pixels:,} pixels "
                                    "(limits.max_image_pixels)")
    return width, height


def image_jpeg(topic: str, msgtype: str, msg: Any, width: int, height: int, limits: Limits, quality: int) -> bytes:
    """An image message as JPEG bytes of ``width`` x ``height``.

    A compressed JPEG that can be stored as it is passes through untouched; a
    PNG, a JPEG that is not 8-bit YCbCr, and a raw ``Image`` are encoded.

    Raises:
        MessageSkipped: Another size than the camera's first frame, undecodable
            or truncated data, an encoding without a colour meaning (depth, Bayer).
    """
    size = image_size(topic, msgtype, msg, limits)
    if size != (width, height):
        raise MessageSkipped(topic, f"changes size to {size[0]}x{size[1]} (the camera's first frame was "
                                    f"{width}x{height})")
    if msgtype == IMAGE_TYPE:
        return _encode(topic, _raw_pixels(topic, msg, width, height), quality)
    data = bytes(msg.data)
    if not data.startswith(_PNG_MAGIC):
        try:
            check_frame(data, height, width)
            return data
        except DatasetError as err:
            if "truncated" in err.problem:
                raise MessageSkipped(topic, "is a truncated JPEG") from err
    # A PNG, or a JPEG the dataset cannot store as it is (grey, 12-bit, progressive...): decode, encode.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.shape[:2] != (height, width):
        raise MessageSkipped(topic, "does not decode as an image")
    return _encode(topic, image, quality)


def _raw_pixels(topic: str, msg: Any, width: int, height: int) -> np.ndarray:
    """A ``sensor_msgs/msg/Image`` as a BGR uint8 array, checked against its own step and size."""
    encoding = str(msg.encoding)[:32]
    if encoding not in _ENCODINGS:
        raise MessageSkipped(topic, f"has encoding {encoding!r}; importable: {', '.join(_ENCODINGS)}")
    channels, dtype, convert = _ENCODINGS[encoding]
    row_bytes = width * channels * dtype.itemsize
    step = int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if step < row_bytes or data.size < step * height:
        raise MessageSkipped(topic, f"holds {data.size} bytes for {height} rows of step {step} "
                                    f"({width} px of {encoding} need {row_bytes} bytes a row)")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
    pixels = pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)
    if dtype.itemsize == 2:  # mono16: keep the 8 most significant bits
        pixels = (pixels >> 8).astype(np.uint8)
    return np.ascontiguousarray(pixels) if convert is None else cv2.cvtColor(pixels, convert)


def _encode(topic: str, bgr: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MessageSkipped(topic, "could not be encoded as JPEG")
    return encoded.tobytes()


def _listing(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")

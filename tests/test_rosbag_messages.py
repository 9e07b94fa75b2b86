"""ROS 2 messages to rows and JPEG frames: each conversion and each refusal, on real rosbags message objects."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.interop.rosbag_map import Limits
from pipeline.interop.rosbag_messages import (
    COMPRESSED_IMAGE_TYPE,
    IMAGE_TYPE,
    TRAJECTORY_TYPE,
    JointMatcher,
    MessageSkipped,
    command_row,
    header_stamp_ns,
    image_jpeg,
    marker_state,
)
from tests.rosbag_synthetic import HEIGHT, WIDTH, picture, ros_types

T = ros_types("jazzy")
TOPIC = "/cam"
LIMITS = Limits()
ROBOT = ("a", "b", "c")


def header(sec: int = 1, nanosec: int = 5) -> object:
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id="")


def raw_image(pixels: np.ndarray, encoding: str, step: int | None = None, bigendian: int = 0) -> object:
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1).view(np.uint8)
    step = step or row.shape[1]
    padded = np.zeros((h, step), np.uint8)
    padded[:, : row.shape[1]] = row
    return T["sensor_msgs/msg/Image"](header=header(), height=h, width=w, encoding=encoding,
                                      is_bigendian=bigendian, step=step, data=padded.reshape(-1))


def compressed(data: bytes, fmt: str = "jpeg") -> object:
    return T["sensor_msgs/msg/CompressedImage"](header=header(), format=fmt, data=np.frombuffer(data, np.uint8))


def decoded_rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)


@pytest.mark.parametrize(("sec", "nanosec", "expected"), [
    (1, 5, 1_000_000_005), (0, 0, None), (-3, 0, None), (1, 1_000_000_000, None),
])
def test_header_stamps_are_taken_only_when_they_are_a_valid_nonzero_time(sec, nanosec, expected) -> None:
    msg = T["sensor_msgs/msg/CompressedImage"](header=header(sec, nanosec), format="", data=np.zeros(0, np.uint8))
    assert header_stamp_ns(msg) == expected


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_images_are_encoded_in_their_colours(encoding: str) -> None:
    rgb = picture(3)
    pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
              "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)])}[encoding]
    jpeg = image_jpeg(TOPIC, IMAGE_TYPE, raw_image(np.ascontiguousarray(pixels), encoding), WIDTH, HEIGHT, LIMITS, 95)
    assert np.abs(decoded_rgb(jpeg) - rgb).mean() < 6


def test_rows_padded_beyond_the_pixels_are_cut_at_the_width() -> None:
    rgb = picture(1)
    jpeg = image_jpeg(TOPIC, IMAGE_TYPE, raw_image(rgb, "rgb8", step=WIDTH * 3 + 16), WIDTH, HEIGHT, LIMITS, 95)
    assert np.abs(decoded_rgb(jpeg) - rgb).mean() < 6


@pytest.mark.parametrize("bigendian", [0, 1])
def test_mono16_keeps_its_high_byte_in_either_byte_order(bigendian: int) -> None:
    grey = np.tile(np.linspace(0, 65535, WIDTH).astype(np.uint16), (HEIGHT, 1))
    pixels = grey.astype(">u2" if bigendian else "<u2")
    jpeg = image_jpeg(TOPIC, IMAGE_TYPE, raw_image(pixels, "mono16", bigendian=bigendian), WIDTH, HEIGHT, LIMITS, 95)
    assert np.abs(decoded_rgb(jpeg)[..., 0] - (grey >> 8)).mean() < 4


def test_a_colour_jpeg_passes_through_and_a_grey_one_is_encoded_again() -> None:
    colour = cv2.imencode(".jpg", picture(2))[1].tobytes()
    grey = cv2.imencode(".jpg", cv2.cvtColor(picture(2), cv2.COLOR_RGB2GRAY))[1].tobytes()
    assert image_jpeg(TOPIC, COMPRESSED_IMAGE_TYPE, compressed(colour), WIDTH, HEIGHT, LIMITS, 90) == colour
    again = image_jpeg(TOPIC, COMPRESSED_IMAGE_TYPE, compressed(grey), WIDTH, HEIGHT, LIMITS, 90)
    assert again != grey and decoded_rgb(again).shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize(("msgtype", "msg", "words"), [
    (IMAGE_TYPE, raw_image(np.zeros((HEIGHT, WIDTH), np.float32), "32FC1"), "encoding '32FC1'"),
    (IMAGE_TYPE, T["sensor_msgs/msg/Image"](header=header(), height=HEIGHT, width=WIDTH, encoding="rgb8",
                                            is_bigendian=0, step=WIDTH * 3, data=np.zeros(100, np.uint8)),
     "holds 100 bytes"),
    (COMPRESSED_IMAGE_TYPE, compressed(cv2.imencode(".jpg", picture(0))[1].tobytes()[:-40]), "truncated"),
    (COMPRESSED_IMAGE_TYPE, compressed(b"GIF89a" + b"\x00" * 100, "gif"), "neither JPEG nor PNG"),
    (COMPRESSED_IMAGE_TYPE, compressed(cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes(), "png"),
     "changes size to 64x48"),
])
def test_unusable_images_are_skipped_with_the_reason(msgtype: str, msg: object, words: str) -> None:
    with pytest.raises(MessageSkipped) as info:
        image_jpeg(TOPIC, msgtype, msg, WIDTH, HEIGHT, LIMITS, 90)
    assert words in info.value.reason


def test_a_png_claiming_a_huge_size_is_skipped_before_it_is_decoded() -> None:
    png = bytearray(cv2.imencode(".png", picture(0)[..., ::-1])[1].tobytes())
    png[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")
    with pytest.raises(MessageSkipped, match="100000x100000 pixels"):
        image_jpeg(TOPIC, COMPRESSED_IMAGE_TYPE, compressed(bytes(png), "png"), WIDTH, HEIGHT, LIMITS, 90)


def test_a_trajectory_command_is_its_first_point_in_robot_order() -> None:
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"]
    duration = T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0)
    msg = T["trajectory_msgs/msg/JointTrajectory"](header=header(), joint_names=["c", "a", "b"], points=[
        point(positions=np.array([3.0, 1.0, 2.0]), velocities=np.zeros(0), accelerations=np.zeros(0),
              effort=np.zeros(0), time_from_start=duration),
        point(positions=np.array([9.0, 9.0, 9.0]), velocities=np.zeros(0), accelerations=np.zeros(0),
              effort=np.zeros(0), time_from_start=duration)])
    row = command_row("/cmd", TRAJECTORY_TYPE, msg, JointMatcher(ROBOT, None, 16), ())
    np.testing.assert_array_equal(row, [1.0, 2.0, 3.0])


@pytest.mark.parametrize(("names", "values", "words"), [
    (["a", "b", "a"], [1.0, 2.0, 3.0], "names a joint twice"),
    (["a", "b"], [1.0, 2.0], "lacks robot joints c"),
    (["a", "b", "c"], [1.0, 2.0], "has 2 position values for 3 joint names"),
    ([f"j{i}" for i in range(20)], list(range(20)), "more than 16 joints"),
])
def test_joint_messages_that_do_not_match_the_robot_are_skipped(names, values, words) -> None:
    msg = T["sensor_msgs/msg/JointState"](header=header(), name=names, position=np.array(values, float),
                                          velocity=np.zeros(0), effort=np.zeros(0))
    with pytest.raises(MessageSkipped, match=words):
        command_row("/js", "sensor_msgs/msg/JointState", msg, JointMatcher(ROBOT, None, 16), ())


@pytest.mark.parametrize(("msgtype", "data", "expected"), [
    ("std_msgs/msg/String", "Start", "start"), ("std_msgs/msg/String", " stop\n", "stop"),
    ("std_msgs/msg/String", "pause", None), ("std_msgs/msg/Bool", True, "start"), ("std_msgs/msg/Bool", False, "stop"),
])
def test_markers_read_as_start_and_stop(msgtype: str, data: object, expected: str | None) -> None:
    assert marker_state(msgtype, T[msgtype](data=data)) == expected

"""Benchmark: importing a ROS 2 bag into a sealed raw episode, against reading the same bag.

The bag is a Unitree G1 as a ROS 2 driver would record it: ``JointState`` of
its 29 joints at 500 Hz, a ``Float64MultiArray`` command at 50 Hz, and two
640x480 cameras at 30 Hz, one as JPEG ``CompressedImage`` (passed through) and
one as raw rgb8 ``Image`` (encoded here). For each storage (MCAP, SQLite3):

  (a) baseline: rosbags reads every message and deserializes it (what any
      importer built on rosbags pays at least);
  (b) ``import_rosbags`` into a fresh folder: checks, rows in robot order,
      frames, journal, seal (one HDF5 file, fsynced).

Printed: messages/s and seconds of recording imported per second, and the
ratio (b)/(a) of the times, both measured in this run (the best of
``--repeats`` runs each: on a shared machine the minimum is the least noisy).

Run: ``python -m tools.bench_rosbag_import [--seconds 10] [--repeats 3] [--no-raw-camera]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from pipeline.interop.rosbag_import import import_rosbags
from pipeline.robot_config import load_robot_config

JOINT_HZ, COMMAND_HZ, CAMERA_HZ = 500, 50, 30


def write_g1_bag(path: Path, storage: str, seconds: float, raw_camera: bool) -> int:
    """Write the benchmark bag; returns its message count."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    robot = load_robot_config("unitree_g1")
    names = list(robot.joint_names)
    t0 = 1_750_000_000_000_000_000
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    texture = cv2.GaussianBlur(texture, (9, 9), 0)
    topics = {"/joint_states": "sensor_msgs/msg/JointState", "/joint_commands": "std_msgs/msg/Float64MultiArray",
              "/head/compressed": "sensor_msgs/msg/CompressedImage"}
    if raw_camera:
        topics["/wrist/image_raw"] = "sensor_msgs/msg/Image"
    messages: list[tuple[int, str, object]] = []

    def header(ns: int) -> object:
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                        frame_id="")

    centre = np.array([(j.position_min + j.position_max) / 2 for j in robot.joints])
    for i in range(int(seconds * JOINT_HZ)):
        ns = t0 + i * 10**9 // JOINT_HZ
        pos = centre + 0.1 * np.sin(i / JOINT_HZ + np.arange(len(names)))
        messages.append((ns + 200_000, "/joint_states", T["sensor_msgs/msg/JointState"](
            header=header(ns), name=names, position=pos, velocity=np.zeros(len(names)), effort=np.zeros(len(names)))))
    for i in range(int(seconds * COMMAND_HZ)):
        ns = t0 + i * 10**9 // COMMAND_HZ
        layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        messages.append((ns + 300_000, "/joint_commands", T["std_msgs/msg/Float64MultiArray"](
            layout=layout, data=centre.copy())))
    for i in range(int(seconds * CAMERA_HZ)):
        ns = t0 + round(i * 1e9 / CAMERA_HZ)
        image = np.roll(texture, 4 * i, axis=1)
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        messages.append((ns + 30_000_000, "/head/compressed", T["sensor_msgs/msg/CompressedImage"](
            header=header(ns), format="jpeg", data=jpeg.reshape(-1))))
        if raw_camera:
            messages.append((ns + 30_000_000, "/wrist/image_raw", T["sensor_msgs/msg/Image"](
                header=header(ns), height=480, width=640, encoding="bgr8", is_bigendian=0, step=640 * 3,
                data=image.reshape(-1))))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {t: writer.add_connection(t, m, typestore=ts) for t, m in topics.items()}
        for receive, topic, msg in sorted(messages, key=lambda m: m[0]):
            writer.write(conns[topic], receive, ts.serialize_cdr(msg, topics[topic]))
    return len(messages)


def read_all(path: Path) -> float:
    """Seconds to read and deserialize every message of a bag with rosbags."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    start = time.perf_counter()
    with Reader(path) as reader:
        for conn, _, data in reader.messages():
            ts.deserialize_cdr(data, conn.msgtype)
    return time.perf_counter() - start


def timed_import(bag: Path, data: Path, bag_map: Path) -> float:
    start = time.perf_counter()
    result = import_rosbags(bag, data, bag_map)
    took = time.perf_counter() - start
    if result.written != 1 or result.refused or result.skipped:
        raise SystemExit(f"the import did not take the whole bag: {result}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="recording length (default: %(default)s)")
    parser.add_argument("--raw-camera", action=argparse.BooleanOptionalAction, default=True,
                        help="add a raw rgb8 camera that is encoded as JPEG (default: on)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each, the fastest counts (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rosbag-") as tmp:
        work = Path(tmp)
        cameras = {"head_left": "/head/compressed"}
        if args.raw_camera:
            cameras["wrist_left"] = "/wrist/image_raw"
        bag_map = work / "map.yaml"
        bag_map.write_text(yaml.safe_dump({
            "robot": {"config": "unitree_g1", "id": "g1-bench"}, "joint_state": {"topic": "/joint_states"},
            "action": {"topic": "/joint_commands"}, "cameras": cameras}))
        print(f"{args.seconds:g} s of a Unitree G1: 29 joints at {JOINT_HZ} Hz, command at {COMMAND_HZ} Hz, "
              f"{len(cameras)} camera(s) 640x480 at {CAMERA_HZ} Hz"
              + (" (one raw rgb8, encoded)" if args.raw_camera else ""))
        for storage in ("mcap", "sqlite3"):
            bag = work / f"bag-{storage}"
            count = write_g1_bag(bag, storage, args.seconds, args.raw_camera)
            size = sum(f.stat().st_size for f in bag.iterdir())
            baseline = min(read_all(bag) for _ in range(args.repeats))
            took = min(timed_import(bag, work / f"data-{storage}-{k}", bag_map) for k in range(args.repeats))
            print(f"{storage:8s} {count:,} messages, {size / 1e6:.0f} MB: read+deserialize {baseline:.2f} s "
                  f"({count / baseline:,.0f} msg/s); import {took:.2f} s ({count / took:,.0f} msg/s, "
                  f"{args.seconds / took:.1f} s of recording per s); import/read {took / baseline:.2f}x")


if __name__ == "__main__":
    main()

"""The collection slice end to end: sim robots -> collectors -> ZeroMQ -> ingest -> sealed HDF5."""

from __future__ import annotations

import numpy as np

from collectors.drivers.sim import SimHumanoid
from pipeline.raw_store import RawEpisodeReader, verify_episode
from pipeline.robot_config import RobotConfig
from tests.conftest import record_episode


def assert_episode_matches_sim(path, sim: SimHumanoid, robot: RobotConfig) -> None:
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "complete"
        js = ep.numeric("joint_state")
        n = js["capture_ns"].size
        assert n > 0
        # Every sample the robot produced, once, in order.
        assert np.array_equal(js["source_index"], np.arange(n))
        for k in range(n):
            position, velocity, effort = sim.joint_state(k)
            assert np.array_equal(js["position"][k], position)
            assert np.array_equal(js["velocity"][k], velocity)
            assert np.array_equal(js["effort"][k], effort)
        assert np.array_equal(np.unique(js["seq"]), np.arange(js["seq"].max() + 1))
        action = ep.numeric("action")
        assert np.array_equal(action["source_index"], np.arange(action["capture_ns"].size))
        for k in range(action["capture_ns"].size):
            assert np.array_equal(action["position"][k], sim.action(k))
        assert ep.camera_names == sorted(c.name for c in robot.cameras)
        for camera in ep.camera_names:
            cols = ep.camera(camera)
            frames = ep.frames(camera)
            assert len(frames) > 0
            assert np.array_equal(cols["seq"], np.arange(len(frames)))
            assert np.array_equal(cols["source_index"], np.arange(len(frames)))
            for k, jpeg in enumerate(frames):
                assert jpeg == sim.frame_jpeg(camera, k)  # byte for byte
        kinds = [e["kind"] for e in ep.events()]
        assert kinds[0] == "start" and kinds[-1] == "stop"
        assert ep.clock_sync()["t1_ns"].size >= 1
        assert ep.robot_config["model"] == robot.model


def test_several_collectors_record_exactly_what_the_robots_produced(ingest, make_collector, tiny_robot) -> None:
    collectors = [make_collector(ingest.endpoint, robot_id=f"tiny-{i}", seed=i) for i in range(3)]
    for c in collectors:
        c.start()
    episodes = {}
    for c in collectors:
        c.start_episode(task="wave", operator="op-1")
    import time

    time.sleep(1.5)
    for c in collectors:
        episodes[c.config.robot_id] = c.stop_episode("success")
    for c in collectors:
        assert c.drain(30), f"{c.config.robot_id} did not drain"
    files = ingest.raw_files()
    assert len(files) == 3
    for i in range(3):
        path = ingest.data_dir / "raw" / f"tiny-{i}" / f"{episodes[f'tiny-{i}']}.h5"
        assert path in files
        assert verify_episode(path).ok
        assert_episode_matches_sim(path, SimHumanoid(tiny_robot, seed=i), tiny_robot)
    assert ingest.server.stats.malformed == 0


def test_episode_records_task_operator_and_outcome(ingest, make_collector) -> None:
    c = make_collector(ingest.endpoint)
    c.start()
    record_episode(c, 0.3, task="pick the red cup")
    assert c.drain(20)
    (path,) = ingest.raw_files()
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["task"] == "pick the red cup"
        assert ep.attrs["operator"] == "op-1"
        assert ep.attrs["outcome"] == "success"


def test_consecutive_episodes_are_sealed_separately(ingest, make_collector) -> None:
    c = make_collector(ingest.endpoint)
    c.start()
    first = record_episode(c, 0.3)
    second = record_episode(c, 0.3)
    assert first != second
    assert c.drain(20)
    assert len(ingest.raw_files()) == 2

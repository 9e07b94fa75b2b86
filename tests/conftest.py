"""Shared fixtures: a real ingest on a loopback port, real collectors with the sim driver."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile

# Ray reads its auth mode when imported, so it is set before anything imports ray
# (DESIGN: Ray pitfalls). The tests' Rays, here and in subprocesses, use token auth
# as `refinery process` does, with a token of the session's own: ~/.ray is left alone.
_ray_token_dir = tempfile.mkdtemp(prefix="rf-ray-token-")
atexit.register(shutil.rmtree, _ray_token_dir, True)
with open(os.path.join(_ray_token_dir, "auth_token"), "w") as _token_file:
    _token_file.write(secrets.token_hex(32))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(_ray_token_dir, "auth_token")
os.environ.pop("RAY_AUTH_TOKEN", None)

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collectors.agent import Collector, CollectorConfig
from collectors.drivers.sim import SimHumanoid
from pipeline.ingest import IngestConfig, IngestServer
from pipeline.robot_config import RobotConfig, load_robot_config

TINY_ROBOT = Path(__file__).parent / "data" / "robots" / "tiny_humanoid.yaml"


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    from tests.processes import kill_leftovers

    kill_leftovers()


@pytest.fixture(scope="session")
def tiny_robot() -> RobotConfig:
    return load_robot_config(TINY_ROBOT)


class RunningIngest:
    def __init__(self, config: IngestConfig) -> None:
        self.server = IngestServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert self.server.ready.wait(10), "ingest did not start"
        self.endpoint = self.server.endpoint
        self.data_dir = config.data_dir

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "ingest did not stop"

    def raw_files(self) -> list[Path]:
        return sorted((self.data_dir / "raw").rglob("*.h5"))


@pytest.fixture
def start_ingest(tmp_path: Path) -> Iterator[Callable[..., RunningIngest]]:
    running: list[RunningIngest] = []

    def start(**overrides: object) -> RunningIngest:
        options: dict[str, object] = {"data_dir": tmp_path / "ingest", "bind": "tcp://127.0.0.1:*", "allow_plain": True}
        options.update(overrides)
        ingest = RunningIngest(IngestConfig(**options))  # type: ignore[arg-type]
        running.append(ingest)
        return ingest

    yield start
    for ingest in running:
        if ingest.thread.is_alive():
            ingest.stop()


@pytest.fixture
def ingest(start_ingest: Callable[..., RunningIngest]) -> RunningIngest:
    return start_ingest()


@pytest.fixture
def make_collector(tmp_path: Path, tiny_robot: RobotConfig) -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(endpoint: str, robot_id: str = "tiny-0", seed: int = 0, **overrides: object) -> Collector:
        options: dict[str, object] = {
            "robot_id": robot_id,
            "robot": tiny_robot,
            "ingest": endpoint,
            "spool_dir": tmp_path / "spool" / robot_id,
            "allow_plain": True,
        }
        options.update(overrides)
        collector = Collector(CollectorConfig(**options), SimHumanoid(tiny_robot, seed=seed))  # type: ignore[arg-type]
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def record_episode(collector: Collector, seconds: float, task: str = "test task") -> str:
    episode = collector.start_episode(task=task, operator="op-1")
    time.sleep(seconds)
    collector.stop_episode("success")
    return episode


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real local Ray for the whole test session (DESIGN: Ray pitfalls)."""
    import ray

    ray.init(num_cpus=2, object_store_memory=128 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()

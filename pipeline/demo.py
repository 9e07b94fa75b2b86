"""`refinery demo`: an ingest and simulated humanoid collectors on loopback.

Everything runs in one process (threads), on a free loopback port, without
authentication, and leaves its files in the data directory for a look.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from collectors.agent import Collector, CollectorConfig
from collectors.drivers import make_driver
from pipeline.console import StatusLine, format_table
from pipeline.errors import RefineryError
from pipeline.ingest import IngestConfig, IngestServer
from pipeline.raw_summary import SUMMARY_HEADERS, raw_files, summarize
from pipeline.robot_config import load_robot_config

log = logging.getLogger("refinery.demo")


@dataclass(frozen=True)
class DemoConfig:
    data_dir: Path
    models: list[str]
    episodes: int = 2
    duration_s: float = 3.0
    seed: int = 0


def run_demo(config: DemoConfig) -> int:
    """Record ``episodes`` episodes from one simulated robot per model; print a table."""
    data_dir = config.data_dir.resolve()
    ingest_dir = data_dir / "ingest"
    server = IngestServer(IngestConfig(data_dir=ingest_dir, bind="tcp://127.0.0.1:*", allow_plain=True))
    server_thread = threading.Thread(target=server.run, name="ingest", daemon=True)
    server_thread.start()
    if not server.ready.wait(10):
        raise RefineryError("the demo ingest did not start within 10 s")
    print(f"ingest on {server.endpoint}, data in {ingest_dir}", file=sys.stderr)

    collectors = []
    for n, model in enumerate(config.models):
        robot = load_robot_config(model.strip())
        robot_id = f"{robot.model}-sim{n}"
        driver = make_driver("sim", robot, seed=config.seed + n)
        collectors.append(
            Collector(
                CollectorConfig(
                    robot_id=robot_id,
                    robot=robot,
                    ingest=server.endpoint,
                    spool_dir=data_dir / "spool" / robot_id,
                    allow_plain=True,
                ),
                driver,
            )
        )
    status = StatusLine(log_every_s=2.0)
    try:
        for c in collectors:
            c.start()
        for episode in range(config.episodes):
            for c in collectors:
                c.start_episode(task=f"demo task {episode + 1}: wave both arms", operator="demo-operator")
            deadline = time.monotonic() + config.duration_s
            while time.monotonic() < deadline:
                _show(status, server, collectors, episode + 1, config.episodes)
                time.sleep(0.25)
            for c in collectors:
                c.stop_episode("success")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(c.drain(0.05) for c in collectors):
            _show(status, server, collectors, config.episodes, config.episodes)
            time.sleep(0.2)
    finally:
        status.done()
        for c in collectors:
            c.close()
        server.stop()
        server_thread.join(30)

    files = raw_files(ingest_dir / "raw")
    summaries = [summarize(p) for p in files]
    print()
    print(f"Recorded {len(summaries)} raw episodes in {ingest_dir / 'raw'}:")
    print(format_table(SUMMARY_HEADERS, [s.row() for s in summaries]))
    expected = len(collectors) * config.episodes
    if len(summaries) != expected:
        print(f"expected {expected} episodes, found {len(summaries)}", file=sys.stderr)
        return 1
    return 0


def _show(status: StatusLine, server: IngestServer, collectors: list[Collector], episode: int, total: int) -> None:
    s = server.status()
    unacked = sum(c.spool.unacked() for c in collectors)
    status.update(
        f"demo episode {episode}/{total} | {len(collectors)} robots | ingest accepted {s['accepted']} messages, "
        f"{s['bytes'] / 1e6:.1f} MB, sealed {s['sealed']} | unacknowledged {unacked}"
    )

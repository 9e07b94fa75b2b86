"""Building raw episodes without a network: importers and simulations.

:class:`RawEpisodeBuilder` writes the same journal the ingest writes and seals
it the same way, so an imported or simulated episode is indistinguishable
from a recorded one: same layout, same checksum, same processing.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import protocol
from pipeline.journal import JOURNAL_SUFFIX, EpisodeJournal, EpisodeMeta
from pipeline.raw_store import raw_path, seal_recovered
from pipeline.robot_config import RobotConfig
from pipeline.streams import ACTION, CLOCK, EVENTS, JOINT_STATE

# An imported recording has one clock: its clock samples say "same clock", 0.2 ms
# round trip, every 0.5 s as a collector makes them.
_SAME_CLOCK_EVERY_NS = 500_000_000
_SAME_CLOCK_LEG_NS = 100_000


class RawEpisodeBuilder:
    """Append streams in capture order, then :meth:`seal`.

    ``arrival_ns`` of every message is its capture time plus ``transit_ns``
    (the ingest clock, for an imported episode, is the recording clock), unless
    the message is given its own (an importer that knows when each message was
    received: a ROS bag's log time).
    """

    def __init__(
        self, data_dir: Path, robot_id: str, config: RobotConfig, episode_id: str | None = None, transit_ns: int = 0
    ) -> None:
        self.data_dir = data_dir
        self.robot_id = protocol.check_id(robot_id, "robot_id")
        self.episode_id = protocol.check_id(episode_id or f"{robot_id}-{uuid.uuid4().hex[:12]}", "episode_id")
        self.config = config
        self.transit_ns = transit_ns
        path = data_dir / "journal" / robot_id / f"{self.episode_id}{JOURNAL_SUFFIX}"
        meta = EpisodeMeta(robot_id, self.episode_id, config.model, config.digest, config.to_dict(), time.time_ns())
        self.journal = EpisodeJournal.create(path, meta)
        self._seq: dict[str, int] = {}

    def _next(self, stream: str) -> int:
        seq = self._seq.get(stream, 0)
        self._seq[stream] = seq + 1
        return seq

    def _append(self, record: protocol.DataRecord, capture_ns: int, arrival_ns: int | None = None) -> None:
        arrival = capture_ns + self.transit_ns if arrival_ns is None else arrival_ns
        self.journal.append(arrival, record.encode(), record)

    def _header(self, stream: str, capture_ns: int, index: int = 0) -> protocol.DataHeader:
        return protocol.DataHeader(self.robot_id, self.episode_id, stream, self._next(stream), capture_ns, index)

    def event(self, body: dict[str, Any], capture_ns: int, arrival_ns: int | None = None) -> None:
        self._append(protocol.Event(self._header(EVENTS, capture_ns), body), capture_ns, arrival_ns)

    def samples(
        self, stream: str, capture_ns: np.ndarray, index: np.ndarray, values: np.ndarray, arrival_ns: int | None = None
    ) -> None:
        """One batch of a numeric stream (joint_state rows are position ++ velocity ++ effort)."""
        record = protocol.Samples.build(
            self.robot_id, self.episode_id, stream, self._next(stream), capture_ns, index, values
        )
        self._append(record, int(capture_ns[-1]), arrival_ns)

    def frame(self, camera: str, capture_ns: int, index: int, jpeg: bytes, arrival_ns: int | None = None) -> None:
        self._append(protocol.Frame(self._header(camera, capture_ns, index), jpeg), capture_ns, arrival_ns)

    def clock(self, t1: int, t2: int, t3: int, t4: int) -> None:
        self._append(protocol.ClockSample(self._header(CLOCK, t1), t1, t2, t3, t4), t4)

    def same_clock(self, t_ns: int) -> None:
        """A clock sample saying the source's clock is the ingest's (an import's only clock)."""
        leg = _SAME_CLOCK_LEG_NS
        self.clock(t_ns, t_ns + leg, t_ns + leg, t_ns + 2 * leg)

    def same_clock_until(self, next_ns: int, until_ns: int) -> int:
        """:meth:`same_clock` every 0.5 s from ``next_ns`` up to ``until_ns``; return when the next one is due."""
        while next_ns <= until_ns:
            self.same_clock(next_ns)
            next_ns += _SAME_CLOCK_EVERY_NS
        return next_ns

    def seal(self, outcome: str = "success", capture_ns: int | None = None) -> Path:
        """Close the episode with a stop event and seal it into ``raw/``."""
        last = {stream: seq - 1 for stream, seq in self._seq.items()}
        last[EVENTS] = self._seq.get(EVENTS, 0)
        stamp = capture_ns if capture_ns is not None else time.time_ns()
        self.event({"kind": "stop", "outcome": outcome, "last_seq": last}, stamp)
        self.journal.sync()
        return seal_recovered(self.journal, self.data_dir)

    @property
    def path(self) -> Path:
        return raw_path(self.data_dir, self.robot_id, self.episode_id)


def simulate_episode(
    data_dir: Path,
    config: RobotConfig,
    *,
    robot_id: str = "sim-0",
    seconds: float = 3.0,
    seed: int = 0,
    faults: Any = None,
    task: str = "simulated task",
    operator: str = "op-sim",
    outcome: str = "success",
    t0_ns: int = 1_800_000_000_000_000_000,
    batch_rows: int = 10,
    prerendered: bool = False,
) -> Path:
    """Record ``seconds`` of a simulated robot straight into a sealed raw episode (no sockets, no waiting)."""
    from collectors.drivers.base import ActionReading, FrameReading, JointReading
    from collectors.drivers.sim import SimFaults, SimHumanoid

    sim = SimHumanoid(config, seed=seed, faults=faults or SimFaults(), prerendered=prerendered)
    builder = RawEpisodeBuilder(data_dir, robot_id, config)
    builder.event({"kind": "start", "task": task, "operator": operator, "t0_ns": t0_ns}, t0_ns)
    sim.start(t0_ns)
    batches: dict[str, list[Any]] = {JOINT_STATE: [], ACTION: []}

    def flush(stream: str) -> None:
        rows = batches[stream]
        if not rows:
            return
        values = np.stack([
            np.concatenate([r.position, r.velocity, r.effort]) if stream == JOINT_STATE else r.position for r in rows
        ])
        builder.samples(stream, np.array([r.capture_ns for r in rows]), np.array([r.index for r in rows]), values)
        batches[stream] = []

    step_ns = 20_000_000
    for now in range(t0_ns + step_ns, t0_ns + int(seconds * 1e9) + 1, step_ns):
        for reading in sim.poll(now):
            if isinstance(reading, JointReading):
                batches[JOINT_STATE].append(reading)
                if len(batches[JOINT_STATE]) >= batch_rows:
                    flush(JOINT_STATE)
            elif isinstance(reading, ActionReading):
                batches[ACTION].append(reading)
                if len(batches[ACTION]) >= batch_rows:
                    flush(ACTION)
            elif isinstance(reading, FrameReading):
                builder.frame(reading.camera, reading.capture_ns, reading.index, reading.jpeg)
        flush(JOINT_STATE)
        flush(ACTION)
        if (now - t0_ns) % 500_000_000 == 0:  # a clock-sync exchange every 0.5 s, 100 us each way
            builder.clock(now, now + 100_000, now + 120_000, now + 220_000)
    return builder.seal(outcome, t0_ns + int(seconds * 1e9))

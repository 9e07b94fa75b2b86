"""What the ingest counts per robot, for metrics and the console.

The ingest owns one :class:`IngestCounters`; each session points at its robot's
:class:`RobotCounters`, so counting a message is a few integer additions on an
object the ingest already holds. Histograms (seal duration, capture to
durable) are observed once per seal and once per group commit, never per
message. Readers (the metrics server, another thread) only copy these values.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from pipeline import protocol

MAX_TRACKED_ROBOTS = 4096
"""Robot ids counted one by one; past this (a plain-TCP ingest anyone may talk to)
they share one row, so a flood of made-up ids cannot grow the metrics without bound."""
_SAMPLES, _FRAME, _EVENT = protocol.Opcode.SAMPLES, protocol.Opcode.FRAME, protocol.Opcode.EVENT

OVERFLOW_ROBOT = "_other"  # a valid robot id, so readers that check ids accept the row

# Seconds. A seal of a short episode takes ~0.1 s, a 10-minute G1 episode (~4 GB) ~ a minute.
SEAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Group commit every 20 ms plus batching: tens of ms when healthy, seconds when a disk stalls
# or a collector resends its spool after an outage.
DURABLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class RobotCounters:
    """Totals for one robot id since the ingest started; streams are keyed by name."""

    robot_id: str
    model: str = ""
    messages: int = 0  # received on its session, every kind (clock-sync requests too)
    bytes: int = 0
    accepted: dict[str, int] = field(default_factory=dict)  # stream -> data messages journaled
    accepted_bytes: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)  # stream -> rows of SAMPLES batches
    frames: dict[str, int] = field(default_factory=dict)  # stream -> camera frames
    duplicates: int = 0
    gaps: int = 0
    malformed: int = 0
    sealed: int = 0
    sealed_incomplete: int = 0
    episode: str = ""  # the latest started episode, until its stop event
    episode_started_wall: float = 0.0
    task: str = ""
    operator: str = ""
    day: str = ""  # UTC date the two below count
    day_episodes: int = 0
    day_seconds: float = 0.0
    _starts: dict[str, int] = field(default_factory=dict)  # episode -> capture ns of its start event
    _stops: dict[str, int] = field(default_factory=dict)  # episode -> capture ns of its stop event
    _pending_capture_ns: int = 0  # oldest capture time journaled since the last group commit
    _pending: list[RobotCounters] | None = None  # where it signs up when it has something in a commit

    def received(self, size: int) -> None:
        # Silence is read from the session's own last_heard at scrape time: no clock read per message.
        self.messages += 1
        self.bytes += size

    def accepted_message(self, opcode: protocol.Opcode, header: protocol.DataHeader,
                         record: protocol.DataRecord, size: int) -> None:
        """One data message journaled (the per-message path: keep it cheap)."""
        stream = header.stream
        self.accepted[stream] = self.accepted.get(stream, 0) + 1
        self.accepted_bytes[stream] = self.accepted_bytes.get(stream, 0) + size
        if opcode is _SAMPLES:
            self.samples[stream] = self.samples.get(stream, 0) + header.rows
        elif opcode is _FRAME:
            self.frames[stream] = self.frames.get(stream, 0) + 1
        elif opcode is _EVENT:
            self._event(header, record.body)  # type: ignore[union-attr]
        if not self._pending_capture_ns:
            self._pending_capture_ns = header.capture_ns
            if self._pending is not None:
                self._pending.append(self)

    def _event(self, header: protocol.DataHeader, body: dict[str, Any]) -> None:
        kind = body.get("kind")
        if kind == "start":
            self.episode = header.episode_id
            self.episode_started_wall = time.time()
            self.task = str(body.get("task", ""))[:200]
            self.operator = str(body.get("operator", ""))[:200]
            self._starts[header.episode_id] = header.capture_ns
        elif kind == "task":
            self.task = str(body.get("task", ""))[:200]
        elif kind == "stop":
            self._stops[header.episode_id] = header.capture_ns
            if self.episode == header.episode_id:
                self.episode = ""
        # Bounded: an episode's start and stop are dropped at its seal; these catch the rest.
        for marks in (self._starts, self._stops):
            if len(marks) > 64:
                marks.pop(next(iter(marks)))

    def episode_sealed(self, episode_id: str, incomplete: bool) -> None:
        self.sealed += 1
        if incomplete:
            self.sealed_incomplete += 1
        start, stop = self._starts.pop(episode_id, 0), self._stops.pop(episode_id, 0)
        today = _utc_day()
        if self.day != today:
            self.day, self.day_episodes, self.day_seconds = today, 0, 0.0
        self.day_episodes += 1
        if start and stop > start:
            self.day_seconds += (stop - start) / 1e9


class IngestCounters:
    """Every robot's counters and the ingest's histograms, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.seal_duration = Histogram(
            "refinery_ingest_seal_duration_seconds", "Time to seal one episode's journal into its HDF5 file",
            buckets=SEAL_BUCKETS, registry=self.registry,
        )
        self.capture_to_durable = Histogram(
            "refinery_ingest_capture_to_durable_seconds",
            "From a message's capture time (collector clock) to the fsync that made it durable; "
            "one observation per robot per group commit, for the oldest message it covered",
            buckets=DURABLE_BUCKETS, registry=self.registry,
        )
        self.robots: dict[str, RobotCounters] = {}
        self._lock = threading.Lock()  # robot creation only: readers copy self.robots
        self._pending: list[RobotCounters] = []  # robots with messages since the last commit snapshot
        self._committing: list[int] = []  # oldest capture time of each robot in the commit being fsynced
        self._sealing: dict[tuple[str, str], bool] = {}  # seals under way -> sealed as incomplete

    def robot(self, robot_id: str, model: str = "") -> RobotCounters:
        counters = self.robots.get(robot_id)
        if counters is None:
            with self._lock:
                if len(self.robots) >= MAX_TRACKED_ROBOTS:
                    robot_id = OVERFLOW_ROBOT
                counters = self.robots.setdefault(robot_id, RobotCounters(robot_id, model, _pending=self._pending))
        if model and counters.model != model and counters.robot_id != OVERFLOW_ROBOT:
            counters.model = model
        return counters

    def commit_started(self) -> None:
        """The ingest took its group-commit snapshot: what was journaled so far is being fsynced."""
        committing = []
        for counters in self._pending:
            committing.append(counters._pending_capture_ns)
            counters._pending_capture_ns = 0
        self._pending.clear()
        self._committing = committing

    def commit_durable(self) -> None:
        """That snapshot's fsyncs succeeded."""
        now_ns = time.time_ns()
        for capture_ns in self._committing:
            self.capture_to_durable.observe(max(0.0, (now_ns - capture_ns) / 1e9))
        self._committing = []

    def seal_started(self, key: tuple[str, str], incomplete: bool, future: Future[Any]) -> None:
        """A seal was submitted to the ingest's seal thread; its duration is observed when it ends."""
        started = time.monotonic()
        self._sealing[key] = incomplete

        def done(finished: Future[Any]) -> None:
            self.seal_duration.observe(time.monotonic() - started)
            if finished.exception() is not None:
                self._sealing.pop(key, None)  # quarantined or kept for the next start: not sealed

        future.add_done_callback(done)

    def episode_sealed(self, key: tuple[str, str]) -> None:
        """The ingest's loop saw that seal succeed (called on the loop's thread, like every count)."""
        incomplete = self._sealing.pop(key, False)
        self.robot(key[0]).episode_sealed(key[1], incomplete)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every robot's counters as plain data (copies, safe to read from another thread)."""
        rows = []
        today = _utc_day()
        for c in list(self.robots.values()):
            rows.append({
                "robot_id": c.robot_id, "model": c.model, "messages": c.messages, "bytes": c.bytes,
                "accepted": dict(c.accepted), "accepted_bytes": dict(c.accepted_bytes),
                "samples": dict(c.samples), "frames": dict(c.frames),
                "duplicates": c.duplicates, "gaps": c.gaps, "malformed": c.malformed,
                "sealed": c.sealed, "sealed_incomplete": c.sealed_incomplete,
                "episode": c.episode,
                "episode_started": c.episode_started_wall if c.episode else 0.0,
                "task": c.task, "operator": c.operator,
                "today_episodes": c.day_episodes if c.day == today else 0,
                "today_seconds": round(c.day_seconds, 3) if c.day == today else 0.0,
            })
        return rows


def _utc_day() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")

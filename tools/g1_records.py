"""The messages of a simulated Unitree G1 episode, as a collector sends them (bench input).

29 joints: joint states at 500 Hz in batches of 10 (position, velocity, effort),
actions at 250 Hz in batches of 5, three cameras at 30 fps with 69 kB JPEG-like
frames (random bytes between JPEG markers: sealing never decodes them), a
clock-sync sample every 0.5 s, start and stop events. Values are random: what
the benches measure is moving bytes, not their meaning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline import protocol
from pipeline.robot_config import RobotConfig

FRAME_BYTES = 69_000
TICK_NS = 20_000_000  # one batch of each numeric stream per 20 ms
T0_NS = 1_800_000_000_000_000_000

Message = tuple[protocol.DataRecord, list[bytes]]  # the record, and the frames it is sent as


@dataclass
class G1Episode:
    """One episode's message source: :meth:`start`, then :meth:`tick` per 20 ms, then :meth:`stop`."""

    robot_id: str
    episode_id: str
    config: RobotConfig
    seed: int = 0
    seqs: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=lambda: {"joint_state": 0, "action": 0, "frames": 0})
    ticks: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        dof = self.config.dof
        self._jpeg = b"\xff\xd8" + rng.integers(0, 256, FRAME_BYTES - 4, dtype=np.uint8).tobytes() + b"\xff\xd9"
        self._joint_values = rng.standard_normal((10, 3 * dof))
        self._action_values = rng.standard_normal((5, dof))
        self._cameras = [c.name for c in self.config.cameras]

    def _header(self, stream: str, capture_ns: int, index: int = 0) -> protocol.DataHeader:
        seq = self.seqs.get(stream, 0)
        self.seqs[stream] = seq + 1
        return protocol.DataHeader(self.robot_id, self.episode_id, stream, seq, capture_ns, index)

    def _event(self, body: dict[str, object], capture_ns: int) -> Message:
        record = protocol.Event(self._header("events", capture_ns), body)
        return record, record.encode()

    def now_ns(self) -> int:
        return T0_NS + self.ticks * TICK_NS

    def start(self) -> Message:
        return self._event({"kind": "start", "task": "bench", "operator": "op-bench"}, self.now_ns())

    def tick(self) -> Iterator[Message]:
        """The messages of the next 20 ms."""
        t = self.now_ns()
        for stream, values, period_ns in (("joint_state", self._joint_values, 2_000_000),
                                          ("action", self._action_values, 4_000_000)):
            n = len(values)
            k = self.rows[stream]
            seq = self.seqs.get(stream, 0)
            self.seqs[stream] = seq + 1
            record = protocol.Samples.build(self.robot_id, self.episode_id, stream, seq,
                                            t + np.arange(n) * period_ns, np.arange(k, k + n), values)
            self.rows[stream] += n
            yield record, record.encode()
        if self.ticks % 5 in (0, 2, 4):  # 3 frames per 100 ms = 30 fps
            for camera in self._cameras:
                header = self._header(camera, t, self.rows["frames"])
                yield protocol.Frame(header, self._jpeg), [header.pack(protocol.Opcode.FRAME), self._jpeg]
            self.rows["frames"] += 1
        if self.ticks % 25 == 0:
            seq = self.seqs.get("clock", 0)
            self.seqs["clock"] = seq + 1
            header = protocol.DataHeader(self.robot_id, self.episode_id, "clock", seq, t)
            record = protocol.ClockSample(header, t, t + 100_000, t + 120_000, t + 220_000)
            yield record, record.encode()
        self.ticks += 1

    def stop(self) -> Message:
        last = {s: q - 1 for s, q in self.seqs.items()}
        last["events"] = self.seqs["events"]  # the stop event's own seq
        return self._event({"kind": "stop", "outcome": "success", "last_seq": last}, self.now_ns())

"""Regenerate the protocol test vectors (only when the protocol version changes).

    python tests/data/protocol/generate.py

Each vector is ``<name>.json``: the message's frames as hex, and the decoded
record in canonical JSON (see tests/protocol_json.py). The committed files pin
the byte layout; tests/test_protocol.py checks both directions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent.parent))

from pipeline import protocol  # noqa: E402
from tests.protocol_json import record_to_json  # noqa: E402


def header(stream: str, seq: int, capture_ns: int, index: int = 0) -> protocol.DataHeader:
    return protocol.DataHeader("g1-lab1", "g1-lab1-20261128T120000-a1b2c3", stream, seq, capture_ns, index)


VECTORS: dict[str, protocol.Record] = {
    "hello": protocol.Hello(
        robot_id="g1-lab1", model="tiny_humanoid", config_digest="ab" * 32,
        config={"model": "tiny_humanoid"}, software="refinery-collector", pending=("ep-1",),
    ),
    "welcome": protocol.Welcome(
        window=512, max_message_bytes=1 << 25, acked={"ep-1": {"joint_state": 41}}, sealed=("ep-0",),
        episodes={"ep-0": "sealed", "ep-1": "open", "ep-9": "unknown"},
    ),
    "refuse": protocol.Refuse("peer speaks protocol version 2, this side speaks 1"),
    "ack": protocol.Ack((("ep-1", "joint_state", 41), ("ep-1", "head", 7)), sealed=("ep-0",)),
    "notice": protocol.Notice("error", "disk full"),
    "time_request": protocol.TimeRequest(1_764_331_200_000_000_000),
    "time_reply": protocol.TimeReply(1_764_331_200_000_000_000, 1_764_331_200_000_150_000, 1_764_331_200_000_170_000),
    "samples": protocol.Samples.build(
        "g1-lab1", "g1-lab1-20261128T120000-a1b2c3", "joint_state", 3,
        np.array([1_764_331_200_000_000_000, 1_764_331_200_002_000_000]), np.array([30, 31]),
        np.array([[0.5, -1.25, 3.0], [0.625, -1.0, 2.5]]),
    ),
    "frame": protocol.Frame(header("head", 7, 1_764_331_200_033_333_333, 7), bytes.fromhex("ffd8ffe000104a46494600ffd9")),
    "event_start": protocol.Event(header("events", 0, 1_764_331_200_000_000_000), {"kind": "start", "task": "pick the cup", "operator": "op-7"}),
    "event_stop": protocol.Event(
        header("events", 1, 1_764_331_210_000_000_000),
        {"kind": "stop", "outcome": "success", "last_seq": {"joint_state": 199, "head": 299, "events": 1}},
    ),
    "clock": protocol.ClockSample(header("clock", 0, 1_764_331_200_000_000_000), 100, 250, 260, 400),
}


def main() -> None:
    for name, record in VECTORS.items():
        frames = record.encode()
        doc = {"frames_hex": [f.hex() for f in frames], "record": record_to_json(record)}
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(VECTORS)} vectors to {HERE}")


if __name__ == "__main__":
    main()

"""What the metrics cost: per message, and per scrape, measured in the same run.

    python -m tools.bench_metrics [--messages 200000] [--robots 64,1024]

Per message: the two counter calls the ingest makes for every data message
(``RobotCounters.received`` and ``accepted_message``) against the baseline of
``protocol.decode`` of the same message, which the ingest does for every
message anyway; printed as ns per message and their ratio. Per scrape: a full
``/metrics`` exposition and a ``/fleet.json`` of an ingest tracking N robots.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client import generate_latest

from pipeline import protocol
from pipeline.ingest import IngestConfig, IngestServer
from pipeline.observability.ingest_counters import RobotCounters
from pipeline.observability.metrics import IngestMetrics, ingest_snapshot

STREAMS = ("joint_state", "action", "head_left", "head_right", "wrist_left", "clock")


def messages() -> list[list[bytes]]:
    """A G1-like mix: a joint batch (25 rows x 87 columns), an action batch, a 60 KB frame."""
    rows = np.arange(25, dtype=np.int64)
    joint = protocol.Samples.build("g1-01", "ep", "joint_state", 1, rows + 10**18, rows, np.zeros((25, 87)))
    action = protocol.Samples.build("g1-01", "ep", "action", 1, rows[:3] + 10**18, rows[:3], np.zeros((3, 29)))
    frame = protocol.Frame(protocol.DataHeader("g1-01", "ep", "head_left", 1, 10**18), b"\xff\xd8" + bytes(60_000))
    return [joint.encode(), action.encode(), frame.encode()]


def per_message(n: int) -> tuple[float, float]:
    encoded = messages()
    decoded = [(protocol.peek_opcode(m), protocol.decode(m)) for m in encoded]
    sizes = [sum(len(f) for f in m) for m in encoded]
    counters = RobotCounters("g1-01", "unitree_g1")
    rounds = n // len(encoded)
    start = time.perf_counter()
    for _ in range(rounds):
        for m in encoded:
            protocol.decode(m)
    decode_ns = (time.perf_counter() - start) / (rounds * len(encoded)) * 1e9
    start = time.perf_counter()
    for _ in range(rounds):
        for (opcode, record), size in zip(decoded, sizes):
            counters.received(size)
            counters.accepted_message(opcode, record.header, record, size)
    count_ns = (time.perf_counter() - start) / (rounds * len(encoded)) * 1e9
    return decode_ns, count_ns


def per_scrape(robots: int, repeats: int = 5) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        server = IngestServer(IngestConfig(data_dir=Path(tmp), allow_plain=True))
        for n in range(robots):
            c = server.counters.robot(f"g1-{n:04d}", "unitree_g1")
            for stream in STREAMS:
                c.accepted[stream] = c.accepted_bytes[stream] = c.frames[stream] = c.samples[stream] = n
        server.counters.registry.register(IngestMetrics(server))
        start = time.perf_counter()
        for _ in range(repeats):
            text = generate_latest(server.counters.registry)
        scrape_ms = (time.perf_counter() - start) / repeats * 1000
        start = time.perf_counter()
        for _ in range(repeats):
            json.dumps(ingest_snapshot(server))
        fleet_ms = (time.perf_counter() - start) / repeats * 1000
        return scrape_ms, fleet_ms, len(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--robots", default="64,1024")
    args = parser.parse_args()
    decode_ns, count_ns = per_message(args.messages)
    print(f"per message: decode (baseline, done anyway) {decode_ns:,.0f} ns, counters {count_ns:,.0f} ns, "
          f"ratio counters/decode {count_ns / decode_ns:.2f}")
    for robots in (int(r) for r in args.robots.split(",")):
        scrape_ms, fleet_ms, size = per_scrape(robots)
        print(f"{robots:>5} robots: /metrics {scrape_ms:,.1f} ms ({size / 1e3:,.0f} kB), /fleet.json {fleet_ms:,.1f} ms")


if __name__ == "__main__":
    main()

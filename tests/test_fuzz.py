"""Fuzzing the ingest: 10,000 random and mutated messages from an authenticated
session never crash it, never corrupt an episode, never write outside its data dir."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import zmq

from pipeline import protocol
from pipeline.raw_store import RawEpisodeReader, verify_episode
from tests.conftest import record_episode

ROBOT = "tiny-fuzz"


def valid_messages(rng: random.Random) -> list[list[bytes]]:
    header = lambda stream, seq: protocol.DataHeader(ROBOT, "ep-fuzz", stream, seq, 1_000 + seq)  # noqa: E731
    return [
        protocol.Samples.build(ROBOT, "ep-fuzz", "joint_state", 0, np.array([1, 2]), np.array([0, 1]), np.ones((2, 18))).encode(),
        protocol.Frame(header("head_left", 0), b"\xff\xd8" + bytes(rng.getrandbits(8) for _ in range(64))).encode(),
        protocol.Event(header("events", 0), {"kind": "start", "task": "fuzz"}).encode(),
        protocol.ClockSample(header("clock", 0), 1, 2, 3, 4).encode(),
        protocol.TimeRequest(5).encode(),
    ]


def mutate(frames: list[bytes], rng: random.Random) -> list[bytes]:
    frames = [bytearray(f) for f in frames]
    kind = rng.randrange(7)
    target = rng.randrange(len(frames))
    data = frames[target]
    if kind == 0 and data:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data) + 1):]
    elif kind == 2:  # extend
        data.extend(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    elif kind == 3:  # drop or add a frame
        if len(frames) > 1 and rng.random() < 0.5:
            frames.pop()
        else:
            frames.append(bytearray(b"extra"))
    elif kind == 4:  # path-like ids
        for bad in (b"../x", b"/etc", b"..", b"a/../../b"):
            data[:] = data.replace(b"ep-fuzz", bad) if rng.random() < 0.5 else data.replace(ROBOT.encode(), bad)
    elif kind == 5:  # other version or opcode
        if len(data) >= 4:
            data[2 + rng.randrange(2)] = rng.getrandbits(8)
    else:  # an out-of-order sequence number
        if len(data) >= 12:
            data[4:12] = rng.getrandbits(64).to_bytes(8, "little")
    return [bytes(f) for f in frames]


def test_ten_thousand_bad_messages(ingest, make_collector, tiny_robot, tmp_path: Path) -> None:
    rng = random.Random(1234)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ingest.endpoint)
    sock.send_multipart(protocol.Hello(ROBOT, tiny_robot.model, tiny_robot.digest, tiny_robot.to_dict()).encode())
    assert sock.poll(5000) and isinstance(protocol.decode(sock.recv_multipart()), protocol.Welcome)
    base = valid_messages(rng)
    sent = 0
    for i in range(10_000):
        if i % 3 == 0:
            frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80))) for _ in range(rng.randint(1, 3))]
        else:
            frames = mutate(rng.choice(base), rng)
        sock.send_multipart(frames)
        sent += 1
        if i % 500 == 0:  # read replies so our queue stays small
            while sock.poll(0):
                sock.recv_multipart()
    stats = ingest.server.stats
    deadline = time.monotonic() + 30
    while stats.messages < sent + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.messages >= sent + 1  # the hello and every fuzz case were handled
    assert stats.malformed > 5_000
    # Still serving: a good collector records a good episode.
    c = make_collector(ingest.endpoint)
    c.start()
    record_episode(c, 0.3)
    assert c.drain(30)
    good = ingest.data_dir / "raw" / "tiny-0"
    (path,) = good.glob("*.h5")
    assert verify_episode(path).ok
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "complete"
    # Nothing was written outside the ingest's data directory.
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(ingest.data_dir) and not p.is_relative_to(tmp_path / "spool")]
    assert outside == [], outside
    for p in ingest.data_dir.rglob("*"):
        assert p.resolve().is_relative_to(ingest.data_dir.resolve())
    ctx.destroy()

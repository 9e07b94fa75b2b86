"""Fuzzing the ingest: 10,000 random and mutated messages, and 20,000 grammar-aware
cases (valid framing, hostile JSON and shapes) beside an honest collector, never
crash it, never corrupt an episode, never write outside its data dir, and leave
the honest collector's episode exact."""

from __future__ import annotations

import json
import random
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import zmq
import zmq.auth

from collectors.drivers.sim import SimHumanoid
from pipeline import protocol
from pipeline.auth import ClientKeys, ServerKeys, make_key_pair
from pipeline.raw_store import RawEpisodeReader, verify_episode
from pipeline.robot_config import RobotConfig
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


# ------------------------------------------------------------------ grammar-aware fuzzing (issue 10)


def _nested(rng: random.Random, depth: int) -> object:
    value: object = rng.choice([0, "x", None, True, 1.5])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


HOSTILE_TEXT = ["a\x00b", "\x07bell", "line\nbreak", "tab\there", "\x1b[2J", "\u2028", "ok", "", "x" * 5000,
                "é", "\x7f", "café\u0000"]


def hostile_value(rng: random.Random) -> object:
    """A JSON value of a shape a field does not expect."""
    kind = rng.randrange(10)
    if kind == 0:
        return _nested(rng, rng.choice([5, 31, 33, 200]))
    if kind == 1:
        return rng.choice([10**30, -(10**30), 2**63, 2**64 + 1, -1, 1e308, -0.0])
    if kind == 2:
        return rng.choice(HOSTILE_TEXT)
    if kind == 3:
        return [rng.choice(HOSTILE_TEXT) for _ in range(rng.randint(0, 4))]
    if kind == 4:
        return {rng.choice(HOSTILE_TEXT): rng.random()}
    if kind == 5:
        return rng.choice([True, False, None])
    if kind == 6:
        return rng.uniform(-1e6, 1e6)
    if kind == 7:
        return rng.randint(-5, 5)
    if kind == 8:
        return "x" * rng.choice([1, 999, 1000, 1001, 20_000])
    return {}


def raw_json(rng: random.Random, obj: dict) -> bytes:
    """JSON text of ``obj``, sometimes with bytes no encoder would write."""
    body = json.dumps(obj).encode()
    twist = rng.randrange(8)
    if twist == 0:
        return body.replace(b"}", b"," + b'"deep":' + b"[" * rng.choice([40, 1000, 30_000]) + b"}", 1)
    if twist == 1:
        return body.replace(b"}", b',"big":' + b"9" * rng.choice([20, 4300, 5000]) + b"}", 1)
    if twist == 2:
        return body.replace(b"}", b',"nan":' + rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]) + b"}", 1)
    if twist == 3:
        return body[: rng.randrange(len(body) + 1)]
    if twist == 4:
        return body.replace(b'"', b"'", 1)
    if twist == 5:
        return b"\xef\xbb\xbf" + body  # a byte-order mark
    return body


class GrammarFuzzer:
    """Messages with valid framing (magic, version, opcode, data header) and hostile content."""

    def __init__(self, rng: random.Random, robot: RobotConfig, robots: list[str], victim: str) -> None:
        self.rng = rng
        self.robot = robot
        self.robots = robots
        self.victim = victim  # the honest robot's id: claiming it must never work
        self.seq: dict[tuple[str, str, str], int] = {}
        self.cameras = [c.name for c in robot.cameras]

    def robot_id(self) -> str:
        return self.rng.choice(self.robots * 8 + [self.victim])

    def next_seq(self, robot_id: str, episode: str, stream: str) -> int:
        key = (robot_id, episode, stream)
        r = self.rng.random()
        if r < 0.7:
            seq = self.seq.get(key, 0)
            self.seq[key] = seq + 1
            return seq
        if r < 0.85:
            return max(0, self.seq.get(key, 0) - self.rng.randint(1, 3))
        return self.rng.choice([self.seq.get(key, 0) + self.rng.randint(1, 50), 2**63 - 1, 2**64 - 1])

    def header(self, opcode: protocol.Opcode, stream: str, rows: int = 0, cols: int = 0) -> bytes:
        robot_id = self.robot_id()
        episode = f"fz-{self.rng.randrange(6)}"
        seq = self.next_seq(robot_id, episode, stream)
        capture = self.rng.choice([1_000, 0, -1, 2**63 - 1, -(2**63), self.rng.getrandbits(62)])
        return protocol.DataHeader(robot_id, episode, stream, seq, capture, self.rng.getrandbits(40),
                                   rows, cols).pack(opcode)

    def hello(self) -> list[bytes]:
        obj = {
            "robot_id": self.robot_id(), "model": self.robot.model, "config_digest": self.robot.digest,
            "config": self.robot.to_dict(), "software": "fuzz", "protocol_version": 1, "pending": ["fz-0", "fz-1"],
        }
        field = self.rng.choice(list(obj) + ["extra"])
        if self.rng.random() < 0.8:
            obj[field] = hostile_value(self.rng)
        if self.rng.random() < 0.3:
            config = obj["config"] if isinstance(obj["config"], dict) else {}
            if config:
                target = self.rng.choice(["joints", "cameras", "streams", "model"])
                config[target] = hostile_value(self.rng)
        return [b"RF\x01\x01" + raw_json(self.rng, obj)]

    def event(self) -> list[bytes]:
        kind = self.rng.choice(["start", "stop", "task", "label", "pause", "resume", "bogus", 5, None])
        body: dict = {"kind": kind}
        for name in self.rng.sample(["task", "operator", "text", "outcome", "reason", "refused", "t0_ns"],
                                    self.rng.randint(0, 3)):
            body[name] = hostile_value(self.rng) if self.rng.random() < 0.7 else "fine text"
        if kind == "stop":
            body["last_seq"] = self.rng.choice([
                {"events": self.rng.randint(-2, 5)}, {"joint_state": hostile_value(self.rng)}, hostile_value(self.rng),
                {s: self.rng.randint(0, 3) for s in ("events", "joint_state", *self.cameras)},
            ])
        stream = "events" if self.rng.random() < 0.9 else self.rng.choice(["joint_state", "clock", self.cameras[0]])
        return [self.header(protocol.Opcode.EVENT, stream), raw_json(self.rng, body)]

    def samples(self) -> list[bytes]:
        dof = self.robot.dof
        stream, cols = self.rng.choice([("joint_state", 3 * dof), ("action", dof), ("joint_state", dof),
                                        ("action", 3 * dof), (self.cameras[0], 3 * dof), ("events", 1)])
        cols = cols if self.rng.random() < 0.6 else self.rng.choice([0, 1, cols + 1, cols - 1, 65535])
        rows = self.rng.choice([1, 2, 10, 0, 65535])
        payload_rows = rows if self.rng.random() < 0.8 else self.rng.randint(0, 12)
        count = min(max(0, payload_rows * max(cols, 0)), 250_000)
        values = np.full(count, self.rng.choice([0.5, np.nan, np.inf, -1e308]), dtype="<f8")
        payload = np.arange(payload_rows, dtype="<i8").tobytes() * 2 + values.tobytes()
        return [self.header(protocol.Opcode.SAMPLES, stream, rows, cols), payload]

    def frame(self) -> list[bytes]:
        stream = self.rng.choice(self.cameras * 3 + ["joint_state", "events", "nocam"])
        payload = self.rng.choice([b"\xff\xd8" + bytes(self.rng.randrange(200)), b"", b"GIF89a", b"\xff\xd8"])
        return [self.header(protocol.Opcode.FRAME, stream), payload]

    def clock(self) -> list[bytes]:
        stream = "clock" if self.rng.random() < 0.8 else "events"
        payload = struct.pack("<4q", *(self.rng.getrandbits(63) for _ in range(4)))
        return [self.header(protocol.Opcode.CLOCK, stream), payload[: self.rng.choice([32, 32, 31, 0])]]

    def screened_event(self) -> list[bytes]:
        """A well-formed event on the fuzzer's own episode whose text fields are hostile:
        accepted with the fields refused; every 50th closes the episode."""
        episode = f"fz-text-{self.text_episode}"
        seq = self.seq.get(("fuzz-a", episode, "events"), 0)
        self.seq[("fuzz-a", episode, "events")] = seq + 1
        if seq == 49:
            body: dict = {"kind": "stop", "outcome": self.shallow_hostile(), "last_seq": {"events": seq}}
            self.text_episode += 1
        else:
            body = {"kind": self.rng.choice(["start", "task", "label"])}
            for name in self.rng.sample(["task", "operator", "text", "reason", "refused"], self.rng.randint(1, 3)):
                body[name] = self.shallow_hostile()
        header = protocol.DataHeader("fuzz-a", episode, "events", seq, 1_000 + seq)
        return [header.pack(protocol.Opcode.EVENT), json.dumps(body).encode()]

    text_episode = 0

    def shallow_hostile(self) -> object:
        """A hostile value for a text field that still leaves the event well formed."""
        return self.rng.choice([
            self.rng.choice(HOSTILE_TEXT), _nested(self.rng, 3), 10**30, -1.5e308, None, True, [], {"a": "\x00"},
            "x" * self.rng.choice([999, 1000, 1001, 30_000]), "fine text", "ünïcödé ok",
        ])

    def case(self) -> list[bytes]:
        kind = self.rng.random()
        if kind < 0.15:
            return self.screened_event()
        kind = self.rng.random()
        if kind < 0.12:
            return self.hello()
        if kind < 0.50:
            return self.event()
        if kind < 0.75:
            return self.samples()
        if kind < 0.90:
            return self.frame()
        return self.clock()


def test_twenty_thousand_grammar_cases_beside_an_honest_collector(start_ingest, make_collector, tiny_robot,
                                                                   tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    for name in ("ingest", "tiny-0", "fuzzer"):
        make_key_pair(keydir, name)
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(keydir / "tiny-0.key", allow / "tiny-0.key")
    (allow / "allow.yaml").write_text("fuzz-a: [" + str(keydir / "fuzzer.key") + "]\n"
                                      "fuzz-b: [" + str(keydir / "fuzzer.key") + "]\n")
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keydir / "ingest.key_secret", allow))
    honest = make_collector(ingest.endpoint, robot_id="tiny-0", allow_plain=False,
                            keys=ClientKeys(keydir / "tiny-0.key_secret", keydir / "ingest.key"))
    honest.start()
    episode = honest.start_episode(task="stay exact", operator="op-1")

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(str(keydir / "fuzzer.key_secret"))
    sock.curve_serverkey = zmq.auth.load_certificate(str(keydir / "ingest.key"))[0]
    sock.connect(ingest.endpoint)
    sock.send_multipart(protocol.Hello("fuzz-a", tiny_robot.model, tiny_robot.digest, tiny_robot.to_dict()).encode())
    assert sock.poll(5000) and isinstance(protocol.decode(sock.recv_multipart()), protocol.Welcome)
    claim = protocol.Hello("tiny-0", tiny_robot.model, tiny_robot.digest, tiny_robot.to_dict()).encode()
    sock.send_multipart(claim)  # another robot's id: refused, and the fuzzer's session stays fuzz-a
    assert sock.poll(5000) and isinstance(protocol.decode(sock.recv_multipart()), protocol.Refuse)
    fuzzer = GrammarFuzzer(random.Random(2026), tiny_robot, ["fuzz-a"], victim="tiny-0")
    cases = 20_000
    started = time.monotonic()
    for i in range(cases):
        sock.send_multipart(fuzzer.case())
        if i % 200 == 0:
            while sock.poll(0):
                sock.recv_multipart()
    stats = ingest.server.stats
    deadline = time.monotonic() + 60
    while stats.messages < cases and time.monotonic() < deadline:  # the honest collector's messages count too
        time.sleep(0.05)
    fuzz_seconds = time.monotonic() - started
    honest.stop_episode("success")
    assert honest.drain(60), "the honest collector's episode was not sealed"
    assert ingest.thread.is_alive()
    print(f"{cases} grammar cases in {fuzz_seconds:.1f} s: malformed {stats.malformed}, "
          f"refused fields {stats.refused_fields}, identity refused {stats.identity_refused}, "
          f"quarantined {stats.quarantined}, accepted {stats.accepted}")
    assert stats.malformed > cases // 4
    assert stats.refused_fields > 100  # hostile text in well-formed events: refused field by field
    assert stats.identity_refused > 0  # the fuzzer claimed tiny-0 and was refused
    from tests.test_collection import assert_episode_matches_sim

    path = ingest.data_dir / "raw" / "tiny-0" / f"{episode}.h5"
    assert_episode_matches_sim(path, SimHumanoid(tiny_robot, seed=0), tiny_robot)
    assert verify_episode(path).ok
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["producer_key"] == zmq.auth.load_certificate(str(keydir / "tiny-0.key"))[0].decode()
        assert [e["kind"] for e in ep.events()] == ["start", "stop"]
    for other in (ingest.data_dir / "raw").rglob("*.h5"):
        assert verify_episode(other).ok, other
    screened = sorted((ingest.data_dir / "raw" / "fuzz-a").glob("fz-text-*.h5"))
    assert screened, "no episode with refused text fields was sealed"
    with RawEpisodeReader(screened[0]) as ep:
        assert any("refused" in e for e in ep.events())
    assert not list((ingest.data_dir / "raw" / "tiny-0").glob("fz-*"))
    for p in ingest.data_dir.rglob("*"):
        assert p.resolve().is_relative_to(ingest.data_dir.resolve())
    ctx.destroy()

"""CURVE authentication: only collectors whose public key is on the allow-list get in."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pipeline import protocol
from pipeline.auth import ClientKeys, ServerKeys, make_key_pair
from pipeline.errors import ConfigError, HandshakeRefused
from pipeline.ingest import IngestConfig, IngestServer
from pipeline.raw_store import RawEpisodeReader
from tests.conftest import record_episode


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    keydir = tmp_path / "keys"
    make_key_pair(keydir, "ingest")
    make_key_pair(keydir, "robot-a")
    make_key_pair(keydir, "robot-b")
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(keydir / "robot-a.key", allow / "robot-a.key")
    return {"dir": keydir, "allow": allow}


def test_allowed_collector_records_over_curve(start_ingest, make_collector, keys) -> None:
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(
        ingest.endpoint, robot_id="robot-a", allow_plain=False,
        keys=ClientKeys(keys["dir"] / "robot-a.key_secret", keys["dir"] / "ingest.key"),
    )
    c.start()
    record_episode(c, 0.3)
    assert c.drain(20)
    (path,) = ingest.raw_files()
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "complete"


def test_unknown_key_is_refused_and_logged(start_ingest, make_collector, keys, caplog) -> None:
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(
        ingest.endpoint, allow_plain=False,
        keys=ClientKeys(keys["dir"] / "robot-b.key_secret", keys["dir"] / "ingest.key"),
    )
    c.start()
    record_episode(c, 0.2)
    with pytest.raises(HandshakeRefused, match="CURVE key"):
        c.drain(10)
    assert ingest.raw_files() == []
    assert any("refused a collector" in r.getMessage() for r in caplog.records)


def test_plain_collector_cannot_reach_a_curve_ingest(start_ingest, make_collector, keys) -> None:
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(ingest.endpoint, hello_timeout_s=0.3)
    c.start()
    record_episode(c, 0.2)
    assert not c.drain(2)
    assert ingest.server.status()["collectors"] == 0
    assert c.spool.unacked() > 0  # kept, not lost


def test_ingest_without_keys_needs_the_explicit_plain_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--plain"):
        IngestServer(IngestConfig(data_dir=tmp_path))


def test_a_public_key_is_not_accepted_as_a_secret(tmp_path: Path, keys) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    with pytest.raises(ConfigError, match="public key"):
        ClientKeys(keys["dir"] / "robot-a.key", keys["dir"] / "ingest.key").apply(sock)
    sock.close(0)
    ctx.term()


# ------------------------------------------------------------------ a robot id belongs to its key


def z85_public(path: Path) -> str:
    import zmq.auth

    return zmq.auth.load_certificate(str(path))[0].decode()


class CurvePeer:
    """A hand-driven collector over CURVE."""

    def __init__(self, endpoint: str, keydir: Path, name: str) -> None:
        import zmq
        import zmq.auth

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)
        public, secret = zmq.auth.load_certificate(str(keydir / f"{name}.key_secret"))
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.curve_serverkey = zmq.auth.load_certificate(str(keydir / "ingest.key"))[0]
        self.sock.connect(endpoint)

    def request(self, frames: list[bytes], timeout_ms: int = 5000):  # noqa: ANN201
        self.sock.send_multipart(frames)
        return self.reply(timeout_ms)

    def reply(self, timeout_ms: int = 5000):  # noqa: ANN201
        assert self.sock.poll(timeout_ms), "no reply from the ingest"
        return protocol.decode(self.sock.recv_multipart())

    def close(self) -> None:
        self.ctx.destroy(0)


def hello(robot, robot_id: str) -> list[bytes]:  # noqa: ANN001
    return protocol.Hello(robot_id, robot.model, robot.digest, robot.to_dict()).encode()


@pytest.fixture
def two_robots(keys, start_ingest):  # noqa: ANN001, ANN201
    shutil.copy(keys["dir"] / "robot-b.key", keys["allow"] / "robot-b.key")
    return start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))


def test_a_key_claiming_another_robot_id_is_refused(two_robots, make_collector, keys, caplog) -> None:
    c = make_collector(
        two_robots.endpoint, robot_id="robot-a", allow_plain=False,
        keys=ClientKeys(keys["dir"] / "robot-b.key_secret", keys["dir"] / "ingest.key"),
    )
    c.start()
    record_episode(c, 0.2)
    with pytest.raises(HandshakeRefused, match="may not use robot id 'robot-a'"):
        c.drain(10)
    assert two_robots.raw_files() == []
    assert two_robots.server.stats.identity_refused >= 1
    key_b = z85_public(keys["dir"] / "robot-b.key")
    assert any(key_b in r.getMessage() and "robot-a" in r.getMessage() for r in caplog.records)


def test_a_foreign_key_learns_nothing_of_an_open_episode(two_robots, keys, tiny_robot) -> None:
    real = CurvePeer(two_robots.endpoint, keys["dir"], "robot-a")
    forger = CurvePeer(two_robots.endpoint, keys["dir"], "robot-b")
    try:
        assert isinstance(real.request(hello(tiny_robot, "robot-a")), protocol.Welcome)
        start = protocol.Event(protocol.DataHeader("robot-a", "ep-a", "events", 0, 1), {"kind": "start", "task": "t"})
        real.sock.send_multipart(start.encode())
        assert isinstance(real.reply(), protocol.Ack)
        answer = forger.request(hello(tiny_robot, "robot-a"))
        assert isinstance(answer, protocol.Refuse) and "may not use robot id" in answer.reason
        # Forged data naming robot-a's episode on the forger's own session is refused too.
        assert isinstance(forger.request(hello(tiny_robot, "robot-b")), protocol.Welcome)
        forged = protocol.Event(protocol.DataHeader("robot-a", "ep-a", "events", 1, 2), {"kind": "label", "text": "x"})
        forger.sock.send_multipart(forged.encode())
        time.sleep(0.3)
        journal = two_robots.server.journals[("robot-a", "ep-a")]
        assert journal.next_seq == {"events": 1}
    finally:
        real.close()
        forger.close()


def test_the_same_key_reconnecting_takes_over_its_session(two_robots, keys, tiny_robot) -> None:
    first = CurvePeer(two_robots.endpoint, keys["dir"], "robot-a")
    second = CurvePeer(two_robots.endpoint, keys["dir"], "robot-a")
    try:
        first.request(hello(tiny_robot, "robot-a"))
        start = protocol.Event(protocol.DataHeader("robot-a", "ep-a", "events", 0, 1), {"kind": "start", "task": "t"})
        first.sock.send_multipart(start.encode())
        assert isinstance(first.reply(), protocol.Ack)
        welcome = second.request(hello(tiny_robot, "robot-a"))  # a restarted collector: new connection
        assert isinstance(welcome, protocol.Welcome) and welcome.acked == {"ep-a": {"events": 0}}
    finally:
        first.close()
        second.close()


def test_the_key_is_checked_on_every_message(tmp_path: Path, tiny_robot) -> None:
    import zmq

    server = IngestServer(IngestConfig(data_dir=tmp_path / "d", allow_plain=True))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    try:
        server._handle(sock, b"peer-1", "KEY-A", hello(tiny_robot, "tiny-0"))
        assert b"peer-1" in server.sessions
        start = protocol.Event(protocol.DataHeader("tiny-0", "ep-1", "events", 0, 1), {"kind": "start"})
        server._handle(sock, b"peer-1", "KEY-B", start.encode())  # same connection id, another key
        assert server.stats.identity_refused == 1 and server.journals == {}
        server._handle(sock, b"peer-1", "KEY-A", start.encode())
        assert ("tiny-0", "ep-1") in server.journals
    finally:
        for journal in server.journals.values():
            journal.close()
        sock.close(0)
        ctx.term()


def test_sealed_file_names_the_key_that_produced_it(start_ingest, make_collector, keys, capsys) -> None:
    from pipeline import cli

    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(
        ingest.endpoint, robot_id="robot-a", allow_plain=False,
        keys=ClientKeys(keys["dir"] / "robot-a.key_secret", keys["dir"] / "ingest.key"),
    )
    c.start()
    record_episode(c, 0.3)
    assert c.drain(20)
    (path,) = ingest.raw_files()
    key_a = z85_public(keys["dir"] / "robot-a.key")
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["producer_key"] == key_a
    assert cli.main(["verify", str(ingest.data_dir)]) == 0
    assert key_a in capsys.readouterr().out


def test_producer_key_is_covered_by_the_checksum(start_ingest, make_collector, keys) -> None:
    import h5py

    from pipeline.raw_store import verify_episode

    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(
        ingest.endpoint, robot_id="robot-a", allow_plain=False,
        keys=ClientKeys(keys["dir"] / "robot-a.key_secret", keys["dir"] / "ingest.key"),
    )
    c.start()
    record_episode(c, 0.2)
    assert c.drain(20)
    (path,) = ingest.raw_files()
    with h5py.File(path, "r+") as h5:
        h5.attrs["producer_key"] = z85_public(keys["dir"] / "robot-b.key")
    assert not verify_episode(path).ok


def test_allow_yaml_maps_robot_ids_to_key_files_and_z85_keys(tmp_path: Path, keys, start_ingest, tiny_robot) -> None:
    import yaml

    allow = tmp_path / "allow2"
    allow.mkdir()
    shutil.copy(keys["dir"] / "robot-a.key", allow / "operator-laptop.key")
    (allow / "allow.yaml").write_text(yaml.safe_dump({
        "g1-01": ["operator-laptop.key"],
        "g1-02": [z85_public(keys["dir"] / "robot-b.key")],
    }))
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", allow))
    a = CurvePeer(ingest.endpoint, keys["dir"], "robot-a")
    b = CurvePeer(ingest.endpoint, keys["dir"], "robot-b")
    try:
        assert isinstance(a.request(hello(tiny_robot, "g1-01")), protocol.Welcome)
        assert isinstance(b.request(hello(tiny_robot, "g1-02")), protocol.Welcome)
        assert isinstance(b.request(hello(tiny_robot, "g1-01")), protocol.Refuse)
    finally:
        a.close()
        b.close()


def test_malformed_allow_yaml_is_rejected_at_start(tmp_path: Path, keys) -> None:
    from pipeline.auth import AllowList

    (keys["allow"] / "allow.yaml").write_text("g1-01: [not-a-file.key]\n")
    with pytest.raises(ConfigError, match="not-a-file.key"):
        AllowList.load(keys["allow"])


def test_refinery_keys_writes_the_allow_list(tmp_path: Path) -> None:
    from pipeline import cli

    assert cli.main(["keys", str(tmp_path / "k"), "g1-01", "--allow", str(tmp_path / "allow")]) == 0
    assert (tmp_path / "allow" / "g1-01.key").read_bytes() == (tmp_path / "k" / "g1-01.key").read_bytes()
    from pipeline.auth import AllowList

    allow = AllowList.load(tmp_path / "allow")
    assert allow.may_use(z85_public(tmp_path / "k" / "g1-01.key"), "g1-01")

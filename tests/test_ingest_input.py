"""The ingest against bad peers: wrong versions, bad configs, garbage. It refuses
or drops, says why, and keeps serving good collectors."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import zmq

from pipeline import protocol
from pipeline.protocol.framing import refusal_reason
from tests.conftest import TINY_ROBOT, record_episode


def raw_dealer(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return ctx, sock


def hello_for(robot, robot_id: str = "tiny-x") -> protocol.Hello:
    return protocol.Hello(robot_id, robot.model, robot.digest, robot.to_dict())


def reply(sock: zmq.Socket, timeout_ms: int = 5000) -> list[bytes]:
    assert sock.poll(timeout_ms), "no reply from the ingest"
    return sock.recv_multipart()


def test_wrong_protocol_version_is_refused_with_the_reason(ingest, tiny_robot) -> None:
    ctx, sock = raw_dealer(ingest.endpoint)
    frames = hello_for(tiny_robot).encode()
    frames[0] = b"RF\x07" + frames[0][3:]
    sock.send_multipart(frames)
    reason = refusal_reason(reply(sock))
    assert reason is not None and "version 7" in reason and "version 1" in reason
    assert ingest.server.stats.refused == 1
    ctx.destroy()


def test_collector_of_another_version_exits_with_the_ingest_reason(ingest, tmp_path) -> None:
    # A real collector process whose protocol version is 2.
    script = (
        "import sys, pipeline.protocol.records as r; r.PROTOCOL_VERSION = 2; "
        "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "collect", "--robot", str(TINY_ROBOT), "--robot-id", "old-1",
         "--ingest", ingest.endpoint, "--plain", "--spool", str(tmp_path / "spool"), "--episodes", "1",
         "--duration", "0.5", "--drain-timeout", "5"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert "refused" in result.stderr and "protocol version 2" in result.stderr
    assert ingest.server.stats.refused >= 1


def test_config_digest_mismatch_is_refused(ingest, tiny_robot) -> None:
    ctx, sock = raw_dealer(ingest.endpoint)
    hello = protocol.Hello("tiny-x", tiny_robot.model, "0" * 64, tiny_robot.to_dict())
    sock.send_multipart(hello.encode())
    reason = refusal_reason(reply(sock))
    assert reason is not None and "digest mismatch" in reason
    ctx.destroy()


def test_invalid_robot_config_is_refused_naming_the_field(ingest, tiny_robot) -> None:
    ctx, sock = raw_dealer(ingest.endpoint)
    config = tiny_robot.to_dict()
    config["joints"][0]["position"] = [1.0, -1.0]
    sock.send_multipart(protocol.Hello("tiny-x", tiny_robot.model, tiny_robot.digest, config).encode())
    reason = refusal_reason(reply(sock))
    assert reason is not None and "position" in reason
    ctx.destroy()


def test_data_before_handshake_is_answered_with_a_notice(ingest) -> None:
    ctx, sock = raw_dealer(ingest.endpoint)
    header = protocol.DataHeader("tiny-x", "ep-1", "head", 0, 0)
    sock.send_multipart(protocol.Frame(header, b"\xff\xd8\xff\xd9").encode())
    notice = protocol.decode(reply(sock))
    assert isinstance(notice, protocol.Notice) and "HELLO" in notice.message
    assert not any(p.is_file() for p in (ingest.data_dir / "journal").rglob("*"))  # nothing journaled
    ctx.destroy()


def test_garbage_does_not_stop_the_ingest_or_touch_episodes(ingest, make_collector, tiny_robot) -> None:
    ctx, sock = raw_dealer(ingest.endpoint)
    sock.send_multipart(hello_for(tiny_robot, "tiny-g").encode())
    assert isinstance(protocol.decode(reply(sock)), protocol.Welcome)
    garbage = [
        [b""], [b"RF"], [b"RF\x01\x04" + b"\xff" * 40], [b"\x00" * 100, b"x"], [b"RF\x01\x02{}"],
        [protocol.DataHeader("tiny-g", "ep", "head", 0, 0).pack(protocol.Opcode.FRAME), b"not a jpeg"],
        [protocol.DataHeader("other-robot", "ep", "head", 0, 0).pack(protocol.Opcode.FRAME), b"\xff\xd8"],
    ]
    for frames in garbage:
        sock.send_multipart(frames)
    c = make_collector(ingest.endpoint)
    c.start()
    record_episode(c, 0.3)
    assert c.drain(20)
    assert len(ingest.raw_files()) == 1
    deadline = time.monotonic() + 5
    while ingest.server.stats.malformed < len(garbage) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ingest.server.stats.malformed == len(garbage)
    ctx.destroy()

"""The ingest's receive path: a burst of messages is received as a batch before any
is handled (issue 16). Nothing may change but the CPU it costs: every message is
handled in its order, large payloads received without a copy stay intact until
they are journaled, and a malformed message in the burst costs only itself."""

from __future__ import annotations

from pipeline import protocol
from pipeline.ingest import RECEIVE_BATCH, ZERO_COPY_BYTES
from pipeline.raw_store import RawEpisodeReader
from tests.test_ingest_hardening import RawPeer, wait_for


def jpeg_like(size: int, k: int) -> bytes:
    """A payload the ingest takes for a JPEG (SOI marker), distinct per frame."""
    body = bytes((k + i) % 251 for i in range(251))
    return b"\xff\xd8" + (body * (size // 251 + 1))[: size - 2]


def test_a_burst_larger_than_a_batch_is_journaled_in_order_and_intact(ingest, tiny_robot) -> None:
    peer = RawPeer(ingest.endpoint, tiny_robot, "tiny-burst", "ep-burst")
    assert isinstance(peer.hello(), protocol.Welcome)
    peer.event({"kind": "start"})
    # Above ZERO_COPY_BYTES a payload is journaled from ZeroMQ's buffer, below it from a copy.
    sizes = [ZERO_COPY_BYTES + 1000 if k % 3 == 0 else 3000 for k in range(RECEIVE_BATCH + 44)]
    payloads = [jpeg_like(size, k) for k, size in enumerate(sizes)]
    garbage = [
        [b"RF\x01\x05"],  # a FRAME header alone
        [protocol.DataHeader("tiny-burst", "ep-burst", "head_left", 0, 0).pack(protocol.Opcode.FRAME), b"\xff\xd8", b"x"],
        [b"not ours", b"\xff\xd8" + bytes(ZERO_COPY_BYTES)],
    ]
    for k, payload in enumerate(payloads):
        peer.send(protocol.Frame(peer.header("head_left", 1_000 + k), payload).encode())
        if k % 100 == 50:
            peer.send(garbage[k // 100])
    peer.samples()
    peer.stop()
    wait_for(lambda: ingest.server.stats.sealed == 1, 30, "the episode sealed")
    assert ingest.server.stats.malformed == len(garbage)
    assert ingest.server.stats.accepted == len(payloads) + 3  # + start, samples, stop
    with RawEpisodeReader(ingest.raw_files()[0]) as episode:
        assert episode.frames("head_left") == payloads


def test_a_message_reports_when_it_was_received(ingest, tiny_robot) -> None:
    peer = RawPeer(ingest.endpoint, tiny_robot, "tiny-clock", "ep-clock")
    assert isinstance(peer.hello(), protocol.Welcome)
    peer.send(protocol.TimeRequest(123).encode())
    reply = peer.wait_for(lambda r: isinstance(r, protocol.TimeReply))
    assert reply.t1_ns == 123
    assert 0 < reply.t2_ns <= reply.t3_ns  # received (t2), then answered (t3)

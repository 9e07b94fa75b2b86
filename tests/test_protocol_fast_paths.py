"""The protocol's per-message shortcuts (issue 16) give exactly what the general
path gives: the same bytes, the same records, the same refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import protocol
from pipeline.errors import ProtocolError
from pipeline.protocol.framing import data_header, peek_opcode

ids = st.text(min_size=0, max_size=12)  # any text: quotes, backslashes, controls, non-ASCII
seqs = st.integers(-(2**70), 2**70)


def json_ack(ack: protocol.Ack) -> list[bytes]:
    """ACK's bytes as the generic JSON encoder writes them (what the wire format is)."""
    body = json.dumps({"acks": [list(a) for a in ack.acks], "sealed": list(ack.sealed)},
                      separators=(",", ":"), sort_keys=True)
    return [b"RF\x01\x08" + body.encode()]


@settings(max_examples=300, deadline=None)
@given(acks=st.lists(st.tuples(ids, ids, seqs), max_size=8), sealed=st.lists(ids, max_size=3))
def test_ack_bytes_are_the_generic_json_bytes(acks: list[tuple[str, str, int]], sealed: list[str]) -> None:
    ack = protocol.Ack(tuple(acks), tuple(sealed))
    assert ack.encode() == json_ack(ack)
    assert ack.encode() == json_ack(ack)  # the second time from the memoized entry texts
    assert protocol.decode(ack.encode()) == ack


@pytest.mark.parametrize("entry", [("ep", "s", True), ("ep", "s", 1.5), (["ep"], "s", 1), ("ep", 7, 1)])
def test_ack_entries_that_are_not_text_text_int_are_encoded_as_json_does(entry: tuple) -> None:
    ack = protocol.Ack((("ep", "s", 1), entry))
    assert ack.encode() == json_ack(ack)


def data_messages() -> st.SearchStrategy[list[bytes]]:
    """Data messages, well formed or broken in any of the ways a header can be."""
    def build(opcode: protocol.Opcode, robot: str, stream: str, seq: int, rows: int, cols: int,
              payload: bytes, cut: int, extra: bytes) -> list[bytes]:
        head = protocol.DataHeader(robot, "ep-1", stream, seq, 5, 6, rows, cols).pack(opcode)
        head = head[: len(head) - cut] + extra
        return [head, payload]
    return st.builds(
        build,
        st.sampled_from([protocol.Opcode.SAMPLES, protocol.Opcode.FRAME, protocol.Opcode.CLOCK]),
        st.sampled_from(["g1-01", "g1-02", "../x", "é", ""]),
        st.sampled_from(["joint_state", "head_left", "clock"]),
        st.integers(0, 2**64 - 1),
        st.integers(0, 3),
        st.integers(0, 3),
        st.sampled_from([b"", b"\xff\xd8jpeg", bytes(32), bytes(16 + 8 * 2), bytes(3 * 16 + 3 * 3 * 8)]),
        st.sampled_from([0, 0, 0, 1, 5]),
        st.sampled_from([b"", b"", b"\x00"]),
    )


def outcome(fn, *args):  # noqa: ANN001, ANN201
    try:
        return fn(*args)
    except ProtocolError as err:
        return ("refused", str(err), err.field)


@settings(max_examples=400, deadline=None)
@given(message=data_messages())
def test_data_header_reads_what_decode_reads(message: list[bytes]) -> None:
    opcode = protocol.Opcode(message[0][3])
    decoded = outcome(lambda m: protocol.decode(m).header, message)
    assert outcome(data_header, opcode, message) == decoded
    assert outcome(data_header, opcode, message) == decoded  # the second time with the ids memoized


@settings(max_examples=400, deadline=None)
@given(head=st.one_of(
    st.binary(max_size=8),
    st.tuples(st.sampled_from([b"RF", b"XF"]), st.integers(0, 3), st.integers(0, 13), st.integers(0, 70_000))
    .map(lambda t: t[0] + bytes((t[1], t[2])) + bytes(t[3])),
))
def test_peek_opcode_answers_as_its_general_path(head: bytes) -> None:
    # A memoryview header takes the general path; bytes, the shortcut.
    assert outcome(peek_opcode, [head]) == outcome(peek_opcode, [memoryview(head)])


def test_data_header_is_still_a_frozen_value() -> None:
    header = protocol.DataHeader("g1-01", "ep-1", "head_left", 3, 10, 2, rows=1, cols=4)
    assert header == protocol.DataHeader("g1-01", "ep-1", "head_left", 3, 10, 2, 1, 4)
    assert hash(header) == hash(protocol.DataHeader("g1-01", "ep-1", "head_left", 3, 10, 2, 1, 4))
    assert protocol.DataHeader("g1-01", "ep-1", "head_left", 3, 10).cols == 0
    assert dataclasses.replace(header, seq=4).seq == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.seq = 4  # type: ignore[misc]

"""The wire protocol: pinned byte vectors, round trips, and rejection of bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import protocol
from pipeline.errors import ProtocolError
from pipeline.protocol.framing import refusal_reason
from tests.protocol_json import record_to_json

VECTORS = sorted((Path(__file__).parent / "data" / "protocol").glob("*.json"))


def load_vector(path: Path) -> tuple[list[bytes], dict]:
    doc = json.loads(path.read_text())
    return [bytes.fromhex(h) for h in doc["frames_hex"]], doc["record"]


def test_there_is_a_vector_for_every_opcode() -> None:
    opcodes = {load_vector(p)[1]["opcode"] for p in VECTORS}
    assert opcodes == {int(op) for op in protocol.Opcode}


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_decodes_to_its_expected_record(path: Path) -> None:
    frames, expected = load_vector(path)
    assert record_to_json(protocol.decode(frames)) == expected


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_decoded_vector_encodes_to_the_same_bytes(path: Path) -> None:
    frames, _ = load_vector(path)
    assert protocol.decode(frames).encode() == frames


def test_data_header_byte_layout() -> None:
    header = protocol.DataHeader("r", "e", "s", seq=2, capture_ns=-1, source_index=5, rows=3, cols=4)
    assert header.pack(protocol.Opcode.SAMPLES) == (
        b"RF"  # magic
        + b"\x01"  # protocol version 1
        + b"\x04"  # opcode SAMPLES
        + b"\x02\x00\x00\x00\x00\x00\x00\x00"  # seq = 2 (u64 LE)
        + b"\xff\xff\xff\xff\xff\xff\xff\xff"  # capture_ns = -1 (i64 LE)
        + b"\x05\x00\x00\x00\x00\x00\x00\x00"  # source_index = 5
        + b"\x03\x00"  # rows = 3
        + b"\x04\x00"  # cols = 4
        + b"\x01r"  # robot id, length-prefixed
        + b"\x01e"  # episode id
        + b"\x01s"  # stream
    )


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(0, 12),
    seq=st.integers(0, 2**63),
    data=st.data(),
)
def test_samples_round_trip_exactly(rows: int, cols: int, seq: int, data: st.DataObject) -> None:
    values = np.array(
        data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=rows * cols, max_size=rows * cols)),
        dtype=np.float64,
    ).reshape(rows, cols)
    capture = np.array(data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=rows, max_size=rows)), dtype=np.int64)
    index = np.arange(rows, dtype=np.int64)
    record = protocol.Samples.build("robot", "ep", "joint_state", seq, capture, index, values)
    back = protocol.decode(record.encode())
    assert back.header == record.header
    assert back.values.tobytes() == values.tobytes()  # bit-exact, NaN payloads included
    assert np.array_equal(back.capture_ns, capture)


@pytest.mark.parametrize(
    "frames, needle",
    [
        ([], "empty"),
        ([b"R"], "shorter"),
        ([b"XX\x01\x04"], "magic"),
        ([b"RF\x01\xee"], "unknown opcode"),
        ([b"RF\x01\x01not json"], "JSON"),
        ([b"RF\x01\x01[]"], "JSON object"),
        ([b"RF\x01\x05" + b"\x00" * 20], "header"),
    ],
)
def test_malformed_messages_raise_protocol_error(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        protocol.decode(frames)


def test_wrong_version_is_named() -> None:
    frames = protocol.Refuse("x").encode()
    frames[0] = b"RF\x02" + frames[0][3:]
    with pytest.raises(protocol.VersionMismatch, match="version 2"):
        protocol.decode(frames)


def test_refusal_is_readable_across_versions() -> None:
    frames = protocol.Refuse("go away").encode()
    frames[0] = b"RF\x09" + frames[0][3:]
    assert refusal_reason(frames) == "go away"
    assert refusal_reason(protocol.Notice("info", "x").encode()) is None


@pytest.mark.parametrize("bad_id", ["../x", "a/b", ".hidden", "", "-x", "x" * 65, "a b", "é"])
def test_path_like_ids_are_rejected(bad_id: str) -> None:
    header = protocol.DataHeader("robot", "ep", "s", 0, 0)
    raw = header.pack(protocol.Opcode.FRAME).replace(b"\x02ep", bytes((len(bad_id.encode()),)) + bad_id.encode())
    with pytest.raises(ProtocolError, match="episode_id"):
        protocol.decode([raw, b"\xff\xd8"])


def test_samples_payload_size_must_match_header() -> None:
    frames = protocol.Samples.build("r", "e", "joint_state", 0, np.array([1]), np.array([0]), np.ones((1, 3))).encode()
    with pytest.raises(ProtocolError, match="payload"):
        protocol.decode([frames[0], frames[1][:-1]])


def test_frame_payload_must_be_jpeg() -> None:
    header = protocol.DataHeader("r", "e", "head", 0, 0)
    with pytest.raises(ProtocolError, match="JPEG"):
        protocol.decode([header.pack(protocol.Opcode.FRAME), b"GIF89a"])


def test_stop_event_needs_last_seq() -> None:
    header = protocol.DataHeader("r", "e", "events", 0, 0)
    with pytest.raises(ProtocolError, match="last_seq"):
        protocol.decode([header.pack(protocol.Opcode.EVENT), b'{"kind":"stop"}'])


def test_clock_sample_offset_and_round_trip() -> None:
    header = protocol.DataHeader("r", "e", "clock", 0, 0)
    # collector clock 1000 ns behind the ingest, 200 ns each way, 50 ns at the ingest
    sample = protocol.ClockSample(header, t1_ns=0, t2_ns=1200, t3_ns=1250, t4_ns=450)
    assert sample.offset_ns == 1000
    assert sample.round_trip_ns == 400


def test_time_reply_body_size_is_checked() -> None:
    with pytest.raises(ProtocolError, match="TIME_REPLY"):
        protocol.decode([b"RF\x01\x0a" + struct.pack("<qq", 1, 2)])


def test_welcome_of_an_older_ingest_decodes_without_episode_states() -> None:
    """An ingest that predates ``Welcome.episodes`` sends none: the field decodes empty."""
    old = b"RF\x01\x02" + b'{"acked":{},"max_message_bytes":1024,"sealed":["ep-0"],"window":8}'
    welcome = protocol.decode([old])
    assert welcome.episodes == {} and welcome.sealed == ("ep-0",)


# --------------------------------------------------------------------------- validation at the door


@pytest.mark.parametrize("opening", [b"[", b"{", b'{"a":'])
def test_deep_json_is_refused_before_it_is_parsed(opening: bytes) -> None:
    body = opening * (60_000 // len(opening))
    with pytest.raises(ProtocolError, match="deeper"):
        protocol.decode([b"RF\x01\x01" + body])
    header = protocol.DataHeader("r", "e", "events", 0, 0).pack(protocol.Opcode.EVENT)
    with pytest.raises(ProtocolError, match="deeper"):
        protocol.decode([header, body])


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    header = protocol.DataHeader("r", "e", "events", 0, 0).pack(protocol.Opcode.EVENT)
    body = json.dumps({"kind": "label", "text": "[{" * 500 + '\\"'}).encode()
    assert protocol.decode([header, body]).body["text"].startswith("[{")


@pytest.mark.parametrize("body", [
    b'{"kind":"start","task":' + b"9" * 5000 + b"}",  # beyond Python's int digit limit
    b'{"kind":"start","task":NaN}',
    b'{"kind":"start","task":Infinity}',
    b'{"kind":"stop","last_seq":{"events":' + b"9" * 30 + b"}}",
    b'{"kind":"stop","last_seq":{"events":true}}',
    b'{"kind":"stop","last_seq":{"events":1.5}}',
    b'{"kind":' + b'"x' * 40_000 + b'"}',  # larger than any JSON body may be
])
def test_hostile_json_values_raise_protocol_error(body: bytes) -> None:
    header = protocol.DataHeader("r", "e", "events", 0, 0).pack(protocol.Opcode.EVENT)
    with pytest.raises(ProtocolError):
        protocol.decode([header, body])


def test_hello_pending_is_bounded_and_filtered() -> None:
    hello = protocol.Hello("r", "m", "d", {}, pending=("ep-1", "../x", "ep-2"))
    assert protocol.decode(hello.encode()).pending == ("ep-1", "ep-2")
    too_many = protocol.Hello("r", "m", "d", {}, pending=tuple(f"e{i}" for i in range(600)))
    assert protocol.decode(too_many.encode()).pending == tuple(f"e{i}" for i in range(512))  # the oldest answered


def test_event_text_fields_are_screened() -> None:
    from pipeline.protocol.validation import screen_event_body

    body = {"kind": "start", "task": "ok task", "operator": "op\x00x", "text": 5}
    clean, refused = screen_event_body(body, max_chars=100)
    assert set(refused) == {"operator", "text"} and "U+0000" in refused["operator"]
    assert clean == {"kind": "start", "task": "ok task", "refused": refused}
    long, refused = screen_event_body({"kind": "label", "text": "x" * 101}, max_chars=100)
    assert "text" not in long and "101" in refused["text"]
    same, refused = screen_event_body({"kind": "label", "text": "fine"}, max_chars=100)
    assert refused == {} and same == {"kind": "label", "text": "fine"}
    forged, refused = screen_event_body({"kind": "label", "refused": {}}, max_chars=100)
    assert "refused" in refused


def test_stream_rules_follow_the_robot_config(tiny_robot) -> None:
    from pipeline.protocol.validation import StreamRules

    rules = StreamRules.from_config(tiny_robot.to_dict())
    rules.check(protocol.Opcode.SAMPLES, "joint_state", 3 * tiny_robot.dof)
    rules.check(protocol.Opcode.SAMPLES, "action", tiny_robot.dof)
    rules.check(protocol.Opcode.FRAME, tiny_robot.cameras[0].name, 0)
    for opcode, stream, cols, needle in [
        (protocol.Opcode.SAMPLES, "joint_state", 5, "columns"),
        (protocol.Opcode.SAMPLES, "head", 18, "numeric streams"),
        (protocol.Opcode.FRAME, "joint_state", 0, "camera"),
        (protocol.Opcode.EVENT, "clock", 0, "events"),
        (protocol.Opcode.CLOCK, "events", 0, "clock"),
    ]:
        with pytest.raises(ProtocolError, match=needle):
            rules.check(opcode, stream, cols)


def test_a_welcome_answering_the_largest_hello_decodes() -> None:
    ids = tuple(f"{'g' * 60}-{i:03d}" for i in range(protocol.records.MAX_PENDING))
    hello = protocol.Hello("r" * 64, "m", "d" * 64, {}, pending=ids)
    assert protocol.decode(hello.encode()).pending == ids  # fits the 64 KB a collector may send
    welcome = protocol.Welcome(128, 1 << 25, {i: {"joint_state": 10**9} for i in ids[:16]}, ids,
                               {i: "quarantined" for i in ids})
    assert protocol.decode(welcome.encode()) == welcome

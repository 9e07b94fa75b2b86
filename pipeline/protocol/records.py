"""Protocol records: one frozen dataclass per message, each with encode/decode.

A message is a ZeroMQ multipart: frame 0 is the header, frame 1 (data
messages only) is the raw payload. The header starts with a fixed prefix::

    b"RF"   magic
    u8      protocol version
    u8      opcode

Control messages (HELLO, WELCOME, REFUSE, ACK, NOTICE) carry a UTF-8 JSON
object after the prefix. Data messages carry a fixed little-endian struct::

    u64 seq          per-stream sequence number, from 0, no gaps
    i64 capture_ns   capture time on the collector's clock (first row for SAMPLES)
    i64 source_index the driver's own sample counter (dropped frames skip it)
    u16 rows         SAMPLES: number of samples in the batch; else 0
    u16 cols         SAMPLES: values per sample; else 0
    u8 len + bytes   robot id
    u8 len + bytes   episode id
    u8 len + bytes   stream name

and the payload frame: JPEG bytes (FRAME), ``int64[rows] capture_ns ++
int64[rows] source_index ++ float64[rows*cols] values`` (SAMPLES), a JSON
object (EVENT) or ``int64[4] t1 t2 t3 t4`` (CLOCK). No pickle anywhere.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import ProtocolError
from pipeline.protocol.opcode import Opcode
from pipeline.protocol.validation import parse_json_object

MAGIC = b"RF"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct("<2sBB")
DATA_FIXED = struct.Struct("<QqqHH")
TIME_REQUEST_BODY = struct.Struct("<q")
TIME_REPLY_BODY = struct.Struct("<qqq")
CLOCK_PAYLOAD = struct.Struct("<4q")
MAX_HEADER_BYTES = 64 * 1024
MAX_INGEST_HEADER_BYTES = 1024 * 1024
"""WELCOME and ACK come from the ingest (authenticated by its server key) and may
name hundreds of episodes: they may be larger than what a collector sends."""
MAX_PENDING = 512  # episodes a HELLO may ask about: 512 ids of 64 characters fit in its 64 KB
MAX_SEQ = 2**62  # a stop event naming a larger last seq could never be satisfied
MAX_STREAMS = 256

ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
"""Robot ids, episode ids and stream names: safe as one path component."""


def check_id(value: str, what: str) -> str:
    """Reject ids that could not be used safely as a file name."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ProtocolError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "and not start with '.' or '-'",
            field=what,
        )
    return value


def _json_body(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _parse_json(body: bytes, what: str) -> dict[str, Any]:
    return parse_json_object(body, what)


def _prefix(opcode: Opcode) -> bytes:
    return PREFIX.pack(MAGIC, PROTOCOL_VERSION, opcode)


def _need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ProtocolError(f"{what}: {key!r} missing or of the wrong type", field=key)
    return value


# --------------------------------------------------------------------------- control


@dataclass(frozen=True)
class Hello:
    robot_id: str
    model: str
    config_digest: str
    config: dict[str, Any]
    software: str = "refinery"
    protocol_version: int = PROTOCOL_VERSION
    pending: tuple[str, ...] = ()  # episodes still in the collector's spool
    opcode: ClassVar[Opcode] = Opcode.HELLO

    def encode(self) -> list[bytes]:
        return [
            _prefix(self.opcode)
            + _json_body(
                {
                    "robot_id": self.robot_id,
                    "model": self.model,
                    "config_digest": self.config_digest,
                    "config": self.config,
                    "software": self.software,
                    "protocol_version": self.protocol_version,
                    "pending": list(self.pending),
                }
            )
        ]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Hello:
        obj = _parse_json(body, "HELLO")
        return cls(
            robot_id=check_id(_need(obj, "robot_id", str, "HELLO"), "robot_id"),
            model=_need(obj, "model", str, "HELLO"),
            config_digest=_need(obj, "config_digest", str, "HELLO"),
            config=_need(obj, "config", dict, "HELLO"),
            software=str(obj.get("software", ""))[:200],
            protocol_version=_need(obj, "protocol_version", int, "HELLO"),
            pending=_pending(obj.get("pending", [])),
        )


def _pending(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ProtocolError("HELLO: 'pending' must be a list of episode ids", field="pending")
    # More than MAX_PENDING: the first ones are answered (a collector lists its oldest
    # first); refusing the whole HELLO would keep that collector from ever connecting.
    return tuple(e for e in value[:MAX_PENDING] if isinstance(e, str) and ID_PATTERN.match(e))


@dataclass(frozen=True)
class Welcome:
    """Handshake accepted.

    ``acked`` maps episode id -> stream -> highest durable seq, for every episode of
    this robot the ingest still holds open, so a restarted collector resends only
    what is missing. ``sealed`` lists episodes already sealed (safe to drop from
    the spool). ``episodes`` answers, for every episode id the HELLO listed in
    ``pending``, one of :data:`EPISODE_STATES`.
    """

    window: int
    max_message_bytes: int
    acked: dict[str, dict[str, int]] = field(default_factory=dict)
    sealed: tuple[str, ...] = ()
    episodes: dict[str, str] = field(default_factory=dict)
    opcode: ClassVar[Opcode] = Opcode.WELCOME

    def encode(self) -> list[bytes]:
        return [
            _prefix(self.opcode)
            + _json_body(
                {
                    "window": self.window,
                    "max_message_bytes": self.max_message_bytes,
                    "acked": self.acked,
                    "sealed": list(self.sealed),
                    "episodes": self.episodes,
                }
            )
        ]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Welcome:
        obj = parse_json_object(body, "WELCOME", MAX_INGEST_HEADER_BYTES)
        return cls(
            window=_need(obj, "window", int, "WELCOME"),
            max_message_bytes=_need(obj, "max_message_bytes", int, "WELCOME"),
            acked={str(e): {str(s): int(q) for s, q in v.items()} for e, v in obj.get("acked", {}).items()},
            sealed=tuple(str(e) for e in obj.get("sealed", [])),
            episodes={str(e): str(v) for e, v in obj.get("episodes", {}).items()},
        )


EPISODE_STATES = ("sealed", "sealing", "open", "quarantined", "unknown")
"""What WELCOME.episodes says of an episode a HELLO asked about:

* ``sealed``: the raw file is in place; drop the episode from the spool.
* ``sealing``: complete and being written; an ACK will list it as sealed.
* ``open``: the ingest holds it open; ``acked`` says what it has.
* ``quarantined``: the ingest could not seal it and moved its journal aside
  (``DATA/quarantine/``); it will not be sealed: stop waiting, report it.
* ``unknown``: the ingest holds nothing of it (never received, or abandoned and
  deleted): resend it, or give up if nothing of it is left to send.
"""


@dataclass(frozen=True)
class Refuse:
    reason: str
    opcode: ClassVar[Opcode] = Opcode.REFUSE

    def encode(self) -> list[bytes]:
        return [_prefix(self.opcode) + _json_body({"reason": self.reason})]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Refuse:
        return cls(reason=str(_parse_json(body, "REFUSE").get("reason", "")))


_ACK_ENTRY_HEADS: dict[tuple[str, str], str] = {}
_MAX_ACK_ENTRY_HEADS = 65536  # (episode, stream) pairs remembered; then the memo starts over
_ACK_PREFIX = _prefix(Opcode.ACK)


def _ack_entry_head(episode: object, stream: object) -> str | None:
    """``["<episode>","<stream>",`` as ``json.dumps`` writes it, memoized; None for non-text ids."""
    if type(episode) is not str or type(stream) is not str:
        return None
    head = _ACK_ENTRY_HEADS.get((episode, stream))
    if head is None:
        if len(_ACK_ENTRY_HEADS) >= _MAX_ACK_ENTRY_HEADS:
            _ACK_ENTRY_HEADS.clear()
        head = _ACK_ENTRY_HEADS[(episode, stream)] = json.dumps([episode, stream], separators=(",", ":"))[:-1] + ","
    return head


@dataclass(frozen=True)
class Ack:
    """Cumulative acknowledgement: every seq <= the given one is durable at the ingest.

    ``acks`` holds (episode id, stream, seq) triples; ``sealed`` names episodes that
    are now sealed files.
    """

    acks: tuple[tuple[str, str, int], ...]
    sealed: tuple[str, ...] = ()
    opcode: ClassVar[Opcode] = Opcode.ACK

    def encode(self) -> list[bytes]:
        return [_ACK_PREFIX + (self._memo_body() or _json_body({"acks": [list(a) for a in self.acks],
                                                                 "sealed": list(self.sealed)}))]

    def _memo_body(self) -> bytes | None:
        """The JSON body, from memoized ``["<episode>","<stream>",`` texts: the ingest
        sends one ACK per collector per group commit, naming the same pairs again and
        again. Exactly _json_body's bytes (the tests pin it); None when an entry is
        not (text, text, int), which _json_body then encodes."""
        entries = []
        heads = _ACK_ENTRY_HEADS
        try:
            for episode, stream, seq in self.acks:
                head = heads.get((episode, stream)) or _ack_entry_head(episode, stream)
                if head is None or type(seq) is not int:
                    return None
                entries.append(f"{head}{seq}]")
        except (TypeError, ValueError):  # an unhashable id, an entry that is not a triple
            return None
        sealed = json.dumps(list(self.sealed), separators=(",", ":")) if self.sealed else "[]"
        return f'{{"acks":[{",".join(entries)}],"sealed":{sealed}}}'.encode()

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Ack:
        obj = parse_json_object(body, "ACK", MAX_INGEST_HEADER_BYTES)
        try:
            acks = tuple((str(e), str(s), int(q)) for e, s, q in obj.get("acks", []))
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"ACK: malformed acks list: {err}", field="acks") from err
        return cls(acks=acks, sealed=tuple(str(e) for e in obj.get("sealed", [])))


@dataclass(frozen=True)
class Notice:
    level: str
    message: str
    opcode: ClassVar[Opcode] = Opcode.NOTICE

    def encode(self) -> list[bytes]:
        return [_prefix(self.opcode) + _json_body({"level": self.level, "message": self.message})]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Notice:
        obj = _parse_json(body, "NOTICE")
        return cls(level=str(obj.get("level", "info")), message=str(obj.get("message", "")))


@dataclass(frozen=True)
class TimeRequest:
    t1_ns: int
    opcode: ClassVar[Opcode] = Opcode.TIME_REQUEST

    def encode(self) -> list[bytes]:
        return [_prefix(self.opcode) + TIME_REQUEST_BODY.pack(self.t1_ns)]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> TimeRequest:
        if len(body) != TIME_REQUEST_BODY.size:
            raise ProtocolError(f"TIME_REQUEST body must be {TIME_REQUEST_BODY.size} bytes, got {len(body)}")
        return cls(*TIME_REQUEST_BODY.unpack(body))


@dataclass(frozen=True)
class TimeReply:
    t1_ns: int
    t2_ns: int
    t3_ns: int
    opcode: ClassVar[Opcode] = Opcode.TIME_REPLY

    def encode(self) -> list[bytes]:
        return [_prefix(self.opcode) + TIME_REPLY_BODY.pack(self.t1_ns, self.t2_ns, self.t3_ns)]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> TimeReply:
        if len(body) != TIME_REPLY_BODY.size:
            raise ProtocolError(f"TIME_REPLY body must be {TIME_REPLY_BODY.size} bytes, got {len(body)}")
        return cls(*TIME_REPLY_BODY.unpack(body))


# --------------------------------------------------------------------------- data


_set_attribute = object.__setattr__


@dataclass(frozen=True, init=False)
class DataHeader:
    """What every data message carries: where it belongs and where it sits in its stream."""

    robot_id: str
    episode_id: str
    stream: str
    seq: int
    capture_ns: int
    source_index: int = 0
    rows: int = 0
    cols: int = 0

    def __init__(self, robot_id: str, episode_id: str, stream: str, seq: int, capture_ns: int,
                 source_index: int = 0, rows: int = 0, cols: int = 0) -> None:
        # The ingest builds one per message received. The generated __init__ of a
        # frozen dataclass sets the 8 fields one by one through object.__setattr__
        # (1.6 us); one __dict__ costs 0.7 us. Still frozen, equal and hashable as before.
        _set_attribute(self, "__dict__", {
            "robot_id": robot_id, "episode_id": episode_id, "stream": stream, "seq": seq,
            "capture_ns": capture_ns, "source_index": source_index, "rows": rows, "cols": cols,
        })

    def pack(self, opcode: Opcode) -> bytes:
        parts = [_prefix(opcode), DATA_FIXED.pack(self.seq, self.capture_ns, self.source_index, self.rows, self.cols)]
        for text in (self.robot_id, self.episode_id, self.stream):
            raw = text.encode()
            parts.append(bytes((len(raw),)) + raw)
        return b"".join(parts)

    @classmethod
    def unpack(cls, body: bytes) -> DataHeader:
        if len(body) < DATA_FIXED.size + 3:
            raise ProtocolError(f"data header too short ({len(body)} bytes)")
        seq, capture_ns, source_index, rows, cols = DATA_FIXED.unpack_from(body)
        offset = DATA_FIXED.size
        texts = []
        for what in ("robot_id", "episode_id", "stream"):
            if offset >= len(body):
                raise ProtocolError(f"data header truncated before {what}", field=what)
            n = body[offset]
            raw = body[offset + 1 : offset + 1 + n]
            if len(raw) != n:
                raise ProtocolError(f"data header truncated inside {what}", field=what)
            try:
                texts.append(check_id(raw.decode("utf-8"), what))
            except UnicodeDecodeError as err:
                raise ProtocolError(f"{what} is not UTF-8", field=what) from err
            offset += 1 + n
        if offset != len(body):
            raise ProtocolError(f"data header has {len(body) - offset} trailing bytes")
        return cls(texts[0], texts[1], texts[2], seq, capture_ns, source_index, rows, cols)


@dataclass(frozen=True)
class Samples:
    """A batch of numeric samples of one stream (joint states, actions).

    ``values`` is float64 (rows, cols); ``capture_ns`` and ``source_index`` int64 (rows,).
    """

    header: DataHeader
    capture_ns: np.ndarray
    source_index: np.ndarray
    values: np.ndarray
    opcode: ClassVar[Opcode] = Opcode.SAMPLES

    @classmethod
    def build(
        cls, robot_id: str, episode_id: str, stream: str, seq: int,
        capture_ns: np.ndarray, source_index: np.ndarray, values: np.ndarray,
    ) -> Samples:
        values = np.ascontiguousarray(values, dtype="<f8")
        capture_ns = np.ascontiguousarray(capture_ns, dtype="<i8")
        source_index = np.ascontiguousarray(source_index, dtype="<i8")
        if values.ndim != 2 or values.shape[0] != capture_ns.shape[0] or source_index.shape != capture_ns.shape:
            raise ProtocolError("samples: values must be (rows, cols) with one capture time and index per row")
        if values.shape[0] == 0 or values.shape[0] > 0xFFFF or values.shape[1] > 0xFFFF:
            raise ProtocolError(f"samples: batch shape {values.shape} out of range (1..65535 rows)")
        header = DataHeader(
            robot_id, episode_id, stream, seq, int(capture_ns[0]), int(source_index[0]), *values.shape
        )
        return cls(header, capture_ns, source_index, values)

    def encode(self) -> list[bytes]:
        payload = self.capture_ns.tobytes() + self.source_index.tobytes() + self.values.tobytes()
        return [self.header.pack(self.opcode), payload]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Samples:
        header = DataHeader.unpack(body)
        payload = _single_payload(frames, "SAMPLES")
        check_payload(Opcode.SAMPLES, header, payload)
        rows, cols = header.rows, header.cols
        capture_ns = np.frombuffer(payload, dtype="<i8", count=rows)
        source_index = np.frombuffer(payload, dtype="<i8", count=rows, offset=rows * 8)
        values = np.frombuffer(payload, dtype="<f8", offset=rows * 16).reshape(rows, cols)
        return cls(header, capture_ns, source_index, values)


@dataclass(frozen=True)
class Frame:
    """One camera frame: the JPEG bytes exactly as the collector encoded them."""

    header: DataHeader
    jpeg: bytes
    opcode: ClassVar[Opcode] = Opcode.FRAME

    def encode(self) -> list[bytes]:
        return [self.header.pack(self.opcode), self.jpeg]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Frame:
        header = DataHeader.unpack(body)
        payload = _single_payload(frames, "FRAME")
        check_payload(Opcode.FRAME, header, payload)
        return cls(header, payload)


EVENT_KINDS = frozenset({"start", "stop", "task", "label", "pause", "resume"})


@dataclass(frozen=True)
class Event:
    """An episode event. ``start`` opens an episode; ``stop`` closes it and names,
    in ``body["last_seq"]``, the final seq of every stream, so the ingest knows
    when it holds all of it."""

    header: DataHeader
    body: dict[str, Any]
    opcode: ClassVar[Opcode] = Opcode.EVENT

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    def encode(self) -> list[bytes]:
        return [self.header.pack(self.opcode), _json_body(self.body)]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> Event:
        header = DataHeader.unpack(body)
        obj = _parse_json(_single_payload(frames, "EVENT"), "EVENT")
        kind = obj.get("kind")
        if kind not in EVENT_KINDS:
            raise ProtocolError(f"EVENT kind {kind!r} unknown; expected one of {sorted(EVENT_KINDS)}", field="kind")
        if kind == "stop":
            last = obj.get("last_seq")
            if not isinstance(last, dict) or len(last) > MAX_STREAMS or not all(
                isinstance(s, str) and type(q) is int and -1 <= q < MAX_SEQ for s, q in last.items()
            ):
                raise ProtocolError("stop EVENT needs last_seq: {stream: seq}", field="last_seq")
            for stream in last:
                check_id(stream, "stream")
        return cls(header, obj)


@dataclass(frozen=True)
class ClockSample:
    """One four-timestamp exchange: t1 collector send, t2 ingest receive,
    t3 ingest send, t4 collector receive (ns, each on its own clock)."""

    header: DataHeader
    t1_ns: int
    t2_ns: int
    t3_ns: int
    t4_ns: int
    opcode: ClassVar[Opcode] = Opcode.CLOCK

    @property
    def offset_ns(self) -> float:
        """Ingest clock minus collector clock (NTP formula)."""
        return ((self.t2_ns - self.t1_ns) + (self.t3_ns - self.t4_ns)) / 2

    @property
    def round_trip_ns(self) -> int:
        return (self.t4_ns - self.t1_ns) - (self.t3_ns - self.t2_ns)

    def encode(self) -> list[bytes]:
        return [self.header.pack(self.opcode), CLOCK_PAYLOAD.pack(self.t1_ns, self.t2_ns, self.t3_ns, self.t4_ns)]

    @classmethod
    def decode(cls, body: bytes, frames: list[bytes]) -> ClockSample:
        header = DataHeader.unpack(body)
        payload = _single_payload(frames, "CLOCK")
        check_payload(Opcode.CLOCK, header, payload)
        return cls(header, *CLOCK_PAYLOAD.unpack(payload))


_SAMPLES, _FRAME = Opcode.SAMPLES, Opcode.FRAME  # an enum member's look-up costs 0.1 us: not per message


def check_payload(opcode: Opcode, header: DataHeader, payload: bytes | memoryview) -> None:
    """The payload of a SAMPLES, FRAME or CLOCK message fits its header (what decode and
    the ingest's header-only path both check), else a ProtocolError naming the field."""
    if opcode == _SAMPLES:
        rows, cols = header.rows, header.cols
        if rows == 0:
            raise ProtocolError("SAMPLES with zero rows", field="rows")
        expected = rows * 16 + rows * cols * 8
        if len(payload) != expected:
            raise ProtocolError(
                f"SAMPLES payload is {len(payload)} bytes, header says {rows}x{cols} -> {expected}", field="payload"
            )
    elif opcode == _FRAME:
        # Every JPEG starts with the SOI marker; anything else is not a frame.
        if payload[:2] != b"\xff\xd8":
            raise ProtocolError("FRAME payload is not JPEG (no SOI marker)", field="payload")
    elif len(payload) != CLOCK_PAYLOAD.size:
        raise ProtocolError(f"CLOCK payload must be {CLOCK_PAYLOAD.size} bytes, got {len(payload)}")


def _single_payload(frames: list[bytes], what: str) -> bytes:
    if len(frames) != 2:
        raise ProtocolError(f"{what} must have exactly 2 frames (header, payload), got {len(frames)}")
    return frames[1]


DataRecord = Samples | Frame | Event | ClockSample
Record = Hello | Welcome | Refuse | Ack | Notice | TimeRequest | TimeReply | DataRecord

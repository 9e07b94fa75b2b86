"""Turning ZeroMQ multipart messages into records and back.

Dispatch is a table from opcode to the record's ``decode``; anything that
does not parse raises :class:`ProtocolError`, never anything else, so the
ingest can count and drop it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.errors import ProtocolError
from pipeline.protocol.opcode import Opcode
from pipeline.protocol.records import (
    DATA_FIXED,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_INGEST_HEADER_BYTES,
    PREFIX,
    PROTOCOL_VERSION,
    Ack,
    ClockSample,
    DataHeader,
    Event,
    Frame,
    Hello,
    Notice,
    Record,
    Refuse,
    Samples,
    TimeReply,
    TimeRequest,
    Welcome,
    check_payload,
)

DECODERS: dict[Opcode, Callable[[bytes, list[bytes]], Any]] = {
    Opcode.HELLO: Hello.decode,
    Opcode.WELCOME: Welcome.decode,
    Opcode.REFUSE: Refuse.decode,
    Opcode.SAMPLES: Samples.decode,
    Opcode.FRAME: Frame.decode,
    Opcode.EVENT: Event.decode,
    Opcode.CLOCK: ClockSample.decode,
    Opcode.ACK: Ack.decode,
    Opcode.TIME_REQUEST: TimeRequest.decode,
    Opcode.TIME_REPLY: TimeReply.decode,
    Opcode.NOTICE: Notice.decode,
}


_FROM_INGEST = frozenset({int(Opcode.WELCOME), int(Opcode.ACK)})


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(
            f"peer speaks protocol version {version}, this side speaks version {PROTOCOL_VERSION}; "
            "upgrade the older of collector and ingest",
            field="version",
        )


_OPCODES = {int(op): op for op in Opcode}
_KNOWN_PREFIXES = {
    PREFIX.pack(MAGIC, PROTOCOL_VERSION, op): (op, MAX_INGEST_HEADER_BYTES if op in _FROM_INGEST else MAX_HEADER_BYTES)
    for op in Opcode
}


def peek_opcode(frames: Sequence[bytes]) -> Opcode:
    """Check the prefix of frame 0 and return the opcode.

    Raises:
        VersionMismatch: the prefix is ours but the version is not.
        ProtocolError: anything else wrong with the prefix.
    """
    if not frames:
        raise ProtocolError("empty message")
    head = frames[0]
    # The common case, one dict look-up: a header of ours, within its size limit.
    known = _KNOWN_PREFIXES.get(head[: PREFIX.size]) if type(head) is bytes else None
    if known is not None and len(head) <= known[1]:
        return known[0]
    if len(head) < PREFIX.size:
        raise ProtocolError(f"header frame of {len(head)} bytes is shorter than the {PREFIX.size}-byte prefix")
    magic, version, opcode = PREFIX.unpack_from(head)
    limit = MAX_INGEST_HEADER_BYTES if opcode in _FROM_INGEST else MAX_HEADER_BYTES
    if len(head) > limit:
        raise ProtocolError(f"header frame of {len(head)} bytes exceeds {limit}")
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}; not a Refinery message", field="magic")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(version)
    found = _OPCODES.get(opcode)
    if found is None:
        raise ProtocolError(f"unknown opcode {opcode}", field="opcode")
    return found


def decode(frames: Sequence[bytes]) -> Record:
    """Decode one multipart message into its record."""
    opcode = peek_opcode(frames)
    frame_list = [bytes(f) for f in frames]
    try:
        return DECODERS[opcode](frame_list[0][PREFIX.size :], frame_list)
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
        raise ProtocolError(f"{opcode.name}: cannot decode: {err}") from err


_ID_TAILS: dict[bytes, tuple[str, str, str]] = {}
_IDS_AT = PREFIX.size + DATA_FIXED.size  # where a data header's ids start
_MAX_ID_TAILS = 65536  # distinct (robot, episode, stream) headers remembered; then the memo starts over


def data_header(opcode: Opcode, frames: Sequence[bytes]) -> DataHeader:
    """The header of a SAMPLES, FRAME or CLOCK message, with its payload checked as
    :func:`decode` checks it, without building the payload's record (the ingest
    journals the frames as they came; only the header drives its state).

    The ids after the fixed part repeat on every message of a stream: once one
    such tail passed :meth:`DataHeader.unpack`'s checks it is remembered, so the
    three id checks run once per stream, not once per message.

    Raises:
        ProtocolError: exactly what :func:`decode` raises for the same frames.
    """
    if opcode not in _SCREENED:
        raise ValueError(f"data_header: {opcode.name} messages are decoded whole (protocol.decode)")
    if len(frames) != 2:
        raise ProtocolError(f"{opcode.name} must have exactly 2 frames (header, payload), got {len(frames)}")
    head, payload = frames
    if len(head) < _IDS_AT + 3:
        raise ProtocolError(f"data header too short ({len(head) - PREFIX.size} bytes)")
    tail = bytes(head[_IDS_AT:])
    ids = _ID_TAILS.get(tail)
    if ids is None:
        header = DataHeader.unpack(bytes(head[PREFIX.size :]))
        if len(_ID_TAILS) >= _MAX_ID_TAILS:
            _ID_TAILS.clear()
        _ID_TAILS[tail] = (header.robot_id, header.episode_id, header.stream)
    else:
        header = DataHeader(*ids, *DATA_FIXED.unpack_from(head, PREFIX.size))
    check_payload(opcode, header, payload)
    return header


_SCREENED = frozenset({Opcode.SAMPLES, Opcode.FRAME, Opcode.CLOCK})


def refusal_reason(frames: Sequence[bytes]) -> str | None:
    """The reason of a REFUSE message from *any* protocol version, else None.

    REFUSE's layout (prefix, then JSON ``{"reason": ...}``) is fixed for all
    versions, so a peer speaking another version still learns why it was refused.
    """
    if not frames or len(frames[0]) < PREFIX.size:
        return None
    magic, _version, opcode = PREFIX.unpack_from(frames[0])
    if magic != MAGIC or opcode != Opcode.REFUSE:
        return None
    try:
        return Refuse.decode(bytes(frames[0][PREFIX.size :]), list(frames)).reason
    except ProtocolError:
        return "refused (reason unreadable)"

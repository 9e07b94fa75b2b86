"""The collector <-> ingest wire protocol: opcodes, records and framing."""

from pipeline.protocol.framing import VersionMismatch, data_header, decode, peek_opcode
from pipeline.protocol.opcode import DATA_OPCODES, Opcode
from pipeline.protocol.records import (
    EPISODE_STATES,
    PROTOCOL_VERSION,
    Ack,
    ClockSample,
    DataHeader,
    DataRecord,
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
    check_id,
)

__all__ = [
    "DATA_OPCODES", "EPISODE_STATES", "PROTOCOL_VERSION", "Ack", "ClockSample", "DataHeader", "DataRecord", "Event",
    "Frame", "Hello", "Notice", "Opcode", "Record", "Refuse", "Samples", "TimeReply", "TimeRequest",
    "VersionMismatch", "Welcome", "check_id", "data_header", "decode", "peek_opcode",
]

"""Message kinds of the collector <-> ingest protocol."""

from __future__ import annotations

from enum import IntEnum


class Opcode(IntEnum):
    HELLO = 1  # collector -> ingest: who I am, protocol version, robot config
    WELCOME = 2  # ingest -> collector: accepted; credit window and what is already durable
    REFUSE = 3  # ingest -> collector: handshake refused, with the reason
    SAMPLES = 4  # collector -> ingest: a batch of numeric samples (joint states, actions)
    FRAME = 5  # collector -> ingest: one camera frame as JPEG bytes
    EVENT = 6  # collector -> ingest: episode start/stop, task, operator label
    CLOCK = 7  # collector -> ingest: one finished four-timestamp clock-sync sample
    ACK = 8  # ingest -> collector: highest durable sequence number per stream
    TIME_REQUEST = 9  # collector -> ingest: clock-sync request carrying t1
    TIME_REPLY = 10  # ingest -> collector: t1 echoed, t2 receive, t3 send
    NOTICE = 11  # ingest -> collector: a warning the operator should see


DATA_OPCODES = frozenset({Opcode.SAMPLES, Opcode.FRAME, Opcode.EVENT, Opcode.CLOCK})
"""Opcodes that carry episode data: sequenced, journaled, acknowledged, de-duplicated."""

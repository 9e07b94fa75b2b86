"""The ingest's per-episode journal: what is durable before an episode is sealed.

An episode streams into ``<data>/journal/<robot>/<episode>.rfj``, a record log
(:mod:`pipeline.record_log`). Record 0 holds the episode's identity and robot
config as JSON; every later record is one accepted data message, as
``i64 arrival_ns | multipart frames`` exactly as received. Only messages that
continue their stream without a gap are written, so replaying the journal
yields every stream in sequence order, each sample once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import protocol
from pipeline.errors import ProtocolError, StoreError
from pipeline.record_log import RecordWriter, frame_parts, recover, scan, unpack_frames
from pipeline.streams import EVENTS

JOURNAL_MAGIC = b"RFJ1"
ARRIVAL = struct.Struct("<q")
JOURNAL_SUFFIX = ".rfj"


@dataclass(frozen=True)
class EpisodeMeta:
    robot_id: str
    episode_id: str
    model: str
    config_digest: str
    config: dict[str, Any]
    created_ns: int

    def to_payload(self) -> bytes:
        return JOURNAL_MAGIC + json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_payload(cls, payload: bytes, path: Path) -> EpisodeMeta:
        if not payload.startswith(JOURNAL_MAGIC):
            raise StoreError(str(path), "not a Refinery journal (bad first record)")
        try:
            return cls(**json.loads(payload[len(JOURNAL_MAGIC) :]))
        except (ValueError, TypeError) as err:
            raise StoreError(str(path), f"journal header unreadable: {err}") from err


@dataclass
class EpisodeJournal:
    """Append side of one episode's journal, with the stream state replay rebuilds."""

    path: Path
    meta: EpisodeMeta
    next_seq: dict[str, int] = field(default_factory=dict)
    stop: dict[str, Any] | None = None
    writer: RecordWriter | None = None

    @classmethod
    def create(cls, path: Path, meta: EpisodeMeta) -> EpisodeJournal:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise StoreError(str(path), "journal already exists; recover it instead of creating it")
        writer = RecordWriter(path)
        writer.append(meta.to_payload())
        writer.sync()
        return cls(path, meta, writer=writer)

    @classmethod
    def recover(cls, path: Path) -> EpisodeJournal:
        """Reopen a journal left by a stopped or killed ingest, dropping its torn tail."""
        entries = recover(path)
        if not entries:
            raise StoreError(str(path), "journal has no intact header record")
        journal = cls(path, EpisodeMeta.from_payload(entries[0].payload, path))
        for arrival_ns, record in journal._decode(e.payload for e in entries[1:]):
            journal._advance(record)
        journal.writer = RecordWriter(path)
        return journal

    def accepts(self, header: protocol.DataHeader) -> str:
        """Classify an incoming data message: 'next', 'duplicate' or 'gap'."""
        expected = self.next_seq.get(header.stream, 0)
        if header.seq == expected:
            return "next"
        return "duplicate" if header.seq < expected else "gap"

    def append(self, arrival_ns: int, frames: list[bytes], record: protocol.DataRecord) -> None:
        """Write one message that :meth:`accepts` called 'next'. OSError propagates, state unchanged."""
        if self.writer is None:
            raise StoreError(str(self.path), "journal is closed")
        self.writer.append_parts([ARRIVAL.pack(arrival_ns), *frame_parts(frames)])
        self._advance(record)

    def _advance(self, record: protocol.DataRecord) -> None:
        stream = record.header.stream
        self.next_seq[stream] = record.header.seq + 1
        if isinstance(record, protocol.Event) and record.kind == "stop":
            self.stop = record.body

    @property
    def acked(self) -> dict[str, int]:
        return {stream: seq - 1 for stream, seq in self.next_seq.items()}

    @property
    def complete(self) -> bool:
        """The stop event is here and every stream reached the last seq it names."""
        if self.stop is None:
            return False
        return all(self.next_seq.get(s, 0) > last for s, last in self.stop["last_seq"].items())

    def missing(self) -> dict[str, list[int]]:
        """For an episode sealed without all its data: the seq range missing per stream."""
        if self.stop is None:
            return {EVENTS: [self.next_seq.get(EVENTS, 0), -1]}
        return {
            s: [self.next_seq.get(s, 0), last]
            for s, last in self.stop["last_seq"].items()
            if self.next_seq.get(s, 0) <= last
        }

    def sync(self) -> None:
        if self.writer is not None:
            self.writer.sync()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _decode(self, payloads: Iterator[bytes]) -> Iterator[tuple[int, protocol.DataRecord]]:
        for payload in payloads:
            try:
                (arrival_ns,) = ARRIVAL.unpack_from(payload)
                record = protocol.decode(unpack_frames(payload[ARRIVAL.size :]))
            except (ProtocolError, ValueError, struct.error) as err:
                raise StoreError(str(self.path), f"journal record does not decode: {err}") from err
            yield arrival_ns, record  # type: ignore[misc]


def read_journal(path: Path) -> tuple[EpisodeMeta, list[tuple[int, protocol.DataRecord]]]:
    """Every intact record of a journal, without modifying the file."""
    entries, _ = scan(path)
    if not entries:
        raise StoreError(str(path), "journal has no intact header record")
    meta = EpisodeMeta.from_payload(entries[0].payload, path)
    reader = EpisodeJournal(path, meta)
    return meta, list(reader._decode(e.payload for e in entries[1:]))

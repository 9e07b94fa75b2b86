"""The ingest's per-episode journal: what is durable before an episode is sealed.

An episode streams into ``<data>/journal/<robot>/<episode>.rfj``, a record log
(:mod:`pipeline.record_log`). Record 0 holds the episode's identity, robot
config and the key that produced it as JSON; every later record is either one
accepted data message, as ``i64 arrival_ns | multipart frames`` exactly as
accepted, or an ingest note (``RFJN`` + JSON: a limit the episode reached).
Only messages that continue their stream without a gap are written, so
replaying the journal yields every stream in sequence order, each sample once.

Replay streams: a journal is read one record at a time, never whole, so
recovering or sealing a journal of many gigabytes takes the memory of one
record.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import protocol
from pipeline.errors import ProtocolError, StoreError
from pipeline.journal_writer import JournalWriter, WrittenState
from pipeline.record_log import (
    RECORD_HEAD,
    RecordWriter,
    frame_parts,
    fsync_dir,
    iter_log,
    make_dirs_durably,
    truncate_to,
    unpack_frames,
)
from pipeline.shared_journal import SHARED_DIR, SharedJournal, episode_tag, iter_episode_payloads
from pipeline.streams import EVENTS

JOURNAL_MAGIC = b"RFJ1"
NOTE_MAGIC = b"RFJN"
ARRIVAL = struct.Struct("<q")
JOURNAL_SUFFIX = ".rfj"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class EpisodeMeta:
    robot_id: str
    episode_id: str
    model: str
    config_digest: str
    config: dict[str, Any]
    created_ns: int
    producer_key: str = ""  # the CURVE public key (Z85) that opened the episode; "" without CURVE

    def to_payload(self) -> bytes:
        return JOURNAL_MAGIC + json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_payload(cls, payload: bytes, path: Path) -> EpisodeMeta:
        if not payload.startswith(JOURNAL_MAGIC):
            raise StoreError(str(path), "not a Refinery journal (bad first record)")
        try:
            return cls(**json.loads(payload[len(JOURNAL_MAGIC) :]))
        except (ValueError, TypeError, RecursionError) as err:
            raise StoreError(str(path), f"journal header unreadable: {err}") from err


@dataclass(eq=False)
class EpisodeJournal:
    """Append side of one episode's journal, with the stream state replay rebuilds.

    The journal is a file of its own (``writer``), or the episode's records in the
    ingest's :class:`~pipeline.shared_journal.SharedJournal` (``shared``; then
    ``written.places`` says where they are).
    """

    path: Path  # the journal file, or the shared journal's directory
    meta: EpisodeMeta
    next_seq: dict[str, int] = field(default_factory=dict)
    # The next seq per stream that a commit (or recovery) made durable: what may be
    # acknowledged to a collector that asks (next_seq is what the loop accepted).
    durable: dict[str, int] = field(default_factory=dict)
    stop: dict[str, Any] | None = None
    writer: RecordWriter | None = None
    size: int = 0  # bytes of the journal file
    first_capture_ns: int | None = None  # capture time of the episode's first message
    limit: str = ""  # a limit the episode reached: data after it was not accepted
    # With a JournalWriter (the ingest), appends are queued to its thread: the fields
    # above are what was accepted, ``written`` what reached the file.
    queue: JournalWriter | None = None
    written: WrittenState = field(default_factory=WrittenState)
    write_error: OSError | None = None  # a queued write failed: accept nothing until rolled back
    # Queued writes that failed, ever. A commit acknowledges the journal only if this did not
    # change while it synced: the loop may roll a failure back (clearing write_error) meanwhile.
    failed_writes: int = 0
    rollback_requested: bool = False
    rollback_ready: bool = False  # the writer has passed every write queued before the request
    shared: SharedJournal | None = None
    tag: bytes = b""  # names the episode in the shared journal's records
    sealing: bool = False  # set by the loop before the seal's barrier: the writer leaves it where it is
    graduating: bool = False  # its records are being copied to a journal file of its own (writer thread)

    @property
    def key(self) -> tuple[str, str]:
        return (self.meta.robot_id, self.meta.episode_id)

    @property
    def closed(self) -> bool:
        return self.writer is None and self.shared is None

    @classmethod
    def start_shared(cls, shared: SharedJournal, meta: EpisodeMeta, queue: JournalWriter) -> EpisodeJournal:
        """A new episode in the shared journal: its header is queued as its first record."""
        journal = cls(shared.directory, meta, shared=shared, tag=episode_tag(meta.robot_id, meta.episode_id))
        journal.attach(queue)
        payload = meta.to_payload()
        size = RECORD_HEAD.size + len(payload)
        queue.header(journal, payload, size)
        journal.size = size
        return journal

    @classmethod
    def from_shared_header(cls, payload: bytes, shared: SharedJournal, where: str) -> EpisodeJournal:
        """An episode of the shared journal, from its header record (recovery)."""
        meta = EpisodeMeta.from_payload(payload, Path(where))
        return cls(shared.directory, meta, shared=shared, tag=episode_tag(meta.robot_id, meta.episode_id))

    def replay(self, payload: bytes) -> None:
        """Apply one recovered record to the stream state. StoreError: it does not decode."""
        for _, record in self._decode(iter((payload,))):
            if record is not None:
                self._advance(record)

    def records(self) -> Iterator[tuple[int, protocol.DataRecord]]:
        """Every data message written so far, in order, read one at a time (for sealing,
        once the writer has passed the last write)."""
        if self.shared is None:
            return iter_journal(self.path)[1]
        payloads = self.shared.read_payloads(self.written.places, self.tag)
        if next(payloads, None) is None:  # the header
            raise StoreError(str(self.path), f"episode {self.meta.episode_id} has no records in the shared journal")
        return (item for item in self._decode(payloads) if item[1] is not None)  # type: ignore[misc]

    @classmethod
    def create(cls, path: Path, meta: EpisodeMeta) -> EpisodeJournal:
        make_dirs_durably(path.parent)
        if path.exists():
            raise StoreError(str(path), "journal already exists; recover it instead of creating it")
        writer = RecordWriter(path)
        writer.append(meta.to_payload())
        writer.sync()
        fsync_dir(path.parent)  # the file's entry, or a commit's fsync of it would not survive a power loss
        return cls(path, meta, writer=writer, size=writer.size)

    @classmethod
    def recover(cls, path: Path) -> EpisodeJournal:
        """Reopen a journal left by a stopped or killed ingest, dropping its torn tail.

        Raises:
            StoreError: no intact header, or an intact record that does not decode
                (the journal cannot be trusted: quarantine it).
        """
        entries = iter_log(path)
        first = next(entries, None)
        if first is None:
            raise StoreError(str(path), "journal has no intact header record")
        journal = cls(path, EpisodeMeta.from_payload(first.payload, path))
        good = first.end
        for entry in entries:
            for _, record in journal._decode(iter((entry.payload,))):
                if record is not None:
                    journal._advance(record)
            good = entry.end
        truncate_to(path, good)  # and fsyncs what it keeps
        journal.durable = dict(journal.next_seq)
        journal.writer = RecordWriter(path)
        journal.size = journal.writer.size
        return journal

    def accepts(self, header: protocol.DataHeader) -> str:
        """Classify an incoming data message: 'next', 'duplicate' or 'gap'."""
        expected = self.next_seq.get(header.stream, 0)
        if header.seq == expected:
            return "next"
        return "duplicate" if header.seq < expected else "gap"

    def append(self, arrival_ns: int, frames: list[bytes], record: protocol.DataRecord) -> None:
        """Write one message that :meth:`accepts` called 'next'. OSError propagates, state unchanged."""
        stop = record.body if isinstance(record, protocol.Event) and record.kind == "stop" else None
        self.append_frames(arrival_ns, frames, record.header, stop)

    def append_frames(self, arrival_ns: int, frames: Sequence[bytes], header: protocol.DataHeader,
                      stop: dict[str, Any] | None = None) -> None:
        """:meth:`append` from the header alone (the ingest's path: it never builds the
        payload's record); ``stop`` is the body of a stop event. With a queue the
        write is queued, and a failure shows later as :attr:`write_error`."""
        if self.closed:
            raise StoreError(str(self.path), "journal is closed")
        parts = [ARRIVAL.pack(arrival_ns), *frame_parts(frames)]
        if self.queue is not None:
            size = RECORD_HEAD.size + sum(map(len, parts))
            self.queue.append(self, parts, size, header.stream, header.seq, header.capture_ns, stop)
            self.size += size
        else:
            assert self.writer is not None, "a journal in the shared journal appends through its queue"
            self.writer.append_parts(parts)
            self.size = self.writer.size
        self._advance_header(header, stop)

    def attach(self, queue: JournalWriter) -> None:
        """From now on, append through ``queue``'s thread."""
        self.queue = queue
        self.written = WrittenState(dict(self.next_seq), self.stop, self.first_capture_ns, self.limit,
                                    self.written.places)

    def record_write_failure(self, err: OSError) -> None:
        """On the writer thread: a queued write failed. The error is set before the count
        grows, so a commit that reads the count first and then finds no error has seen
        every failure so far rolled back."""
        if self.write_error is None:
            self.write_error = err
        self.failed_writes += 1

    def failure_mark(self) -> int:
        """For a commit's snapshot: :attr:`failed_writes`, or -1 while a failure is not
        yet rolled back (what the loop accepted is then more than the file holds)."""
        count = self.failed_writes
        return count if self.write_error is None else -1

    def roll_back_to_written(self) -> None:
        """After a failed queued write, once :attr:`rollback_ready`: the stream state
        becomes what the file holds, and appends may resume."""
        written = self.written
        self.next_seq = dict(written.next_seq)
        self.stop = written.stop
        self.first_capture_ns = written.first_capture_ns
        self.limit = written.limit
        if self.writer is not None:
            self.size = self.writer.size
        elif self.shared is not None:
            self.size = sum(written.places.lengths)
        self.write_error = None
        self.rollback_requested = self.rollback_ready = False
        if self.shared is not None and not written.places and self.queue is not None:
            # The header's write failed too: it must still come first.
            payload = self.meta.to_payload()
            self.size = RECORD_HEAD.size + len(payload)
            self.queue.header(self, payload, self.size)

    def mark_limit(self, reason: str) -> None:
        """Record that the episode reached a limit: from now on only its events are
        accepted, and its stop event seals it (incomplete) without waiting for the
        data it names. Journaled, so a restart knows it too."""
        if self.closed:
            raise StoreError(str(self.path), "journal is closed")
        payload = NOTE_MAGIC + json.dumps({"limit": reason}).encode()
        if self.queue is not None:
            self.queue.note(self, payload, reason)
            self.size += RECORD_HEAD.size + len(payload)
        else:
            assert self.writer is not None, "a journal in the shared journal appends through its queue"
            self.writer.append(payload)
            self.size = self.writer.size
        self.limit = reason

    def _advance(self, record: protocol.DataRecord | dict[str, Any]) -> None:
        if isinstance(record, dict):  # an ingest note
            self.limit = str(record.get("limit", "")) or self.limit
            return
        stop = record.body if isinstance(record, protocol.Event) and record.kind == "stop" else None
        self._advance_header(record.header, stop)

    def _advance_header(self, header: protocol.DataHeader, stop: dict[str, Any] | None) -> None:
        self.next_seq[header.stream] = header.seq + 1
        if self.first_capture_ns is None:
            self.first_capture_ns = header.capture_ns
        if stop is not None:
            self.stop = stop

    @property
    def acked(self) -> dict[str, int]:
        """The last seq per stream the loop accepted (durable once a commit covers it)."""
        return {stream: seq - 1 for stream, seq in self.next_seq.items()}

    @property
    def durable_acked(self) -> dict[str, int]:
        """The last seq per stream that is on disk: what a collector may be told."""
        return {stream: seq - 1 for stream, seq in self.durable.items()}

    @property
    def complete(self) -> bool:
        """The stop event is here and every stream reached the last seq it names
        (or the episode reached a limit, so the rest will never be accepted)."""
        if self.stop is None:
            return False
        if self.limit:
            return True
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
        """Make a journal file's records durable (the shared journal is synced as a whole)."""
        if self.writer is not None:
            self.writer.sync()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _decode(self, payloads: Iterator[bytes]) -> Iterator[tuple[int, protocol.DataRecord | None]]:
        """Decode journal payloads; ingest notes are applied and yield ``None``."""
        for payload in payloads:
            if payload.startswith(NOTE_MAGIC):
                try:
                    note = json.loads(payload[len(NOTE_MAGIC) :])
                except ValueError as err:
                    raise StoreError(str(self.path), f"journal note does not decode: {err}") from err
                self._advance(note if isinstance(note, dict) else {})
                yield 0, None
                continue
            try:
                (arrival_ns,) = ARRIVAL.unpack_from(payload)
                record = protocol.decode(unpack_frames(payload[ARRIVAL.size :]))
            except (ProtocolError, ValueError, struct.error, IndexError) as err:
                raise StoreError(str(self.path), f"journal record does not decode: {err}") from err
            if not isinstance(record, protocol.DataRecord):
                raise StoreError(str(self.path), f"journal holds a {type(record).__name__}, not a data message")
            yield arrival_ns, record


def iter_journal(path: Path) -> tuple[EpisodeMeta, Iterator[tuple[int, protocol.DataRecord]]]:
    """The journal's header and an iterator over its data messages, read one at a
    time (the file is not modified)."""
    entries = iter_log(path)
    first = next(entries, None)
    if first is None:
        raise StoreError(str(path), "journal has no intact header record")
    meta = EpisodeMeta.from_payload(first.payload, path)
    reader = EpisodeJournal(path, meta)

    def records() -> Iterator[tuple[int, protocol.DataRecord]]:
        for entry in entries:
            for arrival_ns, record in reader._decode(iter((entry.payload,))):
                if record is not None:
                    yield arrival_ns, record

    return meta, records()


def read_journal(path: Path) -> tuple[EpisodeMeta, list[tuple[int, protocol.DataRecord]]]:
    """Every intact record of a journal in memory (small journals, tools and tests)."""
    meta, records = iter_journal(path)
    return meta, list(records)


def read_unsealed_episode(data_dir: Path, robot_id: str, episode_id: str) -> list[tuple[int, protocol.DataRecord]]:
    """What an ingest's data directory holds of an episode not sealed yet: its journal
    file, or its records in the shared journal (tools and tests; files not changed)."""
    path = data_dir / "journal" / robot_id / f"{episode_id}{JOURNAL_SUFFIX}"
    if path.exists():
        return read_journal(path)[1]
    payloads = iter_episode_payloads(data_dir / "journal" / SHARED_DIR, (robot_id, episode_id))
    header = next(payloads, None)
    if header is None:
        return []
    reader = EpisodeJournal(path, EpisodeMeta.from_payload(header, path))
    return [(arrival, record) for arrival, record in reader._decode(payloads) if record is not None]


def quarantine_path(data_dir: Path, robot_id: str, episode_id: str) -> Path:
    return data_dir / QUARANTINE / robot_id / f"{episode_id}{JOURNAL_SUFFIX}"


def quarantine_records(data_dir: Path, payloads: Iterator[bytes], robot_id: str, episode_id: str, reason: str,
                       source: str) -> Path:
    """Quarantine an episode of the shared journal: copy its records (header first)
    into ``<data>/quarantine/<robot>/<episode>.rfj``, a journal file like any other,
    beside the reason. Records that cannot be read end the copy; the reason says so."""
    dest = _free_quarantine_path(data_dir, robot_id, episode_id)
    partial = dest.with_name(dest.name + ".partial")
    copied = 0
    try:
        with RecordWriter(partial) as out:
            try:
                for payload in payloads:
                    out.append(payload)
                    copied += 1
            except StoreError as err:
                reason = f"{reason}; only its first {copied} records could be copied ({err})"
        _write_reason(dest, robot_id, episode_id, source, reason)
        os.replace(partial, dest)
    except OSError:
        partial.unlink(missing_ok=True)  # the records stay in the shared journal; the next start tries again
        raise
    fsync_dir(dest.parent)
    return dest


def _free_quarantine_path(data_dir: Path, robot_id: str, episode_id: str) -> Path:
    dest = quarantine_path(data_dir, robot_id, episode_id)
    make_dirs_durably(dest.parent)
    if dest.exists():  # quarantined before under the same name: keep both
        dest = dest.with_name(f"{episode_id}.{os.getpid()}-{os.urandom(3).hex()}{JOURNAL_SUFFIX}")
    return dest


def _write_reason(dest: Path, robot_id: str, episode_id: str, source: str, reason: str) -> None:
    reason_file = dest.with_name(dest.name[: -len(JOURNAL_SUFFIX)] + ".reason.txt")
    reason_file.write_text(f"robot {robot_id} episode {episode_id}\njournal {source}\nquarantined because: {reason}\n")


def quarantine_journal(data_dir: Path, journal_path: Path, robot_id: str, episode_id: str, reason: str) -> Path:
    """Move a journal that cannot be sealed out of the way, with a file saying why.

    It lands in ``<data>/quarantine/<robot>/<episode>.rfj`` beside
    ``<episode>.reason.txt``, so the next start does not try it again (a crash
    loop) and an engineer can look at it.
    """
    dest = _free_quarantine_path(data_dir, robot_id, episode_id)
    _write_reason(dest, robot_id, episode_id, str(journal_path), reason)
    os.replace(journal_path, dest)
    fsync_dir(dest.parent)
    fsync_dir(journal_path.parent)
    return dest

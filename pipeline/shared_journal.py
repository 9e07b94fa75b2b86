"""The ingest's shared journal: every open episode's records in one log.

One ingest process appends the records of all its open episodes to one
record log (:mod:`pipeline.record_log`), cut into segments of
``segment_bytes`` under ``<data>/journal/shared/<number>.rfl``. A group commit
then costs one ``fdatasync`` however many robots stream, where a journal file
per episode cost one per robot (40 robots, 40 fsyncs every 20 ms).

A record is ``u32 segment number | u8 tag length | "<robot>/<episode>" |
journal payload``; the journal payload is exactly what a per-episode journal
(:mod:`pipeline.journal`) holds: the episode's header, an accepted message,
or an ingest note. The segment number lets a reader tell a record of this
segment from stale bytes. Each episode keeps the places of its records
(segment, offset, length), so sealing reads only its own.

Segments are written with direct I/O (:mod:`pipeline.direct_record_writer`):
the fleet's stream does not pass through the page cache, where it would be
copied into fresh pages, written back later and read once, at the seal, which
reads its episode from disk. Where the file system does not take direct I/O,
a segment goes through the page cache, which drops what a commit made durable
(``uncache_synced``) and starts writing records as they are appended
(``write_behind``), so that a commit's ``fdatasync`` finds little left to write.

A segment is freed once every episode with a record in it is sealed, on a
thread of its own (``segment-free``). With direct I/O, up to ``spare_segments``
freed segments are kept as spares (renamed ``<number>.spare``) and the next
segments are written over them: their blocks are allocated and written
already, so a write allocates nothing and no deletion frees them. Deleting a
256 MB segment took 40-90 ms on this project's VM (ext4 frees its extents and,
mounted with ``discard``, trims them before ``unlink`` returns), and the
commits beside it waited: p99 19 ms and up to 60 ms with deletions in one
``unlink``, 5 and 7 ms with spares (``tools/bench_segment_recycling.py``, 40
robots). A recycled
segment's old records stay past the new ones until they are overwritten;
they carry their old segment number, and a reader stops at the first record
of another segment. Spares are kept only while the disk has room for
``_SPARE_HEADROOM_SEGMENTS`` segments besides; below that, freed segments and
spares are deleted, a piece at a time (:func:`_delete_segment`). An
episode that stays open long (longer than ``graduate_after_s`` after the
oldest segment it pins was started) graduates: its records are copied into a
journal file of its own (``<data>/journal/<robot>/<episode>.rfj``, written
aside and renamed into place, so recovery sees either the shared records or
the whole file) and it goes on there; one long episode then does not hold the
whole fleet's data on disk.

Threads: after :meth:`SharedJournal.recover`, only the ingest's journal
writer thread appends, rotates, releases and graduates (the segments it frees
are deleted or kept as spares on the ``segment-free`` thread); a seal (worker process or thread) reads
an episode's records once the writer has passed its last write.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.direct_record_writer import DirectRecordWriter, open_record_log, overwrite_record_log
from pipeline.errors import StoreError
from pipeline.record_log import (
    RECORD_HEAD,
    RecordAppender,
    RecordWriter,
    checked_payload,
    fsync_dir,
    iter_log,
    make_dirs_durably,
    sync_file,
    truncate_to,
)
from pipeline.thread_names import name_os_thread

if TYPE_CHECKING:
    from pipeline.journal import EpisodeJournal

log = logging.getLogger("refinery.ingest")

SHARED_DIR = "shared"
SEGMENT_SUFFIX = ".rfl"
SPARE_SUFFIX = ".spare"
DEFAULT_SPARE_SEGMENTS = 2
_SPARE_HEADROOM_SEGMENTS = 4  # free disk, in segments, below which no spare is kept
FREE_SUFFIX = ".free"  # a segment being deleted
_DELETE_STEP_BYTES = 32 << 20  # a segment is deleted this much at a time (0: in one unlink)
_DELETE_PAUSE_S = 0.02  # between two steps
DEFAULT_SEGMENT_BYTES = 256 << 20
DEFAULT_GRADUATE_AFTER_S = 300.0
_PREFIX = struct.Struct("<IB")  # segment number, tag length
_SEGMENT = struct.Struct("<I")
_READ_CHUNK = 256  # records copied per write when an episode graduates
_READ_AHEAD = 64  # records a seal asks the disk for ahead of the one it reads

EpisodeKey = tuple[str, str]


def episode_tag(robot_id: str, episode_id: str) -> bytes:
    """The record prefix part naming an episode (ids are at most 64 safe characters, no '/')."""
    tag = f"{robot_id}/{episode_id}".encode()
    return bytes((len(tag),)) + tag


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:010d}{SEGMENT_SUFFIX}"


def spare_path(directory: Path, number: int) -> Path:
    """Where freed segment ``number`` waits to be written over as a later segment."""
    return directory / f"{number:010d}{SPARE_SUFFIX}"


class StaleRecord(ValueError):
    """A record of another segment: bytes a recycled segment held before (the log's end)."""


@dataclass
class Places:
    """Where an episode's records are: segment number, offset and length of each."""

    segments: array = field(default_factory=lambda: array("I"))
    offsets: array = field(default_factory=lambda: array("q"))
    lengths: array = field(default_factory=lambda: array("I"))

    def add(self, segment: int, offset: int, length: int) -> None:
        self.segments.append(segment)
        self.offsets.append(offset)
        self.lengths.append(length)

    def since(self, start: int) -> Places:
        """A copy of the places from the ``start``-th on."""
        return Places(self.segments[start:], self.offsets[start:], self.lengths[start:])

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class _Segment:
    number: int
    started: float  # time.monotonic() when its first record was written
    episodes: dict[EpisodeKey, EpisodeJournal] = field(default_factory=dict)
    kept: set[EpisodeKey] = field(default_factory=set)  # unreadable episodes not quarantined: kept for the next start


@dataclass
class Recovered:
    """What :meth:`SharedJournal.recover` found."""

    journals: list[EpisodeJournal]
    unreadable: dict[EpisodeKey, str]  # episodes whose records do not replay, with the reason (to quarantine)
    unreadable_places: dict[EpisodeKey, Places]


class SharedJournal:
    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 graduate_after_s: float = DEFAULT_GRADUATE_AFTER_S, direct_io: bool = True,
                 spare_segments: int = DEFAULT_SPARE_SEGMENTS) -> None:
        """``direct_io``: write segments past the page cache where the file system allows;
        ``spare_segments``: freed segments kept to be written over (0: each is deleted)."""
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.graduate_after_s = graduate_after_s
        self.direct_io = direct_io
        self.spare_segments = spare_segments
        self._segments: dict[int, _Segment] = {}
        self._current: RecordAppender | None = None
        self._current_number = 0
        self._prefix = b""
        self._freer: ThreadPoolExecutor | None = None  # started with the first freed segment
        self._spares: deque[Path] = deque()  # appended by the freeing thread, taken by the writer thread
        self._spares_lock = threading.Lock()
        self.recycled = 0  # segments written over a spare so far
        # An fsync (of a segment, or of the directory) failed: nothing it covered may be acknowledged.
        self.sync_failure: OSError | None = None
        # Whether segments take direct writes, so that a spare can be written over
        # (learnt at each new segment; until the first, what was asked for).
        self._recycles = direct_io and hasattr(os, "O_DIRECT")

    # ------------------------------------------------------------------ the writer thread's side

    @property
    def current(self) -> RecordAppender | None:
        """The segment being appended to (what a group commit syncs)."""
        return self._current

    @property
    def current_number(self) -> int:
        """The number of the segment being appended to (segments started so far, from 1)."""
        return self._current_number

    def append(self, journals: list[EpisodeJournal], payloads: list[list[bytes]], lengths: list[int]) -> int:
        """Append one record per payload (``journals[i]``'s, given as parts, ``lengths[i]``
        bytes) and note each one's place in its journal's ``written.places``. All or
        nothing: OSError leaves no record and no place behind. Returns the segment."""
        if self._current is None or self._current.size >= self.segment_bytes:
            self._rotate()
        assert self._current is not None
        prefix = self._prefix
        offsets: list[int] = []
        self._current.append_records([[prefix, j.tag, *parts] for j, parts in zip(journals, payloads)], offsets)
        number = self._current_number
        segment = self._segments[number]
        extra = len(prefix) + RECORD_HEAD.size
        for journal, offset, length in zip(journals, offsets, lengths):
            journal.written.places.add(number, offset, extra + len(journal.tag) + length)
            segment.episodes[journal.key] = journal
        return number

    def _rotate(self) -> None:
        """Start the next segment; the last one is made durable first, so that only the
        newest segment can ever end in a torn record."""
        if self._current is not None:
            try:
                self._current.sync()
            except OSError as err:  # the batch fails; the ingest stops at its next commit
                self.sync_failure = err
                raise
            self._current.close()
        number = self._current_number + 1
        path = segment_path(self.directory, number)
        writer = self._open_segment(path)
        try:
            writer.preallocate(self.segment_bytes)  # OSError (no room): the batch fails and is retried
            try:
                fsync_dir(self.directory)
            except OSError as err:
                self.sync_failure = err
                raise
        except OSError:
            writer.close()
            path.unlink(missing_ok=True)  # so that the next try can create it again
            raise
        self._current, self._current_number = writer, number
        self._prefix = _SEGMENT.pack(number)
        self._segments[number] = _Segment(number, time.monotonic())
        self._collect()

    def _open_segment(self, path: Path) -> RecordAppender:
        """A new, empty segment at ``path``: a spare written over, else a new file."""
        spare = self._take_spare()
        if spare is not None:
            try:
                os.rename(spare, path)
                writer: RecordAppender = overwrite_record_log(path)
                self.recycled += 1
            except OSError as err:
                log.warning("cannot write journal segment %s over the spare %s (%s); starting a new file",
                            path, spare.name, err.strerror or err)
                if path.exists():
                    os.replace(path, spare)  # deleted off this thread, like any freed segment
                self._free_later(spare)
            else:
                return writer
        writer = open_record_log(path, direct=self.direct_io)
        self._recycles = isinstance(writer, DirectRecordWriter)
        return writer

    def _take_spare(self) -> Path | None:
        with self._spares_lock:  # spares are only ever kept where segments take direct writes
            return self._spares.popleft() if self._spares else None

    def release(self, journal: EpisodeJournal) -> None:
        """The episode is sealed (or quarantined): its records are no longer needed."""
        for number in set(journal.written.places.segments):
            segment = self._segments.get(number)
            if segment is not None:
                segment.episodes.pop(journal.key, None)
        self._collect()

    def _collect(self) -> None:
        """Free every segment no open episode has records in (not the current one), on
        the freeing thread. No directory fsync: a segment that comes back after a crash
        holds only sealed episodes and is freed again at recovery."""
        for number in [n for n, s in self._segments.items()
                       if not s.episodes and not s.kept and n != self._current_number]:
            del self._segments[number]
            self._freeing_thread().submit(self._free, number)

    def _freeing_thread(self) -> ThreadPoolExecutor:
        if self._freer is None:
            self._freer = ThreadPoolExecutor(1, thread_name_prefix="segment-free", initializer=name_os_thread)
        return self._freer

    def _free_later(self, path: Path) -> None:
        """Delete ``path`` (a spare not wanted, a deletion a crash interrupted) on the freeing thread."""
        self._freeing_thread().submit(_delete_segment, path)

    def _free(self, number: int) -> None:
        """On the freeing thread: keep segment ``number`` as a spare, or delete it."""
        path = segment_path(self.directory, number)
        if self._recycles and self._room_for_spares():
            with self._spares_lock:
                wanted = len(self._spares) < self.spare_segments
            if wanted:
                spare = spare_path(self.directory, number)
                try:
                    os.rename(path, spare)
                except FileNotFoundError:
                    return
                except OSError as err:
                    log.warning("cannot keep journal segment %s as a spare: %s", path, err.strerror)
                else:
                    with self._spares_lock:
                        self._spares.append(spare)
                    return
        _delete_segment(path)

    def _room_for_spares(self) -> bool:
        """Whether the disk has room to keep spares; when it has not, the spares go."""
        try:
            stat = os.statvfs(self.directory)
        except OSError:
            return False
        if stat.f_bavail * stat.f_frsize >= _SPARE_HEADROOM_SEGMENTS * self.segment_bytes:
            return True
        with self._spares_lock:
            spares, self._spares = list(self._spares), deque()
        for spare in spares:
            _delete_segment(spare)
        return False

    def spares(self) -> list[Path]:
        """The spare segments kept now (the freeing thread may be adding one)."""
        with self._spares_lock:
            return list(self._spares)

    def wait_for_deletions(self) -> None:
        """Return once every segment freed so far is deleted or kept as a spare."""
        if self._freer is not None:
            self._freer.submit(lambda: None).result()

    def due_to_graduate(self, now: float) -> list[EpisodeJournal]:
        """Episodes that pin a segment started more than ``graduate_after_s`` ago."""
        due: dict[EpisodeKey, EpisodeJournal] = {}
        for segment in self._segments.values():
            if now - segment.started > self.graduate_after_s and segment.number != self._current_number:
                due.update(segment.episodes)
        return [j for j in due.values() if not (j.sealing or j.graduating) and j.write_error is None]

    def copy_out(self, places: Places, tag: bytes, partial: Path) -> RecordWriter:
        """Copy the records at ``places`` into a new file ``partial``, synced, and
        return its writer, still open (any thread: it only reads the segments)."""
        make_dirs_durably(partial.parent)
        partial.unlink(missing_ok=True)
        out = RecordWriter(partial, exclusive=True)
        try:
            self._copy(places, tag, out)
            out.sync()
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
        return out

    def finish_graduation(self, journal: EpisodeJournal, out: RecordWriter, copied: int, path: Path) -> RecordWriter:
        """Complete :meth:`copy_out` on the writer thread: copy what ``journal`` wrote
        since, put the file in place, release the episode's records here, and
        return the writer the journal goes on with."""
        try:
            self._copy(journal.written.places.since(copied), journal.tag, out)
            out.close()  # synced
            os.replace(out.path, path)
            fsync_dir(path.parent)
        except BaseException:
            out.close()
            out.path.unlink(missing_ok=True)
            raise
        self.release(journal)
        return RecordWriter(path)

    def _copy(self, places: Places, tag: bytes, out: RecordWriter) -> None:
        chunk: list[list[bytes]] = []
        for payload in self.read_payloads(places, tag):
            chunk.append([payload])
            if len(chunk) == _READ_CHUNK:
                out.append_records(chunk)
                chunk = []
        out.append_records(chunk)

    def close(self) -> None:
        """Sync and close the current segment; delete it if nothing open is in it, else
        give back the blocks reserved past its end. Waits for the segments being freed;
        the spares stay for the next start."""
        if self._freer is not None:
            self._freer.shutdown(wait=True)
            self._freer = None
        if self._current is None:
            return
        self._current.close()
        segment = self._segments.get(self._current_number)
        path = segment_path(self.directory, self._current_number)
        if segment is not None and not segment.episodes and not segment.kept:
            path.unlink(missing_ok=True)
        else:
            os.truncate(path, self._current.size)

    # ------------------------------------------------------------------ reading (seals, recovery)

    def read_payloads(self, places: Places, tag: bytes) -> Iterator[bytes]:
        """The journal payloads at ``places``, in order, each checked (CRC, segment, episode).

        The records are on disk, not in the page cache (direct I/O, or dropped once
        synced), and scattered among the fleet's: read one by one, each read waited
        for the disk. The next ``_READ_AHEAD`` records are asked for ahead
        (``POSIX_FADV_WILLNEED``), so the disk serves them while the seal works."""
        handles: dict[int, int] = {}

        def fd_of(number: int) -> int:
            fd = handles.get(number)
            if fd is None:
                path = segment_path(self.directory, number)
                try:
                    fd = handles[number] = os.open(path, os.O_RDONLY)
                except OSError as err:
                    raise StoreError(str(path), f"journal segment unreadable: {err.strerror}") from err
            return fd

        segments, offsets, lengths = places.segments, places.offsets, places.lengths
        count = len(offsets)
        try:
            for i in range(count):
                for ahead in range(i + _READ_AHEAD if i else 0, min(i + _READ_AHEAD + 1, count)):
                    _will_need(fd_of(segments[ahead]), offsets[ahead], lengths[ahead])
                number = segments[i]
                yield self._read_one(fd_of(number), number, offsets[i], lengths[i], tag)
        finally:
            for fd in handles.values():
                os.close(fd)

    def _read_one(self, fd: int, number: int, offset: int, length: int, tag: bytes) -> bytes:
        where = f"{segment_path(self.directory, number)} at {offset}"
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise StoreError(where, "journal record cut short")
        body = checked_payload(data, where)
        start = 4 + len(tag)
        if _PREFIX.unpack_from(body)[0] != number or bytes(body[4:start]) != tag:
            raise StoreError(where, "journal record belongs to another segment or episode")
        return bytes(body[start:])

    @classmethod
    def recover(cls, directory: Path, *, is_finished: Callable[[EpisodeKey], bool], skip: set[EpisodeKey],
                segment_bytes: int = DEFAULT_SEGMENT_BYTES, graduate_after_s: float = DEFAULT_GRADUATE_AFTER_S,
                direct_io: bool = True, spare_segments: int = DEFAULT_SPARE_SEGMENTS,
                ) -> tuple[SharedJournal, Recovered]:
        """Replay every segment a previous run left: rebuild each open episode's
        state and places, and cut a torn tail off the newest segment. Appends
        then go to a new segment.

        ``skip`` names episodes that have a journal file of their own (graduated:
        the file is the whole truth); ``is_finished`` says whether an episode is sealed
        or quarantined (its records are not needed). An episode whose records do
        not replay is returned in ``unreadable``: quarantine it (:meth:`read_payloads`),
        then call :meth:`collect` to delete the segments that hold nothing open.
        """
        from pipeline.journal import EpisodeJournal

        directory.mkdir(parents=True, exist_ok=True)
        shared = cls(directory, segment_bytes, graduate_after_s, direct_io, spare_segments)
        for spare in sorted(directory.glob(f"*{SPARE_SUFFIX}")):
            if shared._recycles and len(shared._spares) < spare_segments:
                shared._spares.append(spare)
            else:
                shared._free_later(spare)
        for doomed in directory.glob(f"*{FREE_SUFFIX}"):  # a deletion the crash interrupted
            shared._free_later(doomed)
        numbers = sorted(int(p.name[: -len(SEGMENT_SUFFIX)]) for p in directory.glob(f"*{SEGMENT_SUFFIX}")
                         if p.name[: -len(SEGMENT_SUFFIX)].isdigit())
        for partial in directory.parent.glob("*/*.rfj.partial"):  # a graduation the crash interrupted
            partial.unlink(missing_ok=True)
        journals: dict[EpisodeKey, EpisodeJournal] = {}
        unreadable: dict[EpisodeKey, str] = {}
        unreadable_places: dict[EpisodeKey, Places] = {}
        sealed: dict[EpisodeKey, bool] = {}
        now = time.monotonic()
        for number in numbers:
            path = segment_path(directory, number)
            segment = shared._segments[number] = _Segment(number, now)
            good = 0
            stale_end = False
            for entry in iter_log(path):
                length = RECORD_HEAD.size + len(entry.payload)
                try:
                    key, payload = _split(entry.payload, number)
                except StaleRecord:
                    stale_end = True  # the old bytes of a recycled segment: its log ends here
                    break
                except ValueError as err:
                    log.error("journal segment %s: record at %d skipped: %s", path, entry.offset, err)
                    good = entry.offset + length
                    continue
                good = entry.offset + length
                if key in skip:
                    continue
                if key not in sealed:
                    sealed[key] = is_finished(key)
                if sealed[key]:
                    continue
                if key in unreadable:
                    unreadable_places[key].add(number, entry.offset, length)
                    continue
                journal = journals.get(key)
                try:
                    if journal is None:
                        journal = journals[key] = EpisodeJournal.from_shared_header(payload, shared, str(path))
                        if journal.key != key:
                            raise StoreError(str(path), f"header names {journal.key}, record is tagged {key}")
                    else:
                        journal.replay(payload)
                except Exception as err:  # noqa: BLE001 - no episode's records may stop the ingest at every start
                    unreadable[key] = str(err) if isinstance(err, StoreError) else f"{type(err).__name__}: {err}"
                    places = journal.written.places if journal is not None else Places()
                    journals.pop(key, None)
                    places.add(number, entry.offset, length)
                    unreadable_places[key] = places
                    continue
                journal.written.places.add(number, entry.offset, length)
                journal.size += length
                segment.episodes[key] = journal
            size = path.stat().st_size
            if good != size and (number == numbers[-1] or stale_end):
                # The newest segment's torn tail (the last write before the crash), or the old
                # records of any recycled one whose cut at its close the crash came before.
                truncate_to(path, good)  # and fsyncs what it keeps
            else:
                if good != size:
                    log.error("journal segment %s ends in a damaged record at %d; its records up to there "
                              "are kept", path, good)
                if segment.episodes:
                    sync_file(path)  # the killed ingest's last records may be in the page cache only
            shared._current_number = number
        for journal in journals.values():
            journal.durable = dict(journal.next_seq)
        for segment in shared._segments.values():
            for key in unreadable:
                segment.episodes.pop(key, None)
        return shared, Recovered(list(journals.values()), unreadable, unreadable_places)

    def collect(self) -> None:
        """Delete the segments no open episode needs (after recovery's quarantines)."""
        self._collect()

    def keep(self, key: EpisodeKey, places: Places) -> None:
        """Keep the segments of an episode that could not be quarantined (until the next start)."""
        for number in set(places.segments):
            if number in self._segments:
                self._segments[number].kept.add(key)


def _delete_segment(path: Path) -> None:
    """Delete a freed segment (or spare) a piece at a time, on the freeing thread.

    Freeing a file's blocks costs disk time (ext4 trims them at once when mounted
    with ``discard``): 256 MB deleted in one ``unlink`` held the commits' writes and
    syncs beside it up to 60 ms, and a burst of freed segments (a backlog sealed,
    every robot stopping at a shift's end) queued such deletions back to back. Cut
    by ``_DELETE_STEP_BYTES`` with a pause between, the slowest commit beside them
    took 12-17 ms instead of 56-79 (``tools/bench_segment_recycling.py``, with and
    without ``--burst``). The file is renamed ``<number>.free`` first, so that a
    crash mid-way leaves no shortened segment for recovery to read."""
    doomed = path.with_suffix(FREE_SUFFIX)
    try:
        os.rename(path, doomed)
        size = doomed.stat().st_size
        while _DELETE_STEP_BYTES and size > _DELETE_STEP_BYTES:
            size -= _DELETE_STEP_BYTES
            os.truncate(doomed, size)
            time.sleep(_DELETE_PAUSE_S)
        doomed.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        log.error("cannot delete journal segment %s: %s; it is tried again at the next start", path, err)


def _will_need(fd: int, offset: int, length: int) -> None:
    if _fadvise is not None:
        try:
            _fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only advice: the read itself still says what is wrong


_fadvise = getattr(os, "posix_fadvise", None)


def iter_episode_payloads(directory: Path, key: EpisodeKey) -> Iterator[bytes]:
    """An episode's journal payloads (header first) from the shared journal, read
    without changing it (tools: an episode a stopped ingest had not sealed)."""
    numbers = sorted(int(p.name[: -len(SEGMENT_SUFFIX)]) for p in directory.glob(f"*{SEGMENT_SUFFIX}")
                     if p.name[: -len(SEGMENT_SUFFIX)].isdigit())
    for number in numbers:
        for entry in iter_log(segment_path(directory, number)):
            try:
                found, payload = _split(entry.payload, number)
            except StaleRecord:
                break
            except ValueError:
                continue
            if found == key:
                yield payload


def _split(payload: bytes, number: int) -> tuple[EpisodeKey, bytes]:
    """(robot, episode) and the journal payload of a shared record of segment ``number``."""
    if len(payload) < _PREFIX.size:
        raise ValueError("record shorter than its prefix")
    segment, tag_length = _PREFIX.unpack_from(payload)
    if segment != number:
        raise StaleRecord(f"record of segment {segment} in segment {number}")
    start = _PREFIX.size
    try:
        robot_id, episode_id = payload[start : start + tag_length].decode().split("/")
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError("episode tag unreadable") from err
    return (robot_id, episode_id), payload[start + tag_length :]

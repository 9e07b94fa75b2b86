"""The ingest's journal appends, on a thread of their own.

A journal append is a CRC-32 of the message and one ``writev``: both release
the GIL, so on their own thread they run beside the event loop, which goes on
receiving and checking the next messages. The loop decides everything (what is
accepted, in which order) and queues the writes; this thread performs them in
exactly that order and records, per journal, the stream state that has reached
the file (:class:`WrittenState`).

Ordering is what keeps "acknowledged means durable": a group commit queues a
:meth:`JournalWriter.barrier` and fsyncs only once the thread has passed it,
so the fsync covers every write accepted before the commit's snapshot. A seal
waits for a barrier too, so the journal is complete on disk before it is read.

A write that fails (disk full) is rolled back to the last whole record by
:class:`~pipeline.record_log.RecordWriter`; the thread then skips that
journal's later writes and the loop, once it has stopped queuing for it and
the thread has reached its rollback request, resets the journal's state to
what is on disk (:meth:`~pipeline.journal.EpisodeJournal.roll_back_to_written`).
Nothing unwritten is ever acknowledged: the collector still holds it and
resends it.

Memory is bounded: the loop waits when more than ``max_queued_bytes`` are
queued (the collectors' credit windows normally keep it far below that).

With a :class:`~pipeline.shared_journal.SharedJournal`, the records of every
episode in it that queued together are written with one ``writev`` to its
current segment, and a barrier names that segment, so the commit syncs one
file. The thread also frees segments once their episodes are released
(sealed), and moves long-open episodes into journal files of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from pipeline.errors import StoreError
from pipeline.record_log import RECORD_HEAD, RecordAppender, RecordWriter
from pipeline.shared_journal import Places, SharedJournal
from pipeline.thread_names import name_os_thread

if TYPE_CHECKING:
    from pipeline.journal import EpisodeJournal

log = logging.getLogger("refinery.ingest")

_DATA, _NOTE, _HEADER, _BATCH, _BARRIER, _ROLLBACK, _RELEASE, _STOP = range(8)
_MAX_BATCH = 512  # queued items taken at once
_GRADUATION_CHECK_S = 1.0


@dataclass
class WrittenState:
    """What of a journal has reached its file (kept by the writer thread)."""

    next_seq: dict[str, int] = field(default_factory=dict)
    stop: dict[str, Any] | None = None
    first_capture_ns: int | None = None
    limit: str = ""
    places: Places = field(default_factory=Places)  # in the shared journal: where each record is


class Barrier(threading.Event):
    """Set once every write queued before it is done (or failed). ``segment``: the
    shared journal's segment those writes went to, which a commit must sync
    (earlier segments were synced when the next one was started)."""

    segment: RecordAppender | None = None


class JournalWriterDied(RuntimeError):
    """The writer thread ended: nothing more can be made durable."""


class JournalWriter:
    def __init__(self, max_queued_bytes: int = 16 << 20, shared: SharedJournal | None = None,
                 graduate_to: Path | None = None) -> None:
        """``shared``: the shared journal this thread appends to (it owns it from now
        on); ``graduate_to``: the journal directory long-open episodes move to."""
        self.max_queued_bytes = max_queued_bytes
        self.shared = shared
        self.graduate_to = graduate_to
        self._next_graduation_check = time.monotonic() + _GRADUATION_CHECK_S
        self._graduations: dict[EpisodeJournal, tuple[int, Future[RecordWriter]]] = {}
        self._graduator = (ThreadPoolExecutor(1, thread_name_prefix="graduate", initializer=name_os_thread)
                           if shared is not None and graduate_to is not None else None)
        self._queue: SimpleQueue[tuple[Any, ...]] = SimpleQueue()
        self._pending: list[tuple[Any, ...]] = []  # queued by the loop, not handed over yet (flush)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        # Bytes queued = reserved - released; each counter has one writer (the loop,
        # the thread), so the per-message path takes no lock unless the queue is full.
        self._reserved = 0
        self._released = 0
        self._waiting = False
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop's side

    def append(self, journal: EpisodeJournal, parts: list[Any], size: int, stream: str, seq: int,
               capture_ns: int, stop: dict[str, Any] | None) -> None:
        self._reserve(size)
        self._pending.append((_DATA, journal, parts, size, stream, seq, capture_ns, stop))

    def note(self, journal: EpisodeJournal, payload: bytes, limit: str) -> None:
        size = RECORD_HEAD.size + len(payload)
        self._reserve(size)
        self._pending.append((_NOTE, journal, [payload], size, limit))

    def header(self, journal: EpisodeJournal, payload: bytes, size: int) -> None:
        """A new episode's first record (in the shared journal)."""
        self._reserve(size)
        self._pending.append((_HEADER, journal, [payload], size))

    def barrier(self) -> Barrier:
        """A barrier set once every write queued before it is done (or failed)."""
        done = Barrier()
        self.flush()
        self._queue.put((_BARRIER, done))
        return done

    def release(self, journal: EpisodeJournal) -> None:
        """``journal``'s episode is sealed: its records in the shared journal may go."""
        self.flush()
        self._queue.put((_RELEASE, journal))

    def wait(self, barrier: threading.Event) -> None:
        while not barrier.wait(1.0):
            if not self._thread.is_alive():
                raise JournalWriterDied("the journal writer thread ended; nothing more can be made durable")

    def request_rollback(self, journal: EpisodeJournal) -> None:
        """Once the writes queued so far are done, mark ``journal`` ready to roll back."""
        self.flush()
        self._queue.put((_ROLLBACK, journal))

    def close(self) -> None:
        """Finish every queued write, then end the thread."""
        self.flush()
        self._queue.put((_STOP,))
        self._thread.join()

    def flush(self) -> None:
        """Hand the writes queued since the last flush to the thread, in one piece.

        The loop calls it after each batch of received messages (barriers and the
        like flush first): the thread then wakes once per batch and writes it with
        few ``writev`` calls, instead of waking, taking the GIL and writing once
        per message while the loop is still receiving."""
        if self._pending:
            self._queue.put((_BATCH, self._pending))
            self._pending = []

    def _reserve(self, size: int) -> None:
        if self._reserved - self._released > self.max_queued_bytes:
            self.flush()  # what is waiting here is what the thread must write to make room
            with self._lock:
                self._waiting = True
                while self._reserved - self._released > self.max_queued_bytes and self._thread.is_alive():
                    self._room.wait(1.0)
                self._waiting = False
        self._reserved += size

    def _release(self, size: int) -> None:
        self._released += size
        if self._waiting:
            with self._lock:
                self._room.notify_all()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        name_os_thread()
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        while True:
            # Whatever queued up while the last writes ran is written together: one
            # writev per journal, so a busy ingest pays fewer system calls (and fewer
            # returns to the GIL) per message, not more.
            items = [get()]
            try:
                while len(items) < _MAX_BATCH:
                    items.append(get_nowait())
            except Empty:
                pass
            writes: list[tuple[Any, ...]] = []
            for item in items:
                kind = item[0]
                if kind <= _HEADER:
                    writes.append(item)
                    continue
                if kind == _BATCH:
                    writes.extend(item[1])
                    continue
                self._write_batch(writes)  # everything queued before a barrier, rollback, release or stop
                writes = []
                if kind == _BARRIER:
                    if self.shared is not None:
                        item[1].segment = self.shared.current
                    item[1].set()
                elif kind == _ROLLBACK:
                    item[1].rollback_ready = True
                elif kind == _RELEASE:
                    if self.shared is not None:
                        self.shared.release(item[1])
                else:
                    self._stop_graduations()
                    if self.shared is not None:
                        try:
                            self.shared.close()
                        except OSError as err:  # what was acknowledged was synced by its commit
                            log.error("closing the shared journal: %s", err)
                    return
            self._write_batch(writes)
            if self._graduator is not None:
                self._tend_graduations()

    def _write_batch(self, items: list[tuple[Any, ...]]) -> None:
        """Write queued records, each journal's in their queued order, and record what reached the files."""
        if not items:
            return
        by_journal: dict[int, list[tuple[Any, ...]]] = {}
        shared: list[tuple[Any, ...]] = []
        size = 0
        for item in items:
            size += item[3]
            journal = item[1]
            if journal.write_error is not None:
                continue  # nothing after a failed write, until the loop has rolled the journal back
            if journal.shared is not None:
                shared.append(item)
            else:
                by_journal.setdefault(id(journal), []).append(item)
        if shared:
            self._write_shared(shared)
        for group in by_journal.values():
            journal = group[0][1]
            if self._write(journal, [item[2] for item in group]):
                self._advance_written(group)
        self._release(size)

    def _write_shared(self, items: list[tuple[Any, ...]]) -> None:
        """One writev to the shared journal for every episode's records of this batch."""
        assert self.shared is not None
        journals = [item[1] for item in items]
        try:
            self.shared.append(journals, [item[2] for item in items], [item[3] - RECORD_HEAD.size for item in items])
        except OSError as err:
            for journal in journals:
                journal.record_write_failure(err)
            return
        self._advance_written(items)

    @staticmethod
    def _advance_written(items: list[tuple[Any, ...]]) -> None:
        for item in items:
            kind = item[0]
            written = item[1].written
            if kind == _DATA:
                _, _, _, _, stream, seq, capture_ns, stop = item
                written.next_seq[stream] = seq + 1
                if written.first_capture_ns is None:
                    written.first_capture_ns = capture_ns
                if stop is not None:
                    written.stop = stop
            elif kind == _NOTE:
                written.limit = item[4]

    def _stop_graduations(self) -> None:
        """At shutdown: copies not finished are dropped (the next start replays the shared journal)."""
        if self._graduator is None:
            return
        self._graduator.shutdown(wait=True, cancel_futures=True)
        for _, future in self._graduations.values():
            if future.done() and future.exception() is None:
                out = future.result()
                out.close()
                out.path.unlink(missing_ok=True)
        self._graduations.clear()

    def _tend_graduations(self) -> None:
        """Move episodes that pin an old segment into journal files of their own: the
        bulk of the copy runs on the graduation thread, so writes go on meanwhile;
        what the episode wrote since is copied here, and then it switches over."""
        assert self.shared is not None and self.graduate_to is not None
        from pipeline.journal import JOURNAL_SUFFIX  # journal.py imports this module

        for journal, (copied, future) in list(self._graduations.items()):
            if not future.done():
                continue
            del self._graduations[journal]
            robot_id, episode_id = journal.key
            try:
                out = future.result()
            except Exception as err:  # noqa: BLE001 - the episode stays where it is, in the shared journal
                _cannot_graduate(journal, err)
                continue
            if journal.sealing or journal.write_error is not None:
                out.close()
                out.path.unlink(missing_ok=True)
                journal.graduating = journal.sealing
                continue
            path = self.graduate_to / robot_id / f"{episode_id}{JOURNAL_SUFFIX}"
            try:
                writer = self.shared.finish_graduation(journal, out, copied, path)
            except (OSError, StoreError) as err:
                _cannot_graduate(journal, err)
                continue
            journal.writer = writer  # before shared is cleared: the journal is never without a place to go
            journal.path = path
            journal.shared = None
            journal.written.places = Places()
            log.info("robot=%s episode=%s open for long: moved to %s", robot_id, episode_id, path)
        now = time.monotonic()
        if now < self._next_graduation_check:
            return
        self._next_graduation_check = now + _GRADUATION_CHECK_S
        for journal in self.shared.due_to_graduate(now):
            robot_id, episode_id = journal.key
            partial = self.graduate_to / robot_id / f"{episode_id}{JOURNAL_SUFFIX}.partial"
            places = journal.written.places
            journal.graduating = True
            self._graduations[journal] = (len(places), self._graduator.submit(
                self.shared.copy_out, places.since(0), journal.tag, partial))

    @staticmethod
    def _write(journal: EpisodeJournal, records: list[list[Any]]) -> bool:
        writer = journal.writer
        try:
            if writer is None:
                raise OSError(f"journal {journal.path} is closed")
            writer.append_records(records)
        except OSError as err:
            journal.record_write_failure(err)
            return False
        return True


def _cannot_graduate(journal: EpisodeJournal, err: Exception) -> None:
    """Said once: ``graduating`` stays set, so it is not tried again every second."""
    log.error("robot=%s episode=%s: cannot move it to a journal file of its own (%s); it stays in the shared "
              "journal until it is sealed", *journal.key, err)

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
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from pipeline.thread_names import name_os_thread

if TYPE_CHECKING:
    from pipeline.journal import EpisodeJournal

log = logging.getLogger("refinery.ingest")

_DATA, _NOTE, _BARRIER, _ROLLBACK, _STOP = range(5)
_MAX_BATCH = 512  # queued items taken at once


@dataclass
class WrittenState:
    """What of a journal has reached its file (kept by the writer thread)."""

    next_seq: dict[str, int] = field(default_factory=dict)
    stop: dict[str, Any] | None = None
    first_capture_ns: int | None = None
    limit: str = ""


class JournalWriterDied(RuntimeError):
    """The writer thread ended: nothing more can be made durable."""


class JournalWriter:
    def __init__(self, max_queued_bytes: int = 16 << 20) -> None:
        self.max_queued_bytes = max_queued_bytes
        self._queue: SimpleQueue[tuple[Any, ...]] = SimpleQueue()
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
        self._queue.put((_DATA, journal, parts, size, stream, seq, capture_ns, stop))

    def note(self, journal: EpisodeJournal, payload: bytes, limit: str) -> None:
        self._reserve(len(payload))
        self._queue.put((_NOTE, journal, [payload], len(payload), limit))

    def barrier(self) -> threading.Event:
        """An event set once every write queued before it is done (or failed)."""
        done = threading.Event()
        self._queue.put((_BARRIER, done))
        return done

    def wait(self, barrier: threading.Event) -> None:
        while not barrier.wait(1.0):
            if not self._thread.is_alive():
                raise JournalWriterDied("the journal writer thread ended; nothing more can be made durable")

    def request_rollback(self, journal: EpisodeJournal) -> None:
        """Once the writes queued so far are done, mark ``journal`` ready to roll back."""
        self._queue.put((_ROLLBACK, journal))

    def close(self) -> None:
        """Finish every queued write, then end the thread."""
        self._queue.put((_STOP,))
        self._thread.join()

    def _reserve(self, size: int) -> None:
        if self._reserved - self._released > self.max_queued_bytes:
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
                if kind == _DATA or kind == _NOTE:
                    writes.append(item)
                    continue
                self._write_batch(writes)  # everything queued before a barrier, rollback or stop
                writes = []
                if kind == _BARRIER:
                    item[1].set()
                elif kind == _ROLLBACK:
                    item[1].rollback_ready = True
                else:
                    return
            self._write_batch(writes)

    def _write_batch(self, items: list[tuple[Any, ...]]) -> None:
        """Write queued records, each journal's in their queued order, and record what reached the files."""
        if not items:
            return
        by_journal: dict[int, list[tuple[Any, ...]]] = {}
        for item in items:
            by_journal.setdefault(id(item[1]), []).append(item)
        size = 0
        for group in by_journal.values():
            journal = group[0][1]
            size += sum(item[3] for item in group)
            if journal.write_error is not None or not self._write(journal, [item[2] for item in group]):
                continue
            written = journal.written
            for item in group:
                if item[0] == _DATA:
                    _, _, _, _, stream, seq, capture_ns, stop = item
                    written.next_seq[stream] = seq + 1
                    if written.first_capture_ns is None:
                        written.first_capture_ns = capture_ns
                    if stop is not None:
                        written.stop = stop
                else:
                    written.limit = item[4]
        self._release(size)

    @staticmethod
    def _write(journal: EpisodeJournal, records: list[list[Any]]) -> bool:
        writer = journal.writer
        try:
            if writer is None:
                raise OSError(f"journal {journal.path} is closed")
            writer.append_records(records)
        except OSError as err:
            journal.write_error = err
            return False
        return True

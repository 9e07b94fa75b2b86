"""Sealing episodes in worker processes of their own, off the ingest's GIL.

A seal is mostly Python and HDF5 calls that hold the GIL: decoding every
record, appending to the datasets, reading the file back for its checksum.
On a thread of the ingest it took the GIL from the event loop whenever the
loop let it go (at every receive), for up to 8 ms at a time, and a floor that
records without pause seals all the time (README, Performance, "Sealing a
fleet"). A worker process has a GIL of its own, and runs only on CPU time
nothing else wants (:func:`run_when_idle`).

A :class:`SealJob` carries what a worker needs in plain values: the episode's
header, where its records are (a journal file, or places in the shared
journal), and what the ingest's stream state says is missing. The worker reads
the records itself, writes ``raw/<robot>/<episode>.h5`` atomically and, for a
journal file, deletes it. Nothing but our own jobs crosses the pipe to a
worker, and never anything from the network undecoded.

Workers are forked from a fork server that imported the sealing code once
(spawned interpreters would each import numpy and h5py again), and each one
ends when the ingest does, even killed: a worker left sealing after the ingest
was killed would write the ``.partial`` file the restarted ingest writes too.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from array import array
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import RefineryError, StoreError
from pipeline.journal import EpisodeJournal, EpisodeMeta
from pipeline.raw_store import raw_path, seal_journal, seal_records
from pipeline.record_log import fsync_dir
from pipeline.shared_journal import Places, SharedJournal
from pipeline.thread_names import name_os_thread

__all__ = ["BrokenProcessPool", "SealFailed", "SealJob", "SealWorkers", "run_seal_job"]


class SealFailed(RefineryError):
    """A seal worker met an error other than OSError or StoreError (its type and message kept)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (SealFailed, (self.kind, self.message))


@dataclass(frozen=True)
class SealJob:
    """One episode to seal, in values that cross to a worker process."""

    data_dir: str
    meta_payload: bytes  # the journal's header record (EpisodeMeta.to_payload)
    source: str  # the journal file, or the shared journal's directory
    shared: bool
    tag: bytes = b""
    segments: bytes = b""  # the places of its records in the shared journal (array buffers)
    offsets: bytes = b""
    lengths: bytes = b""
    missing: dict[str, list[int]] | None = None
    limit: str = ""

    @classmethod
    def of(cls, journal: EpisodeJournal, data_dir: Path, *, incomplete: bool) -> SealJob:
        """The job for ``journal``, whose writes are all done (the loop's state says what is missing)."""
        missing = journal.missing() if incomplete or journal.limit else None
        places = journal.written.places
        shared = journal.shared is not None
        return cls(
            str(data_dir), journal.meta.to_payload(), str(journal.path), shared, journal.tag,
            places.segments.tobytes() if shared else b"", places.offsets.tobytes() if shared else b"",
            places.lengths.tobytes() if shared else b"", missing, journal.limit,
        )


def run_seal_job(job: SealJob) -> Path:
    """Seal ``job``'s episode (in a worker, or in the calling process); returns the raw file.

    Raises OSError (disk), StoreError (the records cannot be sealed) or SealFailed."""
    try:
        source = Path(job.source)
        meta = EpisodeMeta.from_payload(job.meta_payload, source)
        out = raw_path(Path(job.data_dir), meta.robot_id, meta.episode_id)
        if not job.shared:
            seal_journal(source, out, missing=job.missing, limit=job.limit)
            source.unlink()
            fsync_dir(source.parent)
            return out
        places = Places(_array("I", job.segments), _array("q", job.offsets), _array("I", job.lengths))
        reader = EpisodeJournal(source, meta, shared=SharedJournal(source), tag=job.tag)
        reader.written.places = places
        return seal_records(meta, reader.records(), out, missing=job.missing, limit=job.limit, source=source,
                            reserve_bytes=sum(places.lengths))
    except (OSError, StoreError):
        raise
    except Exception as err:  # noqa: BLE001 - any exception crosses back as one that unpickles
        raise SealFailed(type(err).__name__, str(err)) from None


def _array(typecode: str, data: bytes) -> array:
    values = array(typecode)
    values.frombytes(data)
    return values


def _worker_init(ingest_pid: int) -> None:
    """In each worker: yield the CPU to the ingest, die with it, leave Ctrl-C to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_when_idle()
    threading.Thread(target=_exit_when_gone, args=(ingest_pid,), name="watch-ingest", daemon=True).start()
    name_os_thread("seal-worker")


def run_when_idle() -> None:
    """Let the calling process run only on CPU time nothing else wants (Linux
    ``SCHED_IDLE``; elsewhere the lowest priority).

    Sealing is background work and acknowledgements are not: with the workers at
    an ordinary priority, or at nice 10, a 2-core host at 40 robots sealing a
    backlog answered with p99 up to 700 ms where the thread seal kept 58-142;
    idle, the workers kept 63-90 ms and still sealed twice as fast (README,
    Performance, "Sealing a fleet"). A host that never idles seals nothing until it does: the journal,
    durable, waits (`refinery_ingest_sealing_episodes` says how many)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _exit_when_gone(pid: int) -> None:
    """Return never; end this process once process ``pid`` has ended.

    The worker's parent is the fork server, not the ingest, and every process the
    fork server starts holds the pipe whose end tells it that the ingest is gone:
    neither ``PR_SET_PDEATHSIG`` nor the pipe would ever fire."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux 5.3+: look every half second
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
    select.select([handle], [], [])  # readable once the process has ended
    os._exit(1)


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["pipeline.seal_workers"])
        return context
    return multiprocessing.get_context("spawn")


class SealWorkers:
    """``workers`` processes that run :class:`SealJob`; a pool whose worker died is replaced.

    :meth:`submit` returns a future of the raw file's path. A worker killed under a
    job (the OOM killer, an operator) fails that job, and every job the pool still
    had, with ``BrokenProcessPool``: the caller decides whether to submit them again.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one seal worker")
        self.workers = workers
        self._lock = threading.Lock()  # several seal threads submit
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=_worker_init,
                                   initargs=(os.getpid(),))

    def submit(self, job: SealJob) -> Future[Path]:
        with self._lock:
            try:
                return self._pool.submit(run_seal_job, job)
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                return self._pool.submit(run_seal_job, job)

    def worker_pids(self) -> list[int]:
        """The running workers' process ids (tests, tools)."""
        return [p.pid for p in list(getattr(self._pool, "_processes", {}).values()) if p.pid is not None]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> SealWorkers:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()



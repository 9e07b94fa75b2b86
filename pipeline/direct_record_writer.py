"""Record appends that bypass the page cache (``O_DIRECT``): the shared journal's writer.

The ingest writes the whole fleet's stream (hundreds of MB/s) to its shared
journal and reads it back once, at the seal. Through the page cache every
byte is copied into freshly allocated pages, written back later, and dropped
again after the commit (``uncache_synced``); on this project's VM that copy
was the journal writer's largest cost and slowed down by several times in
the host's busy phases. Here each batch of records is copied into one
aligned buffer and written to the disk from there: about two thirds of the
CPU per byte and a quarter of the commit's ``fdatasync`` time of the
page-cache writer with write-behind (``tools/bench_write_behind.py``; README,
"Raw episode files"). The price: an append waits for the disk (about 0.3 ms
for 222 kB here), on the journal writer's thread, beside the event loop.

Direct I/O writes whole blocks at block offsets. The bytes of the last,
partial block stay in the buffer and are written again, completed, with the
next batch; the rest of that block is zeros until then. Zeros where a record
head should be end the log for every reader (:mod:`pipeline.record_log`), and
:meth:`DirectRecordWriter.close` cuts the file back to its last record.
Rewriting the partial block is safe against a crash: its bytes up to the
last record are the same in the old and the new block, so a torn write
cannot change a byte a commit made durable.

On a file system without direct I/O (tmpfs on older kernels, some network
file systems), :func:`open_record_log` returns the page-cache
:class:`~pipeline.record_log.RecordWriter` instead.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from pipeline.compiled import pure_python_chosen
from pipeline.record_log import RecordAppender, RecordWriter, head_of_parts

try:
    from pipeline._record_layout import available as _layout_available
    from pipeline._record_layout import lay_out as _compiled_lay_out
except ImportError:  # not built (no C compiler at install time): laid out in Python
    _layout_available = False
# One call per batch: the copy and the CRC-32C in one pass over each part, the GIL released (README,
# Performance, "The compiled per-message path"). None: laid out part by part below.
lay_out = _compiled_lay_out if _layout_available and not pure_python_chosen() else None

BLOCK = 4096  # the alignment direct I/O asks for on every Linux file system we met (a multiple of 512)
_BUFFER_BYTES = 8 << 20  # one batch of the journal writer is written in pieces of at most this


class DirectRecordWriter(RecordAppender):
    """Appends records with ``O_DIRECT``; the contract of :class:`~pipeline.record_log.RecordAppender`
    (``sync``'s ``fdatasync`` has only the disk's cache and the file size left to flush)."""

    def __init__(self, path: Path, fd: int) -> None:
        """``fd``: ``path`` opened (created, empty) with ``O_DIRECT``; see :func:`open_record_log`."""
        self.path = path
        self._fd = fd
        self.size = 0
        self._buffer = mmap.mmap(-1, _BUFFER_BYTES)  # anonymous memory: page-aligned, as direct I/O needs
        self._view = memoryview(self._buffer)
        self._block_at = 0  # file offset of the buffer's first byte (a block boundary)
        self._tail = 0  # bytes at the buffer's start: the last, partial block, not yet completed
        self._dirty = False
        self._sync_lock = threading.Lock()

    def append_records(self, records: Sequence[Sequence[bytes]], offsets: list[int] | None = None) -> None:
        """Append records (each a payload given as parts): all of them, or none (OSError
        raised, the log as it was). With ``offsets``, each record's offset is appended."""
        if self._fd < 0:
            raise OSError(errno.EBADF, f"{self.path} is closed")
        if not records:
            return
        start, block_at, tail = self.size, self._block_at, self._tail
        saved_tail = bytes(self._view[:tail])  # a full buffer written mid-batch reuses its start
        starts: list[int] = []
        pos = tail
        try:
            laid_out = lay_out(self._view, pos, records) if lay_out is not None else None
            if laid_out is not None:  # the usual case: the batch fits in the buffer
                pos, in_buffer = laid_out
                starts = [self._block_at + start for start in in_buffer]
            else:
                for parts in records:
                    starts.append(self._block_at + pos)
                    pos = self._put(head_of_parts(parts)[0], pos)
                    for part in parts:
                        pos = self._put(part, pos)
            end = (pos + BLOCK - 1) & ~(BLOCK - 1)
            self._view[pos:end] = bytes(end - pos)  # the partial block's rest: zeros, the end for readers
            self._write(end)
        except OSError:
            self._block_at, self._tail = block_at, tail
            self._view[:tail] = saved_tail
            os.ftruncate(self._fd, start)  # what the batch wrote goes; the partial block is rewritten next time
            raise
        self.size = self._block_at + pos
        full = pos & ~(BLOCK - 1)
        self._tail = pos - full
        if full:
            self._view[: self._tail] = self._view[full:pos]
            self._block_at += full
        self._dirty = True
        if offsets is not None:
            offsets.extend(starts)

    def _put(self, data: bytes | memoryview, pos: int) -> int:
        """Copy ``data`` into the buffer at ``pos``, writing full blocks out when it fills."""
        if pos + len(data) <= _BUFFER_BYTES:  # the usual case: it fits
            self._view[pos : pos + len(data)] = data
            return pos + len(data)
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if pos == _BUFFER_BYTES:
                self._write(pos)  # the buffer is whole blocks now: out with it, and start over
                self._block_at += pos
                pos = 0
            n = min(_BUFFER_BYTES - pos, len(view) - done)
            self._view[pos : pos + n] = view[done : done + n]
            pos += n
            done += n
        return pos

    def _write(self, end: int) -> None:
        """Write the buffer's first ``end`` bytes (whole blocks) at its file offset."""
        written = 0
        while written < end:
            n = os.pwrite(self._fd, self._view[written:end], self._block_at + written)
            if n <= 0 or n % BLOCK:
                raise OSError(errno.ENOSPC, f"short direct write to {self.path} ({n} of {end - written} bytes)")
            written += n

    def close(self) -> None:
        """Cut the zeros after the last record, sync and close (closed even when that fails)."""
        if self._fd < 0:
            return
        try:
            if os.fstat(self._fd).st_size != self.size:
                os.ftruncate(self._fd, self.size)
                self._dirty = True
            self.sync()
        finally:
            with self._sync_lock:
                os.close(self._fd)
                self._fd = -1
            self._view.release()
            self._buffer.close()


def open_record_log(path: Path, *, direct: bool = True) -> RecordAppender:
    """Create the new log ``path`` for appending: with direct I/O where the file system
    takes it, else through the page cache (dropped once synced, written behind)."""
    if direct and hasattr(os, "O_DIRECT"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
        try:
            if _takes_direct_writes(fd):
                return DirectRecordWriter(path, fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)  # a full disk fails the probe: the next try creates it again
            raise
        os.close(fd)
        path.unlink()
    return RecordWriter(path, exclusive=True, uncache_synced=True, write_behind=True)


def overwrite_record_log(path: Path) -> DirectRecordWriter:
    """Open the existing file ``path`` to write a new log over its old bytes, with direct
    I/O: a recycled journal segment, whose blocks are allocated and written already, so
    that its writes allocate nothing and no deletion frees (and discards) its blocks.

    Its first block is zeroed at once: from then on the file reads as an empty log. The
    old bytes past the new log's end stay until they are overwritten or cut off at
    :meth:`DirectRecordWriter.close`; a reader tells them from the new log's records by
    what the records carry (the shared journal: their segment number). OSError (EINVAL)
    where the file system does not take direct I/O."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    zeros = mmap.mmap(-1, BLOCK)
    try:
        os.pwrite(fd, zeros, 0)
    except BaseException:
        os.close(fd)
        raise
    finally:
        zeros.close()
    return DirectRecordWriter(path, fd)


def _takes_direct_writes(fd: int) -> bool:
    """Whether an aligned block can be written through ``fd`` (then cut off again)."""
    probe = mmap.mmap(-1, BLOCK)
    try:
        os.pwrite(fd, probe, 0)
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        probe.close()
    os.ftruncate(fd, 0)
    return True

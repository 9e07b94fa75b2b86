"""Append-only record files that survive ``kill -9``: the ingest's journal and
the collector's spool segments share this framing.

Each record is ``u32 length | u32 checksum(payload) | payload``. A reader
stops at the first record that is short or fails its checksum: that is the torn
tail of a write the process did not finish, and :func:`recover` truncates it
away. It stops at a head of zeros too: the rest of the last block of a log
written with direct I/O (:mod:`pipeline.direct_record_writer`). Records hold
ZeroMQ multipart messages as ``u8 count | u32 len * count | frames``.

The checksum is CRC-32C (Castagnoli; the CPU's own instruction, about 8x
faster than zlib's CRC-32 here, so a journal append costs a few microseconds
for a camera frame), marked by the length field's top bit (records are at
most 256 MB, so that bit is free). Records written before that mark existed
carry zlib's CRC-32 and are still read. A Refinery older than the mark stops
reading at the first marked record (to it, a torn tail): drain journals and
spools before downgrading.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import struct
import sys
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from crc32c import crc32c

from pipeline.errors import StoreError
from pipeline.thread_names import name_os_thread

RECORD_HEAD = struct.Struct("<II")
MAX_RECORD_BYTES = 256 * 1024 * 1024
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16  # buffers per writev
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None
_fallocate = getattr(_libc, "fallocate", None)
_FALLOC_FL_KEEP_SIZE = 1
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages; wait for nothing
WRITE_BEHIND_BYTES = 1 << 20  # appended bytes between two write-behind starts
CRC32C_MARK = 0x8000_0000  # in the length field: the checksum is CRC-32C
_HOLD_GIL = 0  # crc32c's gil_release_mode: never release (a frame takes microseconds; a GIL handoff costs more)


_write_behind_pool: ThreadPoolExecutor | None = None
_write_behind_pool_lock = threading.Lock()


def _write_behind_thread() -> ThreadPoolExecutor:
    """The thread that starts the kernel's writeback for every write-behind log:
    ``sync_file_range`` blocks for milliseconds when the disk's queue is full, and
    on the appending thread (the ingest's journal writer) that delayed every commit."""
    global _write_behind_pool
    with _write_behind_pool_lock:
        if _write_behind_pool is None:
            _write_behind_pool = ThreadPoolExecutor(1, thread_name_prefix="write-behind", initializer=name_os_thread)
        return _write_behind_pool


def wait_for_write_behind() -> None:
    """Return once every write-behind started so far has been handed to the kernel."""
    _write_behind_thread().submit(lambda: None).result()


def checksum(payload: bytes | memoryview, value: int = 0) -> int:
    """The CRC-32C of ``payload`` (continuing from ``value``), as records carry it."""
    return crc32c(payload, value, _HOLD_GIL)


def record_head(length: int, payload_checksum: int) -> bytes:
    """The 8 bytes before a payload of ``length`` bytes whose :func:`checksum` is given."""
    return RECORD_HEAD.pack(length | CRC32C_MARK, payload_checksum)


def head_of_parts(parts: Sequence[bytes | memoryview]) -> tuple[bytes, int]:
    """The record head of a payload given as parts, and the payload's length."""
    length = 0
    crc = 0
    for part in parts:
        length += len(part)
        crc = checksum(part, crc)
    return record_head(length, crc), length


def _parse_head(head: bytes | memoryview, offset: int = 0) -> tuple[int, int, bool]:
    """(length, checksum, is CRC-32C) of a record head."""
    field, crc = RECORD_HEAD.unpack_from(head, offset)
    return field & ~CRC32C_MARK, crc, bool(field & CRC32C_MARK)


def _is_padding(length: int, crc: int, castagnoli: bool) -> bool:
    """A head of zeros: past the last record of a log written with direct I/O, which
    fills its last block with zeros (no writer makes an empty record of zeros)."""
    return length == 0 and crc == 0 and not castagnoli


def _intact(payload: bytes | memoryview, crc: int, castagnoli: bool) -> bool:
    return (checksum(payload) if castagnoli else zlib.crc32(payload)) == crc


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """Serialise a multipart message."""
    if len(frames) > 255:
        raise ValueError("at most 255 frames per message")
    lengths = struct.pack(f"<B{len(frames)}I", len(frames), *(len(f) for f in frames))
    return lengths + b"".join(frames)


def unpack_frames(data: bytes | memoryview) -> list[bytes]:
    count = data[0]
    lengths = struct.unpack_from(f"<{count}I", data, 1)
    offset = 1 + 4 * count
    frames = []
    for n in lengths:
        frames.append(bytes(data[offset : offset + n]))
        offset += n
    if offset != len(data):
        raise ValueError(f"frame lengths cover {offset} of {len(data)} bytes")
    return frames


def frame_record(payload: bytes) -> bytes:
    return record_head(len(payload), checksum(payload)) + payload


@dataclass(frozen=True)
class LogEntry:
    offset: int  # where the record head starts
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEAD.size + len(self.payload)


def scan(path: Path) -> tuple[list[LogEntry], int]:
    """Read every intact record; return them and the byte length they cover."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StoreError(str(path), f"cannot read record log: {err.strerror}") from err
    entries: list[LogEntry] = []
    offset = 0
    view = memoryview(data)
    while offset + RECORD_HEAD.size <= len(data):
        length, crc, castagnoli = _parse_head(data, offset)
        start = offset + RECORD_HEAD.size
        if length > MAX_RECORD_BYTES or start + length > len(data) or _is_padding(length, crc, castagnoli):
            break
        payload = bytes(view[start : start + length])
        if not _intact(payload, crc, castagnoli):
            break
        entries.append(LogEntry(offset, payload))
        offset = start + length
    return entries, offset


def iter_log(path: Path) -> Iterator[LogEntry]:
    """Stream the intact records of a log from its start, one at a time.

    Stops at the first record that is short or fails its CRC (a torn tail), like
    :func:`scan`, but holds only one record in memory: a journal of an
    episode can be gigabytes.
    """
    try:
        fh = open(path, "rb", buffering=1 << 20)
    except OSError as err:
        raise StoreError(str(path), f"cannot read record log: {err.strerror}") from err
    with fh:
        offset = 0
        while True:
            head = fh.read(RECORD_HEAD.size)
            if len(head) < RECORD_HEAD.size:
                return
            length, crc, castagnoli = _parse_head(head)
            if length > MAX_RECORD_BYTES or _is_padding(length, crc, castagnoli):
                return
            payload = fh.read(length)
            if len(payload) != length or not _intact(payload, crc, castagnoli):
                return
            yield LogEntry(offset, payload)
            offset += RECORD_HEAD.size + length


def truncate_to(path: Path, good: int) -> None:
    """Cut a log back to ``good`` bytes (its intact records) and make those durable:
    a killed writer's last records may be in the page cache only."""
    with open(path, "r+b") as fh:
        if good != os.fstat(fh.fileno()).st_size:
            fh.truncate(good)
        os.fsync(fh.fileno())


def sync_file(path: Path) -> None:
    """Make what a file (or a folder's entries) holds durable, e.g. one a killed writer left."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(path: Path) -> list[LogEntry]:
    """Scan a log left by a killed writer and cut off its torn tail, durably."""
    entries, good = scan(path)
    truncate_to(path, good)
    return entries


def read_at(path: Path, offset: int) -> bytes:
    """Read the payload of the record that starts at ``offset``, checking its CRC."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        head = fh.read(RECORD_HEAD.size)
        if len(head) != RECORD_HEAD.size:
            raise StoreError(str(path), f"no record at offset {offset}")
        length, crc, castagnoli = _parse_head(head)
        payload = fh.read(length) if length <= MAX_RECORD_BYTES else b""
    if len(payload) != length or not _intact(payload, crc, castagnoli):
        raise StoreError(str(path), f"record at offset {offset} is damaged (length or CRC)")
    return payload


def checked_payload(record: bytes, where: str) -> memoryview:
    """The payload of one whole record (head included, as read at a known place and
    length), after checking its length and checksum; StoreError names ``where``."""
    if len(record) < RECORD_HEAD.size:
        raise StoreError(where, "record cut short")
    length, crc, castagnoli = _parse_head(record)
    payload = memoryview(record)[RECORD_HEAD.size :]
    if length != len(payload) or not _intact(payload, crc, castagnoli):
        raise StoreError(where, "record damaged (length or checksum)")
    return payload


class RecordAppender:
    """What every record-log writer shares (:class:`RecordWriter` through the page
    cache, :class:`~pipeline.direct_record_writer.DirectRecordWriter` past it):
    ``append_records`` is all or nothing, ``sync`` makes everything appended so far
    durable, ``size`` is the log's length. A subclass opens ``_fd`` and sets ``path``,
    ``size``, ``_dirty`` and ``_sync_lock`` before its first append."""

    path: Path
    size: int
    _fd: int
    _dirty: bool
    _sync_lock: threading.Lock  # sync and close exclude each other

    def append_records(self, records: Sequence[Sequence[bytes]], offsets: list[int] | None = None) -> None:
        raise NotImplementedError

    def append(self, payload: bytes) -> int:
        """Append one record; return its offset. Raises OSError (e.g. ENOSPC) untouched."""
        return self.append_parts((payload,))

    def append_parts(self, parts: Sequence[bytes]) -> int:
        """Append one record whose payload is ``parts`` joined, without joining them."""
        offset = self.size
        self.append_records((parts,))
        return offset

    def sync(self) -> None:
        """Make every record appended so far durable (``fdatasync``: the data and the
        file size, not the times). A no-op once the writer is closed: closing synced it."""
        with self._sync_lock:
            if self._fd < 0 and self._dirty:
                raise OSError(errno.EIO, f"{self.path} was closed with records its last fsync did not make durable")
            if self._dirty:
                # Cleared before the fsync: an append on another thread meanwhile sets it
                # again, so the next sync covers it.
                self._dirty = False
                synced_to = self.size  # appends bump it once written: all of it is in this fsync
                try:
                    os.fdatasync(self._fd)
                except OSError:
                    self._dirty = True
                    raise
                self._synced(synced_to)

    def _synced(self, synced_to: int) -> None:
        """After a sync made the first ``synced_to`` bytes durable (under the sync lock)."""

    def preallocate(self, nbytes: int) -> None:
        """Reserve disk blocks for the next ``nbytes`` without changing the file's size
        (see :func:`preallocate_fd`)."""
        if self._fd >= 0:
            preallocate_fd(self._fd, self.size, nbytes)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordWriter(RecordAppender):
    """Appends records; ``sync`` makes everything written so far durable.

    Writes go straight to the file descriptor (one ``writev`` per record, no
    user-space buffer), so a record is in the kernel as soon as ``append``
    returns and survives the process being killed. A failed or short write
    (disk full) is rolled back to the last whole record, so the file never
    holds half a record that a later append would bury.
    """

    def __init__(self, path: Path, *, exclusive: bool = False, uncache_synced: bool = False,
                 write_behind: bool = False) -> None:
        """``uncache_synced``: after each sync, drop what it made durable from the page
        cache (see :meth:`sync`). ``write_behind``: start writing appended records to
        disk every :data:`WRITE_BEHIND_BYTES`, so that a sync has little left to write
        (see :meth:`_start_writeback`)."""
        self.path = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_EXCL if exclusive else 0)
        self._fd = os.open(path, flags, 0o644)
        self.size = os.fstat(self._fd).st_size
        self._dirty = False
        self._uncache_synced = uncache_synced
        self._uncached_to = 0
        self._write_behind_from = self.size if write_behind and _sync_file_range is not None else None
        # sync and close exclude each other: a second syncer must not return while
        # the first one's fsync is still running, nor fsync a closed (reused) descriptor.
        self._sync_lock = threading.Lock()
        # The write-behind thread's guard against a closed descriptor: not the sync
        # lock, which would make a commit's fsync wait for a write-behind start.
        self._fd_lock = threading.Lock()

    def append_records(self, records: Sequence[Sequence[bytes]], offsets: list[int] | None = None) -> None:
        """Append several records (each a payload given as parts) with as few ``writev``
        calls as the kernel's vector limit allows: all of them, or none (a failed
        write is rolled back to where they started, and OSError raised). With
        ``offsets``, the offset of each record is appended to it once all are written."""
        vector: list[bytes] = []
        start = self.size
        at = start
        starts: list[int] = []
        for parts in records:
            head, length = head_of_parts(parts)
            vector.append(head)
            vector.extend(parts)
            starts.append(at)
            at += RECORD_HEAD.size + length
        try:
            for lo in range(0, len(vector), _IOV_MAX):
                chunk = vector[lo : lo + _IOV_MAX]
                total = sum(map(len, chunk))
                written = os.writev(self._fd, chunk)
                if written != total:
                    raise OSError(errno.ENOSPC, f"short write ({written} of {total} bytes)")
                self.size += total
        except OSError:
            os.ftruncate(self._fd, start)
            self.size = start
            raise
        self._dirty = True
        if offsets is not None:
            offsets.extend(starts)
        if self._write_behind_from is not None and self.size - self._write_behind_from >= WRITE_BEHIND_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Have the kernel start writing what was appended since the last start, and
        return (Linux ``sync_file_range``, WRITE only: nothing is waited for, nothing is
        made durable; a sync still decides that and reports any write error).

        Why: the group commit's ``fdatasync`` otherwise writes the whole commit's data
        itself, and every acknowledgement waits for it (``tools/bench_write_behind.py``;
        README, Performance)."""
        start = self._write_behind_from
        assert start is not None
        _write_behind_thread().submit(self._write_back, start, self.size - start)
        self._write_behind_from = self.size

    def _write_back(self, start: int, length: int) -> None:
        assert _sync_file_range is not None
        with self._fd_lock:
            if self._fd >= 0:
                _sync_file_range(self._fd, start, length, _SYNC_FILE_RANGE_WRITE)  # advice: its result is not ours to act on

    def _synced(self, synced_to: int) -> None:
        if self._uncache_synced:
            self._uncache(synced_to)

    def _uncache(self, synced_to: int) -> None:
        """Give the page cache back what is durable: a log written at hundreds of MB/s
        otherwise fills memory with pages nobody reads soon, and every write pays for
        fresh pages (on our 2-core VM that cost the ingest's journal writer up to 4x
        the CPU: README, Performance). Clean pages go at once; the next writes reuse them."""
        end = synced_to - synced_to % mmap.PAGESIZE
        if end > self._uncached_to:
            try:
                os.posix_fadvise(self._fd, self._uncached_to, end - self._uncached_to, os.POSIX_FADV_DONTNEED)
            except OSError:
                return  # advice only: the data is durable either way
            self._uncached_to = end

    def close(self) -> None:
        """Sync and close (closed even when the sync fails; its OSError is raised then)."""
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                with self._sync_lock, self._fd_lock:
                    if self._fd >= 0:
                        os.close(self._fd)
                        self._fd = -1


def preallocate_fd(fd: int, offset: int, nbytes: int) -> None:
    """Reserve disk blocks for ``nbytes`` from ``offset`` without changing the file's size
    (Linux ``fallocate`` with KEEP_SIZE): appends then skip block allocation, about
    12 % less CPU per write here. Best effort: nothing happens elsewhere or when the
    file system says no (a full disk shows at the write)."""
    try:
        reserve_fd(fd, nbytes, offset)
    except OSError:
        pass


def reserve_fd(fd: int, nbytes: int, offset: int = 0) -> None:
    """Reserve ``nbytes`` of disk blocks from ``offset`` without changing the file's size
    (``fallocate`` KEEP_SIZE), so that writes up to there cannot find the disk full;
    cutting the file to its size gives back what was not written. OSError (ENOSPC) when
    the disk has no room; nothing where the file system cannot reserve."""
    if _fallocate is None or nbytes <= 0:
        return
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, ctypes.c_long(offset), ctypes.c_long(nbytes)) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))


_TWO_FRAMES = struct.Struct("<BII")  # a data message: header and payload


def frame_parts(frames: Sequence[bytes]) -> list[bytes]:
    """:func:`pack_frames` as a list of parts, for :meth:`RecordWriter.append_parts`."""
    if len(frames) == 2:
        head, payload = frames
        return [_TWO_FRAMES.pack(2, len(head), len(payload)), head, payload]
    if len(frames) > 255:
        raise ValueError("at most 255 frames per message")
    return [struct.pack(f"<B{len(frames)}I", len(frames), *(len(f) for f in frames)), *frames]


def iter_payloads(path: Path) -> Iterator[bytes]:
    entries, _ = scan(path)
    for entry in entries:
        yield entry.payload


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    sync_file(path)


def make_dirs_durably(path: Path) -> None:
    """``mkdir -p`` whose new folders survive a power loss: the parent of each one it
    creates is fsynced (fsyncing a file and its own folder does not make the folder's
    entry in its parent durable)."""
    if path.is_dir():
        return
    missing: list[Path] = []
    ancestor = path
    while not ancestor.exists():
        missing.append(ancestor)
        ancestor = ancestor.parent
    path.mkdir(parents=True, exist_ok=True)
    for folder in reversed(missing):
        fsync_dir(folder.parent)

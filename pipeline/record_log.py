"""Append-only record files that survive ``kill -9``: the ingest's journal and
the collector's spool segments share this framing.

Each record is ``u32 length | u32 crc32(payload) | payload``. A reader stops at
the first record that is short or fails its CRC: that is the torn tail of a
write the process did not finish, and :func:`recover` truncates it away.
Records hold ZeroMQ multipart messages as ``u8 count | u32 len * count | frames``.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import StoreError

RECORD_HEAD = struct.Struct("<II")
MAX_RECORD_BYTES = 256 * 1024 * 1024


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
    return RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


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
        length, crc = RECORD_HEAD.unpack_from(data, offset)
        start = offset + RECORD_HEAD.size
        if length > MAX_RECORD_BYTES or start + length > len(data):
            break
        payload = bytes(view[start : start + length])
        if zlib.crc32(payload) != crc:
            break
        entries.append(LogEntry(offset, payload))
        offset = start + length
    return entries, offset


def recover(path: Path) -> list[LogEntry]:
    """Scan a log left by a killed writer and cut off its torn tail, durably."""
    entries, good = scan(path)
    if good != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good)
            os.fsync(fh.fileno())
    return entries


def read_at(path: Path, offset: int) -> bytes:
    """Read the payload of the record that starts at ``offset``, checking its CRC."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        head = fh.read(RECORD_HEAD.size)
        if len(head) != RECORD_HEAD.size:
            raise StoreError(str(path), f"no record at offset {offset}")
        length, crc = RECORD_HEAD.unpack(head)
        payload = fh.read(length)
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise StoreError(str(path), f"record at offset {offset} is damaged (length or CRC)")
    return payload


class RecordWriter:
    """Appends records; ``sync`` makes everything written so far durable.

    A failed write (disk full) is rolled back to the last whole record so the
    file never holds half a record that a later append would bury.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "ab")
        self.size = self._fh.tell()
        self._dirty = False

    def append(self, payload: bytes) -> int:
        """Append one record; return its offset. Raises OSError (e.g. ENOSPC) untouched."""
        offset = self.size
        record = frame_record(payload)
        try:
            self._fh.write(record)
            self._fh.flush()
        except OSError:
            self._rollback(offset)
            raise
        self.size += len(record)
        self._dirty = True
        return offset

    def _rollback(self, offset: int) -> None:
        try:
            self._fh.close()
        finally:
            with open(self.path, "r+b") as fh:
                fh.truncate(offset)
            self._fh = open(self.path, "ab")
            self.size = offset

    def sync(self) -> None:
        if self._dirty:
            os.fsync(self._fh.fileno())
            self._dirty = False

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_payloads(path: Path) -> Iterator[bytes]:
    entries, _ = scan(path)
    for entry in entries:
        yield entry.payload


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

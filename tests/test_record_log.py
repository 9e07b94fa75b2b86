"""Record logs (journal and spool framing) survive a writer killed mid-record."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.record_log import (
    WRITE_BEHIND_BYTES,
    RecordWriter,
    pack_frames,
    read_at,
    recover,
    scan,
    unpack_frames,
    wait_for_write_behind,
)


def write(path: Path, payloads: list[bytes]) -> list[int]:
    with RecordWriter(path) as w:
        return [w.append(p) for p in payloads]


def test_records_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log"
    write(path, [b"a", b"", b"ccc"])
    entries, size = scan(path)
    assert [e.payload for e in entries] == [b"a", b"", b"ccc"]
    assert size == path.stat().st_size


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 10])
def test_torn_tail_is_cut_and_earlier_records_kept(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "log"
    write(path, [b"first", b"second"])
    whole = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(whole - cut)  # a write the killed process never finished
    entries = recover(path)
    assert [e.payload for e in entries] == [b"first"]
    assert path.stat().st_size == entries[0].end
    write(path, [b"third"])  # appending after recovery continues the log
    assert [e.payload for e in scan(path)[0]] == [b"first", b"third"]


def test_flipped_byte_stops_the_scan_at_that_record(tmp_path: Path) -> None:
    path = tmp_path / "log"
    offsets = write(path, [b"aaaa", b"bbbb", b"cccc"])
    data = bytearray(path.read_bytes())
    data[offsets[1] + 9] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [e.payload for e in scan(path)[0]] == [b"aaaa"]


def test_read_at_checks_the_crc(tmp_path: Path) -> None:
    path = tmp_path / "log"
    offsets = write(path, [b"payload"])
    assert read_at(path, offsets[0]) == b"payload"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged"):
        read_at(path, offsets[0])


def test_multipart_frames_round_trip() -> None:
    frames = [b"header", b"", b"\x00" * 1000]
    assert unpack_frames(pack_frames(frames)) == frames


def _zlib_record(payload: bytes) -> bytes:
    """A record as Refinery wrote them before CRC-32C: no mark, zlib's CRC-32."""
    import struct
    import zlib

    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_records_carry_crc32c_marked_in_the_length_field(tmp_path: Path) -> None:
    import struct

    from crc32c import crc32c

    path = tmp_path / "log"
    write(path, [b"hello"])
    field, crc = struct.unpack_from("<II", path.read_bytes())
    assert field == 0x8000_0000 | 5
    assert crc == crc32c(b"hello")


def test_logs_written_with_zlib_crc32_are_still_read_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(_zlib_record(b"old one") + _zlib_record(b"old two"))
    assert [e.payload for e in recover(path)] == [b"old one", b"old two"]
    write(path, [b"new"])
    entries = scan(path)[0]
    assert [e.payload for e in entries] == [b"old one", b"old two", b"new"]
    assert read_at(path, entries[1].offset) == b"old two"
    assert read_at(path, entries[2].offset) == b"new"


def test_a_marked_record_with_a_zlib_checksum_is_a_torn_tail(tmp_path: Path) -> None:
    import struct
    import zlib

    path = tmp_path / "log"
    write(path, [b"good"])
    with open(path, "ab") as fh:
        fh.write(struct.pack("<II", 0x8000_0000 | 3, zlib.crc32(b"bad")) + b"bad")
    assert [e.payload for e in recover(path)] == [b"good"]


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore over a private mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    vector = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        first = ctypes.c_char.from_buffer(mapped)
        result = libc.mincore(ctypes.addressof(first), size, vector)
        del first  # the mapping cannot close while a ctypes object holds it
    assert result == 0, f"mincore failed: errno {ctypes.get_errno()}"
    return sum(byte & 1 for byte in vector)


def test_a_log_that_uncaches_gives_synced_pages_back(tmp_path: Path) -> None:
    kept, uncached = tmp_path / "kept", tmp_path / "uncached"
    for path, uncache in ((kept, False), (uncached, True)):
        with RecordWriter(path, uncache_synced=uncache) as writer:
            writer.append_records([[bytes(100_000)] for _ in range(40)])  # 4 MB
            writer.sync()
    pages = (kept.stat().st_size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    assert resident_pages(kept) > pages // 2, "the kernel kept nothing of a fresh write: nothing to compare with"
    assert resident_pages(uncached) <= 1  # at most the partial last page
    entries, _ = scan(uncached)
    assert len(entries) == 40 and entries[-1].payload == bytes(100_000)


class _CacheStat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def dirty_pages(path: Path) -> int:
    """Dirty page-cache pages of ``path`` (Linux 6.5+ ``cachestat``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    whole_file = (ctypes.c_uint64 * 2)(0, 0)  # offset 0, length 0: to the end
    stat = _CacheStat()
    with open(path, "rb") as fh:
        result = libc.syscall(451, fh.fileno(), ctypes.byref(whole_file), ctypes.byref(stat), 0)  # x86-64/arm64: 451
    if result != 0:
        pytest.skip(f"no cachestat here (errno {ctypes.get_errno()}): cannot see dirty pages")
    return stat.dirty


def test_a_log_that_writes_behind_leaves_a_sync_little_to_write(tmp_path: Path) -> None:
    dirty = {}
    for behind in (False, True):
        path = tmp_path / f"behind-{behind}"
        with RecordWriter(path, write_behind=behind) as writer:
            for _ in range(40):  # 4 MB in 100 kB appends, as the journal writer's batches come
                writer.append_records([[bytes(100_000)]])
            wait_for_write_behind()
            dirty[behind] = dirty_pages(path)
    pages_per_start = WRITE_BEHIND_BYTES // mmap.PAGESIZE
    assert dirty[False] > 3 * pages_per_start, "the kernel wrote a fresh append at once: nothing to compare with"
    assert dirty[True] <= pages_per_start + 1  # only what came since the last start: under WRITE_BEHIND_BYTES
    entries, _ = scan(tmp_path / "behind-True")
    assert len(entries) == 40 and entries[-1].payload == bytes(100_000)


def test_new_folders_are_made_durable_in_their_parents(tmp_path: Path, monkeypatch) -> None:
    from pipeline.record_log import make_dirs_durably
    from tests.test_ingest_durable_acks import SyncedPaths

    synced = SyncedPaths(monkeypatch)
    make_dirs_durably(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert synced.paths == [str(tmp_path), str(tmp_path / "a")]
    make_dirs_durably(tmp_path / "a" / "b")  # there already: nothing to sync
    assert len(synced.paths) == 2

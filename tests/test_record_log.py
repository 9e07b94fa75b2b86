"""Record logs (journal and spool framing) survive a writer killed mid-record."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.record_log import RecordWriter, pack_frames, read_at, recover, scan, unpack_frames


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

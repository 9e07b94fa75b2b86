"""The shared journal's direct-I/O writer: the same log as the page-cache writer
(records laid out in C or in Python alike), readable while it is written, after
a kill -9 and after a failed write."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from crc32c import crc32c

from pipeline import direct_record_writer
from pipeline.direct_record_writer import BLOCK, DirectRecordWriter, open_record_log
from pipeline.record_log import RecordWriter, iter_log, recover, scan

REPO = Path(__file__).parent.parent


def batches(seed: int, count: int, max_bytes: int = 100_000) -> list[list[list[bytes]]]:
    """Batches of records of random sizes (1-4 parts each, a part maybe empty), as the journal writer hands them over."""
    rng = random.Random(seed)
    return [[[rng.randbytes(rng.randint(0, max_bytes // 4)) for _ in range(rng.randint(1, 4))]
             for _ in range(rng.randint(1, 12))] for _ in range(count)]


def direct_log(path: Path) -> DirectRecordWriter:
    writer = open_record_log(path)
    if not isinstance(writer, DirectRecordWriter):
        writer.close()
        pytest.skip(f"the file system of {path.parent} does not take direct I/O")
    return writer


COMPILED_LAYOUT = direct_record_writer.lay_out


@pytest.fixture(params=["compiled", "python"])
def layout(request, monkeypatch) -> str:
    """Each test that takes it runs with the records laid out in C, then in Python."""
    if request.param == "compiled" and COMPILED_LAYOUT is None:
        pytest.skip("the compiled layout was not built here")
    monkeypatch.setattr(direct_record_writer, "lay_out", COMPILED_LAYOUT if request.param == "compiled" else None)
    return request.param


def test_the_compiled_checksum_is_crc32c_at_every_length_and_alignment() -> None:
    if COMPILED_LAYOUT is None:
        pytest.skip("the compiled layout was not built here")
    from pipeline._record_layout import checksum

    data = os.urandom(70_000)
    for length in [*range(0, 40), 4095, 4096, 69_001]:
        for start in range(0, 9):
            part = data[start : start + length]
            assert checksum(part) == crc32c(part), (length, start)
            assert checksum(part, 0xDEADBEEF) == crc32c(part, 0xDEADBEEF), (length, start)


def test_a_part_that_is_not_bytes_is_refused_and_nothing_is_written(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "refused.rfl"
    with direct_log(path) as writer:
        writer.append(b"kept")
        with pytest.raises(TypeError):
            writer.append_records([[b"fine"], [b"head", "not bytes"]])  # type: ignore[list-item]
        writer.append(b"after")
    assert [e.payload for e in iter_log(path)] == [b"kept", b"after"]


def test_the_log_is_byte_for_byte_the_page_cache_writers(tmp_path: Path, layout: str) -> None:
    direct, buffered = direct_log(tmp_path / "direct.rfl"), RecordWriter(tmp_path / "buffered.rfl")
    direct_offsets: list[int] = []
    buffered_offsets: list[int] = []
    for batch in batches(1, 40):
        direct.append_records(batch, direct_offsets)
        buffered.append_records(batch, buffered_offsets)
        assert direct.size == buffered.size
    direct.close()
    buffered.close()
    assert direct_offsets == buffered_offsets
    assert (tmp_path / "direct.rfl").read_bytes() == (tmp_path / "buffered.rfl").read_bytes()


def test_records_read_back_while_the_log_is_open_stop_at_the_zeros_of_the_last_block(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "open.rfl"
    writer = direct_log(path)
    written = [b"".join(parts) for batch in batches(2, 10) for parts in batch]
    for batch in batches(2, 10):
        writer.append_records(batch)
    writer.sync()
    assert path.stat().st_size % BLOCK == 0 and path.stat().st_size > writer.size  # the partial block, padded
    entries, end = scan(path)
    assert [e.payload for e in entries] == written and end == writer.size
    assert [e.payload for e in iter_log(path)] == written
    writer.close()
    assert path.stat().st_size == writer.size


def test_a_record_larger_than_the_buffer_is_written_in_pieces(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "big.rfl"
    big = os.urandom(direct_record_writer._BUFFER_BYTES * 2 + 12_345)
    with direct_log(path) as writer:
        writer.append(b"before")
        writer.append_parts([b"x" * 100, big])
        writer.append(b"after")
    assert [e.payload for e in iter_log(path)] == [b"before", b"x" * 100 + big, b"after"]


@pytest.mark.parametrize("lost", [
    pytest.param([[b"lost"], [b"x" * (direct_record_writer._BUFFER_BYTES + 1000)]], id="batch-written-in-pieces"),
    pytest.param([[b"lost"], [b"y" * 20_000]], id="batch-that-fits-the-buffer"),
])
def test_a_failed_write_leaves_the_log_as_it_was_and_the_next_append_goes_on(
        tmp_path: Path, monkeypatch, layout: str, lost: list[list[bytes]]) -> None:
    path = tmp_path / "full.rfl"
    writer = direct_log(path)
    writer.append_records([[b"a" * 5000], [b"b" * 3]])  # ends in a partial block
    size = writer.size
    real_pwrite = os.pwrite
    calls = []

    def disk_full_on_the_last_write(fd: int, data, offset: int) -> int:  # noqa: ANN001
        calls.append(offset)
        if len(calls) == (2 if len(lost[1][0]) > direct_record_writer._BUFFER_BYTES else 1):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    with monkeypatch.context() as patched:
        patched.setattr(direct_record_writer.os, "pwrite", disk_full_on_the_last_write)
        with pytest.raises(OSError):
            writer.append_records(lost)  # its last write fails (in pieces: after one full buffer went out)
    assert writer.size == size and path.stat().st_size == size
    writer.append(b"c" * 10)
    writer.close()
    assert [e.payload for e in iter_log(path)] == [b"a" * 5000, b"b" * 3, b"c" * 10]


KILLED_WRITER = """
import sys
from pathlib import Path
from pipeline.direct_record_writer import open_record_log
writer = open_record_log(Path(sys.argv[1]))
for i in range(200):
    writer.append_records([[bytes([i % 251]) * (i * 37 % 9000)] for _ in range(3)])
writer.sync()
print(writer.size, flush=True)
sys.stdin.read()
"""


def test_a_killed_writer_leaves_every_synced_record_and_recovery_cuts_the_zeros(tmp_path: Path) -> None:
    path = tmp_path / "killed.rfl"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        size = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert path.stat().st_size > size  # the zeros after the last record
    entries = recover(path)
    assert len(entries) == 600 and path.stat().st_size == size
    assert entries[-1].payload == bytes([199]) * (199 * 37 % 9000)


def test_a_file_system_without_direct_io_gets_the_page_cache_writer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(direct_record_writer, "_takes_direct_writes", lambda fd: False)
    writer = open_record_log(tmp_path / "plain.rfl")
    assert isinstance(writer, RecordWriter)
    writer.append(b"payload")
    writer.close()
    assert [e.payload for e in iter_log(tmp_path / "plain.rfl")] == [b"payload"]


def test_a_log_whose_first_write_fails_is_not_left_behind(tmp_path: Path, monkeypatch) -> None:
    def disk_full(fd: int, data, offset: int) -> int:  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_record_writer.os, "pwrite", disk_full)
    with pytest.raises(OSError):
        open_record_log(tmp_path / "new.rfl")
    assert not (tmp_path / "new.rfl").exists()  # so that the next try can create it

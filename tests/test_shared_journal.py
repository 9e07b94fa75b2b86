"""The shared journal: every open episode's records in one log, one sync per commit."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import journal_writer, protocol, record_log, shared_journal
from pipeline.journal import (
    JOURNAL_SUFFIX,
    EpisodeJournal,
    EpisodeMeta,
    read_journal,
    read_unsealed_episode,
)
from pipeline.direct_record_writer import DirectRecordWriter
from pipeline.journal_writer import JournalWriter
from pipeline.raw_store import seal_recovered
from pipeline.record_log import RecordWriter, iter_log
from pipeline.shared_journal import (
    SEGMENT_SUFFIX,
    SHARED_DIR,
    SharedJournal,
    episode_tag,
    iter_episode_payloads,
)
from tests.test_faults import small_disk  # noqa: F401 (a fixture)
from tests.test_ingest_durable_acks import SyncedPaths
from tests.test_ingest_hardening import wait_for


def samples(episode: str, seq: int, width: int = 3) -> protocol.Samples:
    return protocol.Samples.build("r1", episode, "joint_state", seq, np.array([seq]), np.array([seq]),
                                  np.full((1, width), seq, dtype=np.float64))


def stop(episode: str, last: int) -> protocol.Event:
    return protocol.Event(protocol.DataHeader("r1", episode, "events", 0, 10**9),
                          {"kind": "stop", "outcome": "success", "last_seq": {"events": 0, "joint_state": last}})


class Journals:
    """A shared journal with its writer thread, as the ingest runs them."""

    def __init__(self, data: Path, **options: float) -> None:
        self.data = data
        self.shared, self.found = SharedJournal.recover(
            data / "journal" / SHARED_DIR, is_finished=lambda key: (data / "raw" / key[0] / f"{key[1]}.h5").exists(),
            skip={(p.parent.name, p.stem) for p in (data / "journal").glob(f"*/*{JOURNAL_SUFFIX}")}, **options)
        self.shared.collect()
        self.writer = JournalWriter(shared=self.shared, graduate_to=data / "journal")
        for journal in self.found.journals:
            journal.attach(self.writer)

    def start(self, episode: str) -> EpisodeJournal:
        meta = EpisodeMeta("r1", episode, "m", "d", {}, time.time_ns())
        return EpisodeJournal.start_shared(self.shared, meta, self.writer)

    def commit(self) -> None:
        barrier = self.writer.barrier()
        self.writer.wait(barrier)
        assert barrier.segment is not None
        barrier.segment.sync()

    def segments(self) -> list[str]:
        """The segment files once the deletions decided so far are done."""
        self.shared.wait_for_deletions()
        return sorted(p.name for p in (self.data / "journal" / SHARED_DIR).glob(f"*{SEGMENT_SUFFIX}"))

    def spares(self) -> list[Path]:
        """The spare segments once the segments freed so far are deleted or kept."""
        self.shared.wait_for_deletions()
        return self.shared.spares()

    def close(self) -> None:
        self.writer.close()


def append(journal: EpisodeJournal, record: protocol.DataRecord) -> None:
    journal.append(7, record.encode(), record)


def stream_interleaved(j: Journals, journals: list[EpisodeJournal], count: int) -> None:
    """``count`` 16-column batches to each journal, committed every 10: a batch goes to
    one segment, and the next batch may start the next one."""
    for seq in range(count):
        for journal in journals:
            append(journal, samples(journal.meta.episode_id, seq, width=16))
        if seq % 10 == 9:
            j.commit()


def write_good_and_damaged_episodes(data: Path) -> None:
    """ep-good and ep-bad, one message each; then an ep-bad record with intact framing
    whose payload is no message (it does not replay)."""
    j = Journals(data)
    good, bad = j.start("ep-good"), j.start("ep-bad")
    append(good, samples("ep-good", 0))
    append(bad, samples("ep-bad", 0))
    j.commit()
    j.close()
    append_unreplayable(data / "journal" / SHARED_DIR / j.segments()[-1], "ep-bad")


def append_unreplayable(segment: Path, episode: str) -> None:
    """A record of ``episode`` with intact framing whose payload is no message."""
    with RecordWriter(segment) as raw:
        raw.append(int(segment.stem).to_bytes(4, "little") + episode_tag("r1", episode) + b"\x00" * 30)


def seqs(journal: EpisodeJournal) -> list[int]:
    return [r.header.seq for _, r in journal.records() if r.header.stream == "joint_state"]


def test_interleaved_episodes_each_read_back_only_their_own_records_in_order(tmp_path: Path) -> None:
    j = Journals(tmp_path)
    a, b = j.start("ep-a"), j.start("ep-b")
    for seq in range(40):
        append(a, samples("ep-a", seq))
        if seq % 2 == 0:
            append(b, samples("ep-b", seq // 2))
    j.commit()
    assert len(j.segments()) == 1  # one file for both: one sync per commit
    assert seqs(a) == list(range(40)) and seqs(b) == list(range(20))
    assert a.written.next_seq == {"joint_state": 40} and b.written.next_seq == {"joint_state": 20}
    j.close()


def test_an_unsealed_episode_can_be_read_from_a_stopped_ingests_folder(tmp_path: Path) -> None:
    j = Journals(tmp_path)
    a = j.start("ep-a")
    for seq in range(5):
        append(a, samples("ep-a", seq))
    j.commit()
    j.close()
    records = read_unsealed_episode(tmp_path, "r1", "ep-a")
    assert [r.header.seq for _, r in records] == list(range(5))
    assert read_unsealed_episode(tmp_path, "r1", "ep-none") == []


def test_a_segment_is_deleted_once_every_episode_in_it_is_sealed(tmp_path: Path) -> None:
    j = Journals(tmp_path, segment_bytes=4096)
    a, b = j.start("ep-a"), j.start("ep-b")
    stream_interleaved(j, [a, b], 60)
    append(a, stop("ep-a", 59))
    j.commit()
    assert len(j.segments()) > 3
    sealed = seal_recovered(a, tmp_path)
    j.writer.release(a)
    j.commit()
    assert sealed.exists()
    assert len(j.segments()) > 3, "ep-b still has records in every segment"
    append(b, stop("ep-b", 59))
    j.commit()
    seal_recovered(b, tmp_path)
    j.writer.release(b)
    j.commit()
    assert len(j.segments()) == 1  # only the one being written
    j.close()
    assert j.segments() == []  # and that one too, once closed with nothing open in it


def test_deleting_a_freed_segment_does_not_hold_up_the_commits(tmp_path: Path, monkeypatch) -> None:
    # Deleting a 256 MB segment took 40-90 ms on this project's VM (ext4); on the journal
    # writer's thread, every commit waited for it (p99 257 ms in that half second, 40 robots).
    unlink = os.unlink
    deleting, may_delete = threading.Event(), threading.Event()

    def slow_unlink(path, *args, **kwargs):  # noqa: ANN001, ANN202
        if str(path).endswith(shared_journal.FREE_SUFFIX):  # a segment being deleted
            deleting.set()
            may_delete.wait(10)
        return unlink(path, *args, **kwargs)

    j = Journals(tmp_path, segment_bytes=4096, spare_segments=0)  # no spares: every freed segment is deleted
    a = j.start("ep-a")
    stream_interleaved(j, [a], 30)
    append(a, stop("ep-a", 29))
    j.commit()
    before = len(j.segments())
    monkeypatch.setattr(os, "unlink", slow_unlink)
    seal_recovered(a, tmp_path)
    j.writer.release(a)
    assert deleting.wait(5), "the sealed episode's segments were not deleted"
    b = j.start("ep-b")
    append(b, samples("ep-b", 0))
    barrier = j.writer.barrier()
    try:
        assert barrier.wait(2), "a commit waited for a segment to be deleted"
    finally:
        may_delete.set()
    j.commit()
    assert before >= 2 and len(j.segments()) == 1  # only the one being written
    assert seqs(b) == [0]
    j.close()


def test_a_freed_segment_is_deleted_a_piece_at_a_time(tmp_path: Path, monkeypatch) -> None:
    # One unlink of 256 MB held the commits beside it up to 60-79 ms (ext4 trimming its blocks).
    segment = tmp_path / "0000000001.rfl"
    with open(segment, "wb") as fh:
        fh.truncate(100 << 20)
    sizes: list[int] = []
    truncate = os.truncate
    monkeypatch.setattr(os, "truncate", lambda path, size: (sizes.append(size), truncate(path, size))[1])
    shared_journal._delete_segment(segment)
    step = shared_journal._DELETE_STEP_BYTES
    assert sizes == [(100 << 20) - step, (100 << 20) - 2 * step, (100 << 20) - 3 * step]
    assert list(tmp_path.iterdir()) == []


def test_a_deletion_a_crash_interrupted_is_finished_at_the_next_start(tmp_path: Path, caplog) -> None:
    j = Journals(tmp_path)
    append(j.start("ep-a"), samples("ep-a", 0))
    j.commit()
    j.close()
    shared = tmp_path / "journal" / SHARED_DIR
    (shared / f"0000000000{shared_journal.FREE_SUFFIX}").write_bytes(b"\xff" * 5000)  # cut short mid-way
    again = Journals(tmp_path)
    assert seqs(again.found.journals[0]) == [0]
    again.shared.wait_for_deletions()
    assert not list(shared.glob(f"*{shared_journal.FREE_SUFFIX}"))
    assert "damaged" not in caplog.text and "skipped" not in caplog.text
    again.close()


def test_freed_segments_are_kept_as_spares_and_written_over_by_the_next_ones(tmp_path: Path) -> None:
    j = Journals(tmp_path, segment_bytes=4096)
    a, b = j.start("ep-a"), j.start("ep-b")
    stream_interleaved(j, [a, b], 30)
    append(a, stop("ep-a", 29))
    append(b, stop("ep-b", 29))
    j.commit()
    used = {(tmp_path / "journal" / SHARED_DIR / name).stat().st_ino for name in j.segments()}
    for journal in (a, b):
        seal_recovered(journal, tmp_path)
        j.writer.release(journal)
    j.commit()
    spares = j.spares()
    assert len(spares) == shared_journal.DEFAULT_SPARE_SEGMENTS and len(j.segments()) == 1  # the rest deleted
    spare_inodes = {spare.stat().st_ino for spare in spares}
    assert spare_inodes <= used
    c = j.start("ep-c")
    stream_interleaved(j, [c], 80)  # several segments' worth: both spares and new files
    assert j.spares() == []
    reused = {(tmp_path / "journal" / SHARED_DIR / name).stat().st_ino for name in j.segments()}
    assert spare_inodes <= reused and j.shared.recycled == 2, "the spares were not written over"
    assert seqs(c) == list(range(80))
    j.close()


def journals_with_spares(data: Path) -> Journals:
    """Small segments, one episode sealed and released: its freed segments are spares."""
    j = Journals(data, segment_bytes=4096)
    a = j.start("ep-a")
    stream_interleaved(j, [a], 30)
    append(a, stop("ep-a", 29))
    j.commit()
    seal_recovered(a, data)
    j.writer.release(a)
    j.commit()
    assert j.spares()
    return j


def test_a_spare_that_cannot_be_written_over_is_deleted_and_a_new_file_started(tmp_path: Path, monkeypatch) -> None:
    j = journals_with_spares(tmp_path)

    def no_direct_io(path: Path) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(shared_journal, "overwrite_record_log", no_direct_io)
    b = j.start("ep-b")
    stream_interleaved(j, [b], 30)
    assert j.spares() == [] and j.shared.recycled == 0
    assert not list((tmp_path / "journal" / SHARED_DIR).glob("*.spare"))
    assert seqs(b) == list(range(30))
    j.close()


def test_spares_are_kept_across_a_restart(tmp_path: Path) -> None:
    j = journals_with_spares(tmp_path)
    spares = j.spares()
    j.close()
    again = Journals(tmp_path, segment_bytes=4096)
    assert again.spares() == spares
    again.close()


def test_recovery_ends_a_segment_at_the_old_records_of_a_recycled_one(tmp_path: Path, caplog) -> None:
    # A recycled segment holds its old records past the new ones; where a new record ends on
    # a block boundary (or a crash cut a write's later blocks), intact old records follow.
    j = Journals(tmp_path, segment_bytes=1 << 20)
    a = j.start("ep-a")
    stream_interleaved(j, [a], 20)
    j.close()
    (name,) = j.segments()
    segment = tmp_path / "journal" / SHARED_DIR / name
    intact = segment.stat().st_size
    older = int(segment.stem) - 1
    with RecordWriter(segment) as raw:  # what the file held as segment `older`, of a sealed episode
        for seq in range(5):
            raw.append(older.to_bytes(4, "little") + episode_tag("r1", "ep-old") + b"\x00" * 40)

    again = Journals(tmp_path, segment_bytes=1 << 20)
    assert [journal.key for journal in again.found.journals] == [("r1", "ep-a")] and not again.found.unreadable
    assert seqs(again.found.journals[0]) == list(range(20))
    assert segment.stat().st_size == intact  # the old records cut off, as a torn tail is
    assert "skipped" not in caplog.text
    again.close()


def test_recovery_cuts_the_old_records_off_a_recycled_segment_that_is_not_the_newest(
    tmp_path: Path, caplog
) -> None:
    # A crash after a recycled segment was synced but before its close cut it to its records.
    j = Journals(tmp_path, segment_bytes=4096)
    a = j.start("ep-a")
    stream_interleaved(j, [a], 40)
    j.close()
    first = tmp_path / "journal" / SHARED_DIR / j.segments()[0]
    assert len(j.segments()) > 1
    intact = first.stat().st_size
    with RecordWriter(first) as raw:
        raw.append((int(first.stem) - 1).to_bytes(4, "little") + episode_tag("r1", "ep-old") + b"\x00" * 40)

    again = Journals(tmp_path, segment_bytes=4096)
    assert seqs(again.found.journals[0]) == list(range(40))
    assert first.stat().st_size == intact
    assert "damaged" not in caplog.text
    again.close()


def test_spares_go_when_the_disk_runs_short(small_disk: Path) -> None:
    j = Journals(small_disk, segment_bytes=64 * 1024)  # spares kept while 256 kB are free besides
    a = j.start("ep-a")
    stream_interleaved(j, [a], 1000)  # a few segments of ep-a alone
    append(a, stop("ep-a", 999))
    j.commit()
    seal_recovered(a, small_disk)
    j.writer.release(a)
    j.commit()
    assert j.spares(), "spares are kept while the disk has room"
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 128 * 1024))
    b = j.start("ep-b")
    stream_interleaved(j, [b], 1000)  # ep-b fills the spares and the next segments, then is sealed
    append(b, stop("ep-b", 999))
    j.commit()
    j.writer.release(b)  # as once sealed (elsewhere: this disk has no room for its file)
    j.commit()
    j.shared.wait_for_deletions()
    assert j.spares() == [] and not list((small_disk / "journal" / SHARED_DIR).glob("*.spare"))
    j.close()


def test_recovery_rebuilds_each_episode_and_cuts_the_torn_tail(tmp_path: Path) -> None:
    j = Journals(tmp_path, segment_bytes=8192)
    a, b = j.start("ep-a"), j.start("ep-b")
    stream_interleaved(j, [a, b], 50)
    assert len(j.segments()) > 1
    j.writer._queue.put((journal_writer._STOP,))  # the writer thread ends; what it wrote is in the files, as after a kill -9
    j.writer._thread.join()
    newest = (tmp_path / "journal" / SHARED_DIR / j.segments()[-1])
    intact = record_log.scan(newest)[1]
    with open(newest, "ab") as fh:
        fh.write(b"\xff\x00\x00\x00torn")  # half a record, as a write cut by the kill leaves

    again = Journals(tmp_path, segment_bytes=8192)
    found = {journal.key: journal for journal in again.found.journals}
    assert set(found) == {("r1", "ep-a"), ("r1", "ep-b")} and not again.found.unreadable
    assert found[("r1", "ep-a")].next_seq == {"joint_state": 50}
    assert seqs(found[("r1", "ep-b")]) == list(range(50))
    assert newest.stat().st_size == intact
    append(found[("r1", "ep-a")], samples("ep-a", 50, width=16))  # and it goes on, in a new segment
    again.commit()
    assert seqs(found[("r1", "ep-a")]) == list(range(51))
    again.close()


def test_recovery_fsyncs_the_segments_it_keeps_before_their_episodes_count_as_durable(
    tmp_path: Path, monkeypatch
) -> None:
    # A killed ingest's last records may be written and never fsynced: replayed from the page
    # cache, they were acknowledged (the WELCOME, a duplicate's ACK) and a power loss lost them.
    j = Journals(tmp_path, segment_bytes=8192)
    a = j.start("ep-a")
    stream_interleaved(j, [a], 55)  # more than one segment; commits every 10: the last 5 never synced
    j.writer.wait(j.writer.barrier())
    kept = j.segments()
    assert len(kept) > 1
    synced = SyncedPaths(monkeypatch)

    again = Journals(tmp_path, segment_bytes=8192)
    (found,) = again.found.journals
    assert found.next_seq == {"joint_state": 55}
    assert found.durable == found.next_seq
    segment_dir = tmp_path / "journal" / SHARED_DIR
    assert {str(segment_dir / name) for name in kept} <= set(synced.paths)
    again.close()
    j.close()


def test_a_failed_fsync_when_a_segment_is_finished_is_kept_for_the_ingest_to_stop_on(
    tmp_path: Path, monkeypatch
) -> None:
    # Retried, it would return 0 without writing anything (a failed writeback's pages are clean).
    j = Journals(tmp_path, segment_bytes=8192)
    a = j.start("ep-a")
    stream_interleaved(j, [a], 10)
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(SEGMENT_SUFFIX):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    for seq in range(10, 60):  # past the segment's end
        append(a, samples("ep-a", seq, width=16))
    j.writer.wait(j.writer.barrier())
    append(a, samples("ep-a", 60, width=16))  # goes to the next segment: finishing this one fsyncs it
    j.writer.wait(j.writer.barrier())
    assert isinstance(j.shared.sync_failure, OSError) and j.shared.sync_failure.errno == errno.EIO
    assert a.write_error is not None  # the batch that needed the next segment was not written
    monkeypatch.setattr(os, "fdatasync", real)
    j.close()


def test_an_episode_whose_record_does_not_replay_is_set_aside_and_the_others_recover(tmp_path: Path) -> None:
    write_good_and_damaged_episodes(tmp_path)

    again = Journals(tmp_path)
    assert [journal.key for journal in again.found.journals] == [("r1", "ep-good")]
    assert "does not decode" in again.found.unreadable[("r1", "ep-bad")]
    places = again.found.unreadable_places[("r1", "ep-bad")]
    assert len(places) == 3  # header, message, the record that does not decode: all kept for the quarantine
    again.close()


def test_a_long_open_episode_moves_to_a_journal_file_of_its_own(tmp_path: Path) -> None:
    j = Journals(tmp_path, segment_bytes=2048, graduate_after_s=0.0)
    long, short = j.start("ep-long"), j.start("ep-short")
    stream_interleaved(j, [long, short], 30)
    append(short, stop("ep-short", 29))
    j.commit()
    short.sealing = True
    seal_recovered(short, tmp_path)
    j.writer.release(short)
    deadline = time.monotonic() + 10
    while long.shared is not None and time.monotonic() < deadline:
        append(long, samples("ep-long", long.next_seq["joint_state"], width=16))  # the check runs after a write
        j.commit()
        time.sleep(0.2)
    assert long.shared is None and long.path == tmp_path / "journal" / "r1" / f"ep-long{JOURNAL_SUFFIX}"
    j.commit()
    assert len(j.segments()) == 1  # nothing pins the old segments any more
    last = long.next_seq["joint_state"]
    append(long, samples("ep-long", last, width=16))  # goes on in its own file
    j.commit()
    long.sync()
    meta, records = read_journal(long.path)
    assert meta.episode_id == "ep-long"
    assert [r.header.seq for _, r in records] == list(range(last + 1))
    j.close()

    again = Journals(tmp_path)  # the file is the truth: its old shared records are not replayed twice
    assert again.found.journals == []
    again.close()


def test_a_failed_shared_write_is_rolled_back_and_the_episode_goes_on(tmp_path: Path) -> None:
    j = Journals(tmp_path)
    journal = j.start("ep-a")
    append(journal, samples("ep-a", 0))
    j.commit()
    segment = j.shared.current
    assert segment is not None
    good_fd = segment._fd
    segment._fd = os.open(segment.path, os.O_RDONLY)  # every write fails now, as on a full disk
    for seq in range(1, 4):
        append(journal, samples("ep-a", seq))
    j.writer.wait(j.writer.barrier())
    assert journal.write_error is not None
    j.writer.request_rollback(journal)
    j.writer.wait(j.writer.barrier())
    journal.roll_back_to_written()
    assert journal.next_seq == {"joint_state": 1}  # what the file holds; the collector resends the rest
    os.close(segment._fd)
    segment._fd = good_fd
    for seq in range(1, 4):
        append(journal, samples("ep-a", seq))
    j.commit()
    assert seqs(journal) == [0, 1, 2, 3]
    j.close()


@pytest.mark.parametrize("tag", [b"\x05r1/ep", b"\x40" + b"x" * 10, b"\x03a/b/c"[:4] + b"\xff"])
def test_a_record_with_an_unreadable_episode_tag_is_skipped(tmp_path: Path, tag: bytes) -> None:
    j = Journals(tmp_path)
    journal = j.start("ep-a")
    append(journal, samples("ep-a", 0))
    j.commit()
    j.close()
    segment = tmp_path / "journal" / SHARED_DIR / j.segments()[-1]
    with RecordWriter(segment) as raw:
        raw.append(int(segment.stem).to_bytes(4, "little") + tag)
    again = Journals(tmp_path)
    assert [(k.key, k.next_seq) for k in again.found.journals] == [(("r1", "ep-a"), {"joint_state": 1})]
    again.close()


# ------------------------------------------------------------------ in the ingest


def test_an_episode_that_fails_to_seal_is_copied_to_quarantine_and_its_segment_freed(
    start_ingest, make_collector, monkeypatch
) -> None:
    from pipeline import raw_store
    from tests.conftest import record_episode

    original = raw_store._write_episode

    def fails_for_the_first(h5, meta, *args, **kwargs):
        if meta.episode_id == poisoned[0]:
            raise ValueError("a record HDF5 cannot hold")
        return original(h5, meta, *args, **kwargs)

    poisoned: list[str] = [""]
    monkeypatch.setattr(raw_store, "_write_episode", fails_for_the_first)
    # Sealed on the ingest's own thread, where the patch reaches (worker processes: test_seal_workers.py).
    ingest = start_ingest(journal_segment_bytes=64 * 1024, seal_workers=0)
    collector = make_collector(ingest.endpoint)
    collector.start()
    poisoned[0] = record_episode(collector, 0.4)
    second = record_episode(collector, 0.4)
    collector.drain(20)  # not all True: the collector keeps the quarantined episode's spool
    wait_for(lambda: ingest.server.stats.quarantined == 1 and ingest.server.stats.sealed == 1, 10, "seal and quarantine")
    quarantined = ingest.data_dir / "quarantine" / "tiny-0" / f"{poisoned[0]}{JOURNAL_SUFFIX}"
    meta, records = read_journal(quarantined)  # a journal file like any other, every accepted message in it
    assert meta.episode_id == poisoned[0] and records
    assert {r.header.episode_id for _, r in records} == {poisoned[0]}
    assert "a record HDF5 cannot hold" in quarantined.with_name(f"{poisoned[0]}.reason.txt").read_text()
    assert (ingest.data_dir / "raw" / "tiny-0" / f"{second}.h5").exists()
    shared = ingest.data_dir / "journal" / SHARED_DIR
    # Freed: no segment's log holds its records (a segment written over a spare may hold
    # its old bytes past the new records, which no reader takes for records).
    wait_for(lambda: next(iter_episode_payloads(shared, ("tiny-0", poisoned[0])), None) is None,
             10, "the quarantined episode's segments to be freed")


def test_an_episode_that_does_not_replay_is_quarantined_at_start_and_the_rest_recovers(
    tmp_path: Path, start_ingest
) -> None:
    data = tmp_path / "ingest"
    write_good_and_damaged_episodes(data)

    ingest = start_ingest()
    assert ingest.server.stats.quarantined == 1 and ingest.thread.is_alive()
    assert list(ingest.server.journals) == [("r1", "ep-good")]
    reason = (data / "quarantine" / "r1" / "ep-bad.reason.txt").read_text()
    assert "does not replay" in reason and "does not decode" in reason
    kept = list(iter_log(data / "quarantine" / "r1" / f"ep-bad{JOURNAL_SUFFIX}"))
    assert len(kept) == 3  # its header, the message before the damage, the damaged record: all kept to look at
    ingest.stop()
    again = start_ingest()  # no crash loop: quarantined once
    assert again.server.stats.quarantined == 0 and list(again.server.journals) == [("r1", "ep-good")]


def test_an_unreadable_episode_that_cannot_be_quarantined_keeps_its_records_for_the_next_start(
    tmp_path: Path, start_ingest
) -> None:
    data = tmp_path / "ingest"
    j = Journals(data, segment_bytes=2048)
    bad = j.start("ep-bad")
    for seq in range(12):  # fills the first segment
        append(bad, samples("ep-bad", seq, width=16))
    j.commit()
    good = j.start("ep-good")
    stream_interleaved(j, [good], 40)  # later segments: ep-bad is alone in the first one
    j.close()
    first = j.segments()[0]
    append_unreplayable(data / "journal" / SHARED_DIR / first, "ep-bad")
    (data / "quarantine").write_text("not a folder")  # the copy to quarantine/ fails

    ingest = start_ingest(journal_segment_bytes=2048)
    assert ingest.server.stats.quarantined == 0 and ingest.thread.is_alive()
    assert first in j.segments(), "the only copy of ep-bad's records was deleted"
    ingest.stop()
    (data / "quarantine").unlink()
    again = start_ingest(journal_segment_bytes=2048)
    assert again.server.stats.quarantined == 1
    assert (data / "quarantine" / "r1" / f"ep-bad{JOURNAL_SUFFIX}").exists()


@pytest.mark.parametrize("direct_io, writer_type", [(True, DirectRecordWriter), (False, RecordWriter)])
def test_segments_are_written_as_configured_and_replay_alike(tmp_path: Path, direct_io: bool, writer_type: type) -> None:
    j = Journals(tmp_path, segment_bytes=8192, direct_io=direct_io)
    a, b = j.start("ep-a"), j.start("ep-b")
    stream_interleaved(j, [a, b], 30)
    j.commit()
    assert isinstance(j.shared.current, writer_type)
    j.close()
    again = Journals(tmp_path, segment_bytes=8192, direct_io=direct_io)
    found = {journal.key: journal for journal in again.found.journals}
    assert seqs(found[("r1", "ep-a")]) == list(range(30)) and seqs(found[("r1", "ep-b")]) == list(range(30))
    again.close()


def test_reading_an_episode_asks_the_disk_for_its_next_records_ahead(tmp_path: Path, monkeypatch) -> None:
    j = Journals(tmp_path)
    a, b = j.start("ep-a"), j.start("ep-b")
    for seq in range(100):
        append(a, samples("ep-a", seq))
        append(b, samples("ep-b", seq))  # ep-a's records are scattered, as a fleet's are
    j.commit()
    advised: list[int] = []
    monkeypatch.setattr(shared_journal, "_fadvise", lambda fd, offset, length, advice: advised.append(offset))
    offsets = list(a.written.places.offsets)
    payloads = j.shared.read_payloads(a.written.places, a.tag)
    next(payloads)
    assert advised == offsets[: shared_journal._READ_AHEAD + 1]  # the first read, and the records after it
    assert len(list(payloads)) == len(offsets) - 1
    assert advised == offsets  # each record asked for once, before it is read
    j.close()

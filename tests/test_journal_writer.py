"""Journal appends on the writer thread: in order, and rolled back to the file when a write fails."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pipeline import protocol
from pipeline.journal import EpisodeJournal, EpisodeMeta, read_journal
from pipeline.journal_writer import JournalWriter


def samples(seq: int) -> protocol.Samples:
    return protocol.Samples.build("r1", "ep1", "joint_state", seq, np.array([seq]), np.array([seq]), np.ones((1, 3)))


def open_journal(tmp_path: Path, writer: JournalWriter) -> EpisodeJournal:
    meta = EpisodeMeta("r1", "ep1", "m", "d", {}, time.time_ns())
    journal = EpisodeJournal.create(tmp_path / "ep1.rfj", meta)
    journal.attach(writer)
    return journal


def append(journal: EpisodeJournal, seq: int) -> None:
    record = samples(seq)
    journal.append_frames(seq, record.encode(), record.header)


def test_queued_appends_reach_the_file_in_order_before_the_barrier(tmp_path: Path) -> None:
    writer = JournalWriter()
    journal = open_journal(tmp_path, writer)
    for seq in range(50):
        append(journal, seq)
    writer.wait(writer.barrier())
    journal.sync()
    _, records = read_journal(journal.path)
    assert [r.header.seq for _, r in records] == list(range(50))
    assert journal.written.next_seq == {"joint_state": 50} == journal.next_seq
    assert journal.size == journal.path.stat().st_size
    writer.close()
    journal.close()


def test_a_failed_write_rolls_the_journal_back_to_what_the_file_holds(tmp_path: Path) -> None:
    writer = JournalWriter()
    journal = open_journal(tmp_path, writer)
    for seq in range(3):
        append(journal, seq)
    writer.wait(writer.barrier())
    assert journal.writer is not None
    good_fd = journal.writer._fd
    journal.writer._fd = os.open(journal.path, os.O_RDONLY)  # every write now fails (EBADF), as on a full disk
    for seq in range(3, 6):
        append(journal, seq)  # accepted by the loop, queued
    writer.wait(writer.barrier())
    assert journal.write_error is not None
    assert journal.next_seq == {"joint_state": 6}  # what the loop accepted ...
    writer.request_rollback(journal)
    writer.wait(writer.barrier())
    assert journal.rollback_ready
    journal.roll_back_to_written()  # ... becomes what the file holds
    assert journal.next_seq == {"joint_state": 3} and journal.write_error is None
    assert journal.acked == {"joint_state": 2}
    os.close(journal.writer._fd)
    journal.writer._fd = good_fd  # the disk has room again: the collector resends seq 3 on
    for seq in range(3, 5):
        append(journal, seq)
    writer.wait(writer.barrier())
    writer.close()
    journal.close()
    _, records = read_journal(journal.path)
    assert [r.header.seq for _, r in records] == [0, 1, 2, 3, 4]
    assert journal.size == journal.path.stat().st_size

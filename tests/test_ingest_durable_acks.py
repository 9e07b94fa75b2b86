"""What the ingest acknowledges (an ACK, or the WELCOME a reconnecting collector reads)
is on disk: never a write that failed, nor one no fsync has covered yet, nor what a
killed ingest left in the page cache. The collector deletes what is acknowledged."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np

from pipeline import protocol
from pipeline.ingest import IngestServer
from pipeline.journal import EpisodeJournal, EpisodeMeta
from pipeline.raw_store import RawEpisodeReader
from pipeline.shared_journal import SharedJournal
from tests.processes import free_port
from tests.test_ingest_hardening import ROBOT, RawPeer, sealed_path, wait_for

EPISODE = "ep-w1"


class FaultyDisk:
    """The shared journal's appends fail with ENOSPC while ``full``; a commit's sync
    waits at ``sync_gate`` while ``hold_syncs``, so the test decides when it finishes."""

    def __init__(self, monkeypatch) -> None:  # noqa: ANN001
        self.full = False
        self.hold_syncs = False
        self.sync_gate = threading.Event()
        self.failed_appends = 0
        append, sync_all = SharedJournal.append, IngestServer._sync_all

        def failing_append(journal_set, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if self.full:
                self.failed_appends += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return append(journal_set, *args, **kwargs)

        def held_sync_all(server, journals, barrier):  # noqa: ANN001, ANN202
            if self.hold_syncs and journals:
                self.sync_gate.wait(10)
            return sync_all(server, journals, barrier)

        monkeypatch.setattr(SharedJournal, "append", failing_append)
        monkeypatch.setattr(IngestServer, "_sync_all", held_sync_all)


def send_samples(peer: RawPeer, seq: int) -> None:
    """Two rows of joint states as message ``seq`` (a resend when it was sent before)."""
    cols = 3 * peer.robot.dof
    rows = np.arange(2, dtype=np.int64)
    record = protocol.Samples.build(ROBOT, EPISODE, "joint_state", seq, rows + 1_000 + 10 * seq, rows,
                                    np.full((2, cols), float(seq)))
    peer.send(record.encode())


def acked_seqs(peer: RawPeer, stream: str) -> list[int]:
    peer.drain(100)
    return [seq for r in peer.replies if isinstance(r, protocol.Ack) for _, s, seq in r.acks if s == stream]


def start_episode(peer: RawPeer) -> None:
    """HELLO, start, seq 0 and 1 of the joint states, acknowledged."""
    assert isinstance(peer.hello(), protocol.Welcome)
    peer.event({"kind": "start", "task": "t", "operator": "op"})
    send_samples(peer, 0)
    send_samples(peer, 1)
    wait_for(lambda: 1 in acked_seqs(peer, "joint_state"), 5, "seq 1 to be acknowledged")


def test_a_write_that_failed_while_its_commit_synced_is_not_acknowledged(
    start_ingest, tiny_robot, monkeypatch
) -> None:
    # The defect: the commit's snapshot held seq 2; its write failed; while the commit's sync
    # ran, further messages let the loop roll the journal back (the failure was cleared), so
    # the finished commit saw no failure and acknowledged seq 2. The collector dropped it from
    # its spool and the ingest waited for it for ever: a gap on every later message.
    disk = FaultyDisk(monkeypatch)
    ingest = start_ingest()
    peer = RawPeer(ingest.endpoint, tiny_robot, ROBOT, EPISODE)
    try:
        start_episode(peer)
        disk.full = disk.hold_syncs = True
        send_samples(peer, 2)  # accepted, its commit starts, its write fails
        wait_for(lambda: disk.failed_appends > 0, 5, "the write of seq 2 to fail")
        journal = ingest.server.journals[(ROBOT, EPISODE)]
        deadline = time.monotonic() + 10
        while journal.next_seq["joint_state"] != 2:  # resent until the loop has rolled it back
            assert time.monotonic() < deadline, "the loop never rolled the failed write back"
            send_samples(peer, 2)
            peer.drain(50)
        disk.sync_gate.set()  # the commit that covered seq 2 finishes
        peer.drain(300)
        assert 2 not in acked_seqs(peer, "joint_state"), "seq 2 was acknowledged but never written"

        disk.full = disk.hold_syncs = False  # room again: the collector's resend is accepted
        send_samples(peer, 2)
        wait_for(lambda: 2 in acked_seqs(peer, "joint_state"), 5, "seq 2 to be acknowledged once written")
        peer.seq["joint_state"] = 3
        peer.stop()
        wait_for(lambda: sealed_path(ingest, ROBOT, EPISODE).exists(), 10, "the episode to be sealed")
    finally:
        peer.close()
    with RawEpisodeReader(sealed_path(ingest, ROBOT, EPISODE)) as raw:
        assert raw.numeric("joint_state")["seq"].tolist() == [0, 0, 1, 1, 2, 2]  # each message once


def test_the_welcome_of_a_reconnecting_collector_leaves_out_a_write_that_failed(
    start_ingest, tiny_robot, monkeypatch
) -> None:
    disk = FaultyDisk(monkeypatch)
    ingest = start_ingest()
    peer = RawPeer(ingest.endpoint, tiny_robot, ROBOT, EPISODE)
    again = RawPeer(ingest.endpoint, tiny_robot, ROBOT, EPISODE)
    try:
        start_episode(peer)
        disk.full = disk.hold_syncs = True
        send_samples(peer, 2)  # accepted; its write fails
        wait_for(lambda: disk.failed_appends > 0, 5, "the write of seq 2 to fail")
        welcome = again.hello()  # the link dropped: the collector reconnects before the rollback
        assert welcome.acked[EPISODE]["joint_state"] == 1, welcome.acked
    finally:
        disk.sync_gate.set()
        peer.close()
        again.close()


def test_the_welcome_of_a_reconnecting_collector_leaves_out_what_no_fsync_has_covered(
    start_ingest, tiny_robot, monkeypatch
) -> None:
    disk = FaultyDisk(monkeypatch)
    ingest = start_ingest()
    peer = RawPeer(ingest.endpoint, tiny_robot, ROBOT, EPISODE)
    again = RawPeer(ingest.endpoint, tiny_robot, ROBOT, EPISODE)
    try:
        start_episode(peer)
        disk.hold_syncs = True  # a slow disk: the commit covering seq 2 is still syncing
        send_samples(peer, 2)
        journal = ingest.server.journals[(ROBOT, EPISODE)]
        wait_for(lambda: journal.next_seq.get("joint_state") == 3, 5, "seq 2 to be accepted")
        welcome = again.hello()
        assert welcome.acked[EPISODE]["joint_state"] == 1, welcome.acked
        disk.sync_gate.set()
        send_samples(again, 2)  # the collector resends what the WELCOME left out: a duplicate, acknowledged
        wait_for(lambda: 2 in acked_seqs(again, "joint_state"), 5, "seq 2 to be acknowledged once synced")
    finally:
        disk.sync_gate.set()
        peer.close()
        again.close()


class SyncedPaths:
    """Which files were fsynced (``os.fsync`` / ``os.fdatasync``), by path."""

    def __init__(self, monkeypatch) -> None:  # noqa: ANN001
        self.paths: list[str] = []
        for name in ("fsync", "fdatasync"):
            monkeypatch.setattr(os, name, self._spy(getattr(os, name)))

    def _spy(self, real):  # noqa: ANN001, ANN202
        def sync(fd: int) -> None:
            try:
                self.paths.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
            real(fd)
        return sync


def left_by_a_killed_ingest(path: Path, robot, seqs: int) -> None:  # noqa: ANN001
    """A journal file whose records were written and never fsynced (a SIGKILL before the commit)."""
    meta = EpisodeMeta(ROBOT, EPISODE, robot.model, robot.digest, robot.to_dict(), time.time_ns())
    journal = EpisodeJournal.create(path, meta)
    cols = 3 * robot.dof
    for seq in range(seqs):
        record = protocol.Samples.build(ROBOT, EPISODE, "joint_state", seq, np.arange(2) + 1_000 + 10 * seq,
                                        np.arange(2), np.ones((2, cols)))
        journal.append_frames(time.time_ns(), record.encode(), record.header)
    assert journal.writer is not None
    os.close(journal.writer._fd)  # killed: no sync, no close
    journal.writer._fd = -1


def test_a_journal_a_killed_ingest_left_is_fsynced_before_it_is_acknowledged(
    start_ingest, tiny_robot, tmp_path, monkeypatch
) -> None:
    path = tmp_path / "ingest" / "journal" / ROBOT / f"{EPISODE}.rfj"
    left_by_a_killed_ingest(path, tiny_robot, 3)
    synced = SyncedPaths(monkeypatch)
    ingest = start_ingest()
    peer = RawPeer(ingest.endpoint, tiny_robot, ROBOT, EPISODE)
    try:
        welcome = peer.hello(pending=(EPISODE,))
        assert welcome.acked[EPISODE]["joint_state"] == 2
        assert str(path) in synced.paths, "seq 0-2 acknowledged from the page cache: never fsynced"
    finally:
        peer.close()


def failing_segment_syncs(monkeypatch) -> dict[str, int]:  # noqa: ANN001
    """``os.fdatasync`` of a shared-journal segment fails with EIO once ``state['fail']`` is set."""
    state = {"fail": 0, "failed": 0}
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if state["fail"] and "/shared/" in os.readlink(f"/proc/self/fd/{fd}"):
            state["failed"] += 1
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return state


def test_a_failed_fsync_stops_the_ingest_without_acknowledging_what_it_covered(
    tmp_path, tiny_robot, monkeypatch, capsys
) -> None:
    # The defect: the commit was simply tried again and the retry's success trusted. Linux
    # reports a failed writeback once and marks its pages clean, so the retried fsync returns 0
    # though the records may never reach the disk (PostgreSQL's "fsyncgate"): the ingest
    # acknowledged them and the collector deleted them.
    from pipeline import cli

    syncs = failing_segment_syncs(monkeypatch)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(cli.main(
        ["ingest", "--plain", "--data-dir", str(tmp_path / "d"), "--bind", endpoint])), daemon=True)
    thread.start()
    peer = RawPeer(endpoint, tiny_robot, ROBOT, EPISODE)
    try:
        start_episode(peer)
        syncs["fail"] = 1
        send_samples(peer, 2)
        thread.join(15)
        assert not thread.is_alive(), "the ingest went on after an fsync failed"
        assert 2 not in acked_seqs(peer, "joint_state")
    finally:
        peer.close()
    assert result and result[0] not in (0, None)
    err = capsys.readouterr().err
    assert "fsync" in err and "Input/output error" in err and "Traceback" not in err

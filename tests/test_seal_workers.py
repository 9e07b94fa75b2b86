"""Sealing in worker processes: the same file as sealing in the ingest, errors that
cross back, workers that die (with the ingest, or under it)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.journal import EpisodeJournal
from pipeline.raw_store import raw_path, seal_recovered, verify_episode
from pipeline.seal_workers import SealFailed, SealJob, SealWorkers, run_seal_job
from pipeline.shared_journal import SEGMENT_SUFFIX
from tests.conftest import record_episode
from tests.processes import IngestProcess, free_port
from tests.test_ingest_hardening import wait_for
from tests.test_shared_journal import Journals, append, samples, stop


def two_interleaved_episodes(data: Path) -> tuple[Journals, EpisodeJournal, EpisodeJournal]:
    j = Journals(data)
    a, b = j.start("ep-a"), j.start("ep-b")
    for seq in range(40):
        append(a, samples("ep-a", seq))
        append(b, samples("ep-b", seq, width=5))
    append(a, stop("ep-a", 39))
    append(b, stop("ep-b", 39))
    j.commit()
    return j, a, b


@pytest.fixture
def workers():
    pool = SealWorkers(1)
    yield pool
    pool.shutdown()


def test_a_worker_seals_the_same_content_as_the_ingest_thread(tmp_path: Path, workers: SealWorkers) -> None:
    j, a, _ = two_interleaved_episodes(tmp_path / "data")
    job = SealJob.of(a, tmp_path / "by-worker", incomplete=False)
    by_worker = workers.submit(job).result(timeout=60)
    by_thread = seal_recovered(a, tmp_path / "data")
    j.close()
    assert by_worker == raw_path(tmp_path / "by-worker", "r1", "ep-a")
    assert verify_episode(by_worker).ok
    with h5py.File(by_worker) as w, h5py.File(by_thread) as t:
        assert w.attrs["content_sha256"] == t.attrs["content_sha256"]
        assert np.array_equal(w["streams/joint_state/seq"][()], np.arange(40))  # one row per batch, only its own


def test_a_store_error_in_a_worker_arrives_as_a_store_error_naming_the_segment(
    tmp_path: Path, workers: SealWorkers
) -> None:
    j, a, _ = two_interleaved_episodes(tmp_path / "data")
    j.close()
    (segment,) = (tmp_path / "data" / "journal" / "shared").glob(f"*{SEGMENT_SUFFIX}")
    offset = a.written.places.offsets[5] + 20  # inside one of ep-a's records: its CRC no longer matches
    with open(segment, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StoreError) as caught:
        workers.submit(SealJob.of(a, tmp_path / "out", incomplete=False)).result(timeout=60)
    assert segment.name in caught.value.path
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_any_other_error_in_a_worker_arrives_with_its_kind_and_message(tmp_path: Path, workers: SealWorkers) -> None:
    j, a, _ = two_interleaved_episodes(tmp_path / "data")
    j.close()
    job = dataclasses.replace(SealJob.of(a, tmp_path / "out", incomplete=False), segments=b"\x01")  # not whole u32s
    with pytest.raises(SealFailed) as caught:
        workers.submit(job).result(timeout=60)
    assert caught.value.kind == "ValueError" and "multiple of item size" in caught.value.message


def test_an_incomplete_episode_is_sealed_with_what_the_ingest_says_is_missing(tmp_path: Path) -> None:
    j = Journals(tmp_path / "data")
    a = j.start("ep-a")
    for seq in range(10):
        append(a, samples("ep-a", seq))
    j.commit()
    j.close()
    out = run_seal_job(SealJob.of(a, tmp_path / "out", incomplete=True))  # no stop event: the ingest gave up
    with h5py.File(out) as h5:
        assert h5.attrs["status"] == "incomplete"
        assert "events" in h5.attrs["missing"]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policy")
def test_workers_run_only_on_cpu_time_nothing_else_wants(tmp_path: Path, workers: SealWorkers) -> None:
    j, a, _ = two_interleaved_episodes(tmp_path / "data")
    j.close()
    workers.submit(SealJob.of(a, tmp_path / "out", incomplete=False)).result(timeout=60)
    (pid,) = workers.worker_pids()
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the ingest itself is not


def test_a_killed_worker_is_replaced_and_the_next_seal_succeeds(tmp_path: Path, workers: SealWorkers) -> None:
    j, a, b = two_interleaved_episodes(tmp_path / "data")
    j.close()
    workers.submit(SealJob.of(a, tmp_path / "out", incomplete=False)).result(timeout=60)
    (pid,) = workers.worker_pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)  # the pool notices that its worker is gone
    out = workers.submit(SealJob.of(b, tmp_path / "out", incomplete=False)).result(timeout=60)
    assert verify_episode(out).ok
    assert workers.worker_pids() != [pid]


# ------------------------------------------------------------------ in the ingest


def seal_worker_pids(ancestor: int) -> list[int]:
    """Processes named ``seal-worker`` that descend from ``ancestor``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if comm != "seal-worker":
                continue
            pid = int(entry)
            while pid > 1:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == ancestor:
                    found.append(int(entry))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker processes in /proc")
def test_seal_workers_die_with_a_killed_ingest(tmp_path: Path, make_collector) -> None:
    ingest = IngestProcess(tmp_path / "ingest", free_port(), "--seal-workers", "2")
    ingest.start()
    collector = make_collector(ingest.endpoint)
    collector.start()
    record_episode(collector, 0.3)
    assert collector.drain(30)
    assert ingest.proc is not None
    pids = seal_worker_pids(ingest.proc.pid)
    assert pids, "the ingest sealed in a worker process"
    ingest.kill(signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 10, "the seal workers to exit")


def test_the_ingest_seals_again_when_its_worker_is_killed(start_ingest, make_collector) -> None:
    ingest = start_ingest(seal_workers=1)
    collector = make_collector(ingest.endpoint)
    collector.start()
    record_episode(collector, 0.3)
    assert collector.drain(30)
    workers = ingest.server._seal_workers
    assert workers is not None
    for pid in workers.worker_pids():
        os.kill(pid, signal.SIGKILL)
    second = record_episode(collector, 0.3)
    assert collector.drain(30)
    path = ingest.data_dir / "raw" / "tiny-0" / f"{second}.h5"
    assert verify_episode(path).ok
    assert ingest.server.stats.sealed == 2 and ingest.server.stats.quarantined == 0


def test_the_ingest_can_seal_on_its_own_thread(start_ingest, make_collector) -> None:
    ingest = start_ingest(seal_workers=0)
    collector = make_collector(ingest.endpoint)
    collector.start()
    episode = record_episode(collector, 0.3)
    assert collector.drain(30)
    assert ingest.server._seal_workers is None
    assert verify_episode(ingest.data_dir / "raw" / "tiny-0" / f"{episode}.h5").ok


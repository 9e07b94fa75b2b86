"""Sealing raw files on a disk that may be full: checked and reserved before HDF5 writes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from pipeline.journal import EpisodeJournal
from pipeline.raw_store import RawEpisodeReader, raw_path, seal_recovered
from tests.test_faults import small_disk  # noqa: F401 (a fixture)
from tests.test_ingest_durable_acks import SyncedPaths
from tests.test_shared_journal import Journals, append, samples, stop


def record(data: Path, episode: str, batches: int) -> tuple[Journals, EpisodeJournal]:
    """An episode of ``batches`` joint batches (64 columns) and its stop, durable in a shared journal."""
    j = Journals(data)
    journal = j.start(episode)
    for seq in range(batches):
        append(journal, samples(episode, seq, width=64))
    append(journal, stop(episode, batches - 1))
    j.commit()
    return j, journal


def test_a_seal_without_room_on_its_disk_fails_before_writing_anything(tmp_path: Path, small_disk: Path) -> None:
    # HDF5 that finds the disk full in the middle of a file can crash the process in its
    # clean-up (a segmentation fault, h5py issue 914): the seal must not get that far.
    j, journal = record(tmp_path, "ep-a", 200)
    with open(small_disk / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * (6 << 20))
        except OSError:
            pass  # the disk is full now
    with pytest.raises(OSError) as caught:
        seal_recovered(journal, small_disk)  # the journal has room; raw/ is on the full disk
    assert caught.value.errno == errno.ENOSPC and "no room for the raw file" in str(caught.value)
    assert not list((small_disk / "raw").rglob("*.partial"))
    (small_disk / "filler").unlink()
    seal_recovered(journal, small_disk)  # room again: the same journal seals
    with RawEpisodeReader(raw_path(small_disk, "r1", "ep-a")) as ep:
        assert ep.numeric("joint_state")["seq"].tolist() == list(range(200))
    j.close()


def test_the_room_reserved_for_a_seal_that_it_did_not_use_is_given_back(tmp_path: Path) -> None:
    j, journal = record(tmp_path, "ep-a", 400)
    journal.size = 64 << 20  # reserve far more than the file needs
    path = seal_recovered(journal, tmp_path)
    stat = path.stat()
    assert stat.st_blocks * 512 < stat.st_size + (1 << 20)
    j.close()


def test_the_first_seal_of_a_robot_makes_its_new_folder_durable(tmp_path: Path, monkeypatch) -> None:
    # The file and its folder were fsynced, not the entry of the new folder raw/<robot> in raw/
    # (nor raw/ in the data folder): a power loss could take the folder, sealed file and all,
    # after its journal was deleted.
    j, journal = record(tmp_path, "ep-a", 3)
    out = tmp_path / "out"
    out.mkdir()
    synced = SyncedPaths(monkeypatch)
    seal_recovered(journal, out)
    assert {str(out), str(out / "raw")} <= set(synced.paths)
    j.close()

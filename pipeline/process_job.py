"""The processing job: raw HDF5 episodes in, a Zarr dataset out, on Ray.

One Ray task per raw episode runs the stages and writes the episode's groups
into the dataset's staging area, then renames them into ``episodes/``. The
driver alone commits to the episode index, one raw episode at a time, so an
episode is in the dataset whole or not at all. Re-running skips what the
index holds; a worker killed mid-episode is retried by Ray from scratch (its
half-written staging group is discarded), and the dataset ends as a clean run
would have left it.

Runs on an embedded local Ray by default; ``address`` (or ``RAY_ADDRESS``, or
``ray job submit -- refinery process ...``) runs it on a cluster, where the
raw folder and the dataset must be on storage every node sees.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from pipeline.dataset.index import (
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    EPISODES_GROUP,
    REJECTED_GROUP,
    STAGING_GROUP,
    EpisodeEntry,
    commit_entries,
    committed_sources,
    load_index,
)
from pipeline.errors import RefineryError, StoreError
from pipeline.processing.config import ProcessConfig
from pipeline.raw_summary import raw_files

log = logging.getLogger("refinery.process")


@dataclass(frozen=True)
class JobOptions:
    raw_dir: Path
    dataset: Path
    config: ProcessConfig = field(default_factory=ProcessConfig)
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS or an embedded local Ray
    num_cpus: int | None = None  # embedded Ray only; default: all cores
    max_retries: int = 3
    crash_marker: Path | None = None  # fault injection for tests: kill the first worker once


@dataclass
class JobSummary:
    raw_found: int = 0
    skipped: int = 0
    processed: int = 0
    accepted: int = 0
    rejected: int = 0
    split: int = 0
    failed: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    seconds: float = 0.0
    entries: list[EpisodeEntry] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"raw episodes found {self.raw_found}, already in the dataset {self.skipped}, processed {self.processed}",
            f"accepted {self.accepted} dataset episodes ({self.split} raw episodes split), rejected {self.rejected}",
        ]
        for reason, n in self.reasons.most_common():
            out.append(f"  rejected {n}x: {reason}")
        for failure in self.failed:
            out.append(f"  FAILED (not committed; re-run to retry): {failure}")
        if self.seconds:
            out.append(f"{self.frames} camera frames in {self.seconds:.1f} s ({self.frames / self.seconds:,.0f} frames/s)")
        return out


def ensure_dataset(dataset: Path) -> None:
    """Create an empty dataset (root, episodes/ and staging groups) unless it exists."""
    import zarr

    if (dataset / "zarr.json").exists():
        load_index(dataset)  # raises if it is not ours
        return
    root = zarr.open_group(str(dataset), mode="w-", zarr_format=3)
    root.attrs.update(
        {"format": DATASET_FORMAT, "format_version": DATASET_FORMAT_VERSION, "episodes": [], "stats": {}, "jobs": []}
    )
    root.create_group(EPISODES_GROUP)
    root.create_group(REJECTED_GROUP)
    root.create_group(STAGING_GROUP)


class DatasetLock:
    """One job per dataset at a time (an advisory lock file inside the store)."""

    def __init__(self, dataset: Path) -> None:
        self.path = dataset / ".refinery.lock"

    def __enter__(self) -> DatasetLock:
        self._fh = open(self.path, "w")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._fh.close()
            raise StoreError(str(self.path.parent), "another job is writing this dataset; wait for it to finish") from err
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def raw_identity(path: Path) -> tuple[str, str]:
    """(episode id, content checksum) of a sealed raw file, read from its attributes only."""
    try:
        with h5py.File(path, "r") as h5:
            return str(h5.attrs["episode_id"]), str(h5.attrs["content_sha256"])
    except (OSError, KeyError) as err:
        raise StoreError(str(path), f"not a readable sealed raw episode: {err}") from err


def _discard_staging(dataset: Path) -> None:
    """Half-written episodes of killed workers or drivers; nothing in the index points at them."""
    staging = dataset / STAGING_GROUP
    for child in staging.iterdir() if staging.exists() else []:
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def _init_ray(options: JobOptions) -> bool:
    """Connect to a cluster or start an embedded Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    # A private single-machine instance, but Ray's ports listen on every
    # interface and anyone who reaches them can run code: keep Ray's token auth.
    # With RAY_AUTH_MODE unset, ray.init() turns it on and makes the token
    # itself. Setting the variable here would not do: Ray reads it when it is
    # imported, and a head started with "token" but no token file dies.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(
        num_cpus=options.num_cpus or os.cpu_count() or 1,
        object_store_memory=256 * 1024 * 1024,  # tasks return small index entries, not arrays
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def run_process_job(options: JobOptions, progress: Callable[[int, int, str], None] | None = None) -> JobSummary:
    """Process every raw episode under ``raw_dir`` not yet in the dataset."""
    import ray

    from pipeline.processing.refine_task import process_raw_episode

    started = time.monotonic()
    summary = JobSummary()
    dataset = options.dataset
    raws = raw_files(options.raw_dir)
    summary.raw_found = len(raws)
    if not raws:
        raise StoreError(str(options.raw_dir), "no raw episodes (*.h5) found; point at the ingest's data dir or raw/")
    ensure_dataset(dataset)
    with DatasetLock(dataset):
        _discard_staging(dataset)
        done = committed_sources(load_index(dataset))
        todo = []
        for path in raws:
            if raw_identity(path) in done:
                summary.skipped += 1
            else:
                todo.append(path)
        if not todo:
            summary.seconds = time.monotonic() - started
            return summary
        we_started = _init_ray(options)
        try:
            task = ray.remote(num_cpus=1, max_retries=options.max_retries, retry_exceptions=[OSError])(
                process_raw_episode
            )
            config = options.config.to_dict()
            marker = str(options.crash_marker) if options.crash_marker else None
            pending = {task.remote(str(p), str(dataset.resolve()), config, marker): p for p in todo}
            job_info = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config,
                        "raw_dir": str(options.raw_dir)}
            total = len(pending)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    path = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.RayError, RefineryError) as err:
                        summary.failed.append(f"{path}: {_short(err)}")
                        log.error("processing %s failed: %s", path, err)
                    else:
                        entries = [EpisodeEntry.from_dict(e) for e in result["entries"]]
                        commit_entries(dataset, entries, job_info)
                        _count(summary, entries, result)
                    if progress is not None:
                        progress(total - len(pending), total, path.stem)
        finally:
            if we_started:
                ray.shutdown()
        _discard_staging(dataset)  # what killed workers left; their retries wrote it anew
    summary.seconds = time.monotonic() - started
    return summary


def _count(summary: JobSummary, entries: list[EpisodeEntry], result: dict[str, Any]) -> None:
    summary.processed += 1
    summary.entries += entries
    summary.frames += int(result.get("frames", 0))
    accepted = [e for e in entries if e.accepted]
    summary.accepted += len(accepted)
    if len(accepted) > 1:
        summary.split += 1
    for e in entries:
        if not e.accepted:
            summary.rejected += 1
            for reason in e.reasons:
                summary.reasons[reason] += 1


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__

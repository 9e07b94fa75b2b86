"""The processing job: raw HDF5 episodes in, a Zarr dataset out, on Ray.

The driver plans data segments: it groups the raw files not yet in the
dataset by model and camera layout and cuts each group into batches of about
``output.segment_mb`` of raw bytes (and into at least as many batches as
there are workers, so a small job still uses every core). One Ray task per
batch runs the stages on each of its raw files and writes their episodes
into one data segment, which it renames into ``data/`` when whole. The
driver alone commits to the episode index, one segment at a time, so an
episode is in the dataset whole or not at all. Re-running skips what the
index holds; a worker killed mid-segment is retried by Ray from scratch (its
half-written staging folder is discarded), and the dataset ends as a clean
run would have left it: a segment's name is derived from its raw files and
the configuration, so a retry writes the same segment.

Raw files that cannot be read become rejected rows (``unreadable: ...``)
and the job goes on with the others.

Runs on an embedded local Ray by default; ``address`` (or ``RAY_ADDRESS``, or
``ray job submit -- refinery process ...``) runs it on a cluster, where the
raw folders and the dataset must be on storage every node sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from pipeline.dataset.index import DATA_DIR, STAGING_DIR, DatasetIndex, EpisodeEntry
from pipeline.dataset.store import (
    DEFAULT_VAL_FRACTION,
    DatasetLock,
    create_dataset,
    discard_staging,
    write_job_record,
    write_json_durably,
)
from pipeline import interrupts, refinery_version
from pipeline.errors import RefineryError, StoreError
from pipeline.processing.config import ProcessConfig
from pipeline.ray_runtime import RaySession
from pipeline.raw_summary import raw_files

log = logging.getLogger("refinery.process")


@dataclass(frozen=True)
class JobOptions:
    raw_dir: Path | Sequence[Path]  # one raw folder or several (one per ingest)
    dataset: Path
    config: ProcessConfig = field(default_factory=ProcessConfig)
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS or an embedded local Ray
    num_cpus: int | None = None  # embedded Ray only; default: all cores
    max_retries: int = 3
    crash_marker: Path | None = None  # fault injection for tests: kill the first worker once
    val_fraction: float = DEFAULT_VAL_FRACTION  # a new dataset's validation share

    @property
    def raw_dirs(self) -> list[Path]:
        return [Path(self.raw_dir)] if isinstance(self.raw_dir, (str, Path)) else [Path(p) for p in self.raw_dir]


@dataclass
class JobSummary:
    raw_found: int = 0
    skipped: int = 0
    processed: int = 0
    accepted: int = 0
    rejected: int = 0
    split: int = 0
    segments: int = 0
    planned: int = 0  # raw files this run set out to process
    done: int = 0  # of those, how many came back (committed or failed)
    interrupted: bool = False
    failed: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    seconds: float = 0.0
    entries: list[EpisodeEntry] = field(default_factory=list)

    @property
    def bad_inputs(self) -> list[EpisodeEntry]:
        """Raw files rejected for what they are, not for what they hold: unreadable or corrupt."""
        return [e for e in self.entries if any(r.startswith(("unreadable:", "corrupt:")) for r in e.reasons)]

    def kept(self) -> tuple[float, float]:
        """Seconds of raw recording this run processed, and seconds of them kept in accepted episodes."""
        raw = {e.raw_episode_id: e.raw_duration_s for e in self.entries}
        kept = sum(e.length / e.rate_hz for e in self.entries if e.accepted and e.rate_hz)
        return sum(raw.values()), kept

    def decision_kinds(self) -> Counter[str]:
        """Cleaning decisions of this run, counted by kind."""
        kinds: Counter[str] = Counter()
        done: set[str] = set()
        for e in self.entries:
            if e.raw_episode_id not in done:  # the parts of a split episode share one decision list
                done.add(e.raw_episode_id)
                kinds.update(d.get("kind", "?") for d in e.decision_list)
        return kinds

    def lines(self) -> list[str]:
        out = [
            f"raw episodes found {self.raw_found}, already in the dataset {self.skipped}, processed {self.processed}",
            f"accepted {self.accepted} dataset episodes ({self.split} raw episodes split) in {self.segments} "
            f"data segments, rejected {self.rejected}",
        ]
        raw_s, kept_s = self.kept()
        if raw_s:
            out.append(f"kept {kept_s:,.1f} of {raw_s:,.1f} s recorded ({kept_s / raw_s:.0%}); the rest was cut "
                       "or rejected by cleaning")
        kinds = self.decision_kinds()
        if kinds:
            out.append("cleaning decisions: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()))
        for reason, n in self.reasons.most_common():
            out.append(f"  rejected {n}x: {reason}")
        for entry in self.bad_inputs:
            out.append(f"  bad input {entry.attrs.get('raw_file') or entry.raw_episode_id}: {entry.reasons[0]}")
        for failure in self.failed:
            out.append(f"  FAILED (not committed; re-run to retry): {failure}")
        if self.interrupted:
            out.append(f"stopped: {self.done} of {self.planned} raw episodes committed this run; "
                       "run the same command again to continue")
        if self.seconds:
            out.append(f"{self.frames} camera frames in {self.seconds:.1f} s ({self.frames / self.seconds:,.0f} frames/s)")
        return out


@dataclass(frozen=True)
class RawInput:
    """A sealed raw file as the planner sees it (its attributes only)."""

    path: Path
    episode_id: str
    checksum: str
    size: int
    layout: str  # model and camera sizes: one segment holds one layout
    problem: str = ""  # why it cannot be read, if it cannot


def read_raw_input(path: Path) -> RawInput:
    """What the planner needs of a raw file, without reading its streams."""
    size = path.stat().st_size
    try:
        with h5py.File(path, "r") as h5:
            episode_id = str(h5.attrs["episode_id"])
            checksum = str(h5.attrs["content_sha256"])
            cameras = h5.get("cameras")
            sizes = sorted(
                (name, int(group.attrs.get("width", 0)), int(group.attrs.get("height", 0)))
                for name, group in (cameras.items() if cameras is not None else [])
            )
            layout = json.dumps([str(h5.attrs.get("model", "")), sizes])
    except (OSError, KeyError, ValueError) as err:
        # An unreadable file is still recorded once: by its name and size.
        return RawInput(path, path.stem, f"unreadable:{size}", size, "", f"{type(err).__name__}: {err}")
    return RawInput(path, episode_id, checksum, size, layout)


def plan_segments(
    inputs: Sequence[RawInput], config: ProcessConfig, workers: int
) -> list[tuple[str, list[RawInput]]]:
    """Batches of raw files, one data segment each, with the segment's name.

    Each batch holds one layout (model and camera sizes; any size when frames
    are resized) and at most about ``segment_mb`` of raw bytes; there are
    whole rounds of ``workers`` batches of about equal size, so no worker is
    left alone with a small last batch.
    """
    resized = config.output.resize is not None
    groups: dict[str, list[RawInput]] = {}
    for raw in sorted(inputs, key=lambda r: (r.layout, str(r.path))):
        groups.setdefault(json.loads(raw.layout)[0] if resized else raw.layout, []).append(raw)
    total = max(sum(r.size for r in inputs), 1)
    # Whole rounds of equal batches: a last small batch would run alone on one worker.
    count = max(workers, math.ceil(total / (config.output.segment_mb * 1024 * 1024)))
    count = math.ceil(count / workers) * workers
    batches: list[list[RawInput]] = []
    for group in groups.values():
        share = sum(r.size for r in group) / total
        batches += _split_evenly(group, max(1, min(len(group), round(count * share))))
    config_digest = json.dumps(config.to_dict(), sort_keys=True)
    planned = []
    for batch in batches:
        digest = hashlib.sha256(config_digest.encode())
        for raw in batch:
            digest.update(f"{raw.episode_id}:{raw.checksum};".encode())
        planned.append((f"seg-{digest.hexdigest()[:20]}", batch))
    return planned


def _split_evenly(files: list[RawInput], parts: int) -> list[list[RawInput]]:
    """``files`` in order, cut into ``parts`` runs of about equal bytes."""
    total = sum(r.size for r in files)
    batches: list[list[RawInput]] = [[] for _ in range(parts)]
    done = 0
    for raw in files:
        # The part this file's middle byte falls in.
        part = min(parts - 1, int((done + raw.size / 2) * parts / max(total, 1)))
        batches[part].append(raw)
        done += raw.size
    return [batch for batch in batches if batch]


def remove_orphan_segments(dataset: Path, index: DatasetIndex) -> int:
    """Data segments a killed job published but never committed; returns how many were removed.

    Only segments a job announced before it started (``_staging/plan-<job>.json``)
    are candidates: a segment no index row points at and no plan names is left
    alone (an index file lost or from elsewhere must not cost data).
    """
    staging = dataset / STAGING_DIR
    plans = sorted(staging.glob("plan-*.json")) if staging.exists() else []
    planned: set[str] = set()
    for plan in plans:
        try:
            planned.update(json.loads(plan.read_text())["segments"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s: unreadable job plan, ignored", plan)
    referenced = set(index.table(["data_segment"])["data_segment"].to_pylist())
    removed = 0
    for segment in sorted(planned - referenced):
        folder = dataset / DATA_DIR / segment
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    for plan in plans:
        plan.unlink(missing_ok=True)
    return removed


def _write_plan(dataset: Path, job_id: str, segments: list[str]) -> Path:
    """Announce the segments this job may publish, before any task runs (see remove_orphan_segments)."""
    return write_json_durably(dataset / STAGING_DIR / f"plan-{job_id}.json", {"job_id": job_id, "segments": segments})


def _workers() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def find_raw_inputs(raw_dirs: Sequence[Path]) -> list[Path]:
    """Sealed raw files under every folder, each once (a file reached twice is one input)."""
    found: dict[Path, None] = {}
    for folder in raw_dirs:
        if not folder.exists():
            raise StoreError(str(folder), "does not exist; point at an ingest's data dir or its raw/ folder")
        for path in raw_files(folder) if folder.is_dir() else [folder]:
            found.setdefault(path.resolve(), None)
    return list(found)


def run_process_job(options: JobOptions, progress: Callable[[int, int, str], None] | None = None) -> JobSummary:
    """Process every raw episode under the raw folders not yet in the dataset."""
    import ray

    from pipeline.processing.refine_task import process_raw_batch, unreadable_entry

    started = time.monotonic()
    summary = JobSummary()
    dataset = options.dataset
    paths = find_raw_inputs(options.raw_dirs)
    summary.raw_found = len(paths)
    if not paths:
        folders = ", ".join(str(p) for p in options.raw_dirs)
        raise StoreError(folders, "no raw episodes (*.h5) found; point at the ingest's data dir or raw/")
    with interrupts.deferred():  # zarr starts its event loop here: never leave it half made
        create_dataset(dataset, val_fraction=options.val_fraction)
        index = DatasetIndex(dataset)
    job_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    job_info = {"job_id": job_id, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "raw_dirs": [str(p) for p in options.raw_dirs]}
    job_record = {**job_info, "config": options.config.to_dict(), "refinery": refinery_version(), "host": socket.gethostname(),
                  "address": options.address or os.environ.get("RAY_ADDRESS") or "embedded"}
    with DatasetLock(dataset):
        discard_staging(dataset)
        remove_orphan_segments(dataset, index)
        done = index.committed_sources()
        todo: list[RawInput] = []
        unreadable: list[RawInput] = []
        seen: set[tuple[str, str]] = set()
        for path in paths:
            interrupts.check()
            raw = read_raw_input(path)
            identity = (raw.episode_id, raw.checksum)
            if identity in done or identity in seen:
                summary.skipped += 1
                continue
            seen.add(identity)
            (unreadable if raw.problem else todo).append(raw)
        if not (todo or unreadable):
            summary.seconds = time.monotonic() - started
            return summary
        write_job_record(dataset, job_record)
        for raw in unreadable:
            entry = unreadable_entry(str(raw.path), raw.episode_id, raw.checksum, raw.problem)
            entry.job_id = job_id
            index.commit([entry], job_info)
            _count(summary, [entry], {})
            log.warning("%s: %s", raw.path, raw.problem)
        if not todo:
            summary.seconds = time.monotonic() - started
            return summary
        interrupts.check()
        session = RaySession(address=options.address, num_cpus=options.num_cpus)
        try:
            interrupts.check()
            task = ray.remote(num_cpus=1, max_retries=options.max_retries, retry_exceptions=[OSError])(
                process_raw_batch
            )
            config = options.config.to_dict()
            marker = str(options.crash_marker) if options.crash_marker else None
            plan = plan_segments(todo, options.config, _workers())
            plan_file = _write_plan(dataset, job_id, [segment_id for segment_id, _ in plan])
            pending = {
                task.remote([(str(r.path), r.episode_id, r.checksum) for r in batch], str(dataset.resolve()), config,
                            segment_id, marker): batch
                for segment_id, batch in plan
            }
            summary.planned = len(todo)
            while pending:
                interrupts.check()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    batch = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.RayError, RefineryError) as err:
                        for raw in batch:
                            summary.failed.append(f"{raw.path}: {_short(err)}")
                        log.error("processing %d raw files from %s failed: %s", len(batch), batch[0].path, err)
                    else:
                        entries = [EpisodeEntry.from_dict(e) for e in result["entries"]]
                        for entry in entries:
                            entry.job_id = job_id
                        index.commit(entries, job_info)
                        _count(summary, entries, result)
                        summary.segments += any(e.data_segment for e in entries)
                    summary.done += len(batch)
                    if progress is not None:
                        progress(summary.done, summary.planned, batch[-1].path.stem)
        except KeyboardInterrupt:
            # Committed segments stay; what was in flight is redone by the next run.
            summary.interrupted = True
        finally:
            session.close()
        discard_staging(dataset)  # what killed workers left; their retries wrote it anew
        if not summary.interrupted and not summary.failed:
            plan_file.unlink(missing_ok=True)  # every planned segment is committed
    summary.seconds = time.monotonic() - started
    return summary


def _count(summary: JobSummary, entries: list[EpisodeEntry], result: dict[str, Any]) -> None:
    summary.processed += len({e.raw_episode_id for e in entries})
    summary.entries += entries
    summary.frames += int(result.get("frames", 0))
    by_raw = Counter(e.raw_episode_id for e in entries if e.accepted)
    summary.accepted += sum(by_raw.values())
    summary.split += sum(1 for n in by_raw.values() if n > 1)
    for e in entries:
        if not e.accepted:
            summary.rejected += 1
            for reason in e.reasons:
                summary.reasons[reason] += 1


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__

"""Sealing a fleet's episodes from the shared journal: how fast, and what it costs the event loop.

    python tools/bench_seal_fleet.py [--robots 20] [--seconds 10] [--rounds 2]

A floor that records continuously ends an episode somewhere every few
seconds, so the ingest seals all the time, beside the messages it receives.
Sealing has to keep up with what arrives (or the shared journal grows without
bound), and the seal must not take the GIL from the event loop.

The bench writes ``--robots`` simulated G1 episodes of ``--seconds`` each
(:mod:`tools.g1_records`, 6.6 MB/s per robot), interleaved tick by tick into a
shared journal through the ingest's own ``JournalWriter`` (direct I/O where
the file system allows: the records are on disk, not in the page cache, as in
the ingest), then seals every episode, one variant after another, alternating
for ``--rounds``:

- ``copy`` (the baseline): each episode's records read from the segments and
  written to one file, fsynced: the I/O a seal cannot avoid, in Python, one
  episode after another;
- ``seal``: the ingest's seal as it runs with ``--seal-workers N``
  (``seal:N``, one per ``--workers`` value): each episode read from the shared
  journal, written as HDF5, checksummed and fsynced, N at a time, each in a
  process of its own.
- ``seal:thread``: the seal on one thread of the measuring process (how the
  ingest sealed before ``--seal-workers``), to show what it cost the loop.

While each variant runs, two probes stand in for the ingest: a thread that
sleeps 1 ms at a time and records how late it wakes (a wake-up waits for the
GIL, so a seal that holds the GIL shows as lateness: the event loop), and a
thread that appends 64 kB with direct I/O and fdatasyncs every 10 ms on the
same disk (the group commit every acknowledgement waits for). The segments
are dropped from the page cache before every variant.

Prints, per variant: seconds, MB/s of journal sealed, the ratio to ``copy``,
how many robots recording without pause it keeps up with (MB/s over the
per-robot rate), the loop probe's p50/p99/max lateness and the commit probe's
p50/p99/max sync time. Needs about twice the journal's size free (robots x
seconds x 6.6 MB) in ``--dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.direct_record_writer import open_record_log  # noqa: E402
from pipeline.journal import EpisodeJournal, EpisodeMeta  # noqa: E402
from pipeline.journal_writer import JournalWriter  # noqa: E402
from pipeline.raw_store import raw_path, seal_records, verify_episode  # noqa: E402
from pipeline.record_log import fsync_dir  # noqa: E402
from pipeline.robot_config import load_robot_config  # noqa: E402
from pipeline.seal_workers import SealJob, SealWorkers  # noqa: E402
from pipeline.shared_journal import SEGMENT_SUFFIX, SharedJournal  # noqa: E402
from tools.g1_records import TICK_NS, G1Episode  # noqa: E402


def build_fleet(data_dir: Path, robots: int, seconds: float) -> tuple[list[EpisodeJournal], int]:
    """Every robot's episode, interleaved per 20 ms tick, in one shared journal; returns
    the journals and the bytes written."""
    config = load_robot_config(ROOT / "robots" / "configs" / "unitree_g1.yaml")
    shared = SharedJournal(data_dir / "journal" / "shared")
    shared.directory.mkdir(parents=True)
    writer = JournalWriter(shared=shared)
    sources, journals = [], []
    for i in range(robots):
        source = G1Episode(f"g1-{i:03d}", f"g1-{i:03d}-ep", config, seed=i)
        meta = EpisodeMeta(source.robot_id, source.episode_id, config.model, config.digest, config.to_dict(),
                           time.time_ns())
        journal = EpisodeJournal.start_shared(shared, meta, writer)
        sources.append(source)
        journals.append(journal)

    def put(journal: EpisodeJournal, message: tuple, t_ns: int) -> None:
        record, frames = message
        journal.append(t_ns + 100_000, frames, record)

    for source, journal in zip(sources, journals):
        put(journal, source.start(), source.now_ns())
    for _ in range(int(seconds * 1e9 / TICK_NS)):
        for source, journal in zip(sources, journals):
            t = source.now_ns()
            for message in source.tick():
                put(journal, message, t)
        writer.flush()
    for source, journal in zip(sources, journals):
        put(journal, source.stop(), source.now_ns())
    writer.wait(writer.barrier())
    assert shared.current is not None
    shared.current.sync()
    writer.close()
    return journals, sum(j.size for j in journals)


def drop_cache(directory: Path) -> None:
    for path in directory.glob(f"*{SEGMENT_SUFFIX}"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class _Probe:
    """A thread that measures something over and over while a variant runs (ms each)."""

    name = "probe"

    def __init__(self) -> None:
        self.samples_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> tuple[float, float, float]:
        """p50, p99 and max of the samples."""
        ms = np.array(self.samples_ms or [0.0])
        return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max())


class LoopProbe(_Probe):
    """Sleeps 1 ms at a time and records how late each wake-up is."""

    name = "loop-probe"

    def _run(self) -> None:
        clock = time.perf_counter
        while not self._stop.is_set():
            t = clock()
            time.sleep(0.001)
            self.samples_ms.append((clock() - t) * 1000 - 1.0)


class CommitProbe(_Probe):
    """Does what the ingest's group commit does every 10 ms, on the same disk: append
    64 kB with direct I/O and ``fdatasync``; records each sync's time. A seal that
    floods the disk's queue shows as slow syncs: every acknowledgement waits for one."""

    name = "commit-probe"
    BLOCK = 64 << 10

    def __init__(self, folder: Path) -> None:
        self.path = folder / "commit-probe.log"
        super().__init__()

    def _run(self) -> None:
        writer = open_record_log(self.path)
        payload = os.urandom(self.BLOCK)
        try:
            while not self._stop.wait(0.01):
                writer.append(payload)
                t = time.perf_counter()
                writer.sync()
                self.samples_ms.append((time.perf_counter() - t) * 1000)
                if writer.size > 64 << 20:  # keep the file small: start it again
                    writer.close()
                    self.path.unlink()
                    writer = open_record_log(self.path)
        finally:
            writer.close()
            self.path.unlink(missing_ok=True)


def copy_episode(journal: EpisodeJournal, out: Path) -> None:
    """The baseline: the episode's records read and written to one file, fsynced."""
    assert journal.shared is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        for payload in journal.shared.read_payloads(journal.written.places, journal.tag):
            fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(out.parent)


def seal_on_thread(journal: EpisodeJournal, out_dir: Path) -> None:
    out = raw_path(out_dir, journal.meta.robot_id, journal.meta.episode_id)
    seal_records(journal.meta, journal.records(), out, source=journal.path)


def run_variant(variant: str, journals: list[EpisodeJournal], data_dir: Path, out_dir: Path) -> float:
    """Seal (or copy) every episode; returns the seconds it took."""
    t = time.perf_counter()
    if variant == "copy":
        for journal in journals:
            copy_episode(journal, out_dir / journal.meta.robot_id / "copy.bin")
    elif variant == "seal:thread":
        with ThreadPoolExecutor(1) as pool:  # as the ingest did: one seal thread beside the loop
            for future in [pool.submit(seal_on_thread, j, out_dir) for j in journals]:
                future.result()
    else:
        workers = int(variant.split(":")[1])
        with SealWorkers(workers) as pool:
            futures = [pool.submit(SealJob.of(j, out_dir, incomplete=False)) for j in journals]
            for future in futures:
                future.result()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=20, help="episodes, one per robot, written side by side")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each episode")
    parser.add_argument("--workers", default="1,2", help="seal worker counts to measure, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="times each variant runs, alternating")
    parser.add_argument("--no-thread", action="store_true", help="skip the seal:thread variant")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    variants = ["copy", *(f"seal:{int(n)}" for n in args.workers.split(","))]
    if not args.no_thread:
        variants.append("seal:thread")
    with tempfile.TemporaryDirectory(prefix="bench-seal-fleet-", dir=args.dir) as tmp:
        data_dir = Path(tmp) / "data"
        t = time.perf_counter()
        journals, journal_bytes = build_fleet(data_dir, args.robots, args.seconds)
        per_robot = journal_bytes / args.robots / args.seconds
        print(f"shared journal: {args.robots} episodes of {args.seconds:g} s, {journal_bytes / 1e9:.2f} GB "
              f"({per_robot / 1e6:.2f} MB/s per robot), written in {time.perf_counter() - t:.1f} s")
        with LoopProbe() as idle, CommitProbe(Path(tmp)) as idle_commit:
            time.sleep(2.0)
        results: dict[str, list[tuple[float, tuple[float, float, float], tuple[float, float, float]]]] = {
            v: [] for v in variants}
        for round_ in range(args.rounds):
            for variant in variants:
                out_dir = Path(tmp) / f"out-{round_}-{variant.replace(':', '-')}"
                drop_cache(data_dir / "journal" / "shared")
                with LoopProbe() as probe, CommitProbe(Path(tmp)) as commit:
                    seconds = run_variant(variant, journals, data_dir, out_dir)
                if variant != "copy" and round_ == 0:
                    for journal in journals[:2]:
                        path = raw_path(out_dir, journal.meta.robot_id, journal.meta.episode_id)
                        if not verify_episode(path).ok:
                            raise SystemExit(f"{path}: checksum does not verify")
                results[variant].append((seconds, probe.figures(), commit.figures()))
                print(f"  round {round_ + 1} {variant:12s} {seconds:6.1f} s  loop late p99 {probe.figures()[1]:.1f} ms, "
                      f"commit sync p99 {commit.figures()[1]:.1f} ms", flush=True)
                for path in sorted(out_dir.rglob("*"), reverse=True):
                    path.unlink() if path.is_file() else path.rmdir()
                out_dir.rmdir()

    def medians(runs: list, i: int) -> list[float]:
        return [float(np.median([run[i][k] for run in runs])) for k in range(3)]

    copy_s = float(np.median([run[0] for run in results["copy"]]))
    print()
    print(f"{args.robots} episodes x {args.seconds:g} s, {journal_bytes / 1e9:.2f} GB; medians of {args.rounds} rounds; "
          f"idle: loop late p50/p99/max {'/'.join(f'{x:.2f}' for x in idle.figures())} ms, "
          f"commit sync {'/'.join(f'{x:.2f}' for x in idle_commit.figures())} ms")
    print("| variant | seconds | MB/s | x copy | robots kept up with | loop late p50 / p99 / max ms "
          "| commit sync p50 / p99 / max ms |")
    print("|---|---:|---:|---:|---:|---|---|")
    for variant, runs in results.items():
        seconds = float(np.median([run[0] for run in runs]))
        late, sync = medians(runs, 1), medians(runs, 2)
        rate = journal_bytes / seconds
        print(f"| {variant} | {seconds:.1f} | {rate / 1e6:.0f} | {copy_s / seconds:.2f} | {rate / per_robot:.0f} | "
              f"{late[0]:.2f} / {late[1]:.1f} / {late[2]:.0f} | {sync[0]:.2f} / {sync[1]:.1f} / {sync[2]:.0f} |")
    print("x copy: the copy baseline's time over the variant's (1.0 = as fast as copying the bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

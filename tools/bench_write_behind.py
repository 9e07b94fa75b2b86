"""How long a group commit's fsync takes, and what the appends cost, for the shared
journal's three ways of writing, measured in the same run.

    python tools/bench_write_behind.py [--mb-per-s 266] [--commit-ms 10] [--seconds 5] [--rounds 2]

One thread appends records to a shared-journal-like log at the rate of 40
simulated G1-class robots (266 MB/s, in appends of three 69 kB camera frames
and two 7.4 kB joint batches, 222 kB); another thread syncs it every
``--commit-ms``, as the ingest's group commit does, and times each
``fdatasync``. Three variants, alternating for ``--rounds``:

- ``page-cache``: ``RecordWriter`` with ``uncache_synced`` (what a commit made
  durable leaves the page cache);
- ``write-behind``: the same, and the kernel starts writing appended records
  every ``WRITE_BEHIND_BYTES``, on a thread of its own (the shared journal
  where the file system has no direct I/O);
- ``direct``: ``DirectRecordWriter``, ``O_DIRECT`` from an aligned buffer (the
  shared journal's default).

Prints p50/p99 of the sync time and of the append, the process CPU, and the
ratios of write-behind to page-cache and of direct to write-behind.

Needs about ``mb-per-s x seconds`` MB free in ``--dir`` (default: a temporary
folder); the log is deleted after each run.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.direct_record_writer import DirectRecordWriter, open_record_log  # noqa: E402
from pipeline.record_log import RecordAppender, RecordWriter  # noqa: E402

VARIANTS = ("page-cache", "write-behind", "direct")

FRAME = os.urandom(69_200)
JOINT = os.urandom(7_400)
WRITE = [[FRAME], [FRAME], [FRAME], [JOINT], [JOINT]]  # five records, 222 kB: one journal-writer batch
WRITE_BYTES = sum(len(parts[0]) for parts in WRITE)


def one_run(folder: Path, variant: str, mb_per_s: float, commit_s: float, seconds: float) -> dict[str, float]:
    path = folder / f"log-{variant}"
    writer: RecordAppender
    if variant == "direct":
        writer = open_record_log(path)
        if not isinstance(writer, DirectRecordWriter):
            writer.close()
            path.unlink()
            raise SystemExit(f"bench_write_behind: the file system of {folder} does not take direct I/O")
    else:
        writer = RecordWriter(path, exclusive=True, uncache_synced=True, write_behind=variant == "write-behind")
    writer.preallocate(int(mb_per_s * 1e6 * seconds * 1.1))
    stop = threading.Event()
    sync_s: list[float] = []

    def commit() -> None:
        while not stop.is_set():
            time.sleep(commit_s)
            started = time.perf_counter()
            writer.sync()
            sync_s.append(time.perf_counter() - started)

    committer = threading.Thread(target=commit, name="commit")
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    committer.start()
    append_s: list[float] = []
    written = 0
    rate = mb_per_s * 1e6
    while (now := time.perf_counter()) - t0 < seconds:
        due = t0 + written / rate
        if due > now:
            time.sleep(due - now)
        started = time.perf_counter()
        writer.append_records(WRITE)
        append_s.append(time.perf_counter() - started)
        written += WRITE_BYTES
    stop.set()
    committer.join()
    writer.close()
    wall = time.perf_counter() - t0
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    path.unlink()
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    sync_ms = np.array(sync_s) * 1e3
    append_ms = np.array(append_s) * 1e3
    return {
        "sync_p50": float(np.percentile(sync_ms, 50)), "sync_p99": float(np.percentile(sync_ms, 99)),
        "append_p50": float(np.percentile(append_ms, 50)), "append_p99": float(np.percentile(append_ms, 99)),
        "cpu_pct": 100 * cpu / wall, "mb_per_s": written / wall / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb-per-s", type=float, default=266.0, help="append rate (default: 40 G1-class robots)")
    p.add_argument("--commit-ms", type=float, default=10.0, help="time between two syncs (the ingest's default)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    p.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternating")
    p.add_argument("--dir", type=Path, default=None, help="where the log is written (default: a temporary folder)")
    opts = p.parse_args(argv)
    if min(opts.mb_per_s, opts.commit_ms, opts.seconds, opts.rounds) <= 0:
        raise SystemExit("bench_write_behind: every option must be positive")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="refinery-write-behind-", dir=opts.dir) as tmp:
        for _ in range(opts.rounds):
            for variant in VARIANTS:
                r = one_run(Path(tmp), variant, opts.mb_per_s, opts.commit_ms / 1000, opts.seconds)
                results[variant].append(r)
                print(f"{variant:12s}: sync p50 {r['sync_p50']:5.1f} ms, p99 {r['sync_p99']:5.1f} ms; "
                      f"append p50 {r['append_p50']:5.2f} ms, p99 {r['append_p99']:5.2f} ms; "
                      f"CPU {r['cpu_pct']:4.0f} % of a core; {r['mb_per_s']:.0f} MB/s", flush=True)

    def median(variant: str, key: str) -> float:
        return float(np.median([r[key] for r in results[variant]]))

    for variant, against in (("write-behind", "page-cache"), ("direct", "write-behind")):
        print(f"\nmedians over the rounds, {variant} / {against}:")
        for key, label in (("sync_p50", "sync p50"), ("sync_p99", "sync p99"), ("append_p99", "append p99"),
                           ("cpu_pct", "CPU")):
            print(f"  {label}: {median(variant, key):.2f} / {median(against, key):.2f} = "
                  f"{median(variant, key) / max(median(against, key), 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

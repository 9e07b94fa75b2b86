"""What freeing the shared journal's segments costs the commits beside it: freed
segments deleted at once, deleted a piece at a time, or kept as spares and
written over, measured in the same run.

    python tools/bench_segment_recycling.py [--robots 40] [--mb-per-s 270] [--seconds 12] [--rounds 3] [--burst]

A floor that records without pause frees a segment about as often as it fills
one (one a second at 40 G1-class robots, 256 MB segments); a backlog sealed,
or every robot stopping at a shift's end, frees many at once. This drives the
real :class:`~pipeline.shared_journal.SharedJournal` through the ingest's
journal writer thread (:class:`~pipeline.journal_writer.JournalWriter`) with
``--robots`` episodes at a time, each appending one camera-frame-sized record
per robot per commit (``--mb-per-s`` in all); every ``--commit-ms`` a group
commit waits for the writer and syncs the segment, timed from its barrier to
the end of its ``fdatasync``, as the ingest's commit is. Each episode lasts
``--episode-s`` (staggered), then is released as a seal releases it, so its
segments are freed while the others stream. With ``--burst`` every first
episode instead lasts until a third of the measured time, and is released
with the others at once: every segment written until then is freed together.

Three variants, alternating for ``--rounds``: ``unlink`` (each freed segment
deleted with one ``unlink``, as before 2026-12-01 19:10 UTC), ``paced`` (deleted
32 MB at a time, the ingest's way without spares: ``--journal-spare-files 0``)
and ``recycle`` (the default: up to two spares written over, the rest deleted
a piece at a time). The first ``--warmup-s`` of each run are not counted.
Prints p50/p99/max commit time, commits slower than 20 ms, and the ratios to
``unlink``.

Needs about ``mb-per-s x (episode-s + warmup-s)`` MB free in ``--dir``
(default: a temporary folder in the current directory, so that it measures
the disk an ingest there would write to); everything is deleted after each run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import protocol, shared_journal  # noqa: E402
from pipeline.journal import EpisodeJournal, EpisodeMeta  # noqa: E402
from pipeline.journal_writer import JournalWriter  # noqa: E402
from pipeline.shared_journal import DEFAULT_SPARE_SEGMENTS, SharedJournal  # noqa: E402

PACED_STEP_BYTES = shared_journal._DELETE_STEP_BYTES
VARIANTS = {  # spare segments, deletion step (0: one unlink)
    "unlink": (0, 0),
    "paced": (0, PACED_STEP_BYTES),
    "recycle": (DEFAULT_SPARE_SEGMENTS, PACED_STEP_BYTES),
}
SLOW_MS = 20.0


def one_run(folder: Path, variant: str, args: argparse.Namespace) -> dict[str, float]:
    spare_segments, shared_journal._DELETE_STEP_BYTES = VARIANTS[variant]
    commit_s = args.commit_ms / 1000
    record_bytes = int(args.mb_per_s * 1e6 * commit_s / args.robots)
    payload = np.frombuffer(np.random.default_rng(0).bytes(record_bytes // 8 * 8), dtype=np.float64).reshape(1, -1)
    shared = SharedJournal(folder / "journal" / "shared", segment_bytes=args.segment_mb << 20,
                           spare_segments=spare_segments)
    shared.directory.mkdir(parents=True)
    writer = JournalWriter(max_queued_bytes=256 << 20, shared=shared)
    start = time.monotonic()
    episodes: list[tuple[EpisodeJournal, float, int]] = []  # journal, end time, next seq
    burst_at = start + args.warmup_s + args.seconds / 3
    for robot in range(args.robots):  # staggered: one episode ends every episode-s / robots
        ends = burst_at if args.burst else start + args.episode_s * (robot + 1) / args.robots
        episodes.append(_start(shared, writer, robot, 0, ends))
    counts = [1] * args.robots
    commits: list[float] = []
    next_commit = start
    while True:
        now = time.monotonic()
        if now >= start + args.warmup_s + args.seconds:
            break
        for robot, (journal, ends, seq) in enumerate(episodes):
            header = protocol.DataHeader(f"r{robot}", journal.meta.episode_id, "joint_state", seq, time.time_ns())
            record = protocol.Samples(header, np.array([seq]), np.array([seq]), payload)
            journal.append_frames(time.time_ns(), record.encode(), header)
            if now >= ends:
                writer.release(journal)
                lasts = args.warmup_s + args.seconds if args.burst else args.episode_s
                episodes[robot] = _start(shared, writer, robot, counts[robot], now + lasts)
                counts[robot] += 1
            else:
                episodes[robot] = (journal, ends, seq + 1)
        began = time.perf_counter()
        barrier = writer.barrier()
        writer.wait(barrier)
        assert barrier.segment is not None
        barrier.segment.sync()
        if now >= start + args.warmup_s:
            commits.append((time.perf_counter() - began) * 1000)
        next_commit += commit_s
        time.sleep(max(0.0, next_commit - time.monotonic()))
    writer.close()
    shared.close()
    shared_journal._DELETE_STEP_BYTES = PACED_STEP_BYTES
    times = np.array(commits)
    return {"commits": len(times), "p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "max": float(times.max()), "slow": int((times > SLOW_MS).sum()), "segments": shared.current_number,
            "recycled": shared.recycled}


def _start(shared: SharedJournal, writer: JournalWriter, robot: int, n: int,
           ends: float) -> tuple[EpisodeJournal, float, int]:
    meta = EpisodeMeta(f"r{robot}", f"ep-{n:05d}", "bench", "bench", {}, time.time_ns())
    return EpisodeJournal.start_shared(shared, meta, writer), ends, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=40)
    parser.add_argument("--mb-per-s", type=float, default=270.0, help="appended in all (40 G1-class robots: 270)")
    parser.add_argument("--commit-ms", type=float, default=10.0)
    parser.add_argument("--segment-mb", type=int, default=256)
    parser.add_argument("--episode-s", type=float, default=4.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured, after the warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", action="store_true",
                        help="every first episode released at once, a third into the measured time")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            folder = Path(tempfile.mkdtemp(prefix="bench-recycling-", dir=args.dir or Path.cwd()))
            try:
                result = one_run(folder, name, args)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            results[name].append(result)
            print(f"round {round_ + 1} {name:8s} commits {result['commits']:5d}  p50 {result['p50']:6.2f} ms  "
                  f"p99 {result['p99']:6.2f} ms  max {result['max']:7.2f} ms  over {SLOW_MS:g} ms: {result['slow']:3d}  "
                  f"segments {result['segments']} ({result['recycled']} written over a spare)",
                  flush=True)
    print(f"\nmedians of {args.rounds} rounds ({args.robots} robots, {args.mb_per_s:g} MB/s, "
          f"{args.segment_mb} MB segments, a commit every {args.commit_ms:g} ms"
          f"{', episodes released at once' if args.burst else ''}):")
    medians = {name: {key: float(np.median([r[key] for r in runs])) for key in ("p50", "p99", "max", "slow")}
               for name, runs in results.items()}
    for name, m in medians.items():
        print(f"  {name:8s} p50 {m['p50']:6.2f} ms  p99 {m['p99']:6.2f} ms  max {m['max']:7.2f} ms  "
              f"over {SLOW_MS:g} ms: {m['slow']:g}")
    base = medians["unlink"]
    for name in ("paced", "recycle"):
        m = medians[name]
        print(f"  {name} / unlink: p50 {m['p50'] / base['p50']:.2f}x  p99 {m['p99'] / base['p99']:.2f}x  "
              f"max {m['max'] / base['max']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

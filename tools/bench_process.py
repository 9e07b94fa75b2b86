"""Benchmark the processing job: camera frames per second per core, against a plain copy.

    python tools/bench_process.py [--episodes 8] [--seconds 10] [--robot unitree_g1]

Generates a raw corpus of simulated episodes (3 cameras at 640x480, 30 fps,
JPEG as a camera would send it), then in the same run measures:

* baseline: a plain copy of the same JPEG bytes (read each frame from the raw
  files, append it to one file, fsync): the floor any job writing those bytes
  pays;
* the same copy split over 2 processes at once: what the host's disk gives
  2 cores, the ceiling for the 2-worker speed-up;
* the whole job (load, clean, align, clean, score, write Zarr shards, commit)
  on an embedded Ray with 1 worker, then with 2 workers.

Ray's own start-up (about 5 s here) is excluded: Ray is started before the
clock starts, as on a running cluster; worker start-up and imports are
included. Prints frames/s, frames/s per core, the ratio to the copy baseline
and the 2-worker speed-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def make_corpus(raw_dir: Path, robot: str, episodes: int, seconds: float) -> int:
    from pipeline.raw_builder import simulate_episode
    from pipeline.robot_config import load_robot_config

    config = load_robot_config(robot)
    for n in range(episodes):
        simulate_episode(raw_dir, config, robot_id=f"bench-{n}", seconds=seconds, seed=n, prerendered=True)
    return count_frames(raw_dir)


def count_frames(raw_dir: Path) -> int:
    total = 0
    for path in raw_dir.rglob("*.h5"):
        with h5py.File(path, "r") as h5:
            total += sum(h5[f"cameras/{c}/seq"].shape[0] for c in h5["cameras"])
    return total


def copy_baseline(raw_dir: Path, out: Path) -> float:
    """Seconds to copy every frame's bytes into one file and fsync it."""
    return copy_files(sorted(raw_dir.rglob("*.h5")), out)


def copy_baseline_parallel(raw_dir: Path, work: Path, processes: int) -> float:
    """Seconds for `processes` copies running at once, each over its share of the episodes.

    The ceiling the host's disk and page cache give to a job on that many
    cores: a 2-worker job cannot scale better than this copy does.
    """
    from concurrent.futures import ProcessPoolExecutor

    paths = sorted(raw_dir.rglob("*.h5"))
    shares = [paths[i::processes] for i in range(processes)]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        list(pool.map(time.sleep, [0.2] * processes))  # processes started before the clock
        start = time.perf_counter()
        list(pool.map(copy_files, shares, [work / f"copy-{i}.bin" for i in range(processes)]))
        return time.perf_counter() - start


def copy_files(paths: list[Path], out: Path) -> float:
    start = time.perf_counter()
    with open(out, "wb") as fh:
        for path in paths:
            with h5py.File(path, "r") as h5:
                for camera in h5["cameras"]:
                    group = h5[f"cameras/{camera}"]
                    offsets = group["jpeg_offsets"][()]
                    data = group["jpeg_data"][()]
                    for i in range(len(offsets) - 1):
                        fh.write(data[offsets[i] : offsets[i + 1]].tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - start


def run_job(raw_dir: Path, dataset: Path, workers: int) -> tuple[float, int]:
    import ray

    from pipeline.process_job import JobOptions, run_process_job

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024, configure_logging=False)
    try:
        start = time.perf_counter()
        summary = run_process_job(JobOptions(raw_dir=raw_dir, dataset=dataset))
        elapsed = time.perf_counter() - start
    finally:
        ray.shutdown()
    if summary.failed or summary.accepted == 0:
        raise SystemExit(f"the job failed: {summary.lines()}")
    return elapsed, summary.frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8, help="raw episodes to generate (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per episode (default: %(default)s)")
    parser.add_argument("--robot", default="unitree_g1", help="robot model (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, help="where to put the corpus (default: a temp dir, removed)")
    args = parser.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="refinery-bench-process-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"$ python tools/bench_process.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        raw_dir = work / "raw"
        t = time.perf_counter()
        frames = make_corpus(raw_dir, args.robot, args.episodes, args.seconds)
        size = sum(p.stat().st_size for p in raw_dir.rglob("*.h5")) / 1e6
        print(f"corpus: {args.episodes} episodes x {args.seconds:.0f} s of {args.robot}, {frames} frames, "
              f"{size:.0f} MB raw ({time.perf_counter() - t:.0f} s to generate)")
        copy_s = copy_baseline(raw_dir, work / "copy.bin")
        rows = [("plain copy of the JPEG bytes", 1, copy_s, frames / copy_s)]
        parallel_copy_s = copy_baseline_parallel(raw_dir, work, 2)
        rows.append(("the same copy, 2 processes", 2, parallel_copy_s, frames / parallel_copy_s))
        results = {}
        for workers in (1, 2):
            elapsed, done = run_job(raw_dir, work / f"dataset-{workers}.zarr", workers)
            results[workers] = done / elapsed
            rows.append((f"refinery process, {workers} worker{'s' if workers > 1 else ''}", workers, elapsed, done / elapsed))
        print(f"\n{'what':<34} {'cores':>5} {'seconds':>8} {'frames/s':>9} {'per core':>9} {'vs copy':>8}")
        for name, cores, seconds, fps in rows:
            print(f"{name:<34} {cores:>5} {seconds:>8.2f} {fps:>9.0f} {fps / cores:>9.0f} {fps / rows[0][3]:>8.2f}")
        print(f"\nspeed-up of 2 workers over 1: {results[2] / results[1]:.2f}x "
              f"(the plain copy, 2 processes over 1: {copy_s / parallel_copy_s:.2f}x)")
        print(f"per-core throughput (1 worker) / plain copy: {results[1] / rows[0][3]:.2f}")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())

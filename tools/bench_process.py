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

    python tools/bench_process.py --compare-lengths [--short-episodes 1000] [--short-seconds 5]
                                  [--long-episodes 10] [--width 640 --height 480] [--cameras 3]
                                  [--workers 2] [--rounds 2] [--work-dir DIR]

compares many short episodes with few long ones holding the same frames
(issue 12: 1,000 episodes of 5 s against 10 of 500 s; goal: short >= 80% of
the long episodes' frames/s), so what a job pays per episode (opening a raw
file, planning, per-episode stages, index rows) shows against what it pays
per frame. Frame size and camera count are flags, so the comparison fits a
small machine: smaller frames make per-frame work cheaper and the
per-episode share larger, so a ratio met at small frames is met at full
size. The corpora are generated once and reused from ``--work-dir``; the job
runs on each in turn (alternating order per round), on a Ray started before
the clock. Frames/s are counted on the recorded camera frames (and, beside
them, on the frames the job wrote, which trimming of idle heads and tails can
make fewer).

    python tools/bench_process.py --blur-ratio [--episodes 8] [--seconds 10] [--rounds 2]
                                  [--detect-every 10] [--width W --height H] [--cameras N]

runs the job's work (the Ray task's body: every stage and the segment
writer, in this process) on one corpus with and without ``--blur-faces``
(rounds alternating the order) and prints the ratio of their times (issue
14: goal <= 3). ``--latency-cost`` does the same with and without the camera
delay estimate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    from pipeline.processing.config import ProcessConfig
    from pipeline.robot_config import RobotConfig


def make_corpus(raw_dir: Path, robot: str | RobotConfig, episodes: int, seconds: float) -> int:
    from pipeline.raw_builder import simulate_episode
    from pipeline.robot_config import load_robot_config

    config = load_robot_config(robot) if isinstance(robot, str) else robot
    for n in range(episodes):
        simulate_episode(raw_dir, config, robot_id=f"bench-{n % 40}", seconds=seconds, seed=n, prerendered=True)
    return count_frames(raw_dir)


def bench_robot(robot: str, width: int | None, height: int | None, cameras: int | None) -> RobotConfig:
    """The robot's config with its first ``cameras`` cameras at ``width`` x ``height`` (None: as configured)."""
    from pipeline.robot_config import load_robot_config

    config = load_robot_config(robot)
    chosen = config.cameras[: cameras if cameras is not None else len(config.cameras)]
    if not chosen:
        raise SystemExit(f"--cameras {cameras}: the comparison needs at least one camera")
    resized = tuple(
        dataclasses.replace(c, width=width or c.width, height=height or c.height) for c in chosen
    )
    return dataclasses.replace(config, cameras=resized)


def cached_corpus(work: Path, name: str, config: RobotConfig, episodes: int, seconds: float) -> tuple[Path, int, float]:
    """A corpus generated once per settings and reused: (raw folder, recorded frames, MB)."""
    cams = "+".join(f"{c.width}x{c.height}" for c in config.cameras)
    folder = work / f"corpus-{name}-{config.model}-{episodes}x{seconds:g}s-{cams}"
    marker = folder / "complete.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        return folder / "raw", int(info["frames"]), float(info["mb"])
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    frames = make_corpus(folder / "raw", config, episodes, seconds)
    mb = sum(p.stat().st_size for p in (folder / "raw").rglob("*.h5")) / 1e6
    marker.write_text(json.dumps({"frames": frames, "mb": mb}))
    print(f"generated {name} corpus: {episodes} x {seconds:g} s, {frames} frames, {mb:,.0f} MB raw "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return folder / "raw", frames, mb


def compare_lengths(args: argparse.Namespace, work: Path) -> int:
    """Many short episodes against few long ones with the same frames; prints frames/s and the ratio."""
    config = bench_robot(args.robot, args.width, args.height, args.cameras)
    long_seconds = args.short_episodes * args.short_seconds / args.long_episodes
    corpora = {
        "short": (args.short_episodes, args.short_seconds, *cached_corpus(work, "short", config, args.short_episodes, args.short_seconds)),
        "long": (args.long_episodes, long_seconds, *cached_corpus(work, "long", config, args.long_episodes, long_seconds)),
    }
    cams = ", ".join(f"{c.name} {c.width}x{c.height}@{c.fps:g}" for c in config.cameras)
    print(f"robot {config.model}, cameras: {cams}; {args.workers} Ray worker(s), {args.rounds} round(s)")
    for _, _, raw_dir, _, _ in corpora.values():  # page cache warm for both, so the first run is not the cold one
        for path in raw_dir.rglob("*.h5"):
            with open(path, "rb") as fh:
                while fh.read(16 << 20):
                    pass
    rows = []
    rates: dict[str, list[float]] = {"short": [], "long": []}
    for round_ in range(args.rounds):
        order = ["short", "long"] if round_ % 2 == 0 else ["long", "short"]
        for name in order:
            episodes, seconds, raw_dir, frames, mb = corpora[name]
            dataset = work / f"dataset-{name}.zarr"
            shutil.rmtree(dataset, ignore_errors=True)
            elapsed, written = run_job(raw_dir, dataset, args.workers)
            shutil.rmtree(dataset, ignore_errors=True)
            rates[name].append(frames / elapsed)
            rows.append((name, episodes, seconds, frames, mb, round_ + 1, elapsed, frames / elapsed, written / elapsed))
            print(f"  round {round_ + 1}, {name}: {elapsed:.1f} s", flush=True)
    # The task's body alone: what the stages and the segment writer pay, without Ray, planning or commits.
    stages = {name: corpora[name][3] / stages_only(corpora[name][2], work / f"stages-{name}.zarr") for name in corpora}
    print("\n| corpus | episodes | s each | recorded frames | raw MB | round | job s | recorded frames/s | written frames/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, episodes, seconds, frames, mb, round_, elapsed, fps, written_fps in rows:
        print(f"| {name} | {episodes:,} | {seconds:g} | {frames:,} | {mb:,.0f} | {round_} | {elapsed:.1f} | {fps:,.0f} | {written_fps:,.0f} |")
    short, long_ = statistics.median(rates["short"]), statistics.median(rates["long"])
    ratio = short / long_
    print(f"\nshort/long frames/s (median of {args.rounds} round(s)): {short:,.0f} / {long_:,.0f} = {ratio:.2f} "
          f"(goal >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")
    print(f"stages only (the Ray task's body over every file into one segment, in this process; no Ray, planning "
          f"or index): short {stages['short']:,.0f} / long {stages['long']:,.0f} recorded frames/s = "
          f"{stages['short'] / stages['long']:.2f}")
    return 0


def blur_ratio(args: argparse.Namespace, work: Path) -> int:
    """The job's work with and without --blur-faces on the same corpus, rounds alternating; prints the time ratio.

    Measured on the Ray task's body in this process (every stage and the segment writer, as
    :func:`stages_only`): Ray's own overhead, the same with and without, would only dilute the ratio.
    """
    from pipeline.processing.config import DeidentifyConfig, ProcessConfig

    config = bench_robot(args.robot, args.width, args.height, args.cameras)
    raw_dir, frames, mb = cached_corpus(work, "blur", config, args.episodes, args.seconds)
    plain = ProcessConfig()
    blurring = plain.replace(deidentify=DeidentifyConfig(blur_faces=True, detect_every=args.detect_every))
    print(f"corpus: {args.episodes} x {args.seconds:g} s of {config.model}, {frames:,} frames, {mb:,.0f} MB raw; "
          f"{args.rounds} round(s) in this process, detector on every {args.detect_every}th frame")
    for path in raw_dir.rglob("*.h5"):  # page cache warm, so the first run is not the cold one
        path.read_bytes()
    seconds: dict[str, list[float]] = {"without": [], "with --blur-faces": []}
    for round_ in range(args.rounds):
        order = list(seconds) if round_ % 2 == 0 else list(reversed(seconds))
        for name in order:
            elapsed = stages_only(raw_dir, work / "stages-blur.zarr", blurring if name != "without" else plain)
            seconds[name].append(elapsed)
            print(f"  round {round_ + 1}, {name}: {elapsed:.1f} s, {frames / elapsed:,.0f} frames/s", flush=True)
    without, with_blur = (statistics.median(v) for v in seconds.values())
    ratio = with_blur / without
    print(f"\n| job | s (median of {args.rounds}) | frames/s |\n|---|---:|---:|")
    print(f"| without --blur-faces | {without:.1f} | {frames / without:,.0f} |")
    print(f"| with --blur-faces | {with_blur:.1f} | {frames / with_blur:,.0f} |")
    print(f"\n--blur-faces costs {ratio:.2f}x the job's time without it (goal <= 3: {'met' if ratio <= 3 else 'NOT met'})")
    return 0


def latency_cost(args: argparse.Namespace, work: Path) -> int:
    """The stages with and without the camera delay estimate, in this process; prints the time ratio."""
    import dataclasses

    from pipeline.processing.config import ProcessConfig

    config = bench_robot(args.robot, args.width, args.height, args.cameras)
    raw_dir, frames, _ = cached_corpus(work, "blur", config, args.episodes, args.seconds)
    plain = ProcessConfig()
    off = plain.replace(align=dataclasses.replace(plain.align, latency_window_s=0.0))
    seconds: dict[str, list[float]] = {"without the estimate": [], "with the estimate (default)": []}
    for round_ in range(args.rounds):
        order = list(seconds) if round_ % 2 == 0 else list(reversed(seconds))
        for name in order:
            elapsed = stages_only(raw_dir, work / "stages-latency.zarr", plain if "default" in name else off)
            seconds[name].append(elapsed)
            print(f"  round {round_ + 1}, {name}: {elapsed:.1f} s, {frames / elapsed:,.0f} frames/s", flush=True)
    without, with_estimate = (statistics.median(v) for v in seconds.values())
    print(f"\ncamera delay estimate (align.latency_window_s {plain.align.latency_window_s:g}, "
          f"{plain.align.latency_frames} frames per camera): the stages take {with_estimate / without:.2f}x "
          f"their time without it ({frames / with_estimate:,.0f} against {frames / without:,.0f} frames/s)")
    return 0


def stages_only(raw_dir: Path, dataset: Path, config: ProcessConfig | None = None) -> float:
    """Seconds of the processing task's body over every raw file of ``raw_dir`` into one segment, in this process."""
    from pipeline.dataset.store import create_dataset
    from pipeline.process_job import read_raw_input
    from pipeline.processing.config import ProcessConfig
    from pipeline.processing.refine_task import process_raw_batch

    shutil.rmtree(dataset, ignore_errors=True)
    create_dataset(dataset)
    inputs = [read_raw_input(p) for p in sorted(raw_dir.rglob("*.h5"))]  # as the driver plans them, before the clock
    start = time.perf_counter()
    process_raw_batch([(str(r.path), r.episode_id, r.checksum) for r in inputs], str(dataset),
                      (config or ProcessConfig()).to_dict(), "seg-stages")
    elapsed = time.perf_counter() - start
    shutil.rmtree(dataset, ignore_errors=True)
    return elapsed


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
                    fh.writelines(data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1))
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - start


def run_job(raw_dir: Path, dataset: Path, workers: int, config: ProcessConfig | None = None) -> tuple[float, int]:
    import ray

    from pipeline.process_job import JobOptions, run_process_job
    from pipeline.processing.config import ProcessConfig

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024, configure_logging=False)
    try:
        start = time.perf_counter()
        summary = run_process_job(JobOptions(raw_dir=raw_dir, dataset=dataset, config=config or ProcessConfig()))
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
    lengths = parser.add_argument_group("--compare-lengths: short episodes against long ones with the same frames")
    lengths.add_argument("--compare-lengths", action="store_true", help="run this comparison instead")
    lengths.add_argument("--short-episodes", type=int, default=1000, help="short episodes (default: %(default)s)")
    lengths.add_argument("--short-seconds", type=float, default=5.0, help="seconds per short episode (default: %(default)s)")
    lengths.add_argument("--long-episodes", type=int, default=10,
                         help="long episodes, as long as it takes to hold the same frames (default: %(default)s)")
    lengths.add_argument("--width", type=int, help="camera frame width (default: the robot's)")
    lengths.add_argument("--height", type=int, help="camera frame height (default: the robot's)")
    lengths.add_argument("--cameras", type=int, help="use the robot's first N cameras (default: all)")
    lengths.add_argument("--workers", type=int, default=2, help="Ray workers of the job (default: %(default)s)")
    lengths.add_argument("--rounds", type=int, default=2, help="runs of each corpus, order alternating (default: %(default)s)")
    blur = parser.add_argument_group("--blur-ratio: the job with and without --blur-faces on the same corpus")
    blur.add_argument("--blur-ratio", action="store_true", help="run this comparison instead")
    blur.add_argument("--detect-every", type=int, default=10,
                      help="face detector on every n-th frame (deidentify.detect_every; default: %(default)s)")
    parser.add_argument("--latency-cost", action="store_true",
                        help="the stages with and without the camera delay estimate, in this process (prints the ratio)")
    args = parser.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="refinery-bench-process-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"$ python tools/bench_process.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        if args.compare_lengths:
            return compare_lengths(args, work)
        if args.blur_ratio:
            return blur_ratio(args, work)
        if args.latency_cost:
            return latency_cost(args, work)
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

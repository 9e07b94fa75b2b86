"""Benchmark the dataset at fleet scale: commits, selection, statistics and files as the index grows.

    python -m tools.bench_scale [--sizes 1000,10000,100000] [--sample-episodes 8] [--sample-seconds 10]
                                [--commit-rows 32 | --commit-rows 3-8] [--repeats 5] [--profile]

A dataset at 100k episodes would take days of simulated recording, so the
index is grown the way a fleet's jobs grow it, from a real sample:

1. Real data: ``--sample-episodes`` simulated ``unitree_g1`` episodes (3
   cameras at 640x480, 30 fps, JPEG as the camera sends it) go through the
   real processing job. Their data segments give the data files per MB; their
   index rows are the templates of the synthetic rows.
2. Synthetic rows: copies of the real rows (every column, per-episode
   statistics included) with their own episode ids, checksums, robots (a fleet
   of ``--robots``), tasks, operators, grades, start times (a fleet's day is
   about 38,000 episodes) and statistics scaled per row (so they compress as
   real ones do); about 3% are rejected rows without data. They point at the
   real sample's data (segment, offset, length), so a loader can read them.
   They are committed through ``DatasetIndex.commit`` in batches of
   ``--commit-rows`` (a fixed count, or a range ``A-B`` drawn uniformly: a
   data segment holds as many episodes as fit its raw bytes), compaction
   included.
3. At each size of ``--sizes``, measured in the grown dataset itself:
   ``--repeats`` commits of 1 row and of 100 rows (median and max, and how
   many of them compacted), opening the dataset and selecting about
   ``--select`` episodes by robots and ``min_grade='B'`` (all columns, and the
   light columns a loader needs), the ``EpisodeDataset`` constructor with the
   same filter (skipped with the reason if it fails), statistics and card
   refresh, and the files and bytes of the index and of the data (measured
   on the sample, extrapolated to the size at the job's ``segment_mb``).

Baseline in the same run: an atomic write of a small file (write, fsync,
rename, fsync of the directory), the floor of any durable commit here.
Goals (issue 12): one-episode commit at the largest size within 2x of the
smallest and under 50 ms; open + select under 1 s at 100k; data files at most
one per 32 MB.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset.index import (
    DATA_DIR,
    GRADES,
    INDEX_DIR,
    LIGHT_COLUMNS,
    DatasetIndex,
    EpisodeEntry,
    EpisodeFilter,
    select_episodes,
)
from pipeline.dataset.store import Dataset

GOAL_COMMIT_MS = 50.0
GOAL_COMMIT_GROWTH = 2.0
GOAL_SELECT_S = 1.0
GOAL_MB_PER_FILE = 32.0
FLEET_EPISODES_PER_DAY = 38_000  # issue 12: 40+ humanoids, 30 s episodes, 8 h a day
GRADE_SHARES = (0.35, 0.35, 0.20, 0.07, 0.03)  # A..F of accepted episodes
REJECTED_SHARE = 0.03
_REJECT_REASONS = ("too short: 0.6 s < min_duration_s 1.0", "outcome 'discarded'", "cannot align: no camera frames")


# -- the real sample ----------------------------------------------------------


@dataclass(frozen=True)
class DataFiles:
    """What the real sample's data segments cost in files."""

    segments: int
    episodes: int
    files: int
    bytes: int
    raw_bytes: int
    fixed_files_per_segment: float  # metadata and numeric shards: files a segment has whatever its size
    camera_bytes_share: dict[str, float]  # camera -> share of the segment bytes
    shard_mb: int
    segment_mb: int

    @property
    def mb_per_file(self) -> float:
        return self.bytes / 1e6 / max(self.files, 1)

    @property
    def stored_per_raw(self) -> float:
        return self.bytes / max(self.raw_bytes, 1)

    def files_for_segment(self, raw_mb: float) -> float:
        """Files of one segment planned at ``raw_mb`` of raw bytes (the model fitted to the sample)."""
        stored = raw_mb * 1024 * 1024 * self.stored_per_raw
        shard = self.shard_mb * 1024 * 1024
        return self.fixed_files_per_segment + sum(math.ceil(stored * share / shard) for share in self.camera_bytes_share.values())

    def mb_per_file_at(self, raw_mb: float) -> float:
        return raw_mb * 1.048576 * self.stored_per_raw / self.files_for_segment(raw_mb)

    def segment_mb_for(self, mb_per_file: float) -> int | None:
        """The smallest ``segment_mb`` (in steps of 64) whose segments hold at least ``mb_per_file`` per file."""
        for raw_mb in range(64, 64 * 1024 + 1, 64):
            if self.mb_per_file_at(raw_mb) >= mb_per_file and all(
                self.mb_per_file_at(m) >= mb_per_file for m in range(raw_mb, raw_mb + 1024, 64)
            ):
                return raw_mb
        return None

    def at_scale(self, episodes: int) -> tuple[float, float]:
        """(bytes, files) of ``episodes`` episodes like the sample's, in full segments of ``segment_mb``."""
        raw = self.raw_bytes / max(self.episodes, 1) * episodes
        segments = raw / (self.segment_mb * 1024 * 1024)
        return raw * self.stored_per_raw, math.ceil(segments) * self.files_for_segment(self.segment_mb)


def make_sample(work: Path, episodes: int, seconds: float, workers: int) -> tuple[Path, float]:
    """Simulated G1 episodes through the real processing job; returns the dataset and the job's seconds."""
    from pipeline.process_job import JobOptions, run_process_job
    from pipeline.raw_builder import simulate_episode
    from pipeline.robot_config import load_robot_config

    config = load_robot_config(Path(__file__).resolve().parent.parent / "robots" / "configs" / "unitree_g1.yaml")
    raw_dir = work / "raw"
    for n in range(episodes):
        simulate_episode(raw_dir, config, robot_id=f"sample-{n % 4}", seconds=seconds, seed=n, prerendered=True,
                         task=f"sample task {n % 3}")
    dataset = work / "scale.zarr"
    started = time.perf_counter()
    summary = run_process_job(JobOptions(raw_dir=raw_dir, dataset=dataset, num_cpus=workers))
    if summary.failed or summary.accepted == 0:
        raise SystemExit("the sample job failed:\n" + "\n".join(summary.lines()))
    return dataset, time.perf_counter() - started


def measure_data_files(dataset: Path, raw_dir: Path) -> DataFiles:
    table = DatasetIndex(dataset).table(["key", "data_segment"])
    keys = [k for k in table["key"].to_pylist() if k]
    segments = sorted({s for s in table["data_segment"].to_pylist() if s})
    files = size = fixed = 0
    camera_bytes: dict[str, int] = {}
    for name in segments:
        for folder, _, names in os.walk(dataset / DATA_DIR / name):
            rel = Path(folder).relative_to(dataset / DATA_DIR / name).parts
            for file in names:
                n = (Path(folder) / file).stat().st_size
                files += 1
                size += n
                if len(rel) >= 3 and rel[0] == "cameras" and rel[2] == "c":
                    camera_bytes[rel[1]] = camera_bytes.get(rel[1], 0) + n
                else:
                    fixed += 1
    output = job_output_config(dataset)
    raw_bytes = sum(p.stat().st_size for p in raw_dir.rglob("*.h5"))
    return DataFiles(
        segments=len(segments), episodes=len(keys), files=files, bytes=size, raw_bytes=raw_bytes,
        fixed_files_per_segment=fixed / max(len(segments), 1),
        camera_bytes_share={c: b / max(size, 1) for c, b in sorted(camera_bytes.items())},
        shard_mb=int(output["shard_mb"]), segment_mb=int(output["segment_mb"]),
    )


def job_output_config(dataset: Path) -> dict[str, Any]:
    """The ``output`` section of the configuration the sample job ran with (defaults if not recorded)."""
    from pipeline.processing.config import ProcessConfig

    job = (Dataset(dataset).state().get("jobs") or [{}])[-1]
    config = job.get("config")
    record = dataset / "jobs" / f"{job.get('job_id', '')}.json"
    if config is None and job.get("job_id") and record.exists():
        config = json.loads(record.read_text()).get("config")
    return {**ProcessConfig().to_dict()["output"], **((config or {}).get("output") or {})}


# -- synthetic rows -------------------------------------------------------------


class RowFactory:
    """Index rows like the real sample's, each a different episode of a fleet."""

    def __init__(self, templates: Sequence[EpisodeEntry], robots: int, tasks: int, seed: int) -> None:
        self.templates = [t for t in templates if t.key and t.accepted]
        if not self.templates:
            raise SystemExit("the sample has no accepted episode to copy")
        self.rng = random.Random(seed)
        self.robots = [f"g1-{n:03d}" for n in range(robots)]
        self.tasks = [f"task {n:03d}: pick the object and place it in bin {n % 7}" for n in range(tasks)]
        self.operators = [f"op-{n:03d}" for n in range(max(robots * 2, 1))]
        self.made = 0
        self.start_ns = max(t.start_ns for t in templates) + 10**9
        self.step_ns = int(86_400e9 / FLEET_EPISODES_PER_DAY)
        self.quality = [json.loads(t.quality_json) for t in self.templates]

    def make(self, count: int) -> list[EpisodeEntry]:
        return [self._one() for _ in range(count)]

    def _one(self) -> EpisodeEntry:
        rng = self.rng
        self.made += 1
        k = rng.randrange(len(self.templates))
        template = self.templates[k]
        robot = rng.choice(self.robots)
        episode_id = f"{robot}-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        self.start_ns += self.step_ns + rng.randrange(-self.step_ns // 2, self.step_ns // 2)
        common = {
            "raw_episode_id": episode_id, "raw_checksum": f"{rng.getrandbits(256):064x}", "robot_id": robot,
            "task": rng.choice(self.tasks), "operator": rng.choice(self.operators), "start_ns": self.start_ns,
            "entry_id": -1, "commit": -1, "split": "",
        }
        if rng.random() < REJECTED_SHARE:
            return replace(template, key="", length=0, data_segment="", offset=0, cameras=[], stats={}, accepted=False,
                           grade="F", overall=round(rng.uniform(0.0, 0.4), 3), reasons=[rng.choice(_REJECT_REASONS)],
                           **common)
        grade = rng.choices(GRADES, GRADE_SHARES)[0]
        overall = round({"A": 0.9, "B": 0.75, "C": 0.6, "D": 0.45, "F": 0.2}[grade] + rng.uniform(0, 0.09), 4)
        scale = rng.uniform(0.9, 1.1)
        stats = {
            key: {
                "count": raw["count"],
                "total": (np.asarray(raw["total"]) * scale).tolist(),
                "total_sq": (np.asarray(raw["total_sq"]) * scale * scale).tolist(),
                "minimum": (np.asarray(raw["minimum"]) * scale).tolist(),
                "maximum": (np.asarray(raw["maximum"]) * scale).tolist(),
            }
            for key, raw in template.stats.items()
        }
        quality = dict(self.quality[k], grade=grade, overall=overall)
        quality["indicators"] = [  # measured values differ per episode; the descriptions do not
            {**ind, "value": ind["value"] * rng.uniform(0.8, 1.2)} if isinstance(ind.get("value"), float) else ind
            for ind in quality.get("indicators", [])
        ]
        return replace(template, key=episode_id, grade=grade, overall=overall, stats=stats,
                       quality_json=json.dumps(quality), **common)


def commit_sizes(spec: str, rng: random.Random) -> Callable[[], int]:
    """``"32"`` (every commit 32 rows) or ``"3-8"`` (uniform in 3..8)."""
    low, _, high = spec.partition("-")
    a, b = int(low), int(high or low)
    if not 1 <= a <= b:
        raise SystemExit(f"--commit-rows {spec!r}: expected N or A-B with 1 <= A <= B")
    return (lambda: a) if a == b else (lambda: rng.randint(a, b))


# -- measuring ------------------------------------------------------------------


def index_files(dataset: Path) -> set[str]:
    return {n for n in os.listdir(dataset / INDEX_DIR) if n.endswith(".parquet") and not n.startswith(".")}


def tree_size(folder: Path) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.stat(os.path.join(root, name)).st_size
    return files, size


def timed_commit(index: DatasetIndex, rows: list[EpisodeEntry], job: dict[str, Any], val_fraction: float) -> tuple[float, bool]:
    """Seconds of one commit, and whether it compacted (a file that was there is gone)."""
    before = index_files(index.dataset)
    started = time.perf_counter()
    index.commit(rows, job, val_fraction=val_fraction)
    elapsed = time.perf_counter() - started
    return elapsed, bool(before - index_files(index.dataset))


def atomic_write_baseline(folder: Path, repeats: int = 20) -> float:
    """Median seconds of write + fsync + rename + fsync(dir) of a 4 KB file: a durable commit's floor."""
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    for n in range(repeats):
        started = time.perf_counter()
        tmp = folder / f".tmp-{n}"
        with open(tmp, "wb") as fh:
            fh.write(os.urandom(4096))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / f"f-{n}")
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - started)
    shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(times)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


@dataclass
class SizeResult:
    rows: int
    grow_s: float
    grow_commits: int
    grown: int
    commit1: list[float]
    commit1_compacted: int
    commit100: list[float]
    commit100_compacted: int
    select_all_s: float
    select_light_s: float
    filter_only_s: float
    selected: int
    robots_asked: int
    loader: str
    stats_s: float
    card_s: float
    index_files: int
    index_bytes: int
    data_files: int
    data_bytes: int


def measure_size(dataset: Path, factory: RowFactory, job: dict[str, Any], val_fraction: float,
                 repeats: int, select_target: int, grow: tuple[float, int, int]) -> SizeResult:
    index = DatasetIndex(dataset)
    commit1, c1 = [], 0
    for _ in range(repeats):
        seconds, compacted = timed_commit(index, factory.make(1), job, val_fraction)
        commit1.append(seconds)
        c1 += compacted
    commit100, c100 = [], 0
    for _ in range(repeats):
        seconds, compacted = timed_commit(index, factory.make(100), job, val_fraction)
        commit100.append(seconds)
        c100 += compacted
    state = index.state()
    rows = int(state["rows"])
    # Enough robots of the fleet that B-or-better episodes of theirs are about select_target.
    per_robot = rows * (1 - REJECTED_SHARE) * (GRADE_SHARES[0] + GRADE_SHARES[1]) / len(factory.robots)
    robots = factory.robots[: max(1, min(len(factory.robots), math.ceil(select_target / max(per_robot, 1e-9))))]

    def open_and_select(columns: Sequence[str] | None) -> list[EpisodeEntry]:
        Dataset(dataset)
        return select_episodes(dataset, columns=columns, robots=robots, min_grade="B")

    select_all_s, selected = median_time(lambda: open_and_select(None), 3)
    select_light_s, _ = median_time(lambda: open_and_select(LIGHT_COLUMNS), 3)
    # The floor of a selection: only the columns the filter reads, and entry_id, for every row.
    where = EpisodeFilter.of(robots=robots, min_grade="B").expression()
    filter_only_s, _ = median_time(lambda: DatasetIndex(dataset).table(["entry_id"], where, include_excluded=False), 3)
    loader = try_loader(dataset, robots)
    stats_s, _ = median_time(lambda: Dataset(dataset).stats(), repeats)
    card_s, _ = median_time(lambda: Dataset(dataset).card(), repeats)
    index_count, index_size = tree_size(dataset / INDEX_DIR)
    data_count, data_size = tree_size(dataset / DATA_DIR)
    return SizeResult(rows, grow[0], grow[1], grow[2], commit1, c1, commit100, c100, select_all_s, select_light_s, filter_only_s, len(selected),
                      len(robots), loader, stats_s, card_s, index_count, index_size, data_count, data_size)


def try_loader(dataset: Path, robots: Sequence[str]) -> str:
    """The EpisodeDataset constructor with the selection's filter, timed; or why it could not run."""
    try:
        from pipeline.dataset import EpisodeDataset

        started = time.perf_counter()
        loader = EpisodeDataset(dataset, robots=robots, min_grade="B")
        elapsed = time.perf_counter() - started
        episodes = len(getattr(loader, "_entries", []) or [])
        return f"{elapsed:.3f} s ({len(loader):,} windows{f', {episodes:,} episodes' if episodes else ''})"
    except Exception as err:  # noqa: BLE001  (another engineer is porting the loader: report, do not fail)
        text = str(err).strip().splitlines()
        return f"skipped: {type(err).__name__}: {(text[-1] if text else '')[:90]}"


@dataclass
class Grower:
    dataset: Path
    factory: RowFactory
    job: dict[str, Any]
    val_fraction: float
    next_size: Callable[[], int]

    def grow_to(self, rows: int) -> tuple[float, int, int, list[float]]:
        """Commit synthetic rows until the index holds ``rows``; (seconds, commits, rows added, per-commit seconds)."""
        index = DatasetIndex(self.dataset)
        have = start = int(index.state()["rows"])
        started = time.perf_counter()
        times: list[float] = []
        last_report = started
        while have < rows:
            count = min(self.next_size(), rows - have)
            t = time.perf_counter()
            index.commit(self.factory.make(count), self.job, val_fraction=self.val_fraction)
            times.append(time.perf_counter() - t)
            have += count
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                print(f"  ... {have:,} rows, {len(index_files(self.dataset))} index files, "
                      f"last commits {statistics.median(times[-50:]) * 1e3:.1f} ms", flush=True)
        return time.perf_counter() - started, len(times), have - start, times


def profile(label: str, fn: Callable[[], Any], top: int = 14) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    print(f"\nprofile: {label}")
    for line in lines[2:]:
        print("  " + line.replace(str(Path(sys.prefix)), "<venv>"))


# -- reporting ------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def print_table(results: list[SizeResult], baseline_s: float, files: DataFiles) -> None:
    print("\n| index rows | grow (rows/s) | commit 1: median / max ms | compacted | commit 100: median / max ms | compacted "
          "| open+select all cols s | open+select light s | filter only s | selected (robots) | EpisodeDataset | stats ms | card ms "
          "| index files | index MB | data files / MB (real sample) | data at this size (extrapolated) |")
    print("|" + "---:|" * 17)
    for r in results:
        scale_bytes, scale_files = files.at_scale(r.rows)
        rate = f"{r.grown / r.grow_s:,.0f}" if r.grow_s else "-"
        print(
            f"| {r.rows:,} | {rate} | {ms(statistics.median(r.commit1))} / {ms(max(r.commit1))} | "
            f"{r.commit1_compacted}/{len(r.commit1)} | {ms(statistics.median(r.commit100))} / {ms(max(r.commit100))} | "
            f"{r.commit100_compacted}/{len(r.commit100)} | {r.select_all_s:.3f} | {r.select_light_s:.3f} | {r.filter_only_s:.3f} | "
            f"{r.selected:,} ({r.robots_asked}) | {r.loader} | {ms(r.stats_s)} | {ms(r.card_s)} | {r.index_files} | "
            f"{r.index_bytes / 1e6:.1f} | {r.data_files} / {r.data_bytes / 1e6:,.0f} | "
            f"~{scale_bytes / 1e12:,.2f} TB in ~{scale_files:,.0f} files |"
        )
    first, last = results[0], results[-1]
    c_first, c_last = statistics.median(first.commit1), statistics.median(last.commit1)
    print(f"\nbaseline: atomic 4 KB write (write, fsync, rename, fsync dir): {ms(baseline_s)} ms median")
    print("goals:")
    print(f"  one-episode commit at {last.rows:,}: {ms(c_last)} ms = {c_last / c_first:.2f}x its time at {first.rows:,} "
          f"({ms(c_first)} ms), {c_last / baseline_s:.1f}x the atomic-write baseline; goal <= {GOAL_COMMIT_GROWTH:.0f}x and "
          f"< {GOAL_COMMIT_MS:.0f} ms: {_verdict(c_last / c_first <= GOAL_COMMIT_GROWTH and c_last * 1e3 < GOAL_COMMIT_MS)}")
    best = min(last.select_all_s, last.select_light_s)
    print(f"  open + select {last.selected:,} episodes at {last.rows:,}: {last.select_all_s:.3f} s (all columns), "
          f"{last.select_light_s:.3f} s (light columns); goal < {GOAL_SELECT_S:.0f} s: "
          f"{_verdict(last.select_all_s < GOAL_SELECT_S)} (all), {_verdict(best < GOAL_SELECT_S)} (light)")
    at = files.mb_per_file_at(files.segment_mb)
    need = files.segment_mb_for(GOAL_MB_PER_FILE)
    print(f"  data files: {at:.1f} MB per file at segment_mb={files.segment_mb} (model fitted to the sample); "
          f"goal >= {GOAL_MB_PER_FILE:.0f}: {_verdict(at >= GOAL_MB_PER_FILE)}; segment_mb >= "
          f"{need if need else '(none up to 64 GB)'} gives >= {GOAL_MB_PER_FILE:.0f} MB per file")


def print_data_files(files: DataFiles) -> None:
    print(f"\nreal sample data: {files.episodes} episodes in {files.segments} segments, {files.files} files, "
          f"{files.bytes / 1e6:,.0f} MB ({files.mb_per_file:.1f} MB per file, {files.files / (files.bytes / 1e6):.3f} files per MB); "
          f"raw {files.raw_bytes / 1e6:,.0f} MB, stored/raw {files.stored_per_raw:.2f}")
    print(f"  per segment: {files.fixed_files_per_segment:.0f} files whatever its size (metadata, numeric arrays) "
          f"+ one per {files.shard_mb} MB of frames per camera ({len(files.camera_bytes_share)} cameras)")
    print("\n| segment_mb (raw) | stored MB | files | MB per file |")
    print("|---:|---:|---:|---:|")
    for raw_mb in (128, 256, 512, 1024, 2048, 4096):
        print(f"| {raw_mb} | {raw_mb * 1.048576 * files.stored_per_raw:,.0f} | {files.files_for_segment(raw_mb):.0f} | "
              f"{files.mb_per_file_at(raw_mb):.1f} |")


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- main -------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s.replace("_", "").replace("k", "000")) for s in text.split(",") if s.strip()})
    except ValueError as err:
        raise SystemExit(f"--sizes {text!r}: expected comma-separated counts, e.g. 1000,10000,100000") from err
    if not sizes or sizes[0] < 1:
        raise SystemExit(f"--sizes {text!r}: expected positive counts")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="index sizes to measure at (default: %(default)s)")
    parser.add_argument("--sample-episodes", type=int, default=8, help="real G1 episodes processed (default: %(default)s)")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="seconds per real episode (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers of the sample job (default: %(default)s)")
    parser.add_argument("--commit-rows", default="32", help="rows per growth commit: N, or A-B uniform (default: %(default)s)")
    parser.add_argument("--robots", type=int, default=40, help="robots in the synthetic fleet (default: %(default)s)")
    parser.add_argument("--tasks", type=int, default=200, help="distinct task texts (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="commits of each kind timed per size (default: %(default)s)")
    parser.add_argument("--select", type=int, default=1000, help="episodes the filter should select (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="profile a 1-row and a 100-row commit and a select at the largest size")
    parser.add_argument("--work-dir", type=Path, help="where to put the sample and dataset (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    rng = random.Random(args.seed)
    next_size = commit_sizes(args.commit_rows, rng)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="refinery-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"$ python -m tools.bench_scale {shlex.join(argv if argv is not None else sys.argv[1:])}", flush=True)
        baseline_s = atomic_write_baseline(work / "baseline")
        t = time.perf_counter()
        dataset, job_s = make_sample(work, args.sample_episodes, args.sample_seconds, args.workers)
        files = measure_data_files(dataset, work / "raw")
        print(f"sample: {args.sample_episodes} G1 episodes x {args.sample_seconds:g} s (3 cameras 640x480) processed by the "
              f"real job in {job_s:.1f} s ({time.perf_counter() - t:.0f} s with generation)")
        print_data_files(files)
        templates = DatasetIndex(dataset).entries()
        ds = Dataset(dataset)
        job = dict(ds.state()["jobs"][-1])
        factory = RowFactory(templates, args.robots, args.tasks, args.seed)
        grower = Grower(dataset, factory, job, ds.val_fraction, next_size)
        print(f"\ngrowing the index with synthetic rows, commits of {args.commit_rows} rows, to {', '.join(f'{s:,}' for s in sizes)}",
              flush=True)
        results: list[SizeResult] = []
        for size in sizes:
            grow_s, commits, grown, times = grower.grow_to(size)
            if times:
                print(f"  grew to {size:,} rows in {grow_s:.1f} s ({commits} commits, median {ms(statistics.median(times))} ms, "
                      f"max {ms(max(times))} ms; {len(index_files(dataset))} index files)", flush=True)
            result = measure_size(dataset, factory, job, ds.val_fraction, args.repeats, args.select, (grow_s, commits, grown))
            results.append(result)
            print(f"  measured at {result.rows:,}: commit 1 {ms(statistics.median(result.commit1))} ms, commit 100 "
                  f"{ms(statistics.median(result.commit100))} ms, open+select {result.select_all_s:.3f} s", flush=True)
        print_table(results, baseline_s, files)
        if args.profile:
            index = DatasetIndex(dataset)
            profile(f"commit of 1 row at {results[-1].rows:,} rows",
                    lambda: index.commit(factory.make(1), job, val_fraction=ds.val_fraction))
            profile(f"commit of 100 rows at {results[-1].rows:,} rows",
                    lambda: index.commit(factory.make(100), job, val_fraction=ds.val_fraction))
            robots = factory.robots[: results[-1].robots_asked]
            profile(f"open + select_episodes(robots={len(robots)}, min_grade='B'), all columns",
                    lambda: select_episodes(dataset, robots=robots, min_grade="B"))
            profile(f"open + select_episodes(robots={len(robots)}, min_grade='B', columns=LIGHT_COLUMNS)",
                    lambda: select_episodes(dataset, columns=LIGHT_COLUMNS, robots=robots, min_grade="B"))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the trainer's loader: random windows per second on one core, resized and at full size.

    python -m tools.bench_loader [--episodes 2] [--seconds 10] [--windows 300] [--repeats 3] [--blocks 10]
                                 [--sizes 224x224,full] [--dp-codec jpeg]

Builds a dataset the way production does (simulated ``unitree_g1`` episodes,
3 cameras at 640x480, through ``refinery process`` on an embedded Ray: dataset
format 2, episodes concatenated in data segments), then pins the process to
one core and, for each output size (``--sizes``: ``HxW`` resizes every frame
with INTER_AREA, ``full`` keeps 640x480) and the same random windows (history
2, horizon 16 by default), measures in the same run:

* loader: ``EpisodeDataset[i]`` (numeric arrays in memory, one batched shard
  read per camera per window, each distinct frame decoded once into the
  sample);
* decode limit: ``cv2.imdecode`` (+ ``cv2.resize`` when resizing) of the very
  frames the loader decodes, from bytes already in memory: what any loader of
  JPEG frames pays at least. The loader's goal is >= 0.8 of it at both sizes;
* Diffusion Policy replay buffer: the same episodes exported by
  ``pipeline/export_dp.py`` (Zarr format 2, ``data/<key>`` concatenated over
  episodes, ``meta/episode_ends``, images one frame per chunk) read as DP's
  ``SequenceSampler`` does (a slice of each image array per window, edge
  padding), with the low-dimensional arrays in memory. ``--dp-codec jpeg``
  (default) stores the same JPEG bytes under imagecodecs' ``imagecodecs_jpeg``
  codec, so both sides decode identical bytes with libjpeg-turbo and only the
  access path differs; ``blosc`` stores raw uint8 frames with Blosc-lz4. The
  rows are skipped, with the reason, when the export fails or imagecodecs is
  missing.

The windows are timed in ``--blocks`` blocks; each of ``--repeats`` passes
runs every reader on block 1, then on block 2, ... (drift on a shared machine
hits all readers alike), and a reader's time is the sum over blocks of its
fastest run of each block; page cache warm. Prints a table per size of
windows/s and frames/s with ratios.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import zarr

if TYPE_CHECKING:
    from pipeline.dataset.loader import EpisodeDataset

# Decode as the JPEG codec does (RGB); older OpenCV builds decode BGR at the same cost.
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION


def make_dataset(work: Path, robot: str, episodes: int, seconds: float) -> Path:
    """Simulated raw episodes through the processing job; returns the dataset path."""
    from pipeline.process_job import JobOptions, run_process_job
    from pipeline.raw_builder import simulate_episode
    from pipeline.robot_config import load_robot_config

    config = load_robot_config(robot)
    raw = work / "raw"
    for n in range(episodes):
        simulate_episode(raw, config, robot_id=f"bench-{n}", seconds=seconds, seed=n, prerendered=True)
    dataset = work / "dataset.zarr"
    summary = run_process_job(JobOptions(raw_dir=raw, dataset=dataset, num_cpus=min(2, os.cpu_count() or 1)))
    if summary.failed or not summary.accepted:
        raise SystemExit(f"processing failed: {summary.lines()}")
    return dataset


def pin_to_one_core() -> int:
    """Pin every thread of this process (zarr's event loop and pools included) to one core."""
    core = min(os.sched_getaffinity(0))
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), {core})
        except OSError:
            pass  # a thread that ended meanwhile
    cv2.setNumThreads(1)
    return core


def parse_sizes(text: str) -> list[tuple[int, int] | None]:
    """``"224x224,full"`` -> ``[(224, 224), None]`` (None: the stored size)."""
    sizes: list[tuple[int, int] | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "full":
            sizes.append(None)
            continue
        try:
            height, width = (int(v) for v in part.split("x"))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"size {part!r}: use HxW (e.g. 224x224) or 'full'") from err
        sizes.append((height, width))
    return sizes


def export_replay_buffer(
    dataset: Path, ds: EpisodeDataset, path: Path, codec: str
) -> tuple[str, tuple[zarr.Group, np.ndarray] | None]:
    """The selected episodes as a Diffusion Policy replay buffer, by the real exporter.

    Returns a description and, unless the export failed, the buffer's root and
    each loader episode's position in it.
    """
    if codec == "jpeg":
        try:
            import imagecodecs.numcodecs as image_numcodecs
        except ImportError:
            return "DP replay buffer: skipped, imagecodecs is not installed (try --dp-codec blosc)", None
        image_numcodecs.register_codecs()
    description = "imagecodecs_jpeg, same JPEG bytes" if codec == "jpeg" else "raw uint8 + Blosc lz4"
    try:
        from pipeline.interop.dp_export import export_diffusion_policy

        summary = export_diffusion_policy(
            dataset, path, keys={key: key.replace("/", "_") for key in ds.keys}, image_codec=codec,
            robots=sorted({e.robot_id for e in ds.episodes}),
        )
        root = zarr.open_group(str(path), mode="r")
        order = list(summary.episode_keys)
        positions = np.array([order.index(e.key) for e in ds.episodes], dtype=np.int64)
    except Exception as err:  # noqa: BLE001  (any failure of the exporter only skips its rows)
        first_line = str(err).splitlines()[0] if str(err) else ""
        return f"DP replay buffer: skipped, pipeline/export_dp.py failed ({type(err).__name__}: {first_line[:160]})", None
    return f"DP replay buffer ({description})", (root, positions)


class ReplayBufferWindows:
    """Windows read the way Diffusion Policy's ``SequenceSampler`` reads them."""

    def __init__(
        self, root: zarr.Group, positions: np.ndarray, ds: EpisodeDataset, image_size: tuple[int, int] | None
    ) -> None:
        ends = root["meta"]["episode_ends"][...]
        starts = np.concatenate([[0], ends[:-1]])
        self.ends, self.starts = ends[positions], starts[positions]  # by the loader's episode order
        self.ds = ds
        self.size = image_size
        data = root["data"]
        self.low_dim = {k: data[k.replace("/", "_")][...] for k in ds.keys if not k.startswith("cameras/")}
        self.images = {k: data[k.replace("/", "_")] for k in ds.keys if k.startswith("cameras/")}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        episode, t = self.ds.locate(index)
        start, end = int(self.starts[episode]), int(self.ends[episode])
        out = {}
        for key in self.ds.keys:
            steps = np.asarray(self.ds.window_steps(key, episode))
            wanted = start + t + steps
            if key in self.low_dim:
                out[key] = self.low_dim[key][np.clip(wanted, start, end - 1)]
                continue
            lo, hi = max(int(wanted[0]), start), min(int(wanted[-1]) + 1, end)
            frames = self.images[key][lo:hi]  # one slice per key, as SequenceSampler does
            if self.size is not None:
                frames = np.stack([cv2.resize(f, self.size[::-1], interpolation=cv2.INTER_AREA) for f in frames])
            out[key] = frames[np.clip(wanted, lo, hi - 1) - lo]  # edge padding
        return out


def best_rates(windows: int, blocks: int, runs: dict[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """Windows per second of each run, robust to a shared machine.

    The windows are cut into ``blocks``; each repeat runs every reader on
    block 1, then every reader on block 2, ..., so drift hits all readers
    alike, and a reader's time is the sum over blocks of its fastest run of
    that block (short blocks catch the quiet moments that whole passes miss).
    """
    times: dict[str, list[list[float]]] = {name: [[] for _ in range(blocks)] for name in runs}
    for _ in range(repeats):
        for block in range(blocks):
            for name, run in runs.items():
                start = time.perf_counter()
                run(block)
                times[name][block].append(time.perf_counter() - start)
    return {name: windows / sum(min(spent) for spent in per_block) for name, per_block in times.items()}


def tree_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def window_jpegs(ds: EpisodeDataset, windows: list[int]) -> list[list[bytes]]:
    """Per window, the stored JPEGs the loader decodes: each distinct frame of the window once per camera."""
    from pipeline.dataset.store import Dataset

    store = Dataset(ds.path)
    per_window: list[list[bytes]] = []
    for index in windows:
        episode, t = ds.locate(index)
        entry = ds.episodes[episode]
        jpegs: list[bytes] = []
        for key in ds.keys:
            if key.startswith("cameras/"):
                steps = np.unique(np.clip(t + np.asarray(ds.window_steps(key, episode)), 0, entry.length - 1))
                jpegs += store.jpeg_bytes(entry, key.removeprefix("cameras/"), steps)
        per_window.append(jpegs)
    return per_window


def bench_size(
    dataset: Path, work: Path, args: argparse.Namespace, size: tuple[int, int] | None, core: int
) -> list[str]:
    """One table: the loader, the decode limit and the DP reader at one output size."""
    from pipeline.dataset.loader import EpisodeDataset
    from pipeline.dataset.store import Dataset

    ds = EpisodeDataset(dataset, history=args.history, horizon=args.horizon, image_size=size)
    cameras = [k for k in ds.keys if k.startswith("cameras/")]
    stored = Dataset(dataset).frame_size(ds.episodes[0], cameras[0].removeprefix("cameras/"))
    height, width = size or stored
    resize = (height, width) != stored
    rng = np.random.default_rng(0)
    windows = rng.integers(0, len(ds), args.windows).tolist()
    jpegs = window_jpegs(ds, windows)
    frames = sum(len(j) for j in jpegs)
    per_block = -(-len(windows) // args.blocks)
    blocks = [range(b * per_block, min((b + 1) * per_block, len(windows))) for b in range(args.blocks)]

    def decode_limit(block: int) -> None:
        for w in blocks[block]:
            for jpeg in jpegs[w]:
                image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), _RGB)
                if resize:
                    cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    def loader(block: int) -> None:
        for w in blocks[block]:
            ds[windows[w]]

    limit_name = "decode limit (cv2.imdecode" + (" + resize)" if resize else ")")
    runs: dict[str, Callable[[int], object]] = {limit_name: decode_limit, "EpisodeDataset (this loader)": loader}
    segments = sorted({e.data_segment for e in ds.episodes})
    sizes: dict[str, int | None] = {
        limit_name: None,
        "EpisodeDataset (this loader)": tree_bytes([dataset / "data" / s / "cameras" for s in segments]),
    }
    buffer = work / "replay_buffer.zarr"
    if not buffer.exists():
        args.dp_description, args.dp_root = export_replay_buffer(dataset, ds, buffer, args.dp_codec)
    notes = []
    if args.dp_root is not None:
        replay = ReplayBufferWindows(*args.dp_root, ds, size if resize else None)

        def diffusion_policy(block: int) -> None:
            for w in blocks[block]:
                replay[windows[w]]

        runs[args.dp_description] = diffusion_policy
        sizes[args.dp_description] = tree_bytes([buffer / "data" / k.replace("/", "_") for k in cameras])
    else:
        notes.append(f"  note: {args.dp_description}")
    for run in runs.values():
        for block in range(len(blocks)):
            run(block)  # warm: numeric arrays into memory, shards into the page cache
    n = len(windows)
    rates = best_rates(n, len(blocks), runs, args.repeats)
    limit, ours = rates[limit_name], rates["EpisodeDataset (this loader)"]
    title = (
        f"\n{len(cameras)} cameras {stored[1]}x{stored[0]} -> {width}x{height}: one core (cpu {core}); {n} random "
        f"windows, history {args.history}, horizon {args.horizon}, {frames / n:.2f} frames decoded per window; "
        f"per block of {per_block} windows the best of {args.repeats} interleaved passes"
    )
    lines = [
        title,
        f"  {'':62s} {'windows/s':>10s} {'frames/s':>9s} {'vs limit':>9s} {'ours vs':>8s} {'image MB':>9s}",
    ]
    for name, rate in rates.items():
        stored_bytes = sizes[name]
        megabytes = "" if stored_bytes is None else f"{stored_bytes / 1e6:9.1f}"
        lines.append(f"  {name:62s} {rate:10,.1f} {rate * frames / n:9,.0f} {rate / limit:9.2f} {ours / rate:8.2f} "
                     f"{megabytes:>9s}")
    return lines + notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robot", default="unitree_g1")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=300, help="random windows per pass")
    parser.add_argument("--history", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("224x224,full"),
                        help="output sizes, comma-separated: HxW (resized with INTER_AREA) or 'full' (default: 224x224,full)")
    parser.add_argument("--dp-codec", choices=("jpeg", "blosc"), default="jpeg")
    parser.add_argument("--repeats", type=int, default=3, help="passes over every block")
    parser.add_argument("--blocks", type=int, default=10, help="blocks the windows are timed in (see best_rates)")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the data (default: a temporary directory)")
    args = parser.parse_args(argv)
    args.dp_description, args.dp_root = "", None

    print("$ python -m tools.bench_loader " + shlex.join(sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        dataset = make_dataset(work, args.robot, args.episodes, args.seconds)
        print(f"built in {time.perf_counter() - started:.0f} s: {args.episodes} episodes of {args.seconds:g} s")
        core = pin_to_one_core()
        for size in args.sizes:
            print("\n".join(bench_size(dataset, work, args, size, core)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the trainer's loader: random windows per second on one core.

    python -m tools.bench_loader [--episodes 2] [--seconds 10] [--windows 300] [--dp-codec jpeg]

Builds a dataset the way production does (simulated ``unitree_g1`` episodes,
3 cameras at 640x480, through ``refinery process`` on an embedded Ray), then
pins the process to one core and, for the same random windows (history 2,
horizon 16 by default; every camera resized to 224x224 with INTER_AREA),
measures in the same run:

* loader: ``EpisodeDataset[i]`` (numeric arrays in memory, one batched
  ``read_frames`` per camera per window);
* decode limit: ``cv2.imdecode`` + ``cv2.resize`` of the very frames the
  loader decodes, from bytes already in memory: what any loader of JPEG
  frames pays at least;
* Diffusion Policy replay buffer: the same episodes as DP stores them (Zarr
  format 2, ``data/<key>`` concatenated over episodes, ``meta/episode_ends``,
  images one frame per chunk) read as DP's ``SequenceSampler`` does (a slice
  of each image array per window, edge padding), with the low-dimensional
  arrays in memory. ``--dp-codec jpeg`` (default) stores the same JPEG bytes
  under imagecodecs' numcodecs ``imagecodecs_jpeg`` codec, so both sides
  decode identical bytes with libjpeg-turbo and only the access path differs;
  ``jpegxl`` re-encodes the frames with ``imagecodecs_jpegxl`` (effort 1);
  ``blosc`` stores raw uint8 frames with Blosc-lz4 (also the fallback when
  imagecodecs is not installed).

Every rate is the best of ``--repeats`` passes over the same windows, the
three readers' passes interleaved, page cache warm. Prints a table of windows/s and frames/s with ratios.
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
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

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


def dp_codec(name: str) -> tuple[str, object | None]:
    """(description, numcodecs codec) for the DP image arrays; falls back to Blosc without imagecodecs."""
    from numcodecs import Blosc

    blosc = Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)
    if name == "blosc":
        return "raw uint8 + Blosc lz4", blosc
    try:
        import imagecodecs.numcodecs as image_numcodecs
    except ImportError:
        return "raw uint8 + Blosc lz4 (imagecodecs not installed)", blosc
    image_numcodecs.register_codecs()
    if name == "jpeg":
        return "imagecodecs_jpeg, same JPEG bytes", image_numcodecs.Jpeg(level=90)
    return "imagecodecs_jpegxl, effort 1, distance 1.0", image_numcodecs.Jpegxl(effort=1, distance=1.0)


def make_replay_buffer(ds: EpisodeDataset, path: Path, codec_name: str) -> tuple[str, zarr.Group]:
    """The selected episodes as a Diffusion Policy replay buffer (Zarr format 2)."""
    from pipeline.dataset.frame_shards import read_jpeg_bytes

    description, codec = dp_codec(codec_name)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    meta = root.create_group("meta")
    source = zarr.open_group(str(ds.path), mode="r")
    groups = [source["episodes"][e.key] for e in ds.episodes]
    ends = np.cumsum([e.length for e in ds.episodes])
    meta.create_array("episode_ends", data=ends.astype(np.int64), chunks=(len(ends),), compressors=None)
    for key in ds.keys:
        if not key.startswith("cameras/"):
            values = np.concatenate([g[key][...] for g in groups])
            data.create_array(key.replace("/", "_"), data=values, chunks=(min(len(values), 1024), values.shape[1]))
            continue
        shape = (int(ends[-1]), *groups[0][key].shape[1:])
        array = data.create_array(
            key.removeprefix("cameras/"), shape=shape, dtype=np.uint8, chunks=(1, *shape[1:]),
            compressors=codec, fill_value=0,
        )
        position = 0
        for group in groups:
            camera = group[key]
            jpegs = read_jpeg_bytes(camera, range(camera.shape[0]))
            if "same JPEG bytes" in description:
                # A JPEG chunk of imagecodecs_jpeg is a plain JPEG file: store the bytes as they are.
                store, prefix = array.store_path.store, array.store_path.path
                buffer = default_buffer_prototype().buffer
                for i, jpeg in enumerate(jpegs):
                    chunk_key = array.metadata.encode_chunk_key((position + i, 0, 0, 0))
                    sync(store.set(f"{prefix}/{chunk_key}", buffer.from_bytes(jpeg)))
            else:
                for i, jpeg in enumerate(jpegs):
                    array[position + i] = cv2.imdecode(np.frombuffer(jpeg, np.uint8), _RGB)
            position += len(jpegs)
    return description, root


class ReplayBufferWindows:
    """Windows read the way Diffusion Policy's ``SequenceSampler`` reads them."""

    def __init__(self, root: zarr.Group, ds: EpisodeDataset, image_size: tuple[int, int]) -> None:
        self.ends = root["meta"]["episode_ends"][...]
        self.starts = np.concatenate([[0], self.ends[:-1]])
        self.ds = ds
        self.size = image_size
        data = root["data"]
        self.low_dim = {k: data[k.replace("/", "_")][...] for k in ds.keys if not k.startswith("cameras/")}
        self.images = {k: data[k.removeprefix("cameras/")] for k in ds.keys if k.startswith("cameras/")}

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
            frames = np.stack([cv2.resize(f, self.size[::-1], interpolation=cv2.INTER_AREA) for f in frames])
            out[key] = frames[np.clip(wanted, lo, hi - 1) - lo]  # edge padding
        return out


def best_rates(count: int, runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Items per second of each run's fastest pass; passes interleaved so drift on a shared machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: count / min(spent) for name, spent in times.items()}


def tree_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robot", default="unitree_g1")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=300, help="random windows per pass")
    parser.add_argument("--history", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--dp-codec", choices=("jpeg", "jpegxl", "blosc"), default="jpeg")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the data (default: a temporary directory)")
    args = parser.parse_args(argv)

    from pipeline.dataset.frame_shards import read_jpeg_bytes
    from pipeline.dataset.loader import EpisodeDataset

    print("$ python -m tools.bench_loader " + shlex.join(sys.argv[1:] if argv is None else argv))
    size = (args.size[0], args.size[1])
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        built = time.perf_counter()
        dataset = make_dataset(work, args.robot, args.episodes, args.seconds)
        ds = EpisodeDataset(dataset, history=args.history, horizon=args.horizon, image_size=size)
        description, root = make_replay_buffer(ds, work / "replay_buffer.zarr", args.dp_codec)
        print(f"built in {time.perf_counter() - built:.0f} s: {len(ds.episodes)} episodes, {len(ds)} windows, "
              f"keys {list(ds.keys)}")
        core = pin_to_one_core()

        rng = np.random.default_rng(0)
        windows = rng.integers(0, len(ds), args.windows).tolist()
        cameras = [k for k in ds.keys if k.startswith("cameras/")]
        # The frames the loader decodes: each distinct frame of a window once per camera.
        source = zarr.open_group(str(dataset), mode="r")
        jpegs: list[bytes] = []
        for index in windows:
            episode, t = ds.locate(index)
            group = source["episodes"][ds.episodes[episode].key]
            for key in cameras:
                steps = np.unique(np.clip(t + np.asarray(ds.window_steps(key, episode)), 0, ds.episodes[episode].length - 1))
                jpegs += read_jpeg_bytes(group[key], steps)
        frames = len(jpegs)
        height, width = size

        def decode_limit() -> None:
            for jpeg in jpegs:
                image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), _RGB)
                cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

        def loader() -> None:
            for index in windows:
                ds[index]

        replay = ReplayBufferWindows(root, ds, size)

        def diffusion_policy() -> None:
            for index in windows:
                replay[index]

        loader()  # warm: numeric arrays into memory, shards into the page cache
        diffusion_policy()
        n = len(windows)
        names = ("decode limit (cv2.imdecode + resize)", "EpisodeDataset (this loader)",
                 f"DP replay buffer ({description})")
        rates = best_rates(n, dict(zip(names, (decode_limit, loader, diffusion_policy), strict=True)), args.repeats)
        camera_names = [k.removeprefix("cameras/") for k in cameras]
        sizes: dict[str, int | None] = {
            names[0]: None,
            names[1]: tree_bytes([dataset / "episodes" / e.key / "cameras" for e in ds.episodes]),
            names[2]: tree_bytes([work / "replay_buffer.zarr" / "data" / c for c in camera_names]),
        }
        limit, ours = rates[names[0]], rates[names[1]]
        shape = source["episodes"][ds.episodes[0].key][cameras[0]].shape
        print(f"\none core (cpu {core}); {n} random windows: history {args.history}, horizon {args.horizon}, "
              f"{len(cameras)} cameras {shape[2]}x{shape[1]} -> {width}x{height}, "
              f"{frames / n:.2f} frames decoded per window; best of {args.repeats} interleaved passes")
        print(f"  {'':62s} {'windows/s':>10s} {'frames/s':>9s} {'vs limit':>9s} {'ours vs':>8s} {'image MB':>9s}")
        for name in names:
            rate = rates[name]
            stored_bytes = sizes[name]
            megabytes = "" if stored_bytes is None else f"{stored_bytes / 1e6:9.1f}"
            print(f"  {name:62s} {rate:10,.1f} {rate * frames / n:9,.0f} {rate / limit:9.2f} {ours / rate:8.2f} "
                  f"{megabytes:>9s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the LeRobot export: speed per core, size on disk, frame quality, and random-window loading in LeRobot.

    python -m tools.bench_lerobot_export [--episodes 2] [--seconds 10] [--windows 150] [--vcodecs h264,libsvtav1]
                                         [--venv DIR] [--keep]

Builds a dataset the way production does (simulated ``unitree_g1`` episodes,
3 cameras at 640x480, through ``refinery process``), then, in the same run:

* export speed per core: ``export --format lerobot`` per codec, as camera
  frames per CPU second of the process (pinned to one core), against the bare JPEG decode of the
  same frames (``cv2.imdecode`` from bytes in memory; every exporter that
  re-encodes pays it) and against the Diffusion Policy export (which copies
  the JPEG bytes as they are);
* size on disk of each export against the Zarr dataset's data;
* frame quality: PSNR of every decoded video frame (PyAV) against the stored
  JPEG decoded;
* random-window loading on one core: the same random windows (state and
  cameras at steps t-1, t; actions t .. t+15, as ``delta_timestamps``) read
  by Refinery's ``EpisodeDataset`` from the Zarr dataset, and by lerobot
  0.6.1's ``LeRobotDataset`` from the export, in the lerobot venv of
  ``tools/check_lerobot_export.py`` (``--venv``; skipped with the reason when
  there is none), with its default video backend and with ``pyav``. Each
  reader runs the windows ``--repeats`` times; the best pass counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from tools.bench_loader import make_dataset, pin_to_one_core
from tools.check_lerobot_export import DEFAULT_VENV, lerobot_ready

HISTORY = (-1, 0)
HORIZON = tuple(range(16))

LEROBOT_LOADER = r'''
import json, os, sys, time
core = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {core})
import torch
torch.set_num_threads(1)
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, spec_path, backend, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spec = json.loads(open(spec_path).read())
ds = LeRobotDataset("refinery/bench", root=root, delta_timestamps=spec["delta"],
                    video_backend=None if backend == "default" else backend)
for i in spec["indices"][:5]:
    ds[i]
best = float("inf")
for _ in range(repeats):
    started = time.perf_counter()
    for i in spec["indices"]:
        ds[i]
    best = min(best, time.perf_counter() - started)
print(json.dumps({"backend": ds._video_backend, "seconds": best, "windows": len(spec["indices"])}))
'''


def timed(run, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds of the fastest of ``repeats`` runs: this process's threads (an encoder's included).

    CPU time, not wall time: on a shared machine a pinned core is also
    someone else's, and an encoder may run threads off the pinned core.
    """
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def psnr_of_export(out: Path, dataset: Path, keys: list[str]) -> tuple[float, float]:
    """Mean and lowest PSNR of every video frame against the stored JPEG decoded."""
    import av
    import pyarrow.parquet as pq

    from pipeline.dataset.store import Dataset, load_index

    source = Dataset(dataset)
    by_key = {e.key: e for e in load_index(dataset) if e.key}
    rows = [r for p in sorted((out / "meta/episodes").glob("*/*.parquet")) for r in pq.read_table(p).to_pylist()]
    scores = []
    for camera in keys:
        name = f"observation.images.{camera}"
        stored = np.concatenate([source.frames(by_key[r["refinery/episode_key"]], camera,
                                               range(r["length"])) for r in rows])
        decoded = []
        for path in sorted((out / "videos" / name).glob("*/*.mp4")):
            with av.open(str(path)) as container:
                decoded += [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        for got, want in zip(decoded, stored, strict=True):
            mse = float(np.mean((got.astype(np.float64) - want) ** 2))
            scores.append(99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return float(np.mean(scores)), float(np.min(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robot", default="unitree_g1")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vcodecs", default="h264,libsvtav1")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="lerobot venv (default: %(default)s)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    from pipeline.dataset.index import select_episodes
    from pipeline.dataset.loader import EpisodeDataset
    from pipeline.dataset.store import Dataset
    from pipeline.interop.dp_export import export_diffusion_policy
    from pipeline.interop.lerobot_export import VideoSettings, export_lerobot

    work = Path(tempfile.mkdtemp(prefix="bench-lerobot-"))
    try:
        dataset = make_dataset(work, args.robot, args.episodes, args.seconds)
        entries = select_episodes(dataset)
        cameras = sorted(set.intersection(*(set(e.cameras) for e in entries)))
        steps = sum(e.length for e in entries)
        frames = steps * len(cameras)
        data_bytes = tree_bytes(dataset / "data")
        print(f"dataset: {len(entries)} episodes, {steps} steps, {len(cameras)} cameras "
              f"({frames} frames), data {data_bytes / 1e6:.1f} MB")

        core = pin_to_one_core()
        source = Dataset(dataset)
        jpegs = [j for e in entries for c in cameras for j in source.jpeg_bytes(e, c, range(e.length))]
        rgb = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)
        decode_s = timed(lambda: [cv2.imdecode(np.frombuffer(j, np.uint8), rgb) for j in jpegs], args.repeats)
        print(f"\nexport pinned to core {core}, {frames} camera frames, per CPU second:")
        print(f"  {'what':<34} {'frames/s':>9} {'x decode':>9} {'MB':>8} {'x zarr':>7}  PSNR mean / min")
        print(f"  {'JPEG decode alone (baseline)':<34} {frames / decode_s:>9.0f} {1.0:>9.2f}")
        dp = work / "dp.zarr"
        dp_s = timed(lambda: export_diffusion_policy(dataset, dp), 1)
        print(f"  {'Diffusion Policy export (copies)':<34} {frames / dp_s:>9.0f} {decode_s / dp_s:>9.2f} "
              f"{tree_bytes(dp) / 1e6:>8.1f} {tree_bytes(dp) / data_bytes:>7.2f}")
        exports = {}
        for vcodec in args.vcodecs.split(","):
            out = work / f"lerobot-{vcodec}"
            seconds = timed(lambda out=out, vcodec=vcodec: export_lerobot(dataset, out, video=VideoSettings(vcodec)), 1)
            size = tree_bytes(out)
            mean, low = psnr_of_export(out, dataset, cameras)
            label = f"LeRobot export, {vcodec} (crf {VideoSettings(vcodec).quality})"
            print(f"  {label:<34} {frames / seconds:>9.0f} {decode_s / seconds:>9.2f} {size / 1e6:>8.1f} "
                  f"{size / data_bytes:>7.2f}  {mean:.1f} / {low:.1f} dB")
            exports[vcodec] = out

        # The same random windows for both readers.
        fps = int(entries[0].rate_hz)
        delta = {"state/position": [s / fps for s in HISTORY], "action/position": [s / fps for s in HORIZON],
                 **{f"cameras/{c}": [s / fps for s in HISTORY] for c in cameras}}
        loader = EpisodeDataset(dataset, keys=list(delta), delta_timestamps=delta)
        rng = np.random.default_rng(0)
        samples = rng.integers(0, len(loader), size=args.windows).tolist()
        for i in samples[:5]:
            loader[i]
        loader_s = timed(lambda: [loader[i] for i in samples], args.repeats)
        print(f"\nrandom windows on one core ({args.windows} windows: state and {len(cameras)} cameras at t-1, t; "
              f"action t..t+15):")
        print(f"  {'reader':<50} {'windows/s':>9} {'x EpisodeDataset':>17}")
        print(f"  {'EpisodeDataset (Zarr, JPEG)':<50} {args.windows / loader_s:>9.1f} {1.0:>17.2f}")
        python = args.venv / "bin" / "python"
        if not lerobot_ready(python):
            print(f"  LeRobotDataset: skipped, no lerobot venv at {args.venv} (build it with "
                  "python -m tools.check_lerobot_export)")
            return 0
        import pyarrow.parquet as pq

        for vcodec, out in exports.items():
            rows = [r for p in sorted((out / "meta/episodes").glob("*/*.parquet")) for r in pq.read_table(p).to_pylist()]
            starts = {r["refinery/episode_key"]: r["dataset_from_index"] for r in rows}
            indices = []
            for i in samples:
                episode, step = loader.locate(i)
                indices.append(starts[loader.episodes[episode].key] + step)
            names = {"state/position": "observation.state", "action/position": "action",
                     **{f"cameras/{c}": f"observation.images.{c}" for c in cameras}}
            spec = work / f"windows-{vcodec}.json"
            spec.write_text(json.dumps({"indices": indices, "delta": {names[k]: v for k, v in delta.items()}}))
            script = work / "lerobot_loader.py"
            script.write_text(LEROBOT_LOADER)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env.update(HF_HUB_OFFLINE="1", HF_LEROBOT_HOME=str(work / "lerobot-home"))
            for backend in ("default", "pyav"):
                done = subprocess.run([str(python), str(script), str(out), str(spec), backend, str(args.repeats)],
                                      capture_output=True, text=True, env=env, check=False)
                if done.returncode != 0:
                    print(f"  LeRobotDataset {vcodec} {backend}: failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rate = result["windows"] / result["seconds"]
                label = f"LeRobotDataset ({vcodec} mp4, {result['backend']})"
                print(f"  {label:<50} {rate:>9.1f} {rate / (args.windows / loader_s):>17.2f}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

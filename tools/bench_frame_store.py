"""Benchmark: storing and reading camera frames in a sharded Zarr camera array, on one core.

Write side, N received JPEGs (default 640x480, 40-70 KB each):
  (a) passthrough: ``write_jpeg_frames`` stores the bytes as they came;
  (a+fsync) the same, then every shard file fsynced (what a commit costs);
  (b) zarr: decode each JPEG, ``array[s:e] = frames`` (zarr encodes again);
  (c) baseline: all bytes into one file + fsync (the disk's own limit).
Every timed run starts after ``os.sync()``; (a+fsync) and (c) both end on
stable storage and compare like with like.
Read side, same array:
  read_frames on random batches and on contiguous windows (the loader's
  case), ``array[i]`` one frame at a time, and bare ``cv2.imdecode`` of the
  same bytes (the decoder's limit). Reads come from the page cache.

Run: ``python -m tools.bench_frame_store [--frames 512] [--height 480 --width 640]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import zarr

from pipeline.dataset.frame_shards import read_frames, write_jpeg_frames
from pipeline.dataset.jpeg_codec import JpegCodec

# Decode as the codec does (RGB); older OpenCV builds lack the flag and decode BGR at the same cost.
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)


def synthetic_jpegs(count: int, height: int, width: int, quality: int, seed: int = 0) -> list[bytes]:
    """Varied camera-like frames: gradients, moving shapes, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 30, (height, width, 3)).astype(np.float32), (0, 0), 1.2)
    frames = []
    for i in range(count):
        base = rng.uniform(40, 200, 3) + (x[..., None] / width) * rng.uniform(-60, 60, 3)
        image = base + (y[..., None] / height) * rng.uniform(-60, 60, 3)
        image += np.roll(texture, shift=(i * 3) % height, axis=0)
        image += rng.normal(0, 3, (height, width, 3))
        canvas = np.clip(image, 0, 255).astype(np.uint8)
        for _ in range(6):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.circle(canvas, centre, int(rng.integers(10, height // 4)), colour, -1)
        frames.append(cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return frames


def best_rate(count: int, run: Callable[[], object], repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs (the one least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeats):
        # Start every run with no dirty pages left by the previous one: this VM's
        # disk throttles writers once tens of MB are dirty, which would charge
        # one method for another's writeback.
        os.sync()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return count / min(times)


def fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--quality", type=int, default=90, help="quality of the synthetic input JPEGs")
    parser.add_argument("--frames-per-shard", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="frames per read_frames call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args(argv)

    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    n, height, width, per_shard = args.frames, args.height, args.width, args.frames_per_shard

    frames = synthetic_jpegs(n, height, width, args.quality)
    sizes = np.array([len(f) for f in frames]) / 1024
    print(f"{n} frames {width}x{height}, JPEG {sizes.min():.0f}-{sizes.max():.0f} KB (mean {sizes.mean():.0f} KB), "
          f"{per_shard} frames/shard, {len(os.sched_getaffinity(0))} core(s)")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        runs = iter(range(10**6))

        def passthrough(sync_files: bool = False) -> None:
            root = work / f"a{next(runs)}.zarr"
            write_jpeg_frames(zarr.open_group(root, mode="w"), "cam", frames, height, width, frames_per_shard=per_shard)
            if sync_files:
                fsync_tree(root)

        def reencode() -> None:
            group = zarr.open_group(work / f"b{next(runs)}.zarr", mode="w")
            array = group.create_array(
                "cam", shape=(n, height, width, 3), dtype="uint8", chunks=(1, height, width, 3),
                shards=(per_shard, height, width, 3), serializer=JpegCodec(quality=args.quality),
                compressors=None, fill_value=0,
            )
            for start in range(0, n, per_shard):
                batch = frames[start : start + per_shard]
                decoded = [cv2.imdecode(np.frombuffer(f, np.uint8), _RGB) for f in batch]
                array[start : start + len(batch)] = np.stack(decoded)

        def file_copy() -> None:
            with open(work / f"c{next(runs)}.bin", "wb") as out:
                for frame in frames:
                    out.write(frame)
                out.flush()
                os.fsync(out.fileno())

        passthrough_rate = best_rate(n, passthrough, args.repeats)
        synced_rate = best_rate(n, lambda: passthrough(True), args.repeats)
        reencode_rate = best_rate(n, reencode, max(1, args.repeats - 2))
        copy_rate = best_rate(n, file_copy, args.repeats)
        print("\nwrite (frames/s)")
        print(f"  {'(a) passthrough write_jpeg_frames':40s} {passthrough_rate:10,.0f}")
        print(f"  {'(a+fsync) passthrough + fsync shards':40s} {synced_rate:10,.0f}")
        print(f"  {'(b) zarr decode + re-encode':40s} {reencode_rate:10,.0f}")
        print(f"  {'(c) one-file copy + fsync':40s} {copy_rate:10,.0f}")
        print(f"  (a)/(c) = {passthrough_rate / copy_rate:.2f}   (a)/(b) = {passthrough_rate / reencode_rate:.1f}   "
              f"(a+fsync)/(c) = {synced_rate / copy_rate:.2f}")

        root = work / "read.zarr"
        array = write_jpeg_frames(zarr.open_group(root, mode="w"), "cam", frames, height, width,
                                  frames_per_shard=per_shard)
        rng = np.random.default_rng(1)
        batches = [rng.integers(0, n, args.batch) for _ in range(max(1, n // args.batch))]
        windows = [np.arange(s, s + args.batch) for s in rng.integers(0, n - args.batch, max(1, n // args.batch))]
        singles = rng.integers(0, n, min(n, 256))
        total = len(batches) * args.batch

        # Each loop drops its result: keeping hundreds of fresh 1 MB frames alive
        # would time the kernel's page faults, not the reads.
        def each(items: object, read_one: Callable[[object], object]) -> Callable[[], None]:
            def run() -> None:
                for item in items:  # type: ignore[attr-defined]
                    read_one(item)

            return run

        read = {
            f"read_frames, random batches of {args.batch}": best_rate(
                total, each(batches, lambda b: read_frames(array, b)), args.repeats),
            f"read_frames, windows of {args.batch}": best_rate(
                total, each(windows, lambda w: read_frames(array, w)), args.repeats),
            "array[i], one by one": best_rate(len(singles), each(singles, lambda i: array[int(i)]), args.repeats),
            "cv2.imdecode alone (decode limit)": best_rate(
                len(singles), each(singles, lambda i: cv2.imdecode(np.frombuffer(frames[i], np.uint8), _RGB)),
                args.repeats),
        }
        print("\nread (frames/s, page cache warm)")
        for name, rate in read.items():
            print(f"  {name:40s} {rate:10,.0f}")
        rates = list(read.values())
        print(f"  read_frames random / array[i] = {rates[0] / rates[2]:.2f}   "
              f"read_frames random / decode limit = {rates[0] / rates[3]:.2f}   "
              f"array[i] / decode limit = {rates[2] / rates[3]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the clean stage's exposure and blur scan costs, against the stage without it.

    python tools/bench_clean.py                  # a 20 s Unitree G1 episode, three 640x480 cameras
    python tools/bench_clean.py --seconds 60

Records a simulated episode straight into a raw file, aligns it, and times
``clean_aligned`` (best of ``--repeats``) with the default configuration and
with the image scan switched off (``image_scan_s`` beyond the episode), in
the same run: the ratio is the figure to compare between runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.processing.align import align  # noqa: E402
from pipeline.processing.clean import CleanConfig, clean_aligned, clean_raw  # noqa: E402
from pipeline.processing.episode import load_raw_episode  # noqa: E402
from pipeline.raw_builder import simulate_episode  # noqa: E402
from pipeline.robot_config import load_robot_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = simulate_episode(Path(work), load_robot_config("unitree_g1"), seconds=args.seconds, seed=3)
        raw = load_raw_episode(path)
    ep = align(clean_raw(raw)[0])
    frames = sum(len(c.jpeg) for c in raw.cameras.values())

    def best(config: CleanConfig) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            clean_aligned(ep, config)
            times.append(time.perf_counter() - start)
        return min(times) / frames * 1e3

    without = best(CleanConfig(image_scan_s=1e9))
    full = best(CleanConfig())
    sizes = ", ".join(f"{c.width}x{c.height}" for c in raw.cameras.values())
    print(f"{frames} frames ({sizes}), {args.seconds:g} s at {ep.rate_hz:g} Hz")
    print(f"clean_aligned without the image scan: {without:.3f} ms per frame")
    print(f"clean_aligned with it (default):       {full:.3f} ms per frame  (ratio {full / without:.2f})")


if __name__ == "__main__":
    main()

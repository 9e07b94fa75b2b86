"""Speed of `refinery import lerobot`, against decoding the same videos alone (the part it cannot avoid).

    python -m tools.bench_import_lerobot SRC_DIR [--repeats 2]

SRC_DIR is a LeRobot dataset; a larger one than the test fixture is written by
``tools/make_lerobot_fixture.py /tmp/lr-bench --bench 4,300,640x480,30`` (in
the LeRobot venv). Both are measured in the same run, best of ``--repeats``:

* baseline: PyAV decodes every video file of the dataset front to back to RGB
  arrays, nothing else;
* import: :func:`import_lerobot` into a fresh folder (rows, decoding, JPEG
  encoding, journal, sealing with its checksum).

Prints camera frames per second of each and the ratio of the times.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.interop.lerobot_import import import_lerobot


def decode_all(src: Path) -> int:
    """Decode every video of the dataset to RGB; the number of frames."""
    import av

    frames = 0
    for path in sorted(src.glob("videos/**/*.mp4")):
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                frame.to_ndarray(format="rgb24")
                frames += 1
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a LeRobot dataset folder")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    decode_s, import_s, frames, imported = [], [], 0, 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        frames = decode_all(args.src)
        decode_s.append(time.perf_counter() - start)
        work = Path(tempfile.mkdtemp(prefix="bench-lerobot-"))
        try:
            start = time.perf_counter()
            result = import_lerobot(args.src, work, start_ns=0)
            import_s.append(time.perf_counter() - start)
            imported = len(result.imported)
        finally:
            shutil.rmtree(work)
    best_decode, best_import = min(decode_s), min(import_s)
    print(f"{args.src}: {imported} episodes, {frames} camera frames")
    print(f"decode alone (baseline): {best_decode:.2f} s, {frames / best_decode:.0f} frames/s")
    print(f"import:                  {best_import:.2f} s, {frames / best_import:.0f} frames/s")
    print(f"import / decode time:    {best_import / best_decode:.2f}")


if __name__ == "__main__":
    main()

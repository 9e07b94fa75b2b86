"""Peak memory of sealing a large episode journal into its HDF5 file.

    python tools/bench_seal.py                 # a 1 GB journal
    python tools/bench_seal.py --gb 4          # the issue's goal: a 4 GB journal under 300 MB RSS

Builds a journal as the ingest writes it for a Unitree G1 (29 joints: joint
states at 500 Hz in batches of 10, actions at 250 Hz, three cameras at 30 fps
with 69 kB frames, clock-sync samples every 0.5 s, start and stop events), then
seals it in a fresh subprocess and prints that process's peak RSS (``VmHWM``)
next to its RSS before sealing (interpreter, numpy, h5py, zmq), the seal time
and the file's size; the sealed file is verified (checksum, row counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.journal import JOURNAL_SUFFIX, EpisodeJournal, EpisodeMeta  # noqa: E402
from pipeline.robot_config import load_robot_config  # noqa: E402
from tools.g1_records import G1Episode, Message  # noqa: E402

ROBOT_ID = "g1-bench"
EPISODE = "g1-bench-ep"


def build_journal(data_dir: Path, target_bytes: int) -> tuple[Path, dict[str, int]]:
    """Write a G1 journal of about ``target_bytes``; return its path and rows per stream."""
    config = load_robot_config(ROOT / "robots" / "configs" / "unitree_g1.yaml")
    path = data_dir / "journal" / ROBOT_ID / f"{EPISODE}{JOURNAL_SUFFIX}"
    meta = EpisodeMeta(ROBOT_ID, EPISODE, config.model, config.digest, config.to_dict(), time.time_ns())
    journal = EpisodeJournal.create(path, meta)
    source = G1Episode(ROBOT_ID, EPISODE, config)

    def put(message: Message) -> None:
        record, frames = message
        journal.append(record.header.capture_ns + 100_000, frames, record)

    put(source.start())
    while journal.path.stat().st_size < target_bytes:
        for message in source.tick():
            put(message)
    put(source.stop())
    journal.close()
    return path, source.rows


_CHILD = r"""
import json, sys, time
from pathlib import Path
from pipeline.raw_store import raw_path, seal_journal

def status_mb(field):
    # VmHWM is this process's own peak; ru_maxrss would include the image it was forked from
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
journal, data_dir = Path(sys.argv[1]), Path(sys.argv[2])
before = status_mb("VmRSS")
t = time.perf_counter()
out = seal_journal(journal, raw_path(data_dir, "g1-bench", "g1-bench-ep"))
seconds = time.perf_counter() - t
print(json.dumps({"before_mb": before, "peak_mb": status_mb("VmHWM"), "seconds": seconds, "out": str(out)}))
"""


def seal_in_subprocess(journal: Path, data_dir: Path) -> dict[str, float | str]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(journal), str(data_dir)],
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_sealed(path: Path, rows: dict[str, int]) -> None:
    from pipeline.raw_store import RawEpisodeReader, verify_episode

    if not verify_episode(path).ok:
        raise SystemExit(f"{path}: checksum does not verify")
    with RawEpisodeReader(path) as ep:
        n = ep.numeric("joint_state")["source_index"].size  # reads one column, not the episode
        if n != rows["joint_state"]:
            raise SystemExit(f"{path}: {n} joint rows, journal had {rows['joint_state']}")
        for camera in ep.camera_names:
            if ep.frame_count(camera) != rows["frames"]:
                raise SystemExit(f"{path}: camera {camera} has {ep.frame_count(camera)} frames, expected {rows['frames']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="journal size in GB (default: %(default)s)")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--no-verify", action="store_true", help="skip re-reading the sealed file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-seal-", dir=args.dir) as tmp:
        data_dir = Path(tmp)
        t = time.perf_counter()
        journal, rows = build_journal(data_dir, int(args.gb * 1e9))
        size = journal.stat().st_size
        print(f"journal: {size / 1e9:.2f} GB ({rows['joint_state']:,} joint rows, "
              f"{rows['frames']:,} frames per camera) built in {time.perf_counter() - t:.1f} s")
        result = seal_in_subprocess(journal, data_dir)
        out = Path(str(result["out"]))
        print(f"sealed in {result['seconds']:.1f} s -> {out.stat().st_size / 1e9:.2f} GB HDF5")
        print(f"sealing process RSS: {result['before_mb']:.0f} MB before, peak {result['peak_mb']:.0f} MB "
              f"(journal {size / 1e9:.2f} GB)")
        if not args.no_verify:
            check_sealed(out, rows)
            print("sealed file verified (checksum, joint rows, frames per camera)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

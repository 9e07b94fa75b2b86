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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import protocol  # noqa: E402
from pipeline.journal import JOURNAL_SUFFIX, EpisodeJournal, EpisodeMeta  # noqa: E402
from pipeline.robot_config import load_robot_config  # noqa: E402

ROBOT_ID = "g1-bench"
EPISODE = "g1-bench-ep"
FRAME_BYTES = 69_000


def build_journal(data_dir: Path, target_bytes: int) -> tuple[Path, dict[str, int]]:
    """Write a G1 journal of about ``target_bytes``; return its path and rows per stream."""
    config = load_robot_config(ROOT / "robots" / "configs" / "unitree_g1.yaml")
    dof = config.dof
    cameras = [c.name for c in config.cameras]
    path = data_dir / "journal" / ROBOT_ID / f"{EPISODE}{JOURNAL_SUFFIX}"
    meta = EpisodeMeta(ROBOT_ID, EPISODE, config.model, config.digest, config.to_dict(), time.time_ns())
    journal = EpisodeJournal.create(path, meta)
    rng = np.random.default_rng(0)
    jpeg = b"\xff\xd8" + rng.integers(0, 256, FRAME_BYTES - 4, dtype=np.uint8).tobytes() + b"\xff\xd9"
    seqs: dict[str, int] = {}
    rows = {"joint_state": 0, "action": 0, "frames": 0}

    def put(record: protocol.DataRecord, frames: list[bytes] | None = None) -> None:
        journal.append(record.header.capture_ns + 100_000, frames or record.encode(), record)
        seqs[record.header.stream] = record.header.seq + 1

    def header(stream: str, t: int, index: int = 0) -> protocol.DataHeader:
        return protocol.DataHeader(ROBOT_ID, EPISODE, stream, seqs.get(stream, 0), t, index)

    t0 = 1_800_000_000_000_000_000
    put(protocol.Event(header("events", t0), {"kind": "start", "task": "bench", "operator": "op"}))
    tick = 0  # 20 ms steps: 10 joint rows, 5 action rows, 0.6 frames per camera
    js_values = rng.standard_normal((10, 3 * dof))
    action_values = rng.standard_normal((5, dof))
    while journal.path.stat().st_size < target_bytes:
        t = t0 + tick * 20_000_000
        k = rows["joint_state"]
        put(protocol.Samples.build(ROBOT_ID, EPISODE, "joint_state", seqs.get("joint_state", 0),
                                   t + np.arange(10) * 2_000_000, np.arange(k, k + 10), js_values))
        rows["joint_state"] += 10
        k = rows["action"]
        put(protocol.Samples.build(ROBOT_ID, EPISODE, "action", seqs.get("action", 0),
                                   t + np.arange(5) * 4_000_000, np.arange(k, k + 5), action_values))
        rows["action"] += 5
        if tick % 5 in (0, 2, 4):  # 3 frames per 100 ms = 30 fps
            for camera in cameras:
                h = header(camera, t, seqs.get(camera, 0))
                put(protocol.Frame(h, jpeg), [h.pack(protocol.Opcode.FRAME), jpeg])
            rows["frames"] += 1
        if tick % 25 == 0:
            put(protocol.ClockSample(header("clock", t), t, t + 100_000, t + 120_000, t + 220_000))
        tick += 1
    last = {s: q - 1 for s, q in seqs.items()}
    last["events"] = seqs["events"]
    put(protocol.Event(header("events", t0 + tick * 20_000_000),
                       {"kind": "stop", "outcome": "success", "last_seq": last}))
    journal.close()
    return path, rows


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

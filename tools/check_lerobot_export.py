"""Check the LeRobot export with the real consumer: lerobot's own LeRobotDataset.

    python -m tools.check_lerobot_export [--venv DIR] [--python PY312] [--keep]

lerobot 0.6.x needs Python >= 3.12; Refinery runs on 3.11. This script

1. builds (or reuses) a Python 3.12 venv holding ``lerobot[dataset]==0.6.1``
   (default ``~/.cache/refinery/lerobot-py312``; ``--venv`` chooses another).
   The interpreter is ``--python``, else ``python3.12`` on PATH, else the newest
   ``~/.pyenv/versions/3.12*``. A fresh install downloads torch from PyPI
   (about 2.5 min and 3 GB here, CUDA wheels included); a venv that already
   imports lerobot 0.6.1 is reused as it is (a few seconds);
2. in this environment, simulates three episodes of the test robot (two
   tasks), processes them into a dataset on an embedded Ray and exports
   it twice: H.264 with the default file sizes, and AV1 (libsvtav1) with tiny
   file-size limits, so episodes spread over several data and video files and
   most episodes start inside a video file (``from_timestamp`` > 0). For every
   export it writes what LeRobot must return, taken from Refinery's own
   loader: ``EpisodeDataset`` with the same ``delta_timestamps`` (state
   history, action horizon, two frames per camera) at every step of every
   episode;
3. in the lerobot venv, opens each export with
   ``LeRobotDataset(repo_id, root=OUT, delta_timestamps=...)`` with the default
   video backend (torchcodec where it loads, else PyAV) and with ``pyav``, and
   for every step compares states, actions and their ``_is_pad`` masks
   exactly, the task text and the episode's ``refinery/episode_key``, and
   every frame against the dataset's stored JPEG decoded: PSNR at least
   :data:`MIN_PSNR_DB` per frame. It also checks ``meta/stats.json`` against
   the data (count, min, max, quantile keys) and that ``len(dataset)`` is the
   number of steps. The simulated camera moves little between steps
   (neighbouring frames differ by 23-44 dB, as much as a video frame differs
   from its JPEG), so each episode's frames must also match their own steps
   better, on average, than the steps one before or after: an episode one
   frame off fails even where every PSNR would pass. A copy of the first
   export with one episode's ``from_timestamp`` moved by a frame must fail.

Prints one line per export and backend with the number of windows and frames
compared and the lowest PSNR, and exits 0 only when every check passed and
each run compared every window (a run that compares nothing fails).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LEROBOT_REQUIREMENT = "lerobot[dataset]==0.6.1"
LEROBOT_VERSION = "0.6.1"
DEFAULT_VENV = Path.home() / ".cache" / "refinery" / "lerobot-py312"
MIN_PSNR_DB = 26.0
"""Lowest PSNR of a decoded video frame against the stored JPEG decoded (8-bit RGB).

The test robot's 64x48 frames are nearly all edges, the hardest case for a
video codec: their lowest PSNR measured 27.2-29.3 dB (H.264, crf 23) and
30.8-31.4 dB (AV1, crf 30) over several runs; 640x480 frames measure 36-38 dB
(tools/bench_lerobot_export.py)."""
STATE_OFFSETS = (-2, -1, 0)  # steps, times 1/fps in delta_timestamps
ACTION_OFFSETS = (0, 1, 2, 3)
CAMERA_OFFSETS = (-1, 0)

# Runs inside the lerobot venv: open the export the way a LeRobot training script does.
LEROBOT_READER = r'''
import json
import sys

import numpy as np
import torch
import lerobot
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, expected_path, backend, min_psnr = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
expected = np.load(expected_path)
spec = json.loads(str(expected["spec"]))
passed, failed = 0, []


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failed.append(what)


fps = spec["fps"]
delta = {spec["state"]: [s / fps for s in spec["state_offsets"]], spec["action"]: [s / fps for s in spec["action_offsets"]]}
for camera in spec["cameras"]:
    delta[camera] = [s / fps for s in spec["camera_offsets"]]
ds = LeRobotDataset("refinery/check", root=root, delta_timestamps=delta, video_backend=None if backend == "default" else backend)
used = ds._video_backend
check(len(ds) == spec["frames"], f"len(dataset) {len(ds)} != {spec['frames']} steps")
check(ds.meta.total_episodes == len(spec["episode_keys"]), f"total_episodes {ds.meta.total_episodes}")
check(ds.fps == fps, f"fps {ds.fps} != {fps}")
keys = [ds.meta.episodes[i]["refinery/episode_key"] for i in range(ds.meta.total_episodes)]
check(keys == spec["episode_keys"], f"episode order {keys} != {spec['episode_keys']}")

def psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


windows = frames = 0
lowest = float("inf")
current = {}  # (episode, camera) -> step -> the frame LeRobot returned for that step
for n, index in enumerate(expected["indices"].tolist()):
    item = ds[index]
    where = f"{backend} index {index}"
    check(int(item["index"]) == index, f"{where}: index {int(item['index'])}")
    check(int(item["episode_index"]) == int(expected["episode_index"][n]), f"{where}: episode_index")
    check(int(item["frame_index"]) == int(expected["step"][n]), f"{where}: frame_index")
    check(item["task"] == str(expected["task"][n]), f"{where}: task {item['task']!r}")
    for name in (spec["state"], spec["action"]):
        got = item[name].numpy()
        want = expected[f"{name}:values"][n]
        check(got.dtype == want.dtype and np.array_equal(got, want), f"{where}: {name} differs from EpisodeDataset")
        check(np.array_equal(item[f"{name}_is_pad"].numpy(), expected[f"{name}:is_pad"][n]), f"{where}: {name}_is_pad")
    episode = int(expected["episode_index"][n])
    first, end = spec["starts"][episode], spec["starts"][episode + 1]
    for camera in spec["cameras"]:
        got = item[camera]  # float32 (T, 3, H, W) in [0, 1]
        want = expected[f"{camera}:frames"][n]  # uint8 (T, H, W, 3): the stored JPEGs decoded, by EpisodeDataset
        every = expected[f"{camera}:all"]  # every step's stored frame, in LeRobot's index order
        pixels = (got * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        check(pixels.shape == want.shape, f"{where}: {camera} shape {pixels.shape} != {want.shape}")
        if pixels.shape != want.shape:
            continue
        for t, offset in enumerate(spec["camera_offsets"]):
            score = psnr(pixels[t], want[t])
            lowest = min(lowest, score)
            frames += 1
            check(score >= min_psnr, f"{where}: {camera} frame {t} PSNR {score:.1f} dB < {min_psnr} dB")
            if offset == 0:
                current.setdefault((episode, camera), {})[index - first] = pixels[t]
        check(np.array_equal(item[f"{camera}_is_pad"].numpy(), expected[f"{camera}:is_pad"][n]), f"{where}: {camera}_is_pad")
    windows += 1

# Neighbouring frames of the sim differ by only 23-44 dB, about as much as a video
# frame differs from its JPEG, so alignment is judged per episode: the frames
# returned must match their own steps better than the steps one before or after.
for (episode, camera), by_step in current.items():
    first, end = spec["starts"][episode], spec["starts"][episode + 1]
    got = np.stack([by_step[s] for s in range(end - first)]).astype(np.float64)
    own = expected[f"{camera}:all"][first:end].astype(np.float64)
    same = float(np.mean((got - own) ** 2))
    early = float(np.mean((got[1:] - own[:-1]) ** 2))
    late = float(np.mean((got[:-1] - own[1:]) ** 2))
    check(len(by_step) == end - first and same < min(early, late),
          f"episode {episode} {camera}: frames match their steps with MSE {same:.1f}, one step off "
          f"{early:.1f} (earlier) / {late:.1f} (later): the video is out of step")

stats = ds.meta.stats
for name in (spec["state"], spec["action"]):
    values = expected[f"{name}:all"]
    s = stats[name]
    check(int(s["count"][0]) == len(values), f"stats {name} count {s['count']}")
    check(np.allclose(s["min"], values.min(axis=0)) and np.allclose(s["max"], values.max(axis=0)), f"stats {name} min/max")
    check(np.allclose(s["mean"], values.mean(axis=0), atol=1e-5), f"stats {name} mean")
    check(all(q in s for q in ("q01", "q10", "q50", "q90", "q99")), f"stats {name} quantiles {sorted(s)}")
for camera in spec["cameras"]:
    check(tuple(stats[camera]["mean"].shape) == (3, 1, 1), f"stats {camera} mean shape {stats[camera]['mean'].shape}")

check(windows == len(expected["indices"]) and windows > 0, f"compared {windows} windows of {len(expected['indices'])}")
check(frames > 0 or not spec["cameras"], "compared no frames")
# Alignment failures first (one per episode and camera), then the first others.
shown = [w for w in failed if "out of step" in w] + [w for w in failed if "out of step" not in w][:20]
for what in shown:
    print(f"FAILED {root}: {what}")
print(f"{root} [{spec['label']}] lerobot {lerobot.__version__}, video backend {used}: {windows} windows, {frames} frames "
      f"(lowest PSNR {lowest:.1f} dB), {passed} checks passed, {len(failed)} failed")
sys.exit(1 if failed or windows == 0 else 0)
'''


def find_python312(explicit: str | None = None) -> str | None:
    """A Python 3.12 interpreter: ``explicit``, ``python3.12`` on PATH, or the newest
    ``~/.pyenv/versions/3.12*``; one that runs (a pyenv shim on PATH for a version
    pyenv does not have selected exits 127)."""
    if explicit:
        return explicit
    candidates = [shutil.which("python3.12")]
    candidates += reversed(sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))))
    return next((c for c in candidates if c and _is_python312(c)), None)


def _is_python312(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"],
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def lerobot_ready(python: Path) -> bool:
    """The venv imports lerobot 0.6.1 with its dataset extra."""
    if not python.exists():
        return False
    probe = ("import lerobot, datasets, av, pandas; from lerobot.datasets.lerobot_dataset import LeRobotDataset; "
             f"assert lerobot.__version__ == {LEROBOT_VERSION!r}, lerobot.__version__")
    return subprocess.run([str(python), "-c", probe], capture_output=True, check=False).returncode == 0


def make_lerobot_env(where: Path, interpreter: str) -> Path:
    """The venv's python, after installing lerobot into it unless it already imports."""
    python = where / "bin" / "python"
    if lerobot_ready(python):
        return python
    if not python.exists():
        subprocess.run([interpreter, "-m", "venv", str(where)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    LEROBOT_REQUIREMENT], check=True)
    if not lerobot_ready(python):
        raise SystemExit(f"{where}: lerobot {LEROBOT_VERSION} does not import after installing {LEROBOT_REQUIREMENT}")
    return python


def make_exports(work: Path) -> list[tuple[Path, Path]]:
    """A small processed dataset, two exports of it, and what LeRobot must return for each."""
    import dataclasses

    import numpy as np

    from pipeline.dataset.loader import EpisodeDataset
    from pipeline.dataset.store import Dataset, create_dataset
    from pipeline.interop.lerobot_export import VideoSettings, export_lerobot
    from pipeline.process_job import JobOptions, run_process_job
    from pipeline.processing.config import ProcessConfig
    from pipeline.raw_builder import simulate_episode
    from pipeline.robot_config import load_robot_config

    config = load_robot_config(Path(__file__).resolve().parents[1] / "tests" / "data" / "robots" / "tiny_humanoid.yaml")
    for i, task in enumerate(["wave", "point", "wave"]):
        simulate_episode(work / "raw", config, robot_id=f"tiny-{i}", seconds=1.5, seed=i + 1, task=task)
    dataset = work / "dataset.zarr"
    create_dataset(dataset, val_fraction=0.5)
    process = ProcessConfig()
    process = process.replace(output=dataclasses.replace(process.output, frames_per_shard=32))
    run_process_job(JobOptions(raw_dir=work / "raw", dataset=dataset, config=process, num_cpus=1))
    print(f"dataset: {len(Dataset(dataset).index.entries())} episodes")

    exports = [
        ("h264, default file sizes", work / "lerobot-h264", VideoSettings("h264"), {}),
        ("libsvtav1, small files", work / "lerobot-av1", VideoSettings("libsvtav1"),
         {"data_file_size_mb": 0.005, "video_file_size_mb": 0.03}),
    ]
    runs = []
    for label, out, video, sizes in exports:
        summary = export_lerobot(dataset, out, video=video, **sizes)
        if sizes and min(summary.files.values()) < 2:
            raise SystemExit(f"{out}: the file-size limits {sizes} left one file of a kind ({summary.files}): "
                             "the roll-over to new files is not exercised")
        fps = summary.fps
        cameras = sorted(k for k in summary.keys if k.startswith("cameras/"))
        delta = {"state/position": [s / fps for s in STATE_OFFSETS], "action/position": [s / fps for s in ACTION_OFFSETS]}
        delta.update({k: [s / fps for s in CAMERA_OFFSETS] for k in cameras})
        loader = EpisodeDataset(dataset, keys=["state/position", "action/position", *cameras], delta_timestamps=delta)
        position = {e.key: n for n, e in enumerate(loader.episodes)}
        ordered = [loader.episodes[position[k]] for k in summary.episode_keys]  # LeRobot's episode order
        starts = np.cumsum([0] + [e.length for e in ordered])  # LeRobot's index of each episode's first step
        loader_starts = np.cumsum([0] + [e.length for e in loader.episodes])
        expected: dict[str, list] = {"indices": [], "episode_index": [], "step": [], "task": []}
        names = {k: summary.keys[k] for k in ["state/position", "action/position", *cameras]}
        for episode_index, entry in enumerate(ordered):
            for step in range(entry.length):
                sample = loader[int(loader_starts[position[entry.key]]) + step]
                expected["indices"].append(int(starts[episode_index]) + step)
                expected["episode_index"].append(episode_index)
                expected["step"].append(step)
                expected["task"].append(entry.task)
                for k, name in names.items():
                    expected.setdefault(f"{name}:values" if not k.startswith("cameras/") else f"{name}:frames", []).append(
                        sample[k])
                    expected.setdefault(f"{name}:is_pad", []).append(sample[f"{k}_is_pad"])
        arrays = {k: np.asarray(v) for k, v in expected.items()}
        for k in cameras:  # every step's own frame (offset 0 is the window's last)
            arrays[f"{names[k]}:all"] = arrays[f"{names[k]}:frames"][:, -1]
        source = Dataset(dataset)
        for k in ("state/position", "action/position"):
            arrays[f"{names[k]}:all"] = np.concatenate([source.numeric(e, k) for e in ordered]).astype(np.float64)
        spec = {
            "label": label, "fps": fps, "frames": summary.frames, "episode_keys": list(summary.episode_keys),
            "starts": [int(v) for v in starts],
            "state": names["state/position"], "action": names["action/position"],
            "cameras": [names[k] for k in cameras], "state_offsets": STATE_OFFSETS,
            "action_offsets": ACTION_OFFSETS, "camera_offsets": CAMERA_OFFSETS,
        }
        arrays["spec"] = np.array(json.dumps(spec))
        path = out.with_name(out.name + ".expected.npz")
        np.savez(path, **arrays)
        files = ", ".join(f"{name} {count}" for name, count in summary.files.items())
        print(f"exported {out.name} ({label}): {summary.episodes} episodes, {summary.frames} frames; files: {files}")
        runs.append((out, path))
    return runs


def _tampered(run: tuple[Path, Path]) -> tuple[Path, Path]:
    """A copy of an export whose second episode's videos start one frame late (what the checks must catch)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, expected = run
    bad = out.with_name(out.name + "-tampered")
    shutil.copytree(out, bad)
    fps = json.loads((bad / "meta" / "info.json").read_text())["fps"]
    for path in sorted((bad / "meta" / "episodes").glob("*/*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            if name.endswith("/from_timestamp"):
                values = table[name].to_pylist()
                values = [v + 1 / fps if i == 1 else v for i, v in enumerate(values)]
                table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.float64()))
        pq.write_table(table, path)
    return bad, expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="lerobot venv to create or reuse (default: %(default)s)")
    parser.add_argument("--python", help="a Python 3.12 interpreter to build the venv with")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and print its path")
    args = parser.parse_args(argv)
    started = time.monotonic()
    interpreter = find_python312(args.python)
    if interpreter is None and not (args.venv / "bin" / "python").exists():
        print("no Python 3.12 found (python3.12 on PATH or ~/.pyenv/versions/3.12*): pass --python", file=sys.stderr)
        return 2
    python = make_lerobot_env(args.venv, interpreter or "")
    print(f"lerobot environment ready in {time.monotonic() - started:.0f} s: {args.venv} ({LEROBOT_REQUIREMENT})")
    work = Path(tempfile.mkdtemp(prefix="lerobot-check-"))
    try:
        runs = make_exports(work / "data")
        reader = work / "lerobot_reader.py"
        reader.write_text(LEROBOT_READER)
        runs.append(_tampered(runs[0]))
        failures = total = 0
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HOME": str(work / "hf-home"), "HF_LEROBOT_HOME": str(work / "lerobot-home")}
        env.pop("PYTHONPATH", None)
        checks = [(out, expected, backend) for out, expected in runs
                  for backend in (("default",) if out.name.endswith("-tampered") else ("default", "pyav"))]

        def read(check: tuple[Path, Path, str]) -> subprocess.CompletedProcess:
            out, expected, backend = check
            return subprocess.run([str(python), str(reader), str(out), str(expected), backend, str(MIN_PSNR_DB)],
                                  check=False, env=env, capture_output=True, text=True)

        # Each reader is a process of its own (mostly one core each): two at a time.
        with ThreadPoolExecutor(max_workers=2) as pool:
            for (out, _, _), done in zip(checks, pool.map(read, checks), strict=True):
                total += 1
                if out.name.endswith("-tampered"):
                    # The same export with one episode's video span moved by a frame: the checks must see it.
                    refused = done.returncode != 0 and "the video is out of step" in done.stdout
                    print(f"{out.name}: a video span one frame off is {'refused' if refused else 'NOT refused'}")
                    failures += not refused
                else:
                    print(done.stdout, end="")
                    print(done.stderr[-4000:] if done.returncode else "", end="", file=sys.stderr)
                    failures += done.returncode != 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{total - failures} passed, {failures} failed ({time.monotonic() - started:.0f} s)")
    return 1 if failures or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

"""Write a tiny LeRobotDataset with LeRobot's own writer: the import tests' fixture.

Runs in a Python >= 3.12 venv with ``lerobot[dataset]==0.6.1`` (not in
Refinery's venv: LeRobot needs a newer Python), e.g.::

    python3.12 -m venv /tmp/lerobot && /tmp/lerobot/bin/pip install 'lerobot[dataset]==0.6.1'
    /tmp/lerobot/bin/python tools/make_lerobot_fixture.py tests/data/lerobot-v3-tiny

Three episodes of 2-2.8 s at 15 fps, an SO-100-like arm (5 joints and a
gripper: state and action), two 64x48 cameras whose pictures move with the
joints (so the frames differ, and an import that mixes them up shows).
``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize``
write it exactly as a LeRobot recording would (v3.0 layout, AV1 videos with
many episodes per file). The output is committed under ``tests/data/`` so the
tests need no LeRobot; rerun this script only to refresh it.

``--v21 DIR`` also writes the same episodes in LeRobot's previous layout
(v2.1: one Parquet and one video file per episode, ``meta/*.jsonl``). LeRobot
0.6 has no v2.1 writer, so the layout is written here (videos by LeRobot's
own ``encode_video_frames``) and then checked with LeRobot's own converter
(``convert_dataset_v21_to_v30``): a copy is converted to v3.0 and opened with
``LeRobotDataset``, which must give the same rows as the v3.0 dataset.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos",
          "gripper.pos"]
FPS = 15
HEIGHT, WIDTH = 48, 64
EPISODES = ((30, "pick up the red cube"), (36, "put the cube in the bowl"), (42, "pick up the red cube"))


def features(height: int = HEIGHT, width: int = WIDTH) -> dict:
    image = {"dtype": "video", "shape": (height, width, 3), "names": ["height", "width", "channels"]}
    return {
        "observation.state": {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS},
        "action": {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS},
        "observation.images.front": image,
        "observation.images.wrist": dict(image),
    }


def picture(t: float, phase: float, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth colour gradient with a bright square moving with time: compresses well, never frozen."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([
        128 + 100 * np.sin(x / 9.0 + 2 * t + phase),
        128 + 100 * np.cos(y / 7.0 + 3 * t),
        96 + 60 * np.sin((x + y) / 13.0 - t + phase),
    ], axis=-1)
    cx = int((width - 12) * (0.5 + 0.5 * np.sin(1.5 * t + phase)))
    cy = int((height - 12) * (0.5 + 0.5 * np.cos(1.1 * t)))
    rgb[cy:cy + 12, cx:cx + 12] = (250, 250, 40)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_v21(v3: Path, out: Path) -> None:
    """The dataset ``v3`` in the v2.1 layout, videos encoded by LeRobot from the same pictures."""
    import pyarrow.parquet as pq
    from lerobot.datasets.video_utils import encode_video_frames
    from PIL import Image

    if out.exists():
        shutil.rmtree(out)
    info = json.loads((v3 / "meta/info.json").read_text())
    cameras = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    info.update(codebase_version="v2.1", total_chunks=1, total_videos=len(EPISODES) * len(cameras),
                data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    for key in ("data_files_size_in_mb", "video_files_size_in_mb"):
        info.pop(key)
    (out / "meta").mkdir(parents=True)
    (out / "meta/info.json").write_text(json.dumps(info, indent=4))
    tasks = pq.read_table(v3 / "meta/tasks.parquet").to_pylist()
    (out / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": t["task_index"], "task": t["task"]}) + "\n"
                                                  for t in tasks))
    table = pq.read_table(v3 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    episodes, stats = [], []
    for row in table:
        episodes.append({"episode_index": row["episode_index"], "tasks": row["tasks"], "length": row["length"]})
        per_feature: dict = {}
        for column, value in row.items():
            if column.startswith("stats/"):
                feature, stat = column[len("stats/"):].rsplit("/", 1)
                per_feature.setdefault(feature, {})[stat] = value
        stats.append({"episode_index": row["episode_index"], "stats": per_feature})
    (out / "meta/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (out / "meta/episodes_stats.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stats))
    data = pq.read_table(v3 / "data/chunk-000/file-000.parquet")
    episode_of_row = data.column("episode_index").to_pylist()
    (out / "data/chunk-000").mkdir(parents=True)
    for episode, (length, _) in enumerate(EPISODES):
        first = episode_of_row.index(episode)
        pq.write_table(data.slice(first, length), out / f"data/chunk-000/episode_{episode:06d}.parquet")
        with tempfile.TemporaryDirectory() as tmp:
            for key, draw in zip(cameras, (front_picture, wrist_picture), strict=True):
                frames = Path(tmp) / key
                frames.mkdir()
                for i in range(length):
                    Image.fromarray(draw(i / FPS, episode)).save(frames / f"frame-{i:06d}.png")
                video = out / f"videos/chunk-000/{key}/episode_{episode:06d}.mp4"
                video.parent.mkdir(parents=True, exist_ok=True)
                encode_video_frames(frames, video, FPS)


def check_v21(v21: Path, v3: Path) -> None:
    """LeRobot's converter reads the v2.1 copy; the result holds the same rows as the v3.0 dataset."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.scripts.convert_dataset_v21_to_v30 import convert_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "converted"
        shutil.copytree(v21, root)
        convert_dataset("refinery/tiny-so100", root=root, push_to_hub=False)
        converted = LeRobotDataset("refinery/tiny-so100", root=root)
        original = LeRobotDataset("refinery/tiny-so100", root=v3)
        assert converted.num_episodes == original.num_episodes and converted.num_frames == original.num_frames
        for i in (0, 31, len(original) - 1):
            a, b = converted[i], original[i]
            assert np.array_equal(a["observation.state"].numpy(), b["observation.state"].numpy())
            assert a["task"] == b["task"] and float(a["timestamp"]) == float(b["timestamp"])
            assert a["observation.images.front"].shape == b["observation.images.front"].shape


def front_picture(t: float, episode: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return picture(t, 0.7 * episode, height, width)


def wrist_picture(t: float, episode: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return picture(t + 1.0, 0.7 * episode + 2.0, height, width)[:, ::-1].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the dataset folder to write (replaced)")
    parser.add_argument("--v21", type=Path, help="also write the episodes in the v2.1 layout here (replaced)")
    parser.add_argument("--bench", metavar="EPISODES,FRAMES,WxH,FPS",
                        help="a larger dataset for tools/bench_import_lerobot.py instead of the fixture, "
                             "e.g. 4,300,640x480,30")
    args = parser.parse_args()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    episodes, fps, height, width = EPISODES, FPS, HEIGHT, WIDTH
    if args.bench:
        count, frames, size, fps = args.bench.split(",")
        width, height = (int(v) for v in size.split("x"))
        episodes = tuple((int(frames), EPISODES[i % len(EPISODES)][1]) for i in range(int(count)))
        fps = int(fps)
    if args.out.exists():
        shutil.rmtree(args.out)
    dataset = LeRobotDataset.create("refinery/tiny-so100", fps=fps, features=features(height, width), root=args.out,
                                    robot_type="so100_follower", use_videos=True)
    rng = np.random.default_rng(13)
    for episode, (length, task) in enumerate(episodes):
        phase = 0.7 * episode
        for i in range(length):
            t = i / fps
            state = np.array([0.6 * np.sin(1.3 * t + phase + k) for k in range(len(JOINTS))], dtype=np.float32)
            state[-1] = 0.5 + 0.4 * np.sin(2.0 * t + phase)  # gripper opening
            action = state + rng.normal(0, 0.01, len(JOINTS)).astype(np.float32)
            dataset.add_frame({
                "observation.state": state,
                "action": action,
                "observation.images.front": front_picture(t, episode, height, width),
                "observation.images.wrist": wrist_picture(t, episode, height, width),
                "task": task,
            })
        dataset.save_episode()
    dataset.finalize()
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(episodes)} episodes, {sum(n for n, _ in episodes)} frames, {size / 1024:.0f} KiB")
    if args.v21 and not args.bench:
        write_v21(args.out, args.v21)
        check_v21(args.v21, args.out)
        size = sum(p.stat().st_size for p in args.v21.rglob("*") if p.is_file())
        print(f"{args.v21}: the same in the v2.1 layout, {size / 1024:.0f} KiB; LeRobot's converter reads it")


if __name__ == "__main__":
    main()

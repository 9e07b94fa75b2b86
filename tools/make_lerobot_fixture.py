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
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos",
          "gripper.pos"]
FPS = 15
HEIGHT, WIDTH = 48, 64
EPISODES = ((30, "pick up the red cube"), (36, "put the cube in the bowl"), (42, "pick up the red cube"))


def features() -> dict:
    image = {"dtype": "video", "shape": (HEIGHT, WIDTH, 3), "names": ["height", "width", "channels"]}
    return {
        "observation.state": {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS},
        "action": {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS},
        "observation.images.front": image,
        "observation.images.wrist": dict(image),
    }


def picture(t: float, phase: float) -> np.ndarray:
    """A smooth colour gradient with a bright square moving with time: compresses well, never frozen."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([
        128 + 100 * np.sin(x / 9.0 + 2 * t + phase),
        128 + 100 * np.cos(y / 7.0 + 3 * t),
        96 + 60 * np.sin((x + y) / 13.0 - t + phase),
    ], axis=-1)
    cx = int((WIDTH - 12) * (0.5 + 0.5 * np.sin(1.5 * t + phase)))
    cy = int((HEIGHT - 12) * (0.5 + 0.5 * np.cos(1.1 * t)))
    rgb[cy:cy + 12, cx:cx + 12] = (250, 250, 40)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the dataset folder to write (replaced)")
    args = parser.parse_args()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if args.out.exists():
        shutil.rmtree(args.out)
    dataset = LeRobotDataset.create("refinery/tiny-so100", fps=FPS, features=features(), root=args.out,
                                    robot_type="so100_follower", use_videos=True)
    rng = np.random.default_rng(13)
    for episode, (length, task) in enumerate(EPISODES):
        phase = 0.7 * episode
        for i in range(length):
            t = i / FPS
            state = np.array([0.6 * np.sin(1.3 * t + phase + k) for k in range(len(JOINTS))], dtype=np.float32)
            state[-1] = 0.5 + 0.4 * np.sin(2.0 * t + phase)  # gripper opening
            action = state + rng.normal(0, 0.01, len(JOINTS)).astype(np.float32)
            dataset.add_frame({
                "observation.state": state,
                "action": action,
                "observation.images.front": picture(t, phase),
                "observation.images.wrist": picture(t + 1.0, phase + 2.0)[:, ::-1].copy(),
                "task": task,
            })
        dataset.save_episode()
    dataset.finalize()
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(EPISODES)} episodes, {sum(n for n, _ in EPISODES)} frames, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()

"""Camera images of the simulated humanoid, drawn with OpenCV.

A stick figure whose limb angles are the joint positions, a row of bars (one
per joint, so every joint's motion shows in the pixels), a frame counter, on
a per-camera gradient with a fixed texture. The texture is there so JPEG
sizes and encode times resemble a real scene rather than a flat cartoon.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.robot_config import CameraSpec, JointSpec

# Joints grouped into limb segments by standard name; a segment turns by the
# sum of its joints' angles. Lengths are fractions of the figure height.
_LIMBS: dict[str, tuple[tuple[tuple[str, ...], float], ...]] = {
    "arm": (
        (("shoulder_pitch", "shoulder_roll", "shoulder_yaw"), 0.22),
        (("elbow",), 0.19),
        (("wrist_roll", "wrist_pitch", "wrist_yaw"), 0.07),
    ),
    "leg": (
        (("hip_pitch", "hip_roll", "hip_yaw"), 0.25),
        (("knee",), 0.24),
        (("ankle_pitch", "ankle_roll"), 0.07),
    ),
}
_TORSO = ("waist_yaw", "waist_roll", "waist_pitch")
_HEAD = ("head_yaw", "head_roll", "head_pitch")


class FrameRenderer:
    """Draws one camera's view of the figure for given joint positions.

    Args:
        camera: the camera's spec (size).
        joints: the config's joints, in order.
        camera_index: position of the camera in the config; varies the viewpoint.
        seed: varies colours and texture.
    """

    def __init__(self, camera: CameraSpec, joints: tuple[JointSpec, ...], camera_index: int, seed: int) -> None:
        self.camera = camera
        self.width, self.height = camera.width, camera.height
        rng = np.random.default_rng([seed, camera_index, 0x726E64])  # "rnd"
        self.background = _background(self.width, self.height, rng)
        self.color = tuple(int(c) for c in rng.integers(150, 256, 3))
        self.lo = np.array([j.position_min for j in joints])
        self.span = np.array([j.position_max - j.position_min for j in joints])
        index = {j.standard: i for i, j in enumerate(joints)}
        self.torso = [index[n] for n in _TORSO if n in index]
        self.head = [index[n] for n in _HEAD if n in index]
        self.limbs: list[tuple[str, str, list[tuple[list[int], float]]]] = []
        for side in ("left", "right"):
            for limb, segments in _LIMBS.items():
                chain = [([index[f"{side}_{n}"] for n in names if f"{side}_{n}" in index], length)
                         for names, length in segments]
                self.limbs.append((side, limb, chain))
        self.gripper = {side: index.get(f"{side}_gripper") for side in ("left", "right")}
        # Each camera sees the figure from a slightly different place.
        self.center_x = self.width * (0.5 + 0.12 * math.sin(1.7 * camera_index + 0.3))
        self.scale = min(self.width, self.height * 1.2) * (0.6 - 0.05 * (camera_index % 3))
        self.thickness = max(1, round(self.width / 160))
        self.font_scale = max(0.25, self.height / 480 * 0.8)

    def render(self, position: np.ndarray, frame_index: int) -> np.ndarray:
        """A BGR uint8 image of the figure at joint ``position``, labelled with ``frame_index``."""
        image = self.background.copy()
        self._draw_figure(image, position)
        self._draw_bars(image, position)
        cv2.putText(
            image, f"{self.camera.name} {frame_index:06d}", (max(2, self.width // 80), max(10, self.height // 14)),
            cv2.FONT_HERSHEY_SIMPLEX, self.font_scale, (255, 255, 255), max(1, self.thickness // 2), cv2.LINE_AA,
        )
        return image

    def _draw_figure(self, image: np.ndarray, q: np.ndarray) -> None:
        s = self.scale
        pelvis = np.array([self.center_x, self.height * 0.5])
        lean = float(q[self.torso].sum()) * 0.2 if self.torso else 0.0  # a gentle lean reads better than a fall
        up = np.array([math.sin(lean), -math.cos(lean)])
        side_dir = np.array([math.cos(lean), math.sin(lean)])
        neck = pelvis + up * 0.3 * s
        self._line(image, pelvis, neck)
        head_q = q[self.head] if self.head else np.zeros(1)
        head = neck + up * 0.08 * s + side_dir * 0.04 * s * math.sin(float(head_q.sum()))
        cv2.circle(image, _pt(head), max(2, round(0.06 * s)), self.color, self.thickness, cv2.LINE_AA)
        for side, limb, chain in self.limbs:
            sign = -1.0 if side == "left" else 1.0  # image left is the figure's right; mirror
            if limb == "arm":
                point, angle = neck + side_dir * sign * 0.1 * s, lean + math.pi / 2 - sign * 0.35
            else:
                point, angle = pelvis + side_dir * sign * 0.06 * s, lean + math.pi / 2 - sign * 0.1
            for joint_ids, length in chain:
                angle += sign * float(q[joint_ids].sum()) if joint_ids else 0.0
                end = point + np.array([math.cos(angle), math.sin(angle)]) * length * s
                self._line(image, point, end)
                point = end
            grip = self.gripper[side]
            if limb == "arm" and grip is not None:
                opening = 0.2 + 0.6 * float(np.clip((q[grip] - self.lo[grip]) / self.span[grip], 0, 1))
                for turn in (-opening, opening):
                    tip = point + np.array([math.cos(angle + turn), math.sin(angle + turn)]) * 0.05 * s
                    self._line(image, point, tip)

    def _draw_bars(self, image: np.ndarray, q: np.ndarray) -> None:
        n = len(q)
        top, bottom = int(self.height * 0.84), int(self.height * 0.98)
        width = max(1, (self.width - 4) // n)
        level = np.clip((q - self.lo) / self.span, 0.0, 1.0)
        for i in range(n):
            x0 = 2 + i * width
            y = bottom - int(level[i] * (bottom - top))
            cv2.rectangle(image, (x0, y), (x0 + max(1, width - 2), bottom), self.color, -1)

    def _line(self, image: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        cv2.line(image, _pt(a), _pt(b), self.color, self.thickness, cv2.LINE_AA)


def _pt(p: np.ndarray) -> tuple[int, int]:
    return (int(round(float(p[0]))), int(round(float(p[1]))))


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    top, bottom = rng.integers(20, 140, 3), rng.integers(20, 140, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = top + (bottom - top) * ramp * np.ones((1, width, 1))
    # Coarse blotches plus fine grain: a JPEG of this is tens of KB at 640x480, like a real room.
    coarse = rng.normal(0, 18, (max(2, height // 16), max(2, width // 16), 3))
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 4, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def black_image(camera: CameraSpec) -> np.ndarray:
    """An all-black BGR image of the camera's size."""
    return np.zeros((camera.height, camera.width, 3), dtype=np.uint8)

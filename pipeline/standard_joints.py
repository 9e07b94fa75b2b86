"""The project's standard humanoid joint names.

Every robot config maps its vendor joint names onto these, so episodes from
different robot models line up in one schema: a trainer can ask for
``left_knee`` whatever robot recorded it. Angles follow the vendor's sign
convention; the names only fix *which* joint a column is.
"""

from __future__ import annotations

_SIDES = ("left", "right")

_LEG = ("hip_pitch", "hip_roll", "hip_yaw", "knee", "ankle_pitch", "ankle_roll")
_ARM = (
    "shoulder_pitch",
    "shoulder_roll",
    "shoulder_yaw",
    "elbow",
    "wrist_roll",
    "wrist_pitch",
    "wrist_yaw",
)
_TORSO = ("waist_yaw", "waist_roll", "waist_pitch")
_HEAD = ("head_yaw", "head_roll", "head_pitch")
_HAND = ("gripper",)

STANDARD_JOINT_NAMES: tuple[str, ...] = (
    tuple(f"{side}_{joint}" for side in _SIDES for joint in _LEG)
    + _TORSO
    + _HEAD
    + tuple(f"{side}_{joint}" for side in _SIDES for joint in _ARM + _HAND)
)
"""Every standard name, in the canonical column order of the shared schema."""

STANDARD_INDEX: dict[str, int] = {name: i for i, name in enumerate(STANDARD_JOINT_NAMES)}

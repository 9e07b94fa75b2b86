"""Smooth, bounded joint motion for the simulated humanoid.

Each joint follows a sum of three slow sinusoids around the middle of its
range. With weights summing to one the excursion never exceeds the amplitude,
and the analytic derivatives bound velocity and acceleration, so limits hold
by construction rather than by clipping (clipping would put kinks in the
velocity that the smoothness score would then blame on the data).
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.robot_config import JointSpec

POSITION_MARGIN = 0.8
"""Fraction of each joint's range the motion uses (the middle 80%)."""

VELOCITY_MARGIN = 0.8
"""Fraction of each joint's velocity limit the motion may reach."""

_COMPONENTS = 3
# Teleoperated arm motion is mostly below 0.5 Hz; slower joints get slowed further below.
_FREQ_HZ = (0.05, 0.4)


class JointMotion:
    """Deterministic joint trajectories ``q(t)`` with analytic ``q'(t)`` and effort.

    Args:
        joints: the config's joints, in order.
        seed: selects frequencies, phases and weights.
    """

    def __init__(self, joints: tuple[JointSpec, ...], seed: int) -> None:
        unknown = [j.name for j in joints if not (j.position_known and j.velocity_known and j.effort_known)]
        if unknown:  # the motion is scaled to the limits: infinite ones would give infinite motion
            raise ConfigError("sim driver", "joints", f"the simulation needs every limit; unknown for {unknown[:5]}")
        rng = np.random.default_rng([seed, 0x6D6F74])  # "mot": independent of the fault dice
        dof = len(joints)
        lo = np.array([j.position_min for j in joints])
        hi = np.array([j.position_max for j in joints])
        self.center = (lo + hi) / 2
        reach = POSITION_MARGIN * (hi - lo) / 2
        weights = rng.uniform(0.3, 1.0, (dof, _COMPONENTS))
        weights /= weights.sum(axis=1, keepdims=True)
        self.amp = reach[:, None] * weights
        self.omega = 2 * np.pi * rng.uniform(*_FREQ_HZ, (dof, _COMPONENTS))
        self.phase = rng.uniform(0, 2 * np.pi, (dof, _COMPONENTS))
        # Slow every component of a joint by the same factor until the worst-case
        # speed sum(amp * omega) fits inside the velocity limit; positions are unaffected.
        self.velocity_max = np.array([j.velocity_max for j in joints])
        speed_bound = (self.amp * self.omega).sum(axis=1)
        scale = np.minimum(1.0, VELOCITY_MARGIN * self.velocity_max / speed_bound)
        self.omega *= scale[:, None]
        self.accel_bound = (self.amp * self.omega**2).sum(axis=1)
        self.effort_max = np.array([j.effort_max for j in joints])
        self.effort_phase = rng.uniform(0, 2 * np.pi, dof)

    def position(self, t_s: float | np.ndarray) -> np.ndarray:
        """Joint positions at time(s) ``t_s``: shape ``(dof,)`` or ``(n, dof)``."""
        angle = self._angle(t_s)
        return self.center + (self.amp * np.sin(angle)).sum(axis=-1)

    def state(self, t_s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Position, exact velocity and a plausible effort at time(s) ``t_s``."""
        angle = self._angle(t_s)
        sin, cos = np.sin(angle), np.cos(angle)
        position = self.center + (self.amp * sin).sum(axis=-1)
        velocity = (self.amp * self.omega * cos).sum(axis=-1)
        accel = -(self.amp * self.omega**2 * sin).sum(axis=-1)
        # Effort = gravity-like load + inertia + smooth friction; the weights sum to
        # 0.8 so |effort| stays inside 80% of the limit.
        effort = self.effort_max * (
            0.4 * np.cos(position + self.effort_phase)
            + 0.3 * accel / self.accel_bound
            + 0.1 * np.tanh(velocity / (0.1 * self.velocity_max))
        )
        return position, velocity, effort

    def _angle(self, t_s: float | np.ndarray) -> np.ndarray:
        t = np.asarray(t_s, dtype=np.float64)[..., None, None]
        return self.omega * t + self.phase

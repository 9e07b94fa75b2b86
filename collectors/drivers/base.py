"""What a driver delivers and the interface every driver implements.

A driver is the collector's only view of a robot: it turns whatever the
robot (or a simulator, or a camera) produces into timestamped readings. The
collector calls :meth:`Driver.poll` in a tight loop (about 1 kHz), so polling
never waits for a device; drivers that talk to blocking devices grab in their
own threads and hand finished readings over.

Readings hold numpy arrays, so they compare by identity (``eq=False``): two
readings with equal fields are not ``==``, compare their fields explicitly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType

import numpy as np

JOINT_STATE_STREAM = "joint_state"
"""Stream name of :class:`JointReading`."""

ACTION_STREAM = "action"
"""Stream name of :class:`ActionReading`."""

CAMERA_STREAM_PREFIX = "camera/"
"""Stream name of a :class:`FrameReading` is this prefix plus the camera name."""


@dataclass(frozen=True, eq=False)
class JointReading:
    """One joint-state sample: measured position, velocity and effort.

    Arrays are float64 of shape ``(dof,)`` in the config's joint order.
    """

    capture_ns: int  # source clock, ns since the Unix epoch
    index: int  # per-stream sample counter since start; gaps mean lost samples
    position: np.ndarray  # rad (or m)
    velocity: np.ndarray  # rad/s
    effort: np.ndarray  # N·m

    @property
    def stream(self) -> str:
        return JOINT_STATE_STREAM


@dataclass(frozen=True, eq=False)
class ActionReading:
    """One teleoperation target: the joint positions the operator commands."""

    capture_ns: int
    index: int
    position: np.ndarray  # float64 (dof,)

    @property
    def stream(self) -> str:
        return ACTION_STREAM


@dataclass(frozen=True, eq=False)
class FrameReading:
    """One camera frame as JPEG bytes, exactly as the camera or encoder produced them."""

    camera: str
    capture_ns: int
    index: int
    jpeg: bytes

    @property
    def stream(self) -> str:
        return CAMERA_STREAM_PREFIX + self.camera


Reading = JointReading | ActionReading | FrameReading


class Driver(ABC):
    """A source of readings: a robot, a simulator, cameras, or several merged.

    Lifecycle: construct (opens devices, so bad sources fail early), ``start``
    at each episode, ``poll`` repeatedly, ``close`` (safe to call more than once). A
    driver is also a context manager that closes on exit.
    """

    @abstractmethod
    def start(self, t0_ns: int) -> None:
        """Begin an episode; called again, it begins the next one.

        Every stream's sample index restarts at 0 with each episode.

        Args:
            t0_ns: the collector's wall clock (``time.time_ns()``) at episode
                start; sample 0 of every stream is due at this time.

        Raises:
            DriverError: if the driver is closed.
        """

    @abstractmethod
    def poll(self, now_ns: int) -> list[Reading]:
        """Return everything captured in ``(last poll, now_ns]``, in capture order.

        Never waits for a device. Called late, it returns the whole backlog.

        Raises:
            DriverError: if the driver is not started, or a device failed.
        """

    @abstractmethod
    def close(self) -> None:
        """Release devices and threads. Calling it again does nothing."""

    def __enter__(self) -> Driver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

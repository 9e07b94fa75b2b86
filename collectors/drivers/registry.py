"""Drivers by name, for the collector's command line (``--driver sim``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from collectors.drivers.base import Driver
from collectors.drivers.composite import CompositeDriver
from collectors.drivers.opencv_camera import OpenCVCameraDriver, Source
from collectors.drivers.sim import SimHumanoid
from pipeline.errors import DriverError
from pipeline.robot_config import RobotConfig


def _sim_with_cameras(
    config: RobotConfig,
    sources: Mapping[str, Source | Path],
    *,
    loop: bool = True,
    jpeg_quality: int = 90,
    **sim_options: Any,
) -> Driver:
    """Simulated joints and actions; real cameras for ``sources``, simulated ones for the rest."""
    if "cameras" in sim_options:
        raise DriverError("driver 'sim+opencv': the simulated cameras are the config's cameras not in sources")
    simulated = [c.name for c in config.cameras if c.name not in sources]
    cameras = OpenCVCameraDriver(config, sources, loop=loop, jpeg_quality=jpeg_quality)
    try:
        sim = SimHumanoid(config, jpeg_quality=jpeg_quality, cameras=simulated, **sim_options)
    except BaseException:
        cameras.close()
        raise
    return CompositeDriver([sim, cameras])


DRIVER_KINDS: dict[str, Callable[..., Driver]] = {
    "sim": SimHumanoid,
    "opencv": OpenCVCameraDriver,
    "sim+opencv": _sim_with_cameras,
}
"""Driver kind -> factory taking ``(config, **options)``."""


def make_driver(kind: str, config: RobotConfig, **options: Any) -> Driver:
    """Build a driver by kind.

    Args:
        kind: one of :data:`DRIVER_KINDS` (``sim``, ``opencv``, ``sim+opencv``).
        config: the robot config the driver serves.
        **options: passed to the driver's constructor (``seed``, ``faults``,
            ``sources``, ...).

    Raises:
        DriverError: for an unknown kind (listing the kinds) or options the
            kind does not take.
    """
    factory = DRIVER_KINDS.get(kind)
    if factory is None:
        raise DriverError(f"unknown driver kind {kind!r}; kinds: {', '.join(DRIVER_KINDS)}")
    try:
        inspect.signature(factory).bind(config, **options)
    except TypeError as err:
        raise DriverError(f"driver {kind!r} for robot {config.model}: bad options {sorted(options)}: {err}") from err
    return factory(config, **options)

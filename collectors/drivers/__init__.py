"""Robot and camera drivers: where readings enter the collector.

Every driver implements :class:`Driver` (``start``, non-blocking ``poll``,
``close``) and yields :class:`JointReading`, :class:`ActionReading` and
:class:`FrameReading`. Build one by kind with :func:`make_driver`.
"""

from collectors.drivers.base import (
    ACTION_STREAM,
    CAMERA_STREAM_PREFIX,
    JOINT_STATE_STREAM,
    ActionReading,
    Driver,
    FrameReading,
    JointReading,
    Reading,
)
from collectors.drivers.composite import CompositeDriver
from collectors.drivers.jpeg import decode_jpeg, encode_jpeg
from collectors.drivers.opencv_camera import OpenCVCameraDriver
from collectors.drivers.registry import DRIVER_KINDS, make_driver
from collectors.drivers.sim import SimHumanoid
from collectors.drivers.sim_faults import SimFaults

__all__ = [
    "ACTION_STREAM",
    "CAMERA_STREAM_PREFIX",
    "DRIVER_KINDS",
    "JOINT_STATE_STREAM",
    "ActionReading",
    "CompositeDriver",
    "Driver",
    "FrameReading",
    "JointReading",
    "OpenCVCameraDriver",
    "Reading",
    "SimFaults",
    "SimHumanoid",
    "decode_jpeg",
    "encode_jpeg",
    "make_driver",
]

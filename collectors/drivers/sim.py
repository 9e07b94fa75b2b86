"""A seeded, deterministic simulated humanoid: joints, teleop actions and cameras.

Every value the simulator produces is a pure function of ``(seed, stream,
sample index)``, so a test can regenerate what an episode should contain
without recording it:

- ``joint_state(k)``, ``action(k)``, ``frame_jpeg(camera, k)``: the clean
  values of sample ``k`` (nominal time ``k / rate`` since start), before any
  fault.
- ``joint_reading(k)``, ``action_reading(k)``, ``frame_reading(camera, k)``:
  exactly what ``poll`` delivers for sample ``k`` after faults (``None`` if
  the fault drops it); these need ``start`` for the stamps.

How faults apply (see :class:`SimFaults`): ``stall`` and ``drop_frame_prob``
skip samples (indices still advance); ``spike_prob`` and ``nan_prob`` change
one joint's position in one joint-state sample (velocity and effort stay
clean); ``frozen_camera`` and ``black_frames`` replace a frame's bytes; the
clock faults change ``capture_ns`` only. Actions and frames are computed from
the clean motion, so a spike in the measured state is never in the video.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from collectors.drivers._sim_motion import JointMotion
from collectors.drivers._sim_render import FrameRenderer, black_image
from collectors.drivers.base import ActionReading, Driver, FrameReading, JointReading, Reading
from collectors.drivers.jpeg import encode_jpeg
from collectors.drivers.sim_faults import SimFaults, in_windows
from pipeline.errors import DriverError
from pipeline.robot_config import RobotConfig

__all__ = ["SimFaults", "SimHumanoid"]

ACTION_LEAD_S = 0.05
"""How far the teleop target runs ahead of the measured position (a tracking lag of 50 ms)."""

_DICE_BLOCK = 1024  # fault random numbers are drawn per block of this many sample indices
_DICE_COLUMNS = 7
_JOINT_STREAM_ID, _ACTION_STREAM_ID = 0, 1  # cameras are 2, 3, ...


class _Dice:
    """Uniform and gaussian numbers per (stream, sample index), independent of call order."""

    def __init__(self, seed: int, fault_seed: int) -> None:
        self.seed = seed
        self.fault_seed = fault_seed
        self._cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def roll(self, stream_id: int, k: int) -> tuple[np.ndarray, float]:
        block, row = divmod(k, _DICE_BLOCK)
        cached = self._cache.get(stream_id)
        if cached is None or cached[0] != block:
            rng = np.random.default_rng([self.seed, self.fault_seed, stream_id, block, 0xFA17])
            cached = (block, rng.random((_DICE_BLOCK, _DICE_COLUMNS)), rng.standard_normal(_DICE_BLOCK))
            self._cache[stream_id] = cached
        return cached[1][row], float(cached[2][row])


class _Stream:
    """Due-time bookkeeping for one stream: which index is next."""

    def __init__(self, stream_id: int, rate_hz: float, camera: str | None = None, delay_ns: int = 0) -> None:
        self.stream_id = stream_id
        self.rate_hz = rate_hz
        self.camera = camera
        self.delay_ns = delay_ns  # a camera's frames arrive this long after exposure
        self.next_k = 0

    def offset_ns(self, k: int) -> int:
        return round(k * 1e9 / self.rate_hz)

    def last_due(self, elapsed_ns: int) -> int:
        """The highest index whose nominal time is at or before ``elapsed_ns`` (-1 if none)."""
        k = math.floor(elapsed_ns * self.rate_hz / 1e9)
        # The float estimate can be one off either way at exact boundaries; settle it on integers.
        while self.offset_ns(k + 1) <= elapsed_ns:
            k += 1
        while k >= 0 and self.offset_ns(k) > elapsed_ns:
            k -= 1
        return k


class SimHumanoid(Driver):
    """A simulated humanoid that follows the robot config.

    Args:
        config: the robot model to simulate (joints, rates, cameras).
        seed: selects the motion, the images and (with ``faults.seed``) the faults.
        faults: which faults to inject; none by default.
        jpeg_quality: JPEG quality of the camera frames.
        cameras: ``True`` for every camera of the config, ``False`` for joints
            and actions only, or the names of the cameras to simulate.
        prerendered: render each camera's first ``prerender_cycle`` frames once
            and repeat them (frame ``k`` is frame ``k % prerender_cycle``), so
            benchmarks measure the pipeline rather than the renderer.
        prerender_cycle: number of distinct frames per camera when prerendered.
        action_lead_s: how far the teleop target leads the measured position.

    Raises:
        DriverError: if an option is invalid or a fault names an unknown camera.
    """

    def __init__(
        self,
        config: RobotConfig,
        seed: int = 0,
        faults: SimFaults = SimFaults(),
        jpeg_quality: int = 90,
        *,
        cameras: bool | Iterable[str] = True,
        prerendered: bool = False,
        prerender_cycle: int = 30,
        action_lead_s: float = ACTION_LEAD_S,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DriverError(f"sim {config.model}: seed must be a non-negative integer, got {seed!r}")
        if not isinstance(faults, SimFaults):
            raise DriverError(f"sim {config.model}: faults must be a SimFaults, got {type(faults).__name__}")
        if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
            raise DriverError(f"sim {config.model}: jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}")
        if isinstance(prerender_cycle, bool) or not isinstance(prerender_cycle, int) or prerender_cycle < 1:
            raise DriverError(f"sim {config.model}: prerender_cycle must be a positive integer, got {prerender_cycle!r}")
        if not math.isfinite(action_lead_s) or action_lead_s < 0:
            raise DriverError(f"sim {config.model}: action_lead_s must be >= 0, got {action_lead_s!r}")
        self.config = config
        self.seed = seed
        self.faults = faults
        self.jpeg_quality = jpeg_quality
        self.action_lead_s = float(action_lead_s)
        self.camera_names = self._select_cameras(cameras)
        for key in ("frozen_camera", "black_frames"):
            for name, _, _ in getattr(faults, key):
                if name not in self.camera_names:
                    raise DriverError(
                        f"sim {config.model}: fault {key!r} names camera {name!r}, which is not simulated; "
                        f"simulated cameras: {', '.join(self.camera_names) or '(none)'}"
                    )
        self._motion = JointMotion(config.joints, seed)
        self._renderers = {
            cam.name: FrameRenderer(cam, config.joints, i, seed)
            for i, cam in enumerate(config.cameras)
            if cam.name in self.camera_names
        }
        self._dice = _Dice(seed, faults.seed)
        self._black: dict[str, bytes] = {}
        self._frozen_source: dict[tuple[str, int], bytes] = {}
        self._cycle: dict[str, list[bytes]] = {}
        if prerendered:
            self._cycle = {
                name: [self._render(name, k) for k in range(prerender_cycle)] for name in self.camera_names
            }
        self._streams = [
            _Stream(_JOINT_STREAM_ID, config.joint_state_hz),
            _Stream(_ACTION_STREAM_ID, config.action_hz),
        ] + [
            _Stream(2 + i, cam.fps, cam.name, round(cam.latency_ms * 1e6))
            for i, cam in enumerate(config.cameras)
            if cam.name in self.camera_names
        ]
        self._t0_ns: int | None = None
        self._closed = False

    # -- clean values (pure) ---------------------------------------------------

    def joint_state(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clean position, velocity and effort of joint-state sample ``k`` (float64, ``(dof,)``)."""
        return self._motion.state(k / self.config.joint_state_hz)

    def action(self, k: int) -> np.ndarray:
        """Clean teleop target of action sample ``k``: the position ``action_lead_s`` ahead."""
        return self._motion.position(k / self.config.action_hz + self.action_lead_s)

    def frame_jpeg(self, camera: str, k: int) -> bytes:
        """Clean JPEG bytes of frame ``k`` of ``camera``."""
        if camera not in self._renderers:
            raise DriverError(
                f"sim {self.config.model}: no simulated camera {camera!r}; "
                f"simulated cameras: {', '.join(self.camera_names) or '(none)'}"
            )
        if self._cycle:
            cycle = self._cycle[camera]
            return cycle[k % len(cycle)]
        return self._render(camera, k)

    # -- delivered values (after faults) ----------------------------------------

    def joint_reading(self, k: int) -> JointReading | None:
        """What ``poll`` delivers for joint-state sample ``k``; ``None`` during a stall."""
        stream = self._streams[0]
        if in_windows(self.faults.stall, k / stream.rate_hz):
            return None
        position, velocity, effort = self.joint_state(k)
        f, dof = self.faults, self.config.dof
        u, _ = self._dice.roll(_JOINT_STREAM_ID, k)
        if u[0] < f.spike_prob:
            position[int(u[4] * dof)] += f.spike_size_rad if u[5] < 0.5 else -f.spike_size_rad
        if u[1] < f.nan_prob:
            position[int(u[6] * dof)] = np.nan
        stamp = self._joint_stamp(k)
        if k > 0 and u[2] < f.duplicate_timestamp_prob:
            stamp = self._joint_stamp(k - 1)
        elif k > 0 and u[3] < f.backwards_timestamp_prob:
            stamp = self._joint_stamp(k - 1) - stream.offset_ns(1)
        return JointReading(stamp, k, position, velocity, effort)

    def action_reading(self, k: int) -> ActionReading | None:
        """What ``poll`` delivers for action sample ``k``; ``None`` during a stall."""
        stream = self._streams[1]
        if in_windows(self.faults.stall, k / stream.rate_hz):
            return None
        return ActionReading(self._stamp(stream.offset_ns(k)), k, self.action(k))

    def frame_reading(self, camera: str, k: int) -> FrameReading | None:
        """What ``poll`` delivers for frame ``k`` of ``camera``; ``None`` if the frame is dropped."""
        stream = self._camera_stream(camera)
        u, _ = self._dice.roll(stream.stream_id, k)
        if u[0] < self.faults.drop_frame_prob:
            return None
        t_s = k / stream.rate_hz
        jpeg: bytes | None = None
        if in_windows(_for_camera(self.faults.black_frames, camera), t_s):
            jpeg = self._black_jpeg(camera)
        else:
            for name, start, duration in self.faults.frozen_camera:
                if name == camera and start <= t_s < start + duration:
                    # The last frame captured before the window started.
                    jpeg = self._frozen_jpeg(camera, max(0, math.ceil(start * stream.rate_hz) - 1))
                    break
        if jpeg is None:
            jpeg = self.frame_jpeg(camera, k)
        # Like a real camera's, a frame reaches the collector its known latency after
        # exposure and is stamped then; align subtracts the latency again.
        shift_ns = round(self.faults.camera_stamp_offset_ms * 1e6)
        return FrameReading(camera, self._stamp(stream.offset_ns(k) + stream.delay_ns + shift_ns), k, jpeg)

    # -- Driver ------------------------------------------------------------------

    def start(self, t0_ns: int) -> None:
        """Begin an episode at ``t0_ns``; sample 0 of every stream is due then.

        Every episode replays the same seeded motion from index 0.
        """
        if self._closed:
            raise DriverError(f"sim {self.config.model}: start after close; make a new driver")
        self._t0_ns = int(t0_ns)
        for stream in self._streams:
            stream.next_k = 0

    def poll(self, now_ns: int) -> list[Reading]:
        """Every sample due in ``(last poll, now_ns]``, ordered by nominal capture time.

        With the timestamp faults on, the stamps themselves may go backwards;
        the order stays the order in which the robot produced the samples.
        """
        t0 = self._require_started()
        elapsed = now_ns - t0
        due: list[tuple[int, int, Reading]] = []
        for order, stream in enumerate(self._streams):
            last = stream.last_due(elapsed - stream.delay_ns)
            for k in range(stream.next_k, last + 1):
                reading = self._reading(stream, k)
                if reading is not None:
                    due.append((stream.offset_ns(k) + stream.delay_ns, order, reading))
            stream.next_k = max(stream.next_k, last + 1)
        due.sort(key=lambda item: (item[0], item[1]))  # same due time: joints, action, then cameras
        return [reading for _, _, reading in due]

    def close(self) -> None:
        """Stop producing readings; calling it again does nothing."""
        self._closed = True

    # -- internals ---------------------------------------------------------------

    def _select_cameras(self, cameras: bool | Iterable[str]) -> tuple[str, ...]:
        all_names = tuple(c.name for c in self.config.cameras)
        if cameras is True:
            return all_names
        if cameras is False:
            return ()
        if isinstance(cameras, str):
            cameras = [cameras]
        chosen = tuple(cameras)
        for name in chosen:
            if name not in all_names:
                raise DriverError(
                    f"sim {self.config.model}: no camera {name!r} in the config; "
                    f"cameras: {', '.join(all_names) or '(none)'}"
                )
        return tuple(n for n in all_names if n in chosen)

    def _require_started(self) -> int:
        if self._closed:
            raise DriverError(f"sim {self.config.model}: poll after close")
        if self._t0_ns is None:
            raise DriverError(f"sim {self.config.model}: poll before start; call start(t0_ns) first")
        return self._t0_ns

    def _reading(self, stream: _Stream, k: int) -> Reading | None:
        if stream.camera is not None:
            return self.frame_reading(stream.camera, k)
        if stream.stream_id == _JOINT_STREAM_ID:
            return self.joint_reading(k)
        return self.action_reading(k)

    def _stamp(self, offset_ns: int) -> int:
        """Robot-clock stamp of a sample due ``offset_ns`` after start."""
        t0 = self._require_started()
        f = self.faults
        return t0 + offset_ns + f.clock_offset_ns + round(offset_ns * f.clock_drift_ppm * 1e-6)

    def _joint_stamp(self, k: int) -> int:
        stamp = self._stamp(self._streams[0].offset_ns(k))
        if self.faults.timestamp_jitter_us:
            _, z = self._dice.roll(_JOINT_STREAM_ID, k)
            stamp += round(z * self.faults.timestamp_jitter_us * 1e3)
        return stamp

    def _camera_stream(self, camera: str) -> _Stream:
        for stream in self._streams[2:]:
            if stream.camera == camera:
                return stream
        raise DriverError(
            f"sim {self.config.model}: no simulated camera {camera!r}; "
            f"simulated cameras: {', '.join(self.camera_names) or '(none)'}"
        )

    def _render(self, camera: str, k: int) -> bytes:
        renderer = self._renderers[camera]
        position = self._motion.position(k / renderer.camera.fps - self.faults.camera_scene_delay_ms / 1e3)
        return encode_jpeg(renderer.render(position, k), self.jpeg_quality)

    def _black_jpeg(self, camera: str) -> bytes:
        if camera not in self._black:
            self._black[camera] = encode_jpeg(black_image(self.config.camera(camera)), self.jpeg_quality)
        return self._black[camera]

    def _frozen_jpeg(self, camera: str, k: int) -> bytes:
        key = (camera, k)
        if key not in self._frozen_source:
            self._frozen_source[key] = self.frame_jpeg(camera, k)
        return self._frozen_source[key]


def _for_camera(windows: tuple[tuple[str, float, float], ...], camera: str) -> tuple[tuple[float, float], ...]:
    return tuple((start, duration) for name, start, duration in windows if name == camera)

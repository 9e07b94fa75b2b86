"""Real cameras and video files through ``cv2.VideoCapture``.

Two kinds of source, chosen from the source value:

- a *live* source (a device index such as ``0`` or ``"0"``, a ``/dev/...``
  path, or a ``scheme://`` stream URL) is read by a grab thread per camera,
  because ``VideoCapture.read`` blocks until the next frame; each frame is
  stamped with the host clock the moment ``grab`` returns.
- a *file* source (a video file path) is paced at the camera's configured
  fps: frame ``k`` is due, and stamped, at ``t0 + k / fps``. At the end of
  the file it loops (default) or stops.

Frames of another size than the config's are resized (``INTER_AREA``), then
JPEG-encoded. This driver produces only :class:`FrameReading`; combine it
with a joint source through :class:`~collectors.drivers.composite.CompositeDriver`.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from collectors.drivers.base import Driver, FrameReading, Reading
from collectors.drivers.jpeg import encode_jpeg
from pipeline.errors import DriverError
from pipeline.robot_config import CameraSpec, RobotConfig

log = logging.getLogger(__name__)

Source = int | str
CaptureFactory = Callable[[Source], Any]
"""Makes an object with the ``cv2.VideoCapture`` methods used here (for tests and custom backends)."""

# A live camera that fails this many grabs in a row is reported as failed.
_MAX_GRAB_FAILURES = 50
# poll waits at most this long for a frame grabbed before now_ns that is still being encoded.
_PENDING_WAIT_S = 0.1


def _is_live(source: Source) -> bool:
    if isinstance(source, int):
        return True
    return source.isdigit() or source.startswith("/dev/") or "://" in source


def _prepare(image: np.ndarray, camera: CameraSpec) -> np.ndarray:
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[1] != camera.width or image.shape[0] != camera.height:
        image = cv2.resize(image, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    return image


class _FileCamera:
    """A video file paced at the configured fps."""

    def __init__(self, camera: CameraSpec, path: str, loop: bool, quality: int, factory: CaptureFactory) -> None:
        self.camera = camera
        self.path = path
        self.loop = loop
        self.quality = quality
        self.factory = factory
        if not Path(path).is_file():
            raise DriverError(f"camera {camera.name!r}: video file {path!r} does not exist")
        self.capture = self._open()
        # Read frame 0 now, so a file OpenCV cannot decode fails at construction, not mid-episode.
        self.pending: np.ndarray | None = self._read()
        if self.pending is None:
            self.capture.release()
            raise DriverError(
                f"camera {camera.name!r}: video file {path!r} has no readable frames "
                "(empty, or a codec this OpenCV build cannot decode)"
            )
        self.next_k = 0
        self.ended = False

    def _open(self) -> Any:
        capture = self.factory(self.path)
        if not capture.isOpened():
            capture.release()
            raise DriverError(f"camera {self.camera.name!r}: cannot open video file {self.path!r}")
        return capture

    def _read(self) -> np.ndarray | None:
        ok, image = self.capture.read()
        return image if ok and image is not None else None

    def _next_image(self) -> np.ndarray | None:
        if self.pending is not None:
            image, self.pending = self.pending, None
            return image
        image = self._read()
        if image is None and self.loop:
            # Reopen rather than seek: seeking to frame 0 is unreliable in some containers.
            self.capture.release()
            self.capture = self._open()
            image = self._read()
        return image

    def poll(self, t0_ns: int, now_ns: int) -> list[FrameReading]:
        out: list[FrameReading] = []
        while not self.ended:
            due_ns = t0_ns + round(self.next_k * 1e9 / self.camera.fps)
            if due_ns > now_ns:
                break
            image = self._next_image()
            if image is None:
                self.ended = True
                log.info("camera %s: video file %s ended after %d frames", self.camera.name, self.path, self.next_k)
                break
            jpeg = encode_jpeg(_prepare(image, self.camera), self.quality)
            out.append(FrameReading(self.camera.name, due_ns, self.next_k, jpeg))
            self.next_k += 1
        return out

    def start(self) -> None:
        self.next_k = 0  # each episode numbers its frames from 0; the file plays on

    def close(self) -> None:
        self.capture.release()


class _LiveCamera:
    """A device or stream read by its own grab thread."""

    def __init__(self, camera: CameraSpec, source: Source, quality: int, factory: CaptureFactory) -> None:
        self.camera = camera
        self.source = source
        self.quality = quality
        self.ended = False
        capture = factory(int(source) if isinstance(source, str) and source.isdigit() else source)
        if not capture.isOpened():
            capture.release()
            raise DriverError(
                f"camera {camera.name!r}: cannot open camera source {source!r}; "
                "check the device index or URL and that no other process holds the device"
            )
        # Ask for the configured format; devices that cannot comply are resized afterwards.
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, camera.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, camera.height)
        capture.set(cv2.CAP_PROP_FPS, camera.fps)
        self.capture = capture
        self.cond = threading.Condition()
        # Between episodes nobody polls: keep about two seconds, not everything.
        self.ready: deque[FrameReading] = deque(maxlen=int(camera.fps * 2) + 1)
        self.base_index: int | None = None
        self.pending_ns: int | None = None  # grab time of a frame still being encoded
        self.error: DriverError | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)

    def start(self) -> None:
        self.base_index = None  # the first frame of each episode is frame 0
        if not self.thread.is_alive():
            self.thread.start()

    def _run(self) -> None:
        index, failures = 0, 0
        while not self.stop.is_set():
            ok = self.capture.grab()
            with self.cond:
                grabbed_ns = time.time_ns()
                self.pending_ns = grabbed_ns if ok else None
            if self.stop.is_set():
                break
            image = None
            if ok:
                ok, image = self.capture.retrieve()
            if not ok or image is None:
                failures += 1
                with self.cond:
                    self.pending_ns = None
                    if failures >= _MAX_GRAB_FAILURES:
                        self.error = DriverError(
                            f"camera {self.camera.name!r}: source {self.source!r} failed "
                            f"{failures} grabs in a row; is it still connected?"
                        )
                    self.cond.notify_all()
                if self.error is not None:
                    return
                time.sleep(0.005)  # a failing device returns at once; don't spin
                continue
            failures = 0
            try:
                jpeg = encode_jpeg(_prepare(image, self.camera), self.quality)
            except DriverError as err:
                with self.cond:
                    self.pending_ns = None
                    self.error = err
                    self.cond.notify_all()
                return
            with self.cond:
                self.ready.append(FrameReading(self.camera.name, grabbed_ns, index, jpeg))
                self.pending_ns = None
                self.cond.notify_all()
            index += 1

    def poll(self, t0_ns: int, now_ns: int) -> list[FrameReading]:
        with self.cond:
            # A frame grabbed at or before now_ns but still encoding belongs to this poll;
            # wait for it (one encode, a few ms) so no frame turns up a poll late.
            self.cond.wait_for(
                lambda: self.pending_ns is None or self.pending_ns > now_ns, timeout=_PENDING_WAIT_S
            )
            out: list[FrameReading] = []
            while self.ready and self.ready[0].capture_ns <= now_ns:
                frame = self.ready.popleft()
                if frame.capture_ns >= t0_ns:  # frames grabbed before the episode are not part of it
                    if self.base_index is None:
                        self.base_index = frame.index
                    out.append(FrameReading(frame.camera, frame.capture_ns, frame.index - self.base_index, frame.jpeg))
            if self.error is not None and not self.ready:
                raise self.error
        return out

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2.0)
        if self.thread.is_alive():
            # Releasing under a blocked grab can crash some backends; leave it to process exit.
            log.warning("camera %s: grab thread did not stop; not releasing %r", self.camera.name, self.source)
            return
        self.capture.release()


class OpenCVCameraDriver(Driver):
    """Cameras (devices, streams or video files) of a robot config, through OpenCV.

    Args:
        config: the robot config; sizes and fps of the cameras come from it.
        sources: camera name -> device index, device path, stream URL or video file path.
        loop: when a video file ends, start it again (``True``) or stop that camera.
        jpeg_quality: JPEG quality of the encoded frames.
        capture_factory: makes the capture objects; ``cv2.VideoCapture`` by default.

    Raises:
        DriverError: naming the camera and the source if a source cannot be opened,
            or if a camera is not in the config.
    """

    def __init__(
        self,
        config: RobotConfig,
        sources: Mapping[str, Source | Path],
        *,
        loop: bool = True,
        jpeg_quality: int = 90,
        capture_factory: CaptureFactory = cv2.VideoCapture,
    ) -> None:
        if not sources:
            raise DriverError(f"opencv cameras for {config.model}: no sources given; map camera names to sources")
        self.config = config
        self._cameras: list[_FileCamera | _LiveCamera] = []
        try:
            for name, source in sources.items():
                camera = self._camera_spec(name)
                if isinstance(source, Path):
                    source = str(source)
                if isinstance(source, bool) or not isinstance(source, (int, str)):
                    raise DriverError(f"camera {name!r}: source must be a device index or a path, got {source!r}")
                if _is_live(source):
                    self._cameras.append(_LiveCamera(camera, source, jpeg_quality, capture_factory))
                else:
                    self._cameras.append(_FileCamera(camera, source, loop, jpeg_quality, capture_factory))
        except BaseException:
            for opened in self._cameras:
                opened.close()
            raise
        self._t0_ns: int | None = None
        self._closed = False

    @staticmethod
    def parse_sources(spec: str) -> dict[str, Source]:
        """Parse the command-line form ``head_left=0,wrist=/data/wrist.avi``.

        Raises:
            DriverError: naming the piece that is not ``camera=source``.
        """
        sources: dict[str, Source] = {}
        for piece in (p.strip() for p in spec.split(",")):
            if not piece:
                continue
            name, sep, source = (s.strip() for s in piece.partition("="))
            if not sep or not name or not source:
                raise DriverError(f"camera sources: {piece!r} is not camera=source (device index or file path)")
            if name in sources:
                raise DriverError(f"camera sources: camera {name!r} given twice")
            sources[name] = int(source) if source.isdigit() else source
        return sources

    @property
    def finished(self) -> bool:
        """True when every source is a video file that has ended (only without ``loop``)."""
        return all(c.ended for c in self._cameras)

    def start(self, t0_ns: int) -> None:
        """Begin the episode: start grab threads; video files are due from ``t0_ns``."""
        if self._closed:
            raise DriverError(f"opencv cameras for {self.config.model}: start after close; make a new driver")
        self._t0_ns = int(t0_ns)
        for camera in self._cameras:
            camera.start()

    def poll(self, now_ns: int) -> list[Reading]:
        """Frames captured in ``(last poll, now_ns]`` from every camera, in capture order."""
        if self._closed:
            raise DriverError(f"opencv cameras for {self.config.model}: poll after close")
        if self._t0_ns is None:
            raise DriverError(f"opencv cameras for {self.config.model}: poll before start; call start(t0_ns) first")
        batches = [camera.poll(self._t0_ns, now_ns) for camera in self._cameras]
        return list(heapq.merge(*batches, key=lambda r: r.capture_ns))

    def close(self) -> None:
        """Stop grab threads and release every capture; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        for camera in self._cameras:
            camera.close()

    def _camera_spec(self, name: str) -> CameraSpec:
        for camera in self.config.cameras:
            if camera.name == name:
                return camera
        names = ", ".join(c.name for c in self.config.cameras) or "(none)"
        raise DriverError(f"opencv cameras for {self.config.model}: no camera {name!r} in the config; cameras: {names}")

"""Frames of a video file at given times, decoding it front to back once (PyAV).

A LeRobot v3.0 video file holds many episodes one after another; asking for
each episode's frame times in file order decodes the file once, however many
episodes it holds. A file that stops decoding is remembered, so the episodes
after the break fail at once instead of decoding the file again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import RefineryError

FRAME_TOLERANCE = 0.4  # of a frame period: a video frame matches a wanted time within this


class VideoFrameError(RefineryError):
    """A wanted frame is not in the video file (it ends early, does not decode, has no frame near the time)."""


class VideoCursor:
    """Frames of one camera's video files at ascending times, decoding each file front to back once.

    Consecutive episodes of a v3 file lie one after another in it, so the
    decoder only moves forward; a time before the current position (episodes
    out of file order) reopens the file.
    """

    def __init__(self, fps: float) -> None:
        self.tolerance = FRAME_TOLERANCE / fps
        self._path: Path | None = None
        self._container: Any = None
        self._decoded: Iterator[Any] | None = None
        self._frame: Any = None  # the newest decoded frame, not yet passed
        self._time = -math.inf  # its time in the file
        # file -> (time, why) where it stopped decoding: later episodes of a broken
        # file fail at once instead of decoding it from the start again.
        self._broken: dict[Path, tuple[float, str]] = {}

    def frames(self, path: Path, times: np.ndarray) -> Iterator[np.ndarray]:
        """The RGB frame (H, W, 3) at each of ``times`` (seconds in the file, ascending), as they are asked for.

        Raises (while iterating):
            VideoFrameError: the file ends early, has no frame near a time, or does not decode.
        """
        name = f"{path.parent.parent.name}/{path.parent.name}/{path.name}"
        broken = self._broken.get(path)
        if broken is not None and times[-1] >= broken[0]:
            raise VideoFrameError(f"video {name} {broken[1]}")
        if path != self._path or times[0] < self._time - self.tolerance:
            self._open(path)
        for wanted in times:
            while self._time < wanted - self.tolerance:
                self._advance(name, wanted)
            if self._time > wanted + self.tolerance:
                raise VideoFrameError(f"video {name} has no frame at {wanted:.4f} s (the nearest after it is at "
                                     f"{self._time:.4f} s)")
            yield self._frame.to_ndarray(format="rgb24")

    def _advance(self, name: str, wanted: float) -> None:
        import av

        try:
            frame = next(self._decoded) if self._decoded is not None else None
        except StopIteration:
            frame = None
        except av.error.FFmpegError as err:
            self._stop(f"does not decode after {self._time:.4f} s: {err}")
            raise VideoFrameError(f"video {name} does not decode before {wanted:.4f} s: {err}") from err
        if frame is None:
            end = self._time
            self._stop(f"ends at {end:.4f} s (truncated?)")
            raise VideoFrameError(f"video {name} ends at {end:.4f} s, before the frame at {wanted:.4f} s "
                                 "(truncated?)")
        if frame.time is None:
            self._stop("has a frame without a timestamp")
            raise VideoFrameError(f"video {name} has a frame without a timestamp")
        self._frame, self._time = frame, float(frame.time)

    def _stop(self, why: str) -> None:
        """Remember where the current file stopped decoding, and close it."""
        if self._path is not None:
            self._broken[self._path] = (max(self._time, 0.0), why)
        self.close()

    def _open(self, path: Path) -> None:
        import av

        self.close()
        self._path = path
        try:
            self._container = av.open(str(path))
            self._decoded = self._container.decode(self._container.streams.video[0])
        except (av.error.FFmpegError, IndexError) as err:
            self._stop(f"does not open: {err}")
            raise VideoFrameError(f"video {path.name} does not open: {err}") from err

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._decoded = self._frame = None
        self._path = None
        self._time = -math.inf

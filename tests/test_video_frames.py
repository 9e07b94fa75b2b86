"""Frames of a video at given times, one front-to-back decode (the LeRobot fixture's AV1 file)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.interop.video_frames import VideoCursor, VideoFrameError

VIDEO = Path(__file__).parent / "data" / "lerobot-v3-tiny" / "videos/observation.images.front/chunk-000/file-000.mp4"
FPS = 15


def decoded() -> list[np.ndarray]:
    with av.open(str(VIDEO)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def test_frames_at_the_frame_times_are_the_decoded_frames_in_order() -> None:
    reference = decoded()
    cursor = VideoCursor(FPS)

    first = list(cursor.frames(VIDEO, np.arange(0, 30) / FPS))
    second = list(cursor.frames(VIDEO, np.arange(30, 66) / FPS + 0.001))  # a millisecond off: still that frame

    assert all(np.array_equal(a, b) for a, b in zip(first + second, reference[:66], strict=True))


def test_a_time_before_the_position_reopens_the_file() -> None:
    reference = decoded()
    cursor = VideoCursor(FPS)
    list(cursor.frames(VIDEO, np.arange(60, 70) / FPS))

    again = list(cursor.frames(VIDEO, np.array([2 / FPS])))

    assert np.array_equal(again[0], reference[2])


def test_a_time_between_frames_or_past_the_end_is_refused() -> None:
    cursor = VideoCursor(FPS)

    with pytest.raises(VideoFrameError, match="no frame at"):
        list(cursor.frames(VIDEO, np.array([0.5 / FPS])))
    with pytest.raises(VideoFrameError, match="ends at"):
        list(cursor.frames(VIDEO, np.array([200 / FPS])))

"""Cheap per-frame image measurements for the clean stage's exposure and blur rules.

Frames are decoded as reduced grayscale (libjpeg scales in the DCT, so a 1/4
decode skips most of the inverse transform) at the strongest reduction that
keeps ``min_width`` pixels across, and only one frame every few timeline
steps: enough to see a 0.5 s stretch, far fewer decodes than frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["FrameScan", "decode_flag", "scan_frames"]

_CLIP_LOW, _CLIP_HIGH = 4, 251  # 8-bit luma at the ends of the range: no detail left
_DARK = 40  # shadows: a normally exposed view has some


@dataclass(frozen=True)
class FrameScan:
    """Measurements of sampled frames, one entry per sample, in timeline order.

    Attributes:
        steps: timeline step of each sample.
        mean: mean luma (0..255); NaN where the frame did not decode.
        clipped_high: fraction of pixels at or above 251.
        clipped_low: fraction of pixels at or below 4.
        dark: fraction of pixels at or below 40 (a washed-out frame has none: its blacks are lifted).
        sharpness: variance of the Laplacian (blur lowers it).
    """

    steps: np.ndarray
    mean: np.ndarray
    clipped_high: np.ndarray
    clipped_low: np.ndarray
    dark: np.ndarray
    sharpness: np.ndarray

    @property
    def decoded(self) -> np.ndarray:
        return np.isfinite(self.mean)


def decode_flag(width: int, min_width: int) -> int:
    """The strongest reduced-grayscale decode flag that keeps ``min_width`` pixels across."""
    for factor, flag in ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                         (2, cv2.IMREAD_REDUCED_GRAYSCALE_2)):
        if width > 0 and width // factor >= min_width:
            return flag
    return cv2.IMREAD_GRAYSCALE


def scan_frames(jpeg: list[bytes], frame_at_step: np.ndarray, steps: np.ndarray, width: int,
                min_width: int) -> FrameScan:
    """Decode the frame shown at each of ``steps`` and measure it.

    A frame shown at several sampled steps is decoded once.
    """
    flag = decode_flag(width, min_width)
    n = steps.shape[0]
    mean = np.full(n, np.nan)
    high = np.zeros(n)
    low = np.zeros(n)
    dark = np.zeros(n)
    sharp = np.zeros(n)
    seen: dict[int, tuple[float, float, float, float, float]] = {}
    for k, step in enumerate(steps.tolist()):
        i = int(frame_at_step[step])
        if i not in seen:
            gray = cv2.imdecode(np.frombuffer(jpeg[i], np.uint8), flag)
            if gray is None or gray.size == 0:
                seen[i] = (np.nan, 0.0, 0.0, 0.0, 0.0)
            else:
                pixels = float(gray.size)
                seen[i] = (
                    float(gray.mean()),
                    float(np.count_nonzero(gray >= _CLIP_HIGH)) / pixels,
                    float(np.count_nonzero(gray <= _CLIP_LOW)) / pixels,
                    float(np.count_nonzero(gray <= _DARK)) / pixels,
                    float(cv2.Laplacian(gray, cv2.CV_32F).var()),
                )
        mean[k], high[k], low[k], dark[k], sharp[k] = seen[i]
    return FrameScan(steps=steps, mean=mean, clipped_high=high, clipped_low=low, dark=dark, sharpness=sharp)

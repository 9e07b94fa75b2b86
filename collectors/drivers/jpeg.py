"""JPEG encode and decode for camera frames (OpenCV's libjpeg).

Encoding is deterministic: the same image and quality give the same bytes on
the same OpenCV build, which the simulator's expected-data accessors rely on.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.errors import DriverError


def encode_jpeg(image_bgr: np.ndarray, quality: int = 90) -> bytes:
    """Encode an 8-bit BGR (or grayscale) image as baseline JPEG.

    Args:
        image_bgr: uint8 array of shape ``(H, W, 3)`` in BGR order, or ``(H, W)``.
        quality: libjpeg quality, 1..100.

    Returns:
        The JPEG file bytes.

    Raises:
        DriverError: if the image or quality is invalid or encoding fails.
    """
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise DriverError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8:
        kind = getattr(image_bgr, "dtype", type(image_bgr).__name__)
        raise DriverError(f"cannot encode JPEG: expected a uint8 image, got {kind}")
    if not (image_bgr.ndim == 2 or (image_bgr.ndim == 3 and image_bgr.shape[2] in (1, 3))):
        raise DriverError(f"cannot encode JPEG: expected shape (H, W, 3) or (H, W), got {image_bgr.shape}")
    if image_bgr.shape[0] == 0 or image_bgr.shape[1] == 0:
        raise DriverError(f"cannot encode JPEG: empty image of shape {image_bgr.shape}")
    try:
        ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error as err:
        raise DriverError(f"cannot encode JPEG of shape {image_bgr.shape}: {err}") from err
    if not ok:
        raise DriverError(f"cannot encode JPEG of shape {image_bgr.shape}: OpenCV reported failure")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG bytes into a uint8 BGR image of shape ``(H, W, 3)``.

    Raises:
        DriverError: if the bytes are not a decodable JPEG.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DriverError(f"cannot decode JPEG: expected bytes, got {type(data).__name__}")
    buf = np.frombuffer(data, dtype=np.uint8)
    image = None
    if buf.size:
        try:
            image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        except cv2.error:
            image = None  # same handling as a None result: the bytes are not a JPEG
    if image is None:
        head = bytes(buf[:4]).hex()
        raise DriverError(
            f"cannot decode JPEG: {buf.size} bytes starting with 0x{head or '-'} are not a valid JPEG "
            "(a JPEG starts with 0xffd8)"
        )
    return image

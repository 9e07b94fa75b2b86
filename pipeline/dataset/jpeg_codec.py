"""JPEG as a Zarr 3 array-to-bytes codec: one camera frame per chunk.

Camera arrays are ``(T, H, W, 3)`` uint8 RGB with chunks of ``(1, H, W, 3)``;
each chunk is stored as one ordinary baseline/progressive JPEG (YCbCr, as any
camera or browser writes it), so a chunk's bytes open in any JPEG decoder with
the right colours. OpenCV works in BGR, so the RGB chunk is swapped before
encoding and decoded straight to RGB.

Codec name and configuration (compatibility with imagecodecs)
-------------------------------------------------------------
imagecodecs ships a native Zarr 3 codec, ``imagecodecs.zarr.Jpeg``
(``imagecodecs/zarr.py``; releases that need Python >= 3.12, which is why we
cannot depend on it here). It is registered with ``zarr.registry`` under the
name ``"imagecodecs_jpeg"``, writes ``{"name": "imagecodecs_jpeg"}`` or
``{"name": "imagecodecs_jpeg", "configuration": {...}}`` and passes the
configuration to ``Jpeg(**configuration)``, whose keyword-only options are
``level, bitspersample, tables, header, colorspace_data, colorspace_jpeg,
subsampling, optimize, smoothing, lossless, predictor``. ``level`` is the
libjpeg quality (0-100), exactly what OpenCV calls ``IMWRITE_JPEG_QUALITY``.
Its decoder calls ``jpeg8_decode`` (libjpeg-turbo, output RGB for a YCbCr
JPEG) and reshapes the result to the chunk shape, so a ``(1, H, W, 3)`` chunk
is fine. imagecodecs' numcodecs codec for Zarr 2 (``imagecodecs.numcodecs.Jpeg``)
uses the same id, ``"imagecodecs_jpeg"``, and has accepted ``level`` in every
release; the keys added later (``lossless``, ``predictor``, ...) break older
readers, so an export writes ``level`` only.

We therefore use the same name and only the ``level`` key. The codec entry in
a camera array's ``zarr.json`` (inside the sharding codec) is exactly::

    {"name": "imagecodecs_jpeg", "configuration": {"level": 90}}

``quality`` is this class's name for that setting (the word the rest of
Refinery uses). Checked by hand with imagecodecs 2026.10.10 and zarr 3.4.2
on Python 3.12, without this package: after
``imagecodecs.zarr.register_codecs()`` (or with the ``imagecodecs-zarr``
entry-point package installed) zarr opens our camera arrays, both the
passthrough shards and frames zarr encoded through this codec, and decodes
pixels identical to ours (OpenCV's libjpeg-turbo); arrays imagecodecs wrote
with ``Jpeg(level=90)`` read back identical here too. Its ``Jpeg()`` without
a level writes no configuration at all, which we read with our default.
Other configuration keys (that release also has ``fancyupsampling``) change
how a chunk must be decoded or are encoder settings we would silently drop,
so they are refused with a clear error rather than decoded wrongly. If both
packages register the name in one process, zarr warns and picks one; select
ours with
``zarr.config.set({"codecs.imagecodecs_jpeg": "pipeline.dataset.jpeg_codec.JpegCodec"})``.

Decoding ignores EXIF orientation (as libjpeg does), so every decoder yields
the same pixels.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from pipeline.errors import DatasetError

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer
    from zarr.core.chunk_grids import ChunkGrid
    from zarr.core.dtype.wrapper import TBaseDType, TBaseScalar, ZDType

CODEC_NAME = "imagecodecs_jpeg"
DEFAULT_QUALITY = 90

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# SOF markers C0..CF minus DHT (C4), JPG (C8) and DAC (CC), ITU T.81 table B.1.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Huffman baseline, extended sequential and progressive: what cameras and
# libjpeg write, and what every decoder reads.
SUPPORTED_SOF = frozenset({0xC0, 0xC1, 0xC2})
# Markers without a length field (TEM, RSTn).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})

# OpenCV >= 4.10 decodes straight to RGB; older builds decode BGR and we swap.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
_IMREAD_FLAGS = (_IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's frame header (SOFn) says about the image."""

    sof: int
    precision: int
    height: int
    width: int
    components: int


def read_jpeg_header(data: bytes | memoryview | np.ndarray) -> JpegHeader:
    """Read the frame header of a JPEG without decoding it.

    Walks the marker segments from SOI to the first SOFn marker (a few dozen
    bytes in for a camera frame).

    Args:
        data: The JPEG bytes.

    Returns:
        The SOF marker, sample precision, height, width and component count.

    Raises:
        DatasetError: The bytes are not a JPEG or end before the frame header.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    size = len(buf)
    if size < 4 or bytes(buf[:2]) != SOI:
        raise DatasetError("jpeg", f"not a JPEG: starts with {bytes(buf[:4]).hex() or 'nothing'}, not SOI ffd8")
    pos = 2
    while pos < size:
        if buf[pos] != 0xFF:
            raise DatasetError("jpeg", f"corrupt header: expected a marker at byte {pos}, found {buf[pos]:#04x}")
        while pos < size and buf[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= size:
            break
        marker = buf[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise DatasetError("jpeg", f"no frame header (SOFn) before {'EOI' if marker == 0xD9 else 'SOS'}")
        if pos + 2 > size:
            break
        length = (buf[pos] << 8) | buf[pos + 1]
        if length < 2 or pos + length > size:
            break
        if marker in _SOF_MARKERS:
            if length < 8:
                raise DatasetError("jpeg", f"frame header too short ({length} bytes)")
            return JpegHeader(
                sof=marker,
                precision=buf[pos + 2],
                height=(buf[pos + 3] << 8) | buf[pos + 4],
                width=(buf[pos + 5] << 8) | buf[pos + 6],
                components=buf[pos + 7],
            )
        pos += length
    raise DatasetError("jpeg", f"truncated: {size} bytes end before the frame header (SOFn)")


def has_end_marker(data: bytes | memoryview | np.ndarray) -> bool:
    """Whether a JPEG ends with EOI (allowing zero padding after it, as some camera drivers add)."""
    buf = bytes(data[-64:]) if not isinstance(data, bytes) else data[-64:]
    if buf.endswith(EOI):
        return True
    stripped = buf.rstrip(b"\x00")
    return len(stripped) < len(buf) and stripped.endswith(EOI)


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of a ``(1, H, W, 3)`` or ``(H, W, 3)`` chunk shape."""
    if len(shape) == 4 and shape[0] == 1 and shape[3] == 3:
        return shape[1], shape[2]
    if len(shape) == 3 and shape[2] == 3:
        return shape[0], shape[1]
    raise DatasetError(
        "jpeg codec", f"chunk shape {tuple(shape)} is not one RGB frame; use chunks of (1, H, W, 3) or (H, W, 3)"
    )


def encode_jpeg_chunk(array: np.ndarray, quality: int) -> bytes:
    """Encode one RGB frame as a standard JPEG.

    Args:
        array: uint8 RGB frame, shape ``(1, H, W, 3)`` or ``(H, W, 3)``.
        quality: libjpeg quality, 1-100.

    Returns:
        The JPEG bytes (YCbCr, 4:2:0, OpenCV's defaults).

    Raises:
        DatasetError: Wrong dtype or shape, or OpenCV failed to encode.
    """
    if array.dtype != np.uint8:
        raise DatasetError("jpeg codec", f"can only encode uint8 frames, got {array.dtype}")
    height, width = _image_shape(array.shape)
    bgr = cv2.cvtColor(np.ascontiguousarray(array.reshape(height, width, 3)), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DatasetError("jpeg codec", f"OpenCV could not encode a {height}x{width} frame")
    return encoded.tobytes()


def decode_jpeg_chunk(data: bytes | memoryview | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one JPEG chunk to an RGB array of the chunk's shape.

    Args:
        data: The chunk's bytes.
        shape: The chunk shape, ``(1, H, W, 3)`` or ``(H, W, 3)``.

    Returns:
        uint8 RGB array of ``shape``.

    Raises:
        DatasetError: The bytes are not a complete JPEG, or decode to another size.
    """
    height, width = _image_shape(tuple(shape))
    encoded = np.frombuffer(data, dtype=np.uint8)
    # libjpeg pads a truncated image with grey and only warns; a frame cut
    # short on the wire or on disk must not pass as a picture.
    image = cv2.imdecode(encoded, _IMREAD_FLAGS) if has_end_marker(encoded) else None
    if image is None:
        head = encoded[:4].tobytes().hex() or "nothing"
        raise DatasetError(
            "jpeg chunk",
            f"{encoded.size} bytes (starting {head}) do not decode as a complete JPEG; the chunk is corrupt "
            "or was not written by a JPEG codec: rewrite it from the raw episode",
        )
    if image.shape != (height, width, 3):
        raise DatasetError(
            "jpeg chunk", f"decodes to {image.shape[1]}x{image.shape[0]}, but the array's frames are {width}x{height}"
        )
    if _IMREAD_RGB is None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image.reshape(shape)


def _parse_quality(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 100:
        raise DatasetError("jpeg codec", f"quality (JSON key 'level') must be an integer 1-100, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Zarr 3 array-to-bytes codec storing each chunk as one JPEG.

    Args:
        quality: libjpeg quality used when zarr encodes a chunk; stored as
            ``level`` in ``zarr.json`` for imagecodecs compatibility. Bytes
            written by :mod:`pipeline.dataset.frame_shards` keep the quality
            they arrived with.
    """

    is_fixed_size = False

    quality: int = DEFAULT_QUALITY

    def __init__(self, *, quality: int = DEFAULT_QUALITY) -> None:
        object.__setattr__(self, "quality", _parse_quality(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        """Build the codec from its ``zarr.json`` entry (imagecodecs' format)."""
        _, configuration = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        configuration = configuration or {}
        unsupported = sorted(set(configuration) - {"level"})
        if unsupported:
            raise DatasetError(
                "jpeg codec",
                f"configuration keys {unsupported} are not supported by Refinery's {CODEC_NAME} codec "
                "(only 'level'); open this array with imagecodecs' zarr codec instead",
            )
        level = configuration.get("level")
        return cls(quality=DEFAULT_QUALITY if level is None else _parse_quality(level))

    def to_dict(self) -> dict[str, JSON]:
        """The codec's ``zarr.json`` entry."""
        return {"name": CODEC_NAME, "configuration": {"level": self.quality}}

    def validate(
        self,
        *,
        shape: tuple[int, ...],
        dtype: ZDType[TBaseDType, TBaseScalar],
        chunk_grid: ChunkGrid,
    ) -> None:
        """Refuse arrays that are not uint8 RGB frames, one per chunk."""
        if dtype.to_native_dtype() != np.uint8:
            raise DatasetError("jpeg codec", f"camera arrays must be uint8, got {dtype}")
        chunk_shape = getattr(chunk_grid, "chunk_shape", None)
        if chunk_shape is not None:
            _image_shape(tuple(chunk_shape))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        image = decode_jpeg_chunk(chunk_bytes.as_numpy_array(), chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(image)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        encoded = encode_jpeg_chunk(chunk_array.as_numpy_array(), self.quality)
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    # OpenCV releases the GIL while it codes, so zarr's concurrent chunk
    # reads and writes run on several cores.
    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size depends on the image")


register_codec(CODEC_NAME, JpegCodec)

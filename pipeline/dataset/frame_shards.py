"""Camera arrays written from received JPEG bytes, sharded, without re-encoding.

A camera array is ``(T, H, W, 3)`` uint8 RGB, one frame per chunk
``(1, H, W, 3)``, chunks coded by :class:`~pipeline.dataset.jpeg_codec.JpegCodec`
and grouped ``frames_per_shard`` at a time into shards (``sharding_indexed``),
so an episode of T frames is ``ceil(T / S)`` files, not T.

zarr itself would decode nothing and encode every frame again (about 220
frames/s at 640x480 on one core). Here zarr only writes the array metadata;
each shard is then assembled from the frames' bytes as they came and written
through the array's own store, in the binary layout zarr's sharding codec
reads (Zarr v3 sharding spec; ``zarr/codecs/sharding.py``)::

    chunk 0 bytes | chunk 1 bytes | ... | index
    index = S x (offset u64 LE, nbytes u64 LE) [+ crc32c of those bytes, u32 LE]

with ``index_location`` "end" and index codecs ``bytes`` (little endian) +
``crc32c`` (zarr's defaults; both ``index_location`` values and an index
without checksum are read and written too). Empty slots, such as those past
the end of a partial last shard, are ``(2**64-1, 2**64-1)``. The checksum is
``google_crc32c``, the implementation zarr's ``Crc32cCodec`` uses.

Readers: plain ``array[i]`` works (zarr decodes through the codec);
:func:`read_frames` is the batched fast path for the loader: it reads each
shard's index once, fetches the frames it needs in a few coalesced byte
ranges, and decodes with OpenCV. :func:`read_jpeg_bytes` returns the stored
bytes for passthrough export.

One writer per shard (DESIGN, Zarr pitfalls): :func:`write_jpeg_frames`
writes whole shards of one new array, so it never shares a shard with anyone.
Each shard lands atomically (LocalStore writes a temporary file and renames),
but the array as a whole does not: publish an episode by the dataset's own
commit protocol.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import google_crc32c
import numpy as np
import numpy.typing as npt
import zarr
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.errors import ContainsArrayAndGroupError, ContainsArrayError, ContainsGroupError

from pipeline.dataset.jpeg_codec import (
    CODEC_NAME,
    SUPPORTED_SOF,
    JpegCodec,
    decode_jpeg_chunk,
    has_end_marker,
    read_jpeg_header,
)
from pipeline.errors import DatasetError

FrameIndices = Sequence[int] | npt.NDArray[np.integer[Any]]
DIMENSION_NAMES = ("time", "height", "width", "channel")
EMPTY_SLOT = 2**64 - 1
_CRC = struct.Struct("<I")
# Frames closer than this in a shard are fetched in one read: a 64 KiB gap
# costs less than another request, on disk and far more so on object stores.
_COALESCE_GAP = 64 * 1024
# Read a whole shard instead of its index plus ranges when at least this share
# of its frames is wanted (one request instead of two).
_WHOLE_SHARD_SHARE = 0.5
# Shard reads/writes in flight at once.
_IO_CONCURRENCY = 16


@dataclass(frozen=True)
class _FrameLayout:
    """Where and how one camera array's frames are stored."""

    where: str
    length: int
    height: int
    width: int
    frames_per_shard: int  # 1 for an unsharded array: one key per frame
    sharded: bool
    index_at_end: bool
    index_checksum: bool
    fill_value: int
    store: Store
    prefix: str
    array: zarr.Array

    @property
    def index_size(self) -> int:
        return 16 * self.frames_per_shard + (_CRC.size if self.index_checksum else 0)

    def key(self, chunk: int) -> str:
        chunk_key = self.array.metadata.encode_chunk_key((chunk, 0, 0, 0))
        return f"{self.prefix}/{chunk_key}" if self.prefix else chunk_key


def _frame_layout(array: zarr.Array) -> _FrameLayout:
    """Check that ``array`` is a camera array this module can read and write."""
    where = str(array.store_path)
    metadata = array.metadata
    if metadata.zarr_format != 3:
        raise DatasetError(where, "camera arrays are Zarr format 3; this one is format 2")
    shape = array.shape
    if len(shape) != 4 or shape[3] != 3 or array.dtype != np.uint8:
        raise DatasetError(where, f"not a camera array: shape {shape} {array.dtype}, expected (T, H, W, 3) uint8")
    length, height, width, _ = shape
    frame_chunk = (1, height, width, 3)
    grid_chunk = tuple(metadata.chunk_grid.chunk_shape)
    codecs = metadata.codecs
    sharded = len(codecs) == 1 and isinstance(codecs[0], ShardingCodec)
    if sharded:
        sharding = codecs[0]
        if tuple(sharding.chunk_shape) != frame_chunk or grid_chunk[1:] != frame_chunk[1:]:
            raise DatasetError(
                where, f"shards {grid_chunk} of chunks {sharding.chunk_shape} are not whole frames {frame_chunk}"
            )
        _require_jpeg(where, sharding.codecs)
        index_at_end = sharding.index_location == ShardingCodecIndexLocation.end
        index_checksum = _index_checksum(where, sharding.index_codecs)
    else:
        if grid_chunk != frame_chunk:
            raise DatasetError(where, f"chunks {grid_chunk} are not one frame each {frame_chunk}")
        _require_jpeg(where, codecs)
        index_at_end, index_checksum = True, False
    return _FrameLayout(
        where=where,
        length=length,
        height=height,
        width=width,
        frames_per_shard=grid_chunk[0] if sharded else 1,
        sharded=sharded,
        index_at_end=index_at_end,
        index_checksum=index_checksum,
        fill_value=int(array.fill_value),
        store=array.store_path.store,
        prefix=array.store_path.path,
        array=array,
    )


def _require_jpeg(where: str, codecs: Sequence[Any]) -> None:
    if len(codecs) != 1 or codecs[0].to_dict().get("name") != CODEC_NAME:
        names = [codec.to_dict().get("name") for codec in codecs]
        raise DatasetError(where, f"frames are coded with {names}, not one {CODEC_NAME!r} codec")


def _index_checksum(where: str, index_codecs: Sequence[Any]) -> bool:
    """Whether the shard index carries a crc32c; refuse index codecs we do not write."""
    if (
        1 <= len(index_codecs) <= 2
        and isinstance(index_codecs[0], BytesCodec)
        and index_codecs[0].endian is not None
        and index_codecs[0].endian.value == "little"
        and all(isinstance(codec, Crc32cCodec) for codec in index_codecs[1:])
    ):
        return len(index_codecs) == 2
    names = [codec.to_dict() for codec in index_codecs]
    raise DatasetError(where, f"shard index codecs {names} not supported; expected little-endian bytes [+ crc32c]")


def check_frame(jpeg: bytes, height: int, width: int) -> None:
    """Check, without decoding, that a JPEG can be stored as it is in a ``height x width`` camera array.

    Args:
        jpeg: The frame as received.
        height: The array's frame height.
        width: The array's frame width.

    Raises:
        DatasetError: Not a JPEG, truncated, another size, not 8-bit three-component
            (YCbCr) Huffman JPEG. All but a truncated frame can be fixed with
            :func:`conform_frame`.
    """
    header = read_jpeg_header(jpeg)
    fix = f"re-encode it with conform_frame(jpeg, {height}, {width}, quality)"
    if (header.height, header.width) != (height, width):
        raise DatasetError("jpeg", f"is {header.width}x{header.height}, the array's frames are {width}x{height}: {fix}")
    if header.sof not in SUPPORTED_SOF:
        raise DatasetError("jpeg", f"uses SOF marker {header.sof:#04x} (lossless, hierarchical or arithmetic): {fix}")
    if header.precision != 8:
        raise DatasetError("jpeg", f"has {header.precision}-bit samples, not 8-bit: {fix}")
    if header.components != 3:
        raise DatasetError("jpeg", f"has {header.components} colour components, not 3: {fix}")
    if not has_end_marker(jpeg):
        raise DatasetError("jpeg", "is truncated (no end-of-image marker): drop the frame")


def conform_frame(jpeg: bytes, height: int, width: int, quality: int) -> bytes:
    """Decode a frame, resize it to ``height x width`` and encode it again.

    For frames :func:`check_frame` refuses; the pixels change, so this is the
    slow path (decode + resize + encode).

    Args:
        jpeg: The frame as received.
        height: Target height.
        width: Target width.
        quality: JPEG quality of the new frame, 1-100.

    Returns:
        A baseline 8-bit YCbCr JPEG of ``height x width``.

    Raises:
        DatasetError: The frame does not decode or is truncated.
    """
    encoded = np.frombuffer(jpeg, dtype=np.uint8)
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if has_end_marker(jpeg) else None
    if image is None:
        raise DatasetError("jpeg", f"{encoded.size} bytes do not decode as a complete JPEG: drop the frame")
    if image.shape[:2] != (height, width):
        shrinking = image.shape[0] * image.shape[1] > height * width
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    ok, out = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DatasetError("jpeg", f"OpenCV could not encode a {width}x{height} frame")
    return out.tobytes()


def encode_shard(
    frames: Sequence[bytes | None], frames_per_shard: int, *, index_at_end: bool = True, checksum: bool = True
) -> bytes:
    """Assemble one shard from chunk bytes, in zarr's ``sharding_indexed`` layout.

    Args:
        frames: The shard's chunks in time order; fewer than ``frames_per_shard``
            for a partial last shard (the remaining slots are marked empty).
            ``None`` marks an empty slot (a step without a frame: it reads as
            the array's fill value).
        frames_per_shard: Chunks per shard (the index has this many entries).
        index_at_end: ``index_location`` "end" (zarr's default) or "start".
        checksum: Whether the index codecs end with ``crc32c``.

    Returns:
        The shard's bytes.
    """
    count = len(frames)
    if count > frames_per_shard:
        raise DatasetError("shard", f"{count} frames do not fit a shard of {frames_per_shard}")
    present = np.fromiter((frame is not None for frame in frames), dtype=bool, count=count)
    lengths = np.fromiter((len(frame) if frame is not None else 0 for frame in frames), dtype=np.uint64, count=count)
    index = np.full((frames_per_shard, 2), EMPTY_SLOT, dtype="<u8")
    index_size = 16 * frames_per_shard + (_CRC.size if checksum else 0)
    first = 0 if index_at_end else index_size
    if count:
        offsets = first + np.cumsum(lengths) - lengths
        index[:count, 0] = np.where(present, offsets, EMPTY_SLOT)
        index[:count, 1] = np.where(present, lengths, EMPTY_SLOT)
    index_bytes = index.tobytes()
    if checksum:
        index_bytes += _CRC.pack(google_crc32c.value(index_bytes))
    chunks = [frame for frame in frames if frame is not None]
    # One join, one copy of the frames: a shard is megabytes.
    return b"".join([*chunks, index_bytes] if index_at_end else [index_bytes, *chunks])


def decode_shard_index(index_bytes: bytes, frames_per_shard: int, *, checksum: bool = True) -> npt.NDArray[np.uint64]:
    """Parse a shard index into ``(frames_per_shard, 2)`` (offset, nbytes); empty slots are ``2**64-1``.

    Raises:
        DatasetError: Wrong size or checksum mismatch.
    """
    expected = 16 * frames_per_shard + (_CRC.size if checksum else 0)
    if len(index_bytes) != expected:
        raise DatasetError("shard index", f"{len(index_bytes)} bytes, expected {expected}")
    table = index_bytes[: 16 * frames_per_shard]
    if checksum:
        (stored,) = _CRC.unpack(index_bytes[-_CRC.size :])
        if google_crc32c.value(table) != stored:
            raise DatasetError("shard index", "crc32c mismatch: the shard is corrupt")
    return np.frombuffer(table, dtype="<u8").reshape(frames_per_shard, 2)


def write_jpeg_frames(
    group: zarr.Group,
    name: str,
    frames: Sequence[bytes],
    height: int,
    width: int,
    *,
    frames_per_shard: int = 128,
    quality_hint: int = 90,
    attributes: dict[str, Any] | None = None,
) -> zarr.Array:
    """Create a camera array in ``group`` from JPEG frames, storing their bytes unchanged.

    Every frame is checked first (header only, see :func:`check_frame`); nothing
    is created unless all pass. zarr writes the array metadata (a standard
    ``zarr.json``), then each shard is written whole.

    Args:
        group: The group to create the array in.
        name: The array's name in ``group``.
        frames: One JPEG per time step, each ``height x width``, 3 components.
        height: Frame height.
        width: Frame width.
        frames_per_shard: Frames per shard file.
        quality_hint: The codec's ``level``, used only if zarr itself ever
            encodes a frame of this array (``array[i] = image``).
        attributes: The array's user attributes.

    Returns:
        The new array, ``(len(frames), height, width, 3)`` uint8.

    Raises:
        DatasetError: A frame is not a fitting JPEG (the message names its
            index), the arguments are invalid, or ``name`` already exists.
    """
    where = f"{str(group.store_path).rstrip('/')}/{name}"
    if height < 1 or width < 1 or frames_per_shard < 1:
        problem = f"height {height}, width {width} and frames_per_shard {frames_per_shard} must all be >= 1"
        raise DatasetError(where, problem)
    for index, frame in enumerate(frames):
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise DatasetError(where, f"is a {type(frame).__name__}, not JPEG bytes", index=index)
        try:
            check_frame(frame, height, width)
        except DatasetError as err:
            raise DatasetError(where, err.problem, index=index) from err
    try:
        array = group.create_array(
            name,
            shape=(len(frames), height, width, 3),
            dtype=np.uint8,
            chunks=(1, height, width, 3),
            shards=(frames_per_shard, height, width, 3),
            serializer=JpegCodec(quality=quality_hint),
            compressors=None,
            fill_value=0,
            dimension_names=DIMENSION_NAMES,
            attributes=attributes,
        )
    except (ContainsArrayError, ContainsGroupError, ContainsArrayAndGroupError) as err:
        raise DatasetError(where, "already exists: remove it or write under another name") from err
    layout = _frame_layout(array)
    sync(_write_shards(layout, frames))
    return array


async def _write_shards(layout: _FrameLayout, frames: Sequence[bytes]) -> None:
    prototype = default_buffer_prototype()
    per_shard = layout.frames_per_shard
    limit = asyncio.Semaphore(_IO_CONCURRENCY)

    async def write(shard: int) -> None:
        async with limit:
            data = encode_shard(
                frames[shard * per_shard : (shard + 1) * per_shard],
                per_shard,
                index_at_end=layout.index_at_end,
                checksum=layout.index_checksum,
            )
            await layout.store.set(layout.key(shard), prototype.buffer.from_bytes(data))

    await asyncio.gather(*(write(shard) for shard in range(-(-len(frames) // per_shard))))


def _frame_indices(layout: _FrameLayout, indices: FrameIndices) -> npt.NDArray[np.int64]:
    wanted = np.asarray(indices)
    if wanted.ndim != 1 or (wanted.size and not np.issubdtype(wanted.dtype, np.integer)):
        problem = f"frame indices must be a 1-D sequence of integers, got {wanted.dtype} {wanted.shape}"
        raise DatasetError(layout.where, problem)
    wanted = wanted.astype(np.int64)
    bad = (wanted < -layout.length) | (wanted >= layout.length)
    if bad.any():
        raise DatasetError(layout.where, f"out of range for {layout.length} frames", index=int(wanted[bad][0]))
    return np.where(wanted < 0, wanted + layout.length, wanted)


async def _fetch_frames(layout: _FrameLayout, frames: npt.NDArray[np.int64]) -> dict[int, memoryview | None]:
    """Stored bytes of each of ``frames`` (unique), None where nothing was written."""
    prototype = default_buffer_prototype()
    store = layout.store
    limit = asyncio.Semaphore(_IO_CONCURRENCY)
    found: dict[int, memoryview | None] = {}

    async def get(key: str, byte_range: Any = None) -> memoryview | None:
        async with limit:
            buffer = await store.get(key, prototype=prototype, byte_range=byte_range)
        return None if buffer is None else memoryview(buffer.as_numpy_array())

    async def unsharded(frame: int) -> None:
        found[frame] = await get(layout.key(frame))

    async def sharded(shard: int, wanted: npt.NDArray[np.int64]) -> None:
        key = layout.key(shard)
        per_shard = layout.frames_per_shard
        in_shard = min(per_shard, layout.length - shard * per_shard)
        whole: memoryview | None = None
        if wanted.size >= _WHOLE_SHARD_SHARE * in_shard:
            whole = await get(key)
            raw_index = None if whole is None else _index_part(layout, whole)
        elif layout.index_at_end:
            raw_index = await get(key, SuffixByteRequest(layout.index_size))
        else:
            raw_index = await get(key, RangeByteRequest(0, layout.index_size))
        if raw_index is None:
            found.update(dict.fromkeys(wanted.tolist()))
            return
        try:
            table = decode_shard_index(bytes(raw_index), per_shard, checksum=layout.index_checksum)
        except DatasetError as err:
            raise DatasetError(f"{layout.where} ({key})", err.problem) from err
        slots = table[wanted - shard * per_shard]
        present = slots[:, 0] != EMPTY_SLOT
        for frame in wanted[~present].tolist():
            found[frame] = None
        starts = slots[present, 0].astype(np.int64)
        ends = starts + slots[present, 1].astype(np.int64)
        frames_present = wanted[present]
        if whole is not None:
            if ends.size and int(ends.max()) > len(whole):
                raise DatasetError(f"{layout.where} ({key})", "index points past the end of the shard: it is corrupt")
            for frame, start, end in zip(frames_present.tolist(), starts.tolist(), ends.tolist(), strict=True):
                found[frame] = whole[start:end]
            return
        await asyncio.gather(*(fetch_group(key, group) for group in _coalesce(frames_present, starts, ends)))

    async def fetch_group(key: str, group: list[tuple[int, int, int]]) -> None:
        first, last = group[0][1], max(end for _, _, end in group)
        data = await get(key, RangeByteRequest(first, last))
        if data is None or len(data) != last - first:
            raise DatasetError(f"{layout.where} ({key})", "shard shorter than its index says: the shard is corrupt")
        for frame, start, end in group:
            found[frame] = data[start - first : end - first]

    if layout.sharded:
        shards = frames // layout.frames_per_shard
        await asyncio.gather(*(sharded(int(shard), frames[shards == shard]) for shard in np.unique(shards)))
    else:
        await asyncio.gather(*(unsharded(int(frame)) for frame in frames))
    return found


def _index_part(layout: _FrameLayout, shard: memoryview) -> memoryview:
    if len(shard) < layout.index_size:
        return shard  # decode_shard_index reports the wrong size
    return shard[-layout.index_size :] if layout.index_at_end else shard[: layout.index_size]


def _coalesce(
    frames: npt.NDArray[np.int64], starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
) -> list[list[tuple[int, int, int]]]:
    """Group chunk byte ranges that lie close together into single reads."""
    order = np.argsort(starts, kind="stable")
    groups: list[list[tuple[int, int, int]]] = []
    reach = -1
    for i in order.tolist():
        item = (int(frames[i]), int(starts[i]), int(ends[i]))
        if groups and item[1] - reach <= _COALESCE_GAP:
            groups[-1].append(item)
            reach = max(reach, item[2])
        else:
            groups.append([item])
            reach = item[2]
    return groups


def read_jpeg_bytes(array: zarr.Array, indices: FrameIndices) -> list[bytes]:
    """The stored JPEG bytes of frames ``indices`` (for passthrough export).

    Args:
        array: A camera array (sharded or one key per frame, JPEG codec).
        indices: Frame indices; negative counts from the end; repeats allowed.

    Returns:
        One ``bytes`` per index, exactly as stored.

    Raises:
        DatasetError: Not a camera array, an index out of range, a frame never
            written, or a corrupt shard.
    """
    layout = _frame_layout(array)
    wanted = _frame_indices(layout, indices)
    found = sync(_fetch_frames(layout, np.unique(wanted)))
    result: list[bytes] = []
    for frame in wanted.tolist():
        data = found[frame]
        if data is None:
            raise DatasetError(layout.where, "was never written (no bytes stored)", index=frame)
        result.append(bytes(data))
    return result


def read_frames(array: zarr.Array, indices: FrameIndices) -> npt.NDArray[np.uint8]:
    """Decode frames ``indices`` of a camera array in one batched read.

    Same pixels as ``array[i]`` (same decoder), at a fraction of zarr's
    per-read cost: each shard's index is read once and nearby frames in one
    request. Frames never written read as the fill value, as in zarr.

    Args:
        array: A camera array (sharded or one key per frame, JPEG codec).
        indices: Frame indices; negative counts from the end; repeats allowed.

    Returns:
        ``(len(indices), H, W, 3)`` uint8 RGB.

    Raises:
        DatasetError: Not a camera array, an index out of range, or a frame or
            shard that does not decode (the message names the frame).
    """
    layout = _frame_layout(array)
    wanted = _frame_indices(layout, indices)
    unique = np.unique(wanted)
    found = sync(_fetch_frames(layout, unique))
    out = np.empty((wanted.size, layout.height, layout.width, 3), dtype=np.uint8)
    first_position: dict[int, int] = {}
    frame_shape = (layout.height, layout.width, 3)
    for position, frame in enumerate(wanted.tolist()):
        earlier = first_position.get(frame)
        if earlier is not None:
            out[position] = out[earlier]
            continue
        first_position[frame] = position
        data = found[frame]
        if data is None:
            out[position] = layout.fill_value
            continue
        try:
            out[position] = decode_jpeg_chunk(data, frame_shape)
        except DatasetError as err:
            raise DatasetError(layout.where, err.problem, index=frame) from err
    return out

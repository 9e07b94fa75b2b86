"""Camera arrays written from received JPEG bytes: stored as they came, readable by plain zarr."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import cv2
import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

from pipeline.dataset.frame_shards import (
    conform_frame,
    encode_shard,
    read_frames,
    read_jpeg_bytes,
    write_jpeg_frames,
)
from pipeline.dataset.jpeg_codec import JpegCodec, read_jpeg_header
from pipeline.errors import DatasetError

H, W = 48, 64
EMPTY = 2**64 - 1


def camera_jpeg(seed: int, height: int = H, width: int = W, *, quality: int = 85, gray: bool = False) -> bytes:
    """A frame as a camera would send it: textured, encoded by OpenCV (BGR in, standard JPEG out)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = rng.uniform(30, 220, 3) + 0.8 * x[..., None] * rng.uniform(-1, 1, 3)
    image += 25 * np.sin(y[..., None] / rng.uniform(2, 9)) + rng.normal(0, 6, (height, width, 3))
    bgr = np.clip(image, 0, 255).astype(np.uint8)
    if gray:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def reference_rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def shard_file(root: Path, name: str, shard: int) -> Path:
    return root / name / "c" / str(shard) / "0" / "0" / "0"


def parse_shard(data: bytes, frames_per_shard: int) -> list[tuple[int, int]]:
    """The sharding spec's layout, decoded independently of the module under test."""
    table, crc = data[-(16 * frames_per_shard + 4) : -4], data[-4:]
    assert struct.unpack("<I", crc)[0] == google_crc32c.value(table)  # crc32c of the index, u32 LE
    return [struct.unpack_from("<QQ", table, 16 * i) for i in range(frames_per_shard)]  # (offset, nbytes) u64 LE


@pytest.fixture
def root(tmp_path: Path) -> zarr.Group:
    return zarr.open_group(zarr.storage.LocalStore(tmp_path / "data.zarr"), mode="w")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "data.zarr"


FRAMES = [camera_jpeg(seed) for seed in range(10)]


def test_stored_bytes_are_exactly_the_received_bytes(root: zarr.Group, store_dir: Path) -> None:
    write_jpeg_frames(root, "cam", FRAMES, H, W, frames_per_shard=4)
    for frame, jpeg in enumerate(FRAMES):
        data = shard_file(store_dir, "cam", frame // 4).read_bytes()
        offset, nbytes = parse_shard(data, 4)[frame % 4]
        assert data[offset : offset + nbytes] == jpeg


def test_shard_is_chunks_then_index(root: zarr.Group, store_dir: Path) -> None:
    write_jpeg_frames(root, "cam", FRAMES[:4], H, W, frames_per_shard=4)
    data = shard_file(store_dir, "cam", 0).read_bytes()
    payload = b"".join(FRAMES[:4])
    assert data[: len(payload)] == payload
    assert len(data) == len(payload) + 4 * 16 + 4  # 4 x (offset u64, nbytes u64) + crc32c u32


def test_plain_zarr_reads_the_pixels_any_decoder_sees(root: zarr.Group) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES, H, W, frames_per_shard=4)
    for frame, jpeg in enumerate(FRAMES):
        np.testing.assert_array_equal(array[frame], reference_rgb(jpeg))


def test_read_frames_equals_array_reads(root: zarr.Group) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES, H, W, frames_per_shard=4)
    indices = [9, 0, 3, 3, -1, 5, 4, 8]
    expected = np.stack([array[i] for i in indices])
    np.testing.assert_array_equal(read_frames(array, indices), expected)


def test_read_frames_of_whole_array_equals_array_slice(root: zarr.Group) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES, H, W, frames_per_shard=4)
    np.testing.assert_array_equal(read_frames(array, np.arange(10)), array[:])


def test_read_jpeg_bytes_returns_the_received_bytes(root: zarr.Group) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES, H, W, frames_per_shard=4)
    assert read_jpeg_bytes(array, [7, 0, 7, 2]) == [FRAMES[7], FRAMES[0], FRAMES[7], FRAMES[2]]


def test_partial_last_shard_marks_missing_slots_empty(root: zarr.Group, store_dir: Path) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES, H, W, frames_per_shard=4)
    slots = parse_shard(shard_file(store_dir, "cam", 2).read_bytes(), 4)
    assert slots[0] == (0, len(FRAMES[8]))
    assert slots[1] == (len(FRAMES[8]), len(FRAMES[9]))
    assert slots[2:] == [(EMPTY, EMPTY), (EMPTY, EMPTY)]
    np.testing.assert_array_equal(array[8:10], np.stack([reference_rgb(FRAMES[8]), reference_rgb(FRAMES[9])]))


def test_frame_of_another_size_is_refused_by_index(root: zarr.Group) -> None:
    frames = [*FRAMES[:3], camera_jpeg(99, 32, 32), *FRAMES[3:]]
    with pytest.raises(DatasetError, match=r"frame 3: is 32x32, the array's frames are 64x48") as caught:
        write_jpeg_frames(root, "cam", frames, H, W)
    assert caught.value.index == 3
    assert "cam" not in root  # nothing written when any frame is refused


def test_non_jpeg_is_refused_by_index(root: zarr.Group) -> None:
    png = cv2.imencode(".png", np.zeros((H, W, 3), np.uint8))[1].tobytes()
    with pytest.raises(DatasetError, match="frame 1: not a JPEG"):
        write_jpeg_frames(root, "cam", [FRAMES[0], png], H, W)


def test_truncated_jpeg_is_refused(root: zarr.Group) -> None:
    with pytest.raises(DatasetError, match="frame 0: is truncated"):
        write_jpeg_frames(root, "cam", [FRAMES[0][:-100]], H, W)


def test_greyscale_jpeg_is_refused(root: zarr.Group) -> None:
    with pytest.raises(DatasetError, match="1 colour components"):
        write_jpeg_frames(root, "cam", [camera_jpeg(1, gray=True)], H, W)


def test_conform_frame_makes_a_refused_frame_storable(root: zarr.Group) -> None:
    fixed = [conform_frame(camera_jpeg(5, 96, 128), H, W, 90), conform_frame(camera_jpeg(6, gray=True), H, W, 90)]
    header = read_jpeg_header(fixed[0])
    assert (header.height, header.width, header.components) == (H, W, 3)
    array = write_jpeg_frames(root, "cam", fixed, H, W)
    np.testing.assert_array_equal(array[0], reference_rgb(fixed[0]))


def test_existing_name_is_refused(root: zarr.Group) -> None:
    write_jpeg_frames(root, "cam", FRAMES[:2], H, W)
    with pytest.raises(DatasetError, match="already exists"):
        write_jpeg_frames(root, "cam", FRAMES[:2], H, W)


def test_reopened_store_reads_the_same(root: zarr.Group, store_dir: Path) -> None:
    episode = root.create_group("episode_0")
    write_jpeg_frames(episode, "cam", FRAMES, H, W, frames_per_shard=4, attributes={"fps": 30})
    reopened = zarr.open_group(store_dir, mode="r")["episode_0/cam"]
    assert isinstance(reopened, zarr.Array)
    assert reopened.shape == (10, H, W, 3)
    assert reopened.attrs["fps"] == 30
    assert reopened.metadata.dimension_names == ("time", "height", "width", "channel")
    np.testing.assert_array_equal(reopened[6], reference_rgb(FRAMES[6]))
    np.testing.assert_array_equal(read_frames(reopened, [6]), reopened[6:7])


def test_metadata_is_standard_sharded_jpeg(root: zarr.Group, store_dir: Path) -> None:
    write_jpeg_frames(root, "cam", FRAMES, H, W, frames_per_shard=4, quality_hint=80)
    metadata = json.loads((store_dir / "cam" / "zarr.json").read_text())
    assert metadata["chunk_grid"]["configuration"]["chunk_shape"] == [4, H, W, 3]
    assert metadata["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
    assert metadata["codecs"] == [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [1, H, W, 3],
                "codecs": [{"name": "imagecodecs_jpeg", "configuration": {"level": 80}}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                "index_location": "end",
            },
        }
    ]


def test_many_shards_make_few_files(root: zarr.Group, store_dir: Path) -> None:
    frames = [FRAMES[i % 10] for i in range(100)]
    array = write_jpeg_frames(root, "cam", frames, H, W, frames_per_shard=16)
    files = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if p.is_file())
    assert len(files) == math.ceil(100 / 16) + 2  # shards + the array's and the group's zarr.json
    assert [f for f in files if f.endswith("zarr.json")] == ["cam/zarr.json", "zarr.json"]
    sparse = [0, 2, 15, 50, 99]  # under half of each shard: index + coalesced ranges
    np.testing.assert_array_equal(read_frames(array, sparse), array[sparse])


def test_empty_episode_writes_no_shards(root: zarr.Group, store_dir: Path) -> None:
    array = write_jpeg_frames(root, "cam", [], H, W)
    assert array.shape == (0, H, W, 3)
    assert not (store_dir / "cam" / "c").exists()


def test_read_frames_of_zarr_written_shards_with_gaps(root: zarr.Group) -> None:
    array = root.create_array(
        "cam",
        shape=(8, H, W, 3),
        dtype="uint8",
        chunks=(1, H, W, 3),
        shards=(4, H, W, 3),
        serializer=JpegCodec(),
        compressors=None,
        fill_value=0,
    )
    array[1] = reference_rgb(FRAMES[1])
    array[6] = reference_rgb(FRAMES[6])
    np.testing.assert_array_equal(read_frames(array, range(8)), array[:])
    assert not read_frames(array, [0])[0].any()
    with pytest.raises(DatasetError, match="frame 0: was never written"):
        read_jpeg_bytes(array, [0])


def test_read_frames_of_unsharded_array(root: zarr.Group) -> None:
    array = root.create_array(
        "cam", shape=(3, H, W, 3), dtype="uint8", chunks=(1, H, W, 3), serializer=JpegCodec(), compressors=None
    )
    array[:] = np.stack([reference_rgb(FRAMES[i]) for i in range(3)])
    np.testing.assert_array_equal(read_frames(array, [2, 0]), array[[2, 0]])


def test_out_of_range_index_is_refused(root: zarr.Group) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES[:3], H, W)
    with pytest.raises(DatasetError, match="frame 3: out of range for 3 frames"):
        read_frames(array, [0, 3])


def test_corrupt_shard_index_is_detected(root: zarr.Group, store_dir: Path) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES[:4], H, W, frames_per_shard=4)
    path = shard_file(store_dir, "cam", 0)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # a bit flip inside the index
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="crc32c mismatch"):
        read_frames(array, [1])


def test_corrupt_frame_in_shard_names_the_frame(root: zarr.Group, store_dir: Path) -> None:
    array = write_jpeg_frames(root, "cam", FRAMES[:4], H, W, frames_per_shard=4)
    path = shard_file(store_dir, "cam", 0)
    data = bytearray(path.read_bytes())
    offset, nbytes = parse_shard(bytes(data), 4)[2]
    data[offset : offset + nbytes] = b"\x00" * nbytes  # frame 2 zeroed, index still valid
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="frame 2: .* do not decode"):
        read_frames(array, [1, 2])
    with pytest.raises(DatasetError, match="do not decode"):
        array[2]


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("checksum", [True, False])
def test_encode_shard_matches_zarrs_own_shard_bytes(tmp_path: Path, index_location: str, checksum: bool) -> None:
    index_codecs = [BytesCodec(endian="little"), Crc32cCodec()] if checksum else [BytesCodec(endian="little")]
    sharding = ShardingCodec(
        chunk_shape=(1, H, W, 3), codecs=[JpegCodec()], index_codecs=index_codecs, index_location=index_location
    )
    store = tmp_path / "zarr_written.zarr"
    array = zarr.create_array(
        zarr.storage.LocalStore(store),
        shape=(6, H, W, 3),
        dtype="uint8",
        chunks=(4, H, W, 3),
        serializer=sharding,
        compressors=None,
        fill_value=0,
    )
    array[:] = np.stack([reference_rgb(FRAMES[i]) for i in range(6)])  # zarr encodes every frame itself
    chunks = read_jpeg_bytes(array, range(6))
    for shard, frames in enumerate([chunks[:4], chunks[4:]]):
        expected = (store / "c" / str(shard) / "0" / "0" / "0").read_bytes()
        assert encode_shard(frames, 4, index_at_end=index_location == "end", checksum=checksum) == expected
    np.testing.assert_array_equal(read_frames(array, [5, 0, 2]), array[[5, 0, 2]])  # whole shards
    np.testing.assert_array_equal(read_frames(array, [1]), array[[1]])  # index + one range

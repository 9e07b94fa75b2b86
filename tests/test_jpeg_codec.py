"""The JPEG chunk codec: zarr round trips, the zarr.json it writes, and corrupt chunks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dataset.jpeg_codec import (
    CODEC_NAME,
    JpegCodec,
    decode_jpeg_chunk,
    encode_jpeg_chunk,
    read_jpeg_header,
)
from pipeline.errors import DatasetError, RefineryError

H, W = 48, 64


def smooth_rgb(seed: int, height: int = H, width: int = W) -> np.ndarray:
    """A camera-like frame: colour gradients and a soft blob, no hard edges (JPEG's easy case)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-1.0, 1.0, (2, 3))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    blob = 60 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (0.25 * width) ** 2))
    image = base + y[..., None] * slope[0] + x[..., None] * slope[1] + blob[..., None] * rng.uniform(-1, 1, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def camera_array(path: Path, frames: int = 4, *, quality: int = 95, shards: int | None = None) -> zarr.Array:
    return zarr.create_array(
        zarr.storage.LocalStore(path),
        shape=(frames, H, W, 3),
        dtype="uint8",
        chunks=(1, H, W, 3),
        shards=None if shards is None else (shards, H, W, 3),
        serializer=JpegCodec(quality=quality),
        compressors=None,
        fill_value=0,
    )


@pytest.mark.parametrize("shards", [None, 4])
def test_assigned_frame_reads_back_within_jpeg_error(tmp_path: Path, shards: int | None) -> None:
    array = camera_array(tmp_path / "cam.zarr", shards=shards)
    image = smooth_rgb(1)
    array[2] = image
    error = np.abs(array[2].astype(int) - image.astype(int))
    # Quality 95 on a smooth frame: JPEG's error is a few levels, far from a colour swap (~100).
    assert error.mean() < 1.5
    assert error.max() <= 12


def test_unwritten_frames_read_as_fill_value(tmp_path: Path) -> None:
    array = camera_array(tmp_path / "cam.zarr", shards=4)
    array[1] = smooth_rgb(2)
    assert not array[0].any()


def test_stored_chunk_is_a_standard_jpeg_with_true_colours(tmp_path: Path) -> None:
    array = camera_array(tmp_path / "cam.zarr")
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 255
    array[0] = red
    stored = (tmp_path / "cam.zarr" / "c" / "0" / "0" / "0" / "0").read_bytes()
    bgr = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
    # A standard decoder sees red: high in OpenCV's last (red) channel.
    b, g, r = bgr.reshape(-1, 3).mean(axis=0)
    assert r > 240 and b < 10 and g < 10


def test_zarr_json_names_the_codec_as_imagecodecs_does(tmp_path: Path) -> None:
    camera_array(tmp_path / "cam.zarr", quality=83, shards=4)
    metadata = json.loads((tmp_path / "cam.zarr" / "zarr.json").read_text())
    (sharding,) = metadata["codecs"]
    assert sharding["name"] == "sharding_indexed"
    assert sharding["configuration"]["codecs"] == [{"name": "imagecodecs_jpeg", "configuration": {"level": 83}}]


def test_codec_json_round_trips() -> None:
    codec = JpegCodec(quality=77)
    assert codec.to_dict() == {"name": CODEC_NAME, "configuration": {"level": 77}}
    assert JpegCodec.from_dict(codec.to_dict()) == codec


def test_codec_reads_imagecodecs_entry_without_configuration() -> None:
    assert JpegCodec.from_dict({"name": "imagecodecs_jpeg"}) == JpegCodec()


def test_codec_refuses_configuration_that_changes_decoding() -> None:
    with pytest.raises(DatasetError, match="'tables'"):
        JpegCodec.from_dict({"name": "imagecodecs_jpeg", "configuration": {"level": 90, "tables": "AAA="}})


@pytest.mark.parametrize("quality", [0, 101, 90.0, True, "90"])
def test_codec_refuses_invalid_quality(quality: object) -> None:
    with pytest.raises(DatasetError, match="1-100"):
        JpegCodec(quality=quality)  # type: ignore[arg-type]


def test_reopened_array_uses_the_registered_codec(tmp_path: Path) -> None:
    camera_array(tmp_path / "cam.zarr", quality=70, shards=2)
    reopened = zarr.open_array(zarr.storage.LocalStore(tmp_path / "cam.zarr"), mode="r")
    assert reopened.metadata.codecs[0].codecs == (JpegCodec(quality=70),)


def test_garbage_chunk_raises_dataset_error(tmp_path: Path) -> None:
    array = camera_array(tmp_path / "cam.zarr")
    array[0] = smooth_rgb(3)
    (tmp_path / "cam.zarr" / "c" / "0" / "0" / "0" / "0").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match="do not decode as a complete JPEG") as caught:
        array[0]
    assert isinstance(caught.value, RefineryError)


def test_truncated_chunk_raises_instead_of_grey_pixels(tmp_path: Path) -> None:
    array = camera_array(tmp_path / "cam.zarr")
    array[0] = smooth_rgb(4)
    chunk = tmp_path / "cam.zarr" / "c" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="complete JPEG"):
        array[0]


def test_chunk_of_another_size_raises(tmp_path: Path) -> None:
    array = camera_array(tmp_path / "cam.zarr")
    array[0] = smooth_rgb(5)
    other = cv2.imencode(".jpg", smooth_rgb(5, 32, 32))[1].tobytes()
    (tmp_path / "cam.zarr" / "c" / "0" / "0" / "0" / "0").write_bytes(other)
    with pytest.raises(DatasetError, match="decodes to 32x32"):
        array[0]


def test_encode_accepts_frame_with_or_without_time_axis() -> None:
    image = smooth_rgb(6)
    assert encode_jpeg_chunk(image, 90) == encode_jpeg_chunk(image[None], 90)
    decoded = decode_jpeg_chunk(encode_jpeg_chunk(image, 90), (1, H, W, 3))
    assert decoded.shape == (1, H, W, 3)


def test_encode_refuses_non_frames() -> None:
    with pytest.raises(DatasetError, match="uint8"):
        encode_jpeg_chunk(np.zeros((H, W, 3), np.float32), 90)
    with pytest.raises(DatasetError, match="not one RGB frame"):
        encode_jpeg_chunk(np.zeros((2, H, W, 3), np.uint8), 90)


def test_array_that_is_not_one_frame_per_chunk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not one RGB frame"):
        zarr.create_array(
            zarr.storage.LocalStore(tmp_path / "bad.zarr"),
            shape=(4, H, W, 3),
            dtype="uint8",
            chunks=(2, H, W, 3),
            serializer=JpegCodec(),
            compressors=None,
        )


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    quality=st.integers(1, 100),
    progressive=st.booleans(),
)
def test_header_reader_agrees_with_the_encoder(height: int, width: int, quality: int, progressive: bool) -> None:
    image = np.zeros((height, width, 3), np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    header = read_jpeg_header(cv2.imencode(".jpg", image, params)[1].tobytes())
    assert (header.height, header.width, header.components, header.precision) == (height, width, 3, 8)
    assert header.sof == (0xC2 if progressive else 0xC0)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not a JPEG"),
        (b"\x89PNG\r\n\x1a\n", "not a JPEG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated"),
        (b"\xff\xd8\xff\xd9", "no frame header"),
    ],
)
def test_header_reader_refuses_non_jpeg(data: bytes, problem: str) -> None:
    with pytest.raises(DatasetError, match=problem):
        read_jpeg_header(data)

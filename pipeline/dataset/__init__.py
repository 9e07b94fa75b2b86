"""The Zarr v3 dataset: index, data segments, loader, curation.

Importing this package registers the camera arrays' JPEG codec with zarr
(``imagecodecs_jpeg``), so ``zarr.open`` reads camera frames.
"""

from typing import Any

from pipeline.dataset import jpeg_codec as _jpeg_codec  # noqa: F401  (registers the codec)

__all__ = ["EpisodeDataset"]


def __getattr__(name: str) -> Any:
    # The loader pulls in OpenCV and the index reader: import it when asked for,
    # not whenever a writer or the codec is needed.
    if name == "EpisodeDataset":
        from pipeline.dataset.loader import EpisodeDataset

        return EpisodeDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

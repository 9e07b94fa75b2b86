"""The Zarr v3 dataset: layout, writer, index, loader.

Importing this package registers the camera arrays' JPEG codec with zarr
(``imagecodecs_jpeg``), so ``zarr.open`` reads camera frames.
"""

from pipeline.dataset import jpeg_codec as _jpeg_codec  # noqa: F401  (registers the codec)

from pipeline.dataset.loader import EpisodeDataset

__all__ = ["EpisodeDataset"]

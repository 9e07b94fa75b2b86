"""A PyTorch ``Dataset`` over :class:`~pipeline.dataset.loader.EpisodeDataset`.

torch is optional (``pip install 'teleop-refinery[torch]'``) and imported only
when this adapter is used::

    from pipeline.dataset.torch_adapter import to_torch
    train = to_torch(EpisodeDataset("data.zarr", split="train", image_size=(224, 224)), images="float")
    val = to_torch(EpisodeDataset("data.zarr", split="val", image_size=(224, 224)), images="float")
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, num_workers=8)

Every array of a sample becomes a tensor of the same dtype (numeric keys
float32, ``timestamps_ns`` and the step fields int64, ``<key>_is_pad`` bool).
Camera keys come out as

* ``images="uint8"`` (default): uint8 ``(T, H, W, 3)`` RGB, as stored: the
  cheapest to collate and to move; convert on the GPU;
* ``images="float"``: float32 ``(T, 3, H, W)`` RGB scaled to ``[0, 1]``
  (divided by 255), the layout torchvision models and LeRobot use. No mean/std
  normalisation is applied: that belongs to the model.

The adapter pickles as the dataset it wraps does (caches dropped, reopened in
each worker), so it works with any ``num_workers`` and start method. With
``fork``, call ``EpisodeDataset.preload()`` first to share the numeric arrays
between workers instead of reading them in each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset.loader import CAMERA_PREFIX, EpisodeDataset
from pipeline.errors import RefineryError

IMAGE_FORMATS = ("uint8", "float")


class TorchMissingError(RefineryError, ImportError):
    """torch is not installed; the adapter needs it."""


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise TorchMissingError(
            "the PyTorch adapter needs torch, which is not installed: pip install 'teleop-refinery[torch]'"
        ) from err
    return torch


def to_torch(dataset: EpisodeDataset, *, images: str = "uint8") -> Any:
    """Wrap ``dataset`` as a ``torch.utils.data.Dataset`` returning tensors.

    Args:
        dataset: The numpy dataset.
        images: ``"uint8"`` for ``(T, H, W, 3)`` uint8 or ``"float"`` for
            ``(T, 3, H, W)`` float32 in ``[0, 1]``.

    Returns:
        A :class:`TorchEpisodeDataset`.

    Raises:
        TorchMissingError: torch is not installed.
        LoaderError: ``images`` is not one of :data:`IMAGE_FORMATS`.
    """
    return _torch_dataset_class()(dataset, images=images)


def _convert(sample: dict[str, np.ndarray], images: str, torch: Any) -> dict[str, Any]:
    out = {}
    for key, value in sample.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if images == "float" and key.startswith(CAMERA_PREFIX) and not key.endswith("_is_pad"):
            tensor = tensor.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        out[key] = tensor
    return out


_CLASS: type | None = None


def _torch_dataset_class() -> type:
    """Build the torch Dataset subclass once, on first use (torch imported only then)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    torch = _torch()

    class TorchEpisodeDataset(torch.utils.data.Dataset):  # type: ignore[name-defined,misc]
        """Tensors of :class:`EpisodeDataset` windows; see the module docstring for dtypes and layouts.

        Args:
            source: A dataset path (then ``**options`` go to
                :class:`EpisodeDataset`) or an :class:`EpisodeDataset`.
            images: ``"uint8"`` or ``"float"`` (see the module docstring).
            **options: :class:`EpisodeDataset` keyword arguments.
        """

        def __init__(self, source: EpisodeDataset | str | Path, *, images: str = "uint8", **options: Any) -> None:
            from pipeline.dataset.loader import LoaderError

            dataset = source if isinstance(source, EpisodeDataset) else EpisodeDataset(source, **options)
            if images not in IMAGE_FORMATS:
                raise LoaderError(dataset.path, f"images={images!r}: use one of {list(IMAGE_FORMATS)}")
            if options and isinstance(source, EpisodeDataset):
                raise LoaderError(dataset.path, f"options {sorted(options)} apply only when a path is given")
            self.dataset = dataset
            self.images = images

        def __len__(self) -> int:
            return len(self.dataset)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return _convert(self.dataset[index], self.images, torch)

        def __repr__(self) -> str:
            return f"TorchEpisodeDataset({self.dataset!r}, images={self.images!r})"

    TorchEpisodeDataset.__module__ = __name__
    TorchEpisodeDataset.__qualname__ = "TorchEpisodeDataset"
    _CLASS = TorchEpisodeDataset
    return _CLASS


def __getattr__(name: str) -> Any:
    # ``from pipeline.dataset.torch_adapter import TorchEpisodeDataset`` imports
    # torch only now; pickle finds the class by this name too (spawned workers).
    if name == "TorchEpisodeDataset":
        return _torch_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Where the rows of selected episodes lie in a Refinery dataset, for exporters that read them run by run.

An episode is rows ``[offset, offset + length)`` of the arrays of its data
segment, which holds many episodes. Exporters read selected episodes that lie
back to back in one segment as one :class:`Run` (one request per key instead
of one per episode), after checking every array they need against the index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import zarr

from pipeline.dataset.index import CAMERA_PREFIX, EpisodeEntry, episode_keys
from pipeline.dataset.store import Dataset
from pipeline.errors import DatasetError


@dataclass(frozen=True)
class Run:
    """Selected episodes stored back to back in one data segment: read as one range of rows."""

    segment: str
    start: int
    stop: int
    entries: tuple[EpisodeEntry, ...]


def runs(entries: list[EpisodeEntry]) -> Iterator[Run]:
    """The selection, in order, as runs of episodes stored back to back in one segment."""
    group: list[EpisodeEntry] = []
    for entry in entries:
        if group and (entry.data_segment != group[-1].data_segment or entry.offset != group[-1].end):
            yield Run(group[0].data_segment, group[0].offset, group[-1].end, tuple(group))
            group = []
        group.append(entry)
    if group:
        yield Run(group[0].data_segment, group[0].offset, group[-1].end, tuple(group))


def check_keys_present(dataset: Path, entries: list[EpisodeEntry], keys: Iterable[str]) -> None:
    """Every selected episode holds every key (from the index), else a DatasetError naming the episode."""
    available = [episode_keys(e) for e in entries]
    for key in keys:
        for entry, have in zip(entries, available, strict=True):
            if key not in have:
                problem = (f"has no key {key!r}; it has {sorted(have)}. Export one robot model at a time "
                           "(--model) or leave the key out")
                raise DatasetError(f"{dataset} episode {entry.key!r}", problem)


def common_keys(entries: list[EpisodeEntry]) -> set[str]:
    """The keys every selected episode holds."""
    return set.intersection(*(episode_keys(e) for e in entries))


def segment_arrays(
    source: Dataset, entries: list[EpisodeEntry], keys: Iterable[str]
) -> dict[str, dict[str, zarr.Array]]:
    """The arrays of ``keys`` of every data segment holding a selected episode, checked against the index."""
    keys = list(keys)
    needed: dict[str, int] = {}
    for entry in entries:
        needed[entry.data_segment] = max(needed.get(entry.data_segment, 0), entry.end)
    arrays: dict[str, dict[str, zarr.Array]] = {}
    for name, rows in needed.items():
        group = source.segment(name)
        arrays[name] = {}
        for key in keys:
            where = f"{source.path} data segment {name!r} key {key!r}"
            try:
                node = group[key]
            except KeyError as err:
                raise DatasetError(where, "is in the index but not in the store: the dataset is corrupt") from err
            if not isinstance(node, zarr.Array):
                raise DatasetError(where, "is a group, not an array: the dataset is corrupt")
            if node.shape[0] < rows:
                problem = (f"has {node.shape[0]} steps, the index places episodes up to step {rows}: "
                           "the dataset is corrupt")
                raise DatasetError(where, problem)
            arrays[name][key] = node
    return arrays


def row_shapes(
    dataset: Path,
    entries: list[EpisodeEntry],
    arrays: Mapping[str, Mapping[str, zarr.Array]],
    size: tuple[int, int] | None,
    layout: str,
) -> dict[str, tuple[int, ...]]:
    """The per-step shape of each key, the same in every episode (else a clear error naming ``layout``)."""
    first: dict[str, EpisodeEntry] = {}  # segment -> its first selected episode, to name in errors
    for entry in entries:
        first.setdefault(entry.data_segment, entry)
    shapes: dict[str, tuple[int, ...]] = {}
    for key in next(iter(arrays.values())):
        seen: dict[tuple[int, ...], str] = {}
        for segment, entry in first.items():
            shape = tuple(int(n) for n in arrays[segment][key].shape[1:])
            if key.startswith(CAMERA_PREFIX) and size is not None:
                shape = (*size, 3)
            seen.setdefault(shape, f"{entry.key!r} ({entry.model})")
        if len(seen) > 1:
            found = "; ".join(f"{shape} in {where}" for shape, where in seen.items())
            fix = (
                "resize the frames to one size (--resize HxW) or export one robot model at a time (--model)"
                if key.startswith(CAMERA_PREFIX)
                else "export one robot model at a time (--model)"
            )
            raise DatasetError(
                f"{dataset} key {key!r}", f"episodes differ in shape ({found}); {layout} needs one shape per key: {fix}"
            )
        shapes[key] = next(iter(seen))
    return shapes

"""A Refinery dataset on disk: create it, open it, lock it, read an episode's arrays.

Layout (format version 2; README, "Dataset layout")::

    DATASET.zarr/
      zarr.json            root group: format, format_version, val_fraction
      index/               the episode index (Parquet; pipeline.dataset.index)
      data/<segment>/      data segments (Zarr groups; pipeline.dataset.segment)
      jobs/<job_id>.json   what each job ran with; index rows name their job
      _staging/            segments being written (discarded by the next job)
      .refinery.lock       one writer at a time

Readers go through :class:`Dataset`: it checks the format once, reads the
index columns they ask for, and maps an episode to its rows in its segment.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.dataset.frame_shards import read_frames, read_jpeg_bytes
from pipeline.dataset.index import (
    DATA_DIR,
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    INDEX_DIR,
    JOBS_DIR,
    STAGING_DIR,
    DatasetIndex,
    EpisodeEntry,
    dataset_card,
    dataset_stats,
)
from pipeline.errors import DatasetError, StoreError
from pipeline.record_log import fsync_dir

DEFAULT_VAL_FRACTION = 0.1


def read_root_attrs(path: Path) -> dict[str, Any]:
    """The root group's attributes (format and settings), or a StoreError saying what ``path`` is not."""
    meta_path = path / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as err:
        what = "does not exist" if not path.exists() else "is not a Zarr store (no zarr.json)"
        raise StoreError(str(path), f"{what}; create a dataset with `refinery process RAW --out {path}`") from err
    except (OSError, ValueError) as err:
        raise StoreError(str(meta_path), f"unreadable root metadata: {err}") from err
    return dict(meta.get("attributes", {}))


def check_format(path: Path, attrs: dict[str, Any]) -> None:
    """Refuse anything but a dataset of this format version, saying what to do."""
    if attrs.get("format") != DATASET_FORMAT:
        raise StoreError(str(path), "not a Refinery dataset (root attribute 'format' missing); create one with `refinery process`")
    version = attrs.get("format_version")
    if version == 1:
        raise StoreError(
            str(path),
            f"dataset format version 1 (one group per episode); this Refinery reads version {DATASET_FORMAT_VERSION}: "
            f"convert it with `refinery upgrade {path} NEW.zarr`",
        )
    if version != DATASET_FORMAT_VERSION:
        raise StoreError(str(path), f"dataset format version {version!r}; this Refinery reads version {DATASET_FORMAT_VERSION}")


def create_dataset(path: Path, *, val_fraction: float = DEFAULT_VAL_FRACTION) -> None:
    """Create an empty dataset at ``path`` unless one is there (a folder that is something else is refused)."""
    if (path / "zarr.json").exists():
        check_format(path, read_root_attrs(path))
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreError(str(path), "exists and is not a Refinery dataset; choose another --out or remove it")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(str(path), f"val_fraction={val_fraction!r} must be in [0, 1)")
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    root.attrs.update({"format": DATASET_FORMAT, "format_version": DATASET_FORMAT_VERSION, "val_fraction": val_fraction})
    root.create_group(DATA_DIR)
    (path / INDEX_DIR).mkdir()
    (path / STAGING_DIR).mkdir()


class DatasetLock:
    """One writer per dataset at a time (an advisory lock file inside the store)."""

    def __init__(self, dataset: Path) -> None:
        self.path = dataset / ".refinery.lock"

    def __enter__(self) -> DatasetLock:
        self._fh = open(self.path, "w")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._fh.close()
            raise StoreError(str(self.path.parent), "another job is writing this dataset; wait for it to finish") from err
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def write_json_durably(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` whole or not at all: temporary file, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def write_job_record(dataset: Path, record: dict[str, Any]) -> Path:
    """``jobs/<job_id>.json``: what a job ran with (configuration, inputs, version, host); rows name it by ``job_id``."""
    (dataset / JOBS_DIR).mkdir(exist_ok=True)
    return write_json_durably(dataset / JOBS_DIR / f"{record['job_id']}.json", record)


def discard_staging(dataset: Path) -> None:
    """Half-written segments of killed workers or drivers: nothing in the index points at them."""
    staging = dataset / STAGING_DIR
    for child in staging.iterdir() if staging.exists() else []:
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


class Dataset:
    """An open dataset: its settings, index and data segments.

    Args:
        path: The dataset folder.

    Raises:
        StoreError: Not a dataset, or one of another format version.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.attrs = read_root_attrs(self.path)
        check_format(self.path, self.attrs)
        self.index = DatasetIndex(self.path)
        self._segments: dict[str, zarr.Group] = {}

    @property
    def val_fraction(self) -> float:
        return float(self.attrs.get("val_fraction", DEFAULT_VAL_FRACTION))

    def state(self) -> dict[str, Any]:
        return self.index.state()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Normalisation statistics per model and key (mean, std, min, max per column, count)."""
        return dataset_stats(self.state())

    def card(self) -> dict[str, Any]:
        return dataset_card(self.state())

    def job(self, job_id: str) -> dict[str, Any]:
        """What the job ``job_id`` ran with (configuration, inputs, Refinery version, host)."""
        try:
            return json.loads((self.path / JOBS_DIR / f"{job_id}.json").read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(str(self.path), f"no readable record of job {job_id!r} ({err})") from err

    def segment(self, name: str) -> zarr.Group:
        group = self._segments.get(name)
        if group is None:
            where = self.path / DATA_DIR / name
            try:
                group = self._segments[name] = zarr.open_group(str(where), mode="r")
            except (FileNotFoundError, OSError, ValueError, KeyError) as err:
                raise DatasetError(
                    str(self.path), f"the index lists data segment {name!r} but {where} cannot be opened ({err})"
                ) from err
        return group

    def array(self, entry: EpisodeEntry, key: str) -> zarr.Array:
        """The segment array holding ``key`` of ``entry`` (its rows ``entry.offset .. entry.end``)."""
        try:
            found = self.segment(entry.data_segment)[key]
        except KeyError as err:
            raise DatasetError(str(self.path), f"episode {entry.key!r}: no array {key!r} in segment {entry.data_segment!r}") from err
        if not isinstance(found, zarr.Array) or found.shape[0] < entry.end:
            raise DatasetError(
                str(self.path), f"episode {entry.key!r}: {key!r} of segment {entry.data_segment!r} is not an array of at least {entry.end} rows"
            )
        return found

    def numeric(self, entry: EpisodeEntry, key: str) -> np.ndarray:
        """The episode's rows of a numeric key (or ``timestamps_ns``)."""
        return np.asarray(self.array(entry, key)[entry.offset : entry.end])

    def jpeg_bytes(self, entry: EpisodeEntry, camera: str, steps: Any) -> list[bytes]:
        """The stored JPEG bytes of ``steps`` (episode-relative) of a camera."""
        return read_jpeg_bytes(self.array(entry, f"cameras/{camera}"), np.asarray(steps, dtype=np.int64) + entry.offset)

    def frames(self, entry: EpisodeEntry, camera: str, steps: Any) -> np.ndarray:
        """Decoded RGB frames ``(len(steps), H, W, 3)`` of ``steps`` (episode-relative) of a camera."""
        return read_frames(self.array(entry, f"cameras/{camera}"), np.asarray(steps, dtype=np.int64) + entry.offset)

    def frame_size(self, entry: EpisodeEntry, camera: str) -> tuple[int, int]:
        shape = self.array(entry, f"cameras/{camera}").shape
        return int(shape[1]), int(shape[2])


def load_index(dataset: Path | str) -> list[EpisodeEntry]:
    """Every row of the index, excluded ones included (flagged); for views and tests of small datasets."""
    return Dataset(dataset).index.entries()

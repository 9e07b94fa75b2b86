"""Random access to training windows of a Refinery dataset, numpy out.

A trainer asks for sample ``i`` and gets, for the episode step ``t`` that
``i`` stands for, every selected key over a window around ``t``::

    ds = EpisodeDataset("data.zarr", history=2, horizon=16, image_size=(224, 224))
    sample = ds[0]
    sample["state/position"]          # float32 (2, dof)      steps t-1, t
    sample["cameras/head_left"]       # uint8 (2, 224, 224, 3) RGB, steps t-1, t
    sample["action/position"]         # float32 (16, dof)     steps t .. t+15
    sample["action/position_is_pad"]  # bool (16,)            True where past the episode's end

Windows
    Every step ``t`` of every selected episode is one sample, so ``len(ds)`` is
    the total number of steps of the selected episodes. Observation keys
    (everything not under ``action/``) cover ``history`` steps ending at ``t``
    (``t-history+1 .. t``); action keys cover ``horizon`` steps starting at
    ``t`` (``t .. t+horizon-1``). ``delta_timestamps`` (LeRobot's convention:
    key -> offsets in seconds) sets a key's window explicitly instead; each
    offset is converted to steps at the episode's ``rate_hz``.

Padding
    A window never crosses an episode: steps before the first or after the
    last step of the episode repeat that edge step (``pad="edge"``, as
    Diffusion Policy's sampler does), and ``<key>_is_pad`` marks them so a
    trainer can mask them out of its loss (LeRobot's convention).

Every sample also carries ``episode_index`` (position in :attr:`EpisodeDataset.episodes`),
``step`` (``t``) and ``timestamp_ns`` (the ingest clock at ``t``), as 0-d arrays.

Selection
    Episodes are chosen in the index (``select_episodes``) by grade, model,
    robot, task, split (``"train"``/``"val"``, recorded per episode in the
    index) and start time: the filters go down to the Parquet reader,
    excluded episodes are skipped, and only the light columns are read
    (:data:`INDEX_COLUMNS`: no per-episode statistics sums, reports or
    attributes; a count column per numeric key says which keys an episode
    holds), so opening a dataset of
    100,000 episodes parses the rows it selects and nothing of the others'.

Data (dataset format 2)
    An episode is rows ``[offset, offset + length)`` of the arrays of its data
    segment (``data/<segment>/``), which holds many episodes. The numeric
    arrays of an episode are read on first use and kept in memory; the first
    episode used in a segment brings in every selected episode of that
    segment with one read per key and run of neighbouring episodes (rows of
    unselected episodes in between are dropped at once), so memory follows
    the selection, not the segments. Camera frames are read per window.

Speed (DESIGN, Known pitfalls: zarr's per-read overhead dominates small
frames): a camera window is one batched read per camera per sample, each
distinct frame decoded once, straight into its place in the sample (or
resized there); the cameras of a window share one allocation. On a local
store the loader keeps each shard's index (16 bytes per frame, per segment
array) once read and fetches a window's frames with one plain ``pread`` of
the shard file: a zarr call costs about 0.8 ms of event-loop hand-offs per
read on one core, more than a 640x480 frame takes to decode. Other stores go
through :func:`~pipeline.dataset.frame_shards.read_frames`.
``tools/bench_loader.py`` measures windows/s against the bare decode of the
same frames, resized and at full size.

Multi-process data loaders: the dataset pickles to its selection only (path,
index entries, window offsets); caches and zarr handles are dropped and
reopened lazily in each worker, and a forked worker drops the zarr handles it
inherited (it keeps inherited arrays and shard indexes: plain memory).
Nothing is opened at construction time but the root metadata and the index.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import ShardingCodec
from zarr.storage import LocalStore

from pipeline.dataset.frame_shards import (
    EMPTY_SLOT,
    _frame_layout,
    decode_shard_index,
    read_frames,
)
from pipeline.dataset.index import (
    CAMERA_PREFIX,
    KEY_COUNT_COLUMNS,
    LIGHT_COLUMNS,
    TIMESTAMPS_KEY,
    EpisodeEntry,
    episode_keys,
    select_episodes,
)
from pipeline.dataset.jpeg_codec import decode_jpeg_chunk
from pipeline.dataset.store import Dataset, check_format, read_root_attrs
from pipeline.errors import DatasetError, StoreError

ACTION_PREFIX = "action/"
DEFAULT_NUMERIC_KEYS = ("state/position", "action/position")
PAD_MODES = ("edge",)
SPLITS = ("train", "val")
# LeRobot's default tolerance between a requested offset and a recorded step.
DEFAULT_TOLERANCE_S = 1e-4
INDEX_COLUMNS = (*LIGHT_COLUMNS, *KEY_COUNT_COLUMNS)
"""Index columns the loader selects with: no per-episode statistics sums, reports or attributes."""
# Frames of one shard closer than this are fetched in one read (as read_frames does).
_COALESCE_GAP = 64 * 1024
# Neighbouring selected episodes of a segment are read in one request when
# fewer rows than this lie between them (one numeric chunk: it is decompressed
# whole anyway).
_NUMERIC_GAP_ROWS = 4096


class LoaderError(DatasetError):
    """The loader cannot serve what was asked: bad key, filter, window or dataset.

    Attributes:
        dataset: The dataset's path.
        key: The array key involved, if any.
        episode: The episode key involved, if any.
    """

    def __init__(self, dataset: str | Path, problem: str, *, key: str | None = None, episode: str | None = None) -> None:
        self.dataset = str(dataset)
        self.key = key
        self.episode = episode
        where = f"dataset {self.dataset}"
        if episode:
            where += f", episode {episode!r}"
        if key:
            where += f", key {key!r}"
        super().__init__(where, problem)


@dataclass(frozen=True)
class _KeySpec:
    """One selected key: what it is and its window, in steps, per episode rate."""

    name: str
    kind: str  # "numeric", "camera" or "timestamps"
    offsets: tuple[npt.NDArray[np.int64], ...]  # indexed by rate id


class _ShardFiles:
    """A sharded camera array on a local store, read with plain file reads.

    Same bytes, same decoder and same fill value as
    :func:`~pipeline.dataset.frame_shards.read_frames`; the shard indexes are
    kept once read (a published segment never changes) and no file stays
    open, so an instance pickles and survives a fork as plain data.
    """

    def __init__(self, array: zarr.Array) -> None:
        layout = _frame_layout(array)  # refuses anything but a JPEG camera array
        self.where = layout.where
        self.length = layout.length
        self.shape = (layout.height, layout.width, 3)
        self.per_shard = layout.frames_per_shard
        self.index_size = layout.index_size
        self.index_at_end = layout.index_at_end
        self.checksum = layout.index_checksum
        self.fill_value = layout.fill_value
        root = Path(layout.store.root)  # type: ignore[attr-defined]
        self.paths = [str(root / layout.key(s)) for s in range(-(-layout.length // self.per_shard))]
        self.tables: dict[int, npt.NDArray[np.int64] | None] = {}

    @staticmethod
    def accepts(array: zarr.Array) -> bool:
        """Whether ``array`` is a sharded Zarr v3 array on a local store (others go through zarr)."""
        metadata = array.metadata
        return (
            isinstance(array.store_path.store, LocalStore)
            and metadata.zarr_format == 3
            and len(metadata.codecs) == 1
            and isinstance(metadata.codecs[0], ShardingCodec)
        )

    def fetch(self, frames: list[int]) -> list[memoryview | None]:
        """Stored bytes of ``frames`` (ascending, distinct rows of the array); None where nothing was written."""
        found: list[memoryview | None] = [None] * len(frames)
        per_shard = self.per_shard
        start = 0
        while start < len(frames):  # frames are ascending: each shard's are one run
            shard = frames[start] // per_shard
            stop = start + 1
            while stop < len(frames) and frames[stop] // per_shard == shard:
                stop += 1
            self._fetch_shard(shard, frames, start, stop, found)
            start = stop
        return found

    def _fetch_shard(self, shard: int, frames: list[int], start: int, stop: int, found: list[memoryview | None]) -> None:
        try:
            fd = os.open(self.paths[shard], os.O_RDONLY)
        except FileNotFoundError:
            self.tables[shard] = None  # a shard never written: every frame in it reads as fill
            return
        try:
            table = self.tables[shard] if shard in self.tables else self._table(shard, fd)
            if table is None:
                return
            base = shard * self.per_shard
            slots = table[[f - base for f in frames[start:stop]]].tolist()
            # One read from the first to the last wanted byte when the frames lie
            # close together (a window's frames are neighbours in the shard).
            ranges = sorted((offset, size, start + k) for k, (offset, size) in enumerate(slots) if offset >= 0)
            group: list[tuple[int, int, int]] = []
            reach = -1
            for item in ranges:
                if group and item[0] - reach > _COALESCE_GAP:
                    self._read_group(fd, shard, group, found)
                    group = []
                group.append(item)
                reach = max(reach, item[0] + item[1])
            if group:
                self._read_group(fd, shard, group, found)
        finally:
            os.close(fd)

    def _table(self, shard: int, fd: int) -> npt.NDArray[np.int64]:
        size = os.fstat(fd).st_size
        at = size - self.index_size if self.index_at_end else 0
        raw = os.pread(fd, self.index_size, max(at, 0))
        name = Path(self.paths[shard]).name
        try:
            table = decode_shard_index(raw, self.per_shard, checksum=self.checksum)
        except DatasetError as err:
            raise DatasetError(f"{self.where} ({name})", err.problem) from err
        empty = table[:, 0] == EMPTY_SLOT
        if (table[~empty].sum(axis=1)).max(initial=0) > size:
            raise DatasetError(f"{self.where} ({name})", "index points past the end of the shard")
        # Signed, empty slots -1: a slot's row converts to two plain ints.
        signed = table.astype(np.int64)
        signed[empty] = -1
        self.tables[shard] = signed
        return signed

    def _read_group(self, fd: int, shard: int, group: list[tuple[int, int, int]], found: list[memoryview | None]) -> None:
        first = group[0][0]
        last = max(offset + size for offset, size, _ in group)
        data = memoryview(os.pread(fd, last - first, first))
        if len(data) != last - first:
            raise DatasetError(f"{self.where} ({Path(self.paths[shard]).name})", "shard shorter than its index says")
        for offset, size, position in group:
            found[position] = data[offset - first : offset - first + size]


class EpisodeDataset:
    """Windows of a Refinery dataset's episodes, as dicts of numpy arrays.

    Args:
        path: The dataset (format version 2, written by ``refinery process``).
        keys: Array keys to serve: ``timestamps_ns``, ``state/position``,
            ``state/velocity``, ``state/effort``, ``action/position``,
            ``cameras/<camera>``. Default (None): ``state/position``,
            ``action/position`` and every camera all selected episodes have.
            Keys named in ``delta_timestamps`` are served too.
        history: Observation steps per window, ending at the current step.
        horizon: Action steps per window, starting at the current step.
        delta_timestamps: Per key, offsets in seconds from the current step
            (e.g. ``{"action/position": [0.0, 1/30, 2/30]}``); overrides
            ``history``/``horizon`` for those keys.
        tolerance_s: How far an offset may lie from a multiple of the
            episode's step period; less than half a period.
        min_grade: Keep episodes graded this letter or better (``"C"`` keeps
            A, B and C); None keeps every grade.
        models: Keep episodes of these robot models (a name or names).
        robots: Keep episodes of these robot ids.
        tasks: Keep episodes of these task instructions.
        accepted_only: Keep accepted episodes only. Rejected raw episodes
            carry no data and are never served.
        split: Keep the ``"train"`` or the ``"val"`` episodes (the split the
            index records per episode); None keeps both.
        start_after_ns: Keep episodes whose first step is at or after this
            time (ingest clock, ns since the epoch).
        start_before_ns: Keep episodes whose first step is before this time.
        image_size: ``(height, width)`` to resize camera frames to
            (``cv2.INTER_AREA``); None keeps the stored size.
        pad: How steps outside the episode are filled; only ``"edge"``
            (repeat the first or last step).

    Raises:
        LoaderError: Not a Refinery dataset (or one of another format
            version), no episode passes the filters, an unknown key, grade
            letter or split, a bad window or offset.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        keys: Sequence[str] | None = None,
        history: int = 2,
        horizon: int = 16,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        min_grade: str | None = None,
        models: str | Iterable[str] | None = None,
        robots: str | Iterable[str] | None = None,
        tasks: str | Iterable[str] | None = None,
        accepted_only: bool = True,
        split: str | None = None,
        start_after_ns: int | None = None,
        start_before_ns: int | None = None,
        image_size: tuple[int, int] | None = None,
        pad: str = "edge",
    ) -> None:
        self.path = Path(path)
        self._check_dataset()
        if split is not None and split not in SPLITS:
            raise LoaderError(self.path, f"split={split!r} is not a split; use one of {list(SPLITS)} or None")
        for name, value in (("start_after_ns", start_after_ns), ("start_before_ns", start_before_ns)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise LoaderError(self.path, f"{name}={value!r} must be an integer time in ns since the epoch, or None")
        selected, available = self._select(
            min_grade=min_grade, models=models, robots=robots, tasks=tasks, accepted_only=accepted_only, split=split,
            start_after_ns=None if start_after_ns is None else int(start_after_ns),
            start_before_ns=None if start_before_ns is None else int(start_before_ns),
        )
        self._entries = selected
        self._image_size = self._check_image_size(image_size)
        if pad not in PAD_MODES:
            raise LoaderError(self.path, f"pad={pad!r} is not supported; use one of {list(PAD_MODES)}")
        self._pad = pad
        names = self._check_keys(keys, delta_timestamps or {}, available)
        rates = sorted({e.rate_hz for e in selected})
        self._rate_id = np.array([rates.index(e.rate_hz) for e in selected], dtype=np.int64)
        self._specs = tuple(
            self._spec(name, rates, history, horizon, delta_timestamps or {}, tolerance_s) for name in names
        )
        self._stats = self._read_stats({e.model for e in selected})
        self._ends = np.cumsum([e.length for e in selected], dtype=np.int64)
        # Selected episodes of each data segment, by offset: read together.
        by_segment: dict[str, list[int]] = {}
        for n, entry in enumerate(selected):
            by_segment.setdefault(entry.data_segment, []).append(n)
        self._by_segment = {s: sorted(ns, key=lambda n: selected[n].offset) for s, ns in by_segment.items()}
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cameras: dict[tuple[str, str], _ShardFiles | zarr.Array] = {}
        self._dataset: Dataset | None = None
        self._pid = os.getpid()

    # -- construction helpers -------------------------------------------------

    def _check_dataset(self) -> None:
        try:
            attrs = read_root_attrs(self.path)
        except StoreError as err:
            raise LoaderError(self.path, f"not a Refinery dataset: {err.problem}") from err
        try:
            check_format(self.path, attrs)
        except StoreError as err:
            raise LoaderError(self.path, err.problem) from err

    def _select(self, **filters: Any) -> tuple[list[EpisodeEntry], list[frozenset[str]]]:
        """The selected entries, and the keys each holds (shared sets: a few layouts among many episodes)."""
        try:
            # The count columns say which numeric keys an episode holds; its sums are not read.
            selected = select_episodes(self.path, columns=INDEX_COLUMNS, **filters)
        except (DatasetError, StoreError) as err:  # a bad filter, nothing selected, an unreadable index
            raise LoaderError(self.path, err.problem) from err
        shared: dict[tuple[tuple[str, ...], tuple[str, ...]], frozenset[str]] = {}
        available = []
        for entry in selected:
            layout = (tuple(sorted(entry.stats)), tuple(entry.cameras))
            have = shared.get(layout)
            if have is None:
                have = shared[layout] = frozenset(episode_keys(entry))
            available.append(have)
            entry.stats = {}  # only the key names were wanted; trainers normalise with ds.stats
        return selected, available

    def _read_stats(self, models: set[str]) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            every = Dataset(self.path).stats()
        except (StoreError, DatasetError) as err:
            raise LoaderError(self.path, f"cannot read the normalisation statistics: {err}") from err
        return {m: every[m] for m in sorted(models) if m in every}

    def _check_image_size(self, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
        if image_size is None:
            return None
        try:
            height, width = (operator.index(v) for v in image_size)
        except (TypeError, ValueError) as err:
            raise LoaderError(self.path, f"image_size={image_size!r} must be (height, width) integers") from err
        if height < 1 or width < 1:
            raise LoaderError(self.path, f"image_size={image_size!r} must be positive (height, width)")
        return height, width

    def _check_keys(
        self, keys: Sequence[str] | None, delta_timestamps: Mapping[str, Sequence[float]], available: list[frozenset[str]]
    ) -> list[str]:
        if isinstance(keys, str):
            keys = [keys]
        layouts = set(available)
        union = frozenset().union(*layouts)
        common = frozenset.intersection(*layouts)
        if keys is None:
            cameras = sorted(k for k in common if k.startswith(CAMERA_PREFIX))
            keys = [k for k in DEFAULT_NUMERIC_KEYS if k in common] + cameras
        names = list(dict.fromkeys([*keys, *delta_timestamps]))
        if not names:
            raise LoaderError(self.path, f"no keys selected; available keys: {sorted(union)}")
        for name in names:
            if name not in union:
                raise LoaderError(self.path, f"unknown key; available keys: {sorted(union)}", key=name)
            if name in common:
                continue
            for entry, have in zip(self._entries, available, strict=True):
                if name not in have:
                    raise LoaderError(
                        self.path,
                        f"this episode lacks the key (it has {sorted(have)}); select other keys or filter it out",
                        key=name,
                        episode=entry.key,
                    )
        return names

    def _spec(
        self,
        name: str,
        rates: list[float],
        history: int,
        horizon: int,
        delta_timestamps: Mapping[str, Sequence[float]],
        tolerance_s: float,
    ) -> _KeySpec:
        kind = "timestamps" if name == TIMESTAMPS_KEY else "camera" if name.startswith(CAMERA_PREFIX) else "numeric"
        if name in delta_timestamps:
            offsets = tuple(self._delta_steps(name, delta_timestamps[name], rate, tolerance_s) for rate in rates)
            return _KeySpec(name, kind, offsets)
        is_action = name.startswith(ACTION_PREFIX)
        count, label = (horizon, "horizon") if is_action else (history, "history")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise LoaderError(self.path, f"{label}={count!r} must be an integer >= 1", key=name)
        steps = np.arange(count, dtype=np.int64) if is_action else np.arange(1 - count, 1, dtype=np.int64)
        return _KeySpec(name, kind, tuple(steps for _ in rates))

    def _delta_steps(self, name: str, offsets: Sequence[float], rate: float, tolerance_s: float) -> npt.NDArray[np.int64]:
        period = 1.0 / rate
        episode = next(e.key for e in self._entries if e.rate_hz == rate)
        if not 0 <= tolerance_s < period / 2:
            raise LoaderError(
                self.path,
                f"tolerance_s={tolerance_s!r} must be >= 0 and below half a step ({period / 2:.6g} s at {rate:g} Hz)",
                key=name,
                episode=episode,
            )
        problem = f"delta_timestamps must be a non-empty list of seconds, got {offsets!r}"
        if isinstance(offsets, (str, bytes)):
            raise LoaderError(self.path, problem, key=name)
        try:
            values = [float(v) for v in offsets]
        except (TypeError, ValueError) as err:
            raise LoaderError(self.path, problem, key=name) from err
        if not values:
            raise LoaderError(self.path, problem, key=name)
        steps = []
        for value in values:
            if not math.isfinite(value):
                raise LoaderError(self.path, f"delta_timestamps offset {value!r} is not a finite number", key=name)
            step = math.floor(value * rate + 0.5)
            off_by = abs(value - step * period)
            if off_by > tolerance_s:
                raise LoaderError(
                    self.path,
                    f"delta_timestamps offset {value!r} s is {off_by * 1e3:.3g} ms from the nearest step "
                    f"({step} x {period:.6g} s at {rate:g} Hz): offsets must be multiples of the step period "
                    f"within tolerance_s={tolerance_s:g} s",
                    key=name,
                    episode=episode,
                )
            steps.append(step)
        return np.array(steps, dtype=np.int64)

    # -- what the dataset is --------------------------------------------------

    @property
    def episodes(self) -> list[EpisodeEntry]:
        """The selected episodes' index entries; ``episode_index`` counts in this list.

        The entries carry the index's light columns only (:data:`INDEX_COLUMNS`):
        their ``stats`` are empty (per-episode statistics are not read;
        normalise with :attr:`stats`).
        """
        return list(self._entries)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys every sample carries (besides ``<key>_is_pad`` and the step fields)."""
        return tuple(spec.name for spec in self._specs)

    @property
    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Normalisation statistics per robot model of the selected episodes, per key.

        ``{model: {key: {"mean", "std", "min", "max": per-column lists, "count"}}}``,
        the dataset's statistics: over every accepted, not excluded episode of
        that model, not only the filtered ones, so training and validation
        splits normalise alike.
        """
        return {model: {key: dict(values) for key, values in keys.items()} for model, keys in self._stats.items()}

    def window_steps(self, key: str, episode_index: int = 0) -> tuple[int, ...]:
        """The step offsets of ``key``'s window in episode ``episode_index`` (relative to ``t``).

        Raises:
            LoaderError: ``key`` is not served.
        """
        for spec in self._specs:
            if spec.name == key:
                return tuple(int(s) for s in spec.offsets[int(self._rate_id[episode_index])])
        raise LoaderError(self.path, f"not served; served keys: {list(self.keys)}", key=key)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __repr__(self) -> str:
        return f"EpisodeDataset({str(self.path)!r}, episodes={len(self._entries)}, windows={len(self)}, keys={list(self.keys)})"

    def locate(self, index: int) -> tuple[int, int]:
        """``(episode_index, step)`` of sample ``index``.

        Raises:
            IndexError: ``index`` is out of range (negative counts from the end).
        """
        i = operator.index(index)
        n = int(self._ends[-1])
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {index} out of range for {n} windows of dataset {self.path}")
        episode = int(self._ends.searchsorted(i, side="right"))
        return episode, i - (int(self._ends[episode - 1]) if episode else 0)

    # -- reading --------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        episode, t = self.locate(index)
        numeric = self._numeric(episode)
        rate_id = int(self._rate_id[episode])
        last = self._entries[episode].length - 1
        sample: dict[str, Any] = {}
        cameras: list[tuple[str, list[int]]] = []
        for spec in self._specs:
            wanted = spec.offsets[rate_id] + t
            steps = np.minimum(np.maximum(wanted, 0), last)
            if spec.kind == "camera":
                cameras.append((spec.name, steps.tolist()))
                sample[spec.name] = None  # filled below, in key order
            else:
                sample[spec.name] = numeric[spec.name][steps]
            sample[f"{spec.name}_is_pad"] = wanted != steps
        if cameras:
            self._frames(episode, cameras, sample)
        sample["episode_index"] = np.array(episode, dtype=np.int64)
        sample["step"] = np.array(t, dtype=np.int64)
        sample["timestamp_ns"] = np.array(numeric[TIMESTAMPS_KEY][t], dtype=np.int64)
        return sample

    def preload(self) -> None:
        """Read every selected episode's numeric arrays now (e.g. before a forking loader starts workers)."""
        for episode in range(len(self._entries)):
            self._numeric(episode)

    def _after_fork(self) -> None:
        # A forked worker keeps the arrays and shard indexes it inherited (plain
        # memory) and reopens zarr handles itself: their event loop did not fork.
        self._dataset = None
        self._cameras = {k: v for k, v in self._cameras.items() if isinstance(v, _ShardFiles)}
        self._pid = os.getpid()

    def _store(self) -> Dataset:
        if self._pid != os.getpid():
            self._after_fork()
        if self._dataset is None:
            try:
                self._dataset = Dataset(self.path)
            except StoreError as err:
                raise LoaderError(self.path, err.problem) from err
        return self._dataset

    def _numeric(self, episode: int) -> dict[str, np.ndarray]:
        arrays = self._cache.get(episode)
        if arrays is None:
            self._read_segment_numeric(self._entries[episode].data_segment)
            arrays = self._cache[episode]
        return arrays

    def _read_segment_numeric(self, segment: str) -> None:
        """Read the numeric arrays of every selected, not yet loaded episode of ``segment``.

        One read per key and run of neighbouring episodes; each episode keeps
        its own rows (a copy when rows of unselected episodes were read too).
        """
        store = self._store()
        todo = [n for n in self._by_segment[segment] if n not in self._cache]
        runs: list[list[int]] = []
        for n in todo:
            entry = self._entries[n]
            if runs and entry.offset - self._entries[runs[-1][-1]].end <= _NUMERIC_GAP_ROWS:
                runs[-1].append(n)
            else:
                runs.append([n])
        names = sorted({TIMESTAMPS_KEY} | {spec.name for spec in self._specs if spec.kind == "numeric"})
        loaded: dict[int, dict[str, np.ndarray]] = {n: {} for n in todo}
        for run in runs:
            first, last = self._entries[run[0]], self._entries[run[-1]]
            lo, hi = first.offset, last.end
            dense = sum(self._entries[n].length for n in run) == hi - lo
            for name in names:
                try:
                    values = np.asarray(store.array(last, name)[lo:hi])  # checks the array reaches the run's end
                except (DatasetError, KeyError, OSError, ValueError) as err:
                    raise LoaderError(self.path, f"cannot read the array: {err}", key=name, episode=first.key) from err
                values = values.astype(np.int64 if name == TIMESTAMPS_KEY else np.float32, copy=False)
                for n in run:
                    entry = self._entries[n]
                    rows = values[entry.offset - lo : entry.end - lo]
                    loaded[n][name] = rows if dense else rows.copy()
        self._cache.update(loaded)

    def _camera(self, episode: int, name: str) -> _ShardFiles | zarr.Array:
        if self._pid != os.getpid():
            self._after_fork()
        entry = self._entries[episode]
        source = self._cameras.get((entry.data_segment, name))
        if source is None:
            try:
                found = self._store().array(entry, name)
                source = _ShardFiles(found) if _ShardFiles.accepts(found) else found
            except DatasetError as err:
                raise LoaderError(self.path, err.problem, key=name, episode=entry.key) from err
            self._cameras[(entry.data_segment, name)] = source
        return source

    def _frames(self, episode: int, cameras: list[tuple[str, list[int]]], sample: dict[str, Any]) -> None:
        """Put each camera's ``(len(steps), H, W, 3)`` uint8 frames of ``steps`` (episode-relative) into ``sample``.

        All cameras of a window share one allocation, each distinct frame is
        decoded once and copied (or resized) straight into its place, and
        repeated (padded) steps are copied from it. One block per window
        instead of one per camera matters at full size: freeing a window's
        several-megabyte arrays one by one made the allocator hand memory back
        to the system and fault it in again for the next window (a third of
        the time of a 640x480 window, measured with tools/bench_loader).
        """
        entry = self._entries[episode]
        sources = [self._camera(episode, name) for name, _ in cameras]
        shapes = []
        for source, (_, steps) in zip(sources, cameras, strict=True):
            stored = source.shape[:2] if isinstance(source, _ShardFiles) else source.shape[1:3]
            height, width = self._image_size or stored
            shapes.append((len(steps), height, width, 3))
        block = np.empty(sum(math.prod(shape) for shape in shapes), dtype=np.uint8)
        start = 0
        for source, shape, (name, steps) in zip(sources, shapes, cameras, strict=True):
            frames = block[start : start + math.prod(shape)].reshape(shape)
            start += frames.size
            try:
                self._decode_into(frames, source, entry.offset, steps)
            except DatasetError as err:
                raise LoaderError(self.path, str(err), key=name, episode=entry.key) from err
            sample[name] = frames

    @staticmethod
    def _decode_into(frames: np.ndarray, source: _ShardFiles | zarr.Array, offset: int, steps: list[int]) -> None:
        first: dict[int, int] = {}  # step -> the first position it takes in the window
        for position, step in enumerate(steps):
            first.setdefault(step, position)
        distinct = sorted(first) if len(first) > 1 else list(first)
        height, width = frames.shape[1:3]
        if isinstance(source, _ShardFiles):
            images: Sequence[memoryview | np.ndarray | None] = source.fetch([offset + step for step in distinct])
            resize = source.shape[:2] != (height, width)
        else:
            images = read_frames(source, np.array(distinct, dtype=np.int64) + offset)
            resize = source.shape[1:3] != (height, width)
        for step, image in zip(distinct, images, strict=True):
            out = frames[first[step]]
            if image is None:  # never written: zarr reads the fill value
                out.fill(source.fill_value)
                continue
            if not isinstance(image, np.ndarray):
                try:
                    image = decode_jpeg_chunk(image, source.shape)
                except DatasetError as err:
                    raise DatasetError(source.where, err.problem, index=offset + step) from err
            if resize:
                cv2.resize(image, (width, height), dst=out, interpolation=cv2.INTER_AREA)
            else:
                out[...] = image
        if len(first) < len(steps):
            for position, step in enumerate(steps):
                if first[step] != position:
                    frames[position] = frames[first[step]]

    # -- pickling -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The selection only: caches and zarr handles are reopened lazily in the receiving process."""
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_cameras"] = {}
        state["_dataset"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

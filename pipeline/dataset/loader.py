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

Speed (DESIGN, Known pitfalls: zarr's per-read overhead dominates small
frames): the numeric arrays of an episode are read once, on first use, and
kept in memory; a camera window is one batched read per camera per sample,
each distinct frame decoded once. On a local store the loader keeps each
shard's index (2 KiB per 128 frames) once read and fetches a window's frames
with one plain ``pread`` of the shard file: a zarr call costs about 0.8 ms of
event-loop hand-offs per read on one core, more than a 640x480 frame takes to
decode. Other stores go through :func:`~pipeline.dataset.frame_shards.read_frames`.

Multi-process data loaders: the dataset pickles to its selection only (paths,
index entries, window offsets); caches and zarr handles are dropped and
reopened lazily in each worker, and a forked worker drops the handles it
inherited. Nothing is opened at construction time except the root metadata.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    DATASET_FORMAT,
    EPISODES_GROUP,
    TIMESTAMPS_KEY,
    EpisodeEntry,
    episode_keys,
    read_root_attrs,
    select_episodes,
)
from pipeline.dataset.jpeg_codec import decode_jpeg_chunk
from pipeline.errors import DatasetError, StoreError

ACTION_PREFIX = "action/"
DEFAULT_NUMERIC_KEYS = ("state/position", "action/position")
PAD_MODES = ("edge",)
# LeRobot's default tolerance between a requested offset and a recorded step.
DEFAULT_TOLERANCE_S = 1e-4
# Frames of one shard closer than this are fetched in one read (as read_frames does).
_COALESCE_GAP = 64 * 1024


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
    kept once read (a published episode never changes) and no file stays open.
    """

    def __init__(self, array: zarr.Array) -> None:
        layout = _frame_layout(array)  # refuses anything but a JPEG camera array
        self.where = layout.where
        self.shape = (layout.height, layout.width, 3)
        self.per_shard = layout.frames_per_shard
        self.index_size = layout.index_size
        self.index_at_end = layout.index_at_end
        self.checksum = layout.index_checksum
        self.fill_value = layout.fill_value
        root = Path(layout.store.root)  # type: ignore[attr-defined]
        self.paths = [root / layout.key(s) for s in range(-(-layout.length // self.per_shard))]
        self.tables: dict[int, npt.NDArray[np.uint64] | None] = {}

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

    def decode(self, frames: npt.NDArray[np.int64]) -> Iterator[np.ndarray]:
        """Decoded RGB frames ``frames`` (unique, ascending), one ``(H, W, 3)`` array each, one at a time."""
        # One at a time: a caller that resizes each frame as it comes finds it still in cache.
        for frame, jpeg in zip(frames.tolist(), self._fetch(frames), strict=True):
            if jpeg is None:  # never written: zarr reads the fill value
                yield np.full(self.shape, self.fill_value, dtype=np.uint8)
                continue
            try:
                yield decode_jpeg_chunk(jpeg, self.shape)
            except DatasetError as err:
                raise DatasetError(self.where, err.problem, index=frame) from err

    def _fetch(self, frames: npt.NDArray[np.int64]) -> list[memoryview | None]:
        found: list[memoryview | None] = [None] * frames.size
        shards = frames // self.per_shard
        for shard in np.unique(shards).tolist():
            positions = np.flatnonzero(shards == shard)
            try:
                with open(self.paths[shard], "rb") as fh:
                    table = self._table(shard, fh)
                    if table is None:
                        continue
                    slots = table[frames[positions] - shard * self.per_shard]
                    present = slots[:, 0] != EMPTY_SLOT
                    self._read_ranges(fh, shard, positions[present], slots[present].astype(np.int64), found)
            except FileNotFoundError:
                self.tables[shard] = None  # a shard never written: every frame in it reads as fill
        return found

    def _table(self, shard: int, fh: Any) -> npt.NDArray[np.uint64] | None:
        if shard in self.tables:
            return self.tables[shard]
        size = os.fstat(fh.fileno()).st_size
        at = size - self.index_size if self.index_at_end else 0
        raw = os.pread(fh.fileno(), self.index_size, max(at, 0))
        try:
            table = decode_shard_index(raw, self.per_shard, checksum=self.checksum)
        except DatasetError as err:
            raise DatasetError(f"{self.where} ({self.paths[shard].name})", err.problem) from err
        if table[table[:, 0] != EMPTY_SLOT].sum(axis=1).max(initial=0) > size:
            raise DatasetError(f"{self.where} ({self.paths[shard].name})", "index points past the end of the shard")
        self.tables[shard] = table
        return table

    def _read_ranges(
        self, fh: Any, shard: int, positions: npt.NDArray[np.intp], slots: npt.NDArray[np.int64],
        found: list[memoryview | None],
    ) -> None:
        order = np.argsort(slots[:, 0], kind="stable")
        group: list[int] = []
        reach = -1
        for i in order.tolist():
            if group and slots[i, 0] - reach > _COALESCE_GAP:
                self._read_group(fh, shard, positions, slots, group, found)
                group = []
            group.append(i)
            reach = max(reach, int(slots[i, 0] + slots[i, 1]))
        if group:
            self._read_group(fh, shard, positions, slots, group, found)

    def _read_group(
        self, fh: Any, shard: int, positions: npt.NDArray[np.intp], slots: npt.NDArray[np.int64], group: list[int],
        found: list[memoryview | None],
    ) -> None:
        first = int(slots[group, 0].min())
        last = int((slots[group, 0] + slots[group, 1]).max())
        data = memoryview(os.pread(fh.fileno(), last - first, first))
        if len(data) != last - first:
            raise DatasetError(f"{self.where} ({self.paths[shard].name})", "shard shorter than its index says")
        for i in group:
            start = int(slots[i, 0]) - first
            found[int(positions[i])] = data[start : start + int(slots[i, 1])]


@dataclass
class _LoadedEpisode:
    """What one process holds of an episode: numeric arrays in memory, camera readers."""

    numeric: dict[str, np.ndarray]
    cameras: dict[str, _ShardFiles | zarr.Array] = field(default_factory=dict)


class EpisodeDataset:
    """Windows of a Refinery dataset's episodes, as dicts of numpy arrays.

    Args:
        path: The dataset (a Zarr v3 store written by ``refinery process``).
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
        image_size: ``(height, width)`` to resize camera frames to
            (``cv2.INTER_AREA``); None keeps the stored size.
        pad: How steps outside the episode are filled; only ``"edge"``
            (repeat the first or last step).

    Raises:
        LoaderError: Not a Refinery dataset, no episode passes the filters,
            an unknown key or grade letter, a bad window or offset.
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
        image_size: tuple[int, int] | None = None,
        pad: str = "edge",
    ) -> None:
        self.path = Path(path)
        attrs = self._root_attrs()
        entries = [EpisodeEntry.from_dict(e) for e in attrs.get("episodes", [])]
        selected = self._select(entries, min_grade=min_grade, models=models, robots=robots, tasks=tasks,
                                accepted_only=accepted_only)
        self._entries = selected
        self._image_size = self._check_image_size(image_size)
        if pad not in PAD_MODES:
            raise LoaderError(self.path, f"pad={pad!r} is not supported; use one of {list(PAD_MODES)}")
        self._pad = pad
        names = self._check_keys(keys, delta_timestamps or {})
        rates = sorted({e.rate_hz for e in selected})
        self._rate_id = np.array([rates.index(e.rate_hz) for e in selected], dtype=np.int64)
        self._specs = tuple(
            self._spec(name, rates, history, horizon, delta_timestamps or {}, tolerance_s) for name in names
        )
        models_here = {e.model for e in selected}
        all_stats = attrs.get("stats", {})
        self._stats = {m: all_stats[m] for m in sorted(models_here) if m in all_stats}
        self._ends = np.cumsum([e.length for e in selected], dtype=np.int64)
        self._cache: dict[int, _LoadedEpisode] = {}
        self._pid = os.getpid()

    # -- construction helpers -------------------------------------------------

    def _root_attrs(self) -> dict[str, Any]:
        try:
            attrs = read_root_attrs(self.path)
        except StoreError as err:
            raise LoaderError(self.path, f"not a Refinery dataset: {err.problem}") from err
        if attrs.get("format") != DATASET_FORMAT:
            raise LoaderError(
                self.path, "not a Refinery dataset (root attribute 'format' missing); create one with `refinery process`"
            )
        return attrs

    def _select(self, entries: list[EpisodeEntry], **filters: Any) -> list[EpisodeEntry]:
        try:
            return select_episodes(self.path, entries, **filters)
        except DatasetError as err:
            raise LoaderError(self.path, err.problem) from err

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

    def _check_keys(self, keys: Sequence[str] | None, delta_timestamps: Mapping[str, Sequence[float]]) -> list[str]:
        if isinstance(keys, str):
            keys = [keys]
        available = [episode_keys(e) for e in self._entries]
        union = set().union(*available)
        if keys is None:
            common = set.intersection(*available)
            cameras = sorted(k for k in common if k.startswith(CAMERA_PREFIX))
            keys = [k for k in DEFAULT_NUMERIC_KEYS if k in common] + cameras
        names = list(dict.fromkeys([*keys, *delta_timestamps]))
        if not names:
            raise LoaderError(self.path, f"no keys selected; available keys: {sorted(union)}")
        for name in names:
            if name not in union:
                raise LoaderError(self.path, f"unknown key; available keys: {sorted(union)}", key=name)
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
        """The selected episodes' index entries; ``episode_index`` counts in this list."""
        return list(self._entries)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys every sample carries (besides ``<key>_is_pad`` and the step fields)."""
        return tuple(spec.name for spec in self._specs)

    @property
    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Normalisation statistics per robot model of the selected episodes, per key.

        ``{model: {key: {"mean", "std", "min", "max": per-column lists, "count"}}}``,
        from the dataset's root attributes: over every accepted episode of
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
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {index} out of range for {n} windows of dataset {self.path}")
        episode = int(np.searchsorted(self._ends, i, side="right"))
        start = int(self._ends[episode - 1]) if episode else 0
        return episode, i - start

    # -- reading --------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        episode, t = self.locate(index)
        entry = self._entries[episode]
        loaded = self._load(episode)
        rate_id = int(self._rate_id[episode])
        last = entry.length - 1
        sample: dict[str, np.ndarray] = {}
        for spec in self._specs:
            wanted = t + spec.offsets[rate_id]
            steps = np.clip(wanted, 0, last)
            if spec.kind == "camera":
                sample[spec.name] = self._frames(loaded, episode, spec.name, steps)
            else:
                sample[spec.name] = loaded.numeric[spec.name][steps]
            sample[f"{spec.name}_is_pad"] = wanted != steps
        sample["episode_index"] = np.array(episode, dtype=np.int64)
        sample["step"] = np.array(t, dtype=np.int64)
        sample["timestamp_ns"] = np.array(loaded.numeric[TIMESTAMPS_KEY][t], dtype=np.int64)
        return sample

    def preload(self) -> None:
        """Read every selected episode's numeric arrays now (e.g. before a forking loader starts workers)."""
        for episode in range(len(self._entries)):
            self._load(episode)

    def _load(self, episode: int) -> _LoadedEpisode:
        if self._pid != os.getpid():
            # A forked worker: keep the arrays it inherited, reopen zarr handles itself.
            for inherited in self._cache.values():
                inherited.cameras.clear()
            self._pid = os.getpid()
        loaded = self._cache.get(episode)
        if loaded is None:
            loaded = self._cache[episode] = self._read_numeric(episode)
        return loaded

    def _group(self, episode: int) -> zarr.Group:
        entry = self._entries[episode]
        where = self.path / EPISODES_GROUP / entry.key
        try:
            return zarr.open_group(str(where), mode="r")
        except (FileNotFoundError, OSError, ValueError, KeyError) as err:
            raise LoaderError(
                self.path,
                f"the index lists this episode but {where} cannot be opened ({err}); re-run `refinery process`",
                episode=entry.key,
            ) from err

    def _read_numeric(self, episode: int) -> _LoadedEpisode:
        entry = self._entries[episode]
        group = self._group(episode)
        names = {TIMESTAMPS_KEY} | {spec.name for spec in self._specs if spec.kind == "numeric"}
        numeric: dict[str, np.ndarray] = {}
        for name in sorted(names):
            try:
                values = np.asarray(group[name][...])
            except (KeyError, OSError, ValueError) as err:
                raise LoaderError(self.path, f"cannot read the array: {err}", key=name, episode=entry.key) from err
            if values.shape[0] != entry.length:
                raise LoaderError(
                    self.path,
                    f"has {values.shape[0]} steps but the index says {entry.length}; the dataset is inconsistent",
                    key=name,
                    episode=entry.key,
                )
            numeric[name] = values.astype(np.int64 if name == TIMESTAMPS_KEY else np.float32, copy=False)
        return _LoadedEpisode(numeric)

    def _camera(self, loaded: _LoadedEpisode, episode: int, name: str) -> _ShardFiles | zarr.Array:
        array = loaded.cameras.get(name)
        if array is None:
            entry = self._entries[episode]
            try:
                found = self._group(episode)[name]
            except KeyError as err:
                raise LoaderError(self.path, "camera array missing", key=name, episode=entry.key) from err
            if not isinstance(found, zarr.Array) or found.shape[0] != entry.length:
                raise LoaderError(
                    self.path, f"not a camera array of {entry.length} frames: {found}", key=name, episode=entry.key
                )
            try:
                array = loaded.cameras[name] = _ShardFiles(found) if _ShardFiles.accepts(found) else found
            except DatasetError as err:
                raise LoaderError(self.path, err.problem, key=name, episode=entry.key) from err
        return array

    def _frames(self, loaded: _LoadedEpisode, episode: int, name: str, steps: npt.NDArray[np.int64]) -> np.ndarray:
        source = self._camera(loaded, episode, name)
        # Padding repeats edge steps: decode (and resize) each distinct frame once.
        unique, inverse = np.unique(steps, return_inverse=True)
        try:
            if isinstance(source, _ShardFiles):
                images: Iterable[np.ndarray] = source.decode(unique)
                stored = source.shape[:2]
            else:
                images = read_frames(source, unique)
                stored = source.shape[1:3]
            height, width = self._image_size or stored
            frames = np.empty((unique.size, height, width, 3), dtype=np.uint8)
            for i, image in enumerate(images):
                if image.shape[:2] == (height, width):
                    frames[i] = image
                else:
                    cv2.resize(image, (width, height), dst=frames[i], interpolation=cv2.INTER_AREA)
        except DatasetError as err:
            raise LoaderError(self.path, str(err), key=name, episode=self._entries[episode].key) from err
        if unique.size == steps.size and np.array_equal(unique, steps):
            return frames
        return frames[inverse]

    # -- pickling -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The selection only: caches and zarr handles are reopened lazily in the receiving process."""
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()



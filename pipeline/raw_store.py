"""Sealed raw episodes: one HDF5 file per episode, written once, atomically.

Layout of ``<data>/raw/<robot_id>/<episode_id>.h5`` (README, "Raw episode files"):

    /                       attrs: format, format_version, robot_id, episode_id, model,
                            config_digest, producer_key (Z85 CURVE key, "" without CURVE),
                            status (complete|incomplete), outcome, task, operator,
                            missing (JSON), limit, created_ns, sealed_ns, content_sha256
    /robot_config           JSON text of the robot config the collector declared
    /streams/<name>/        numeric streams (joint_state, action), one row per sample:
        capture_ns  int64 (n)        capture time on the collector's clock
        source_index int64 (n)       the driver's sample counter
        seq         int64 (n)        the wire message the row arrived in
        arrival_ns  int64 (n)        ingest clock when that message arrived
        <field>     float64 (n, dof) position / velocity / effort, columns = joint order
    /cameras/<camera>/      one row per frame; attrs width, height, fps, latency_ms
        capture_ns, source_index, seq, arrival_ns   int64 (n)
        jpeg_offsets int64 (n+1)     frame i is jpeg_data[offsets[i]:offsets[i+1]]
        jpeg_data    uint8 (total)   the JPEG bytes exactly as received
    /events/                seq, capture_ns, arrival_ns int64 (n); json (n) UTF-8 strings
    /clock_sync/            seq, t1_ns, t2_ns, t3_ns, t4_ns, arrival_ns int64 (n);
                            offset_ns, round_trip_ns float64 (n)

``content_sha256`` hashes every dataset (path, dtype, shape, bytes) in path
order plus the identity attributes (``producer_key`` included when present);
:func:`verify_episode` recomputes it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import protocol
from pipeline.errors import StoreError
from pipeline.journal import EpisodeJournal, EpisodeMeta, iter_journal
from pipeline.record_log import fsync_dir, make_dirs_durably, reserve_fd
from pipeline.streams import EVENTS, NUMERIC_FIELDS

RAW_FORMAT = "refinery-raw"
RAW_FORMAT_VERSION = 2  # 2: producer_key (hashed) and limit attributes
_HDF5_MARGIN_BYTES = 2 << 20  # a raw file's size beyond its journal bytes: chunks and metadata (G1: 0.5 MB)
_HASHED_ATTRS = ("robot_id", "episode_id", "model", "config_digest", "status")


def raw_path(data_dir: Path, robot_id: str, episode_id: str) -> Path:
    return data_dir / "raw" / robot_id / f"{episode_id}.h5"


def seal_journal(
    journal_path: Path, out_path: Path, *, missing: dict[str, list[int]] | None = None, limit: str = ""
) -> Path:
    """Write a journal file's episode as one HDF5 file, atomically (:func:`seal_records`)."""
    meta, records = iter_journal(journal_path)
    return seal_records(meta, records, out_path, missing=missing, limit=limit, source=journal_path,
                        reserve_bytes=journal_path.stat().st_size)


def seal_records(
    meta: EpisodeMeta, records: Iterator[tuple[int, protocol.DataRecord]], out_path: Path, *,
    missing: dict[str, list[int]] | None = None, limit: str = "", source: Path, reserve_bytes: int = 0,
) -> Path:
    """Write an episode's journaled messages as one HDF5 file, atomically, and return its path.

    The records are streamed: read one at a time and appended to the file's
    datasets in bounded buffers, so memory does not grow with the episode. The
    file is written to ``<out>.partial``, fsynced, renamed into place and the
    directory fsynced, so a reader sees either no file or the whole one.
    ``source`` names the journal in errors.

    ``reserve_bytes`` (the episode's journal bytes; the file is about as large,
    plus HDF5's chunks and metadata: 0.5 MB more for a G1 episode, whatever its
    length) is checked against the disk's free space and reserved, with that
    margin, before the first write:
    HDF5 that finds the disk full mid-file can crash the process (a segmentation
    fault in its clean-up), so a disk without room fails the seal up front.

    Raises:
        StoreError: the journal holds something that cannot be sealed (a batch
            whose width differs from its stream's first, text HDF5 cannot hold).
        OSError: ENOSPC when the disk has no room for the file; other disk errors.
    """
    make_dirs_durably(out_path.parent)
    partial = out_path.with_name(out_path.name + ".partial")
    if reserve_bytes > 0:
        reserve_bytes += _HDF5_MARGIN_BYTES + reserve_bytes // 64
    _check_room(out_path, reserve_bytes)
    try:
        with h5py.File(partial, "w") as h5:
            _reserve(partial, out_path, reserve_bytes)
            _write_episode(h5, meta, records, missing or {}, limit, source)
        with open(partial, "rb+") as fh:
            fh.truncate(os.fstat(fh.fileno()).st_size)  # gives back the reserved blocks not written
            os.fsync(fh.fileno())
        os.replace(partial, out_path)
        fsync_dir(out_path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out_path


def _check_room(out_path: Path, nbytes: int) -> None:
    if nbytes <= 0:
        return
    try:
        stat = os.statvfs(out_path.parent)
    except OSError:
        return  # the write says what is wrong
    free = stat.f_bavail * stat.f_frsize
    if free < nbytes:
        raise _no_room(out_path, nbytes, free)


def _reserve(partial: Path, out_path: Path, nbytes: int) -> None:
    fd = os.open(partial, os.O_WRONLY)
    try:
        reserve_fd(fd, nbytes)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _no_room(out_path, nbytes, None) from None
    finally:
        os.close(fd)


def _no_room(out_path: Path, nbytes: int, free: int | None) -> OSError:
    has = f", {free / 1e6:.1f} MB free" if free is not None else ""
    return OSError(errno.ENOSPC, f"no room for the raw file {out_path} (about {nbytes / 1e6:.1f} MB{has}): "
                                 "free space on its disk")


def seal_recovered(journal: EpisodeJournal, data_dir: Path, *, incomplete: bool = False) -> Path:
    """Seal an episode's journal; a journal file is deleted once the raw file is in
    place (records in the shared journal are released by the ingest)."""
    journal.close()
    out = raw_path(data_dir, journal.meta.robot_id, journal.meta.episode_id)
    missing = journal.missing() if incomplete or journal.limit else None
    seal_records(journal.meta, journal.records(), out, missing=missing, limit=journal.limit, source=journal.path,
                 reserve_bytes=journal.size)
    if journal.shared is None:
        journal.path.unlink()
        fsync_dir(journal.path.parent)
    return out


_FLUSH_BYTES = 4 << 20  # per group: what is buffered before it is appended to the file
# HDF5 allocates whole chunks, so a short episode's file grows by up to one chunk
# per dataset (about 40 of them): keep chunks small, except for the JPEG bytes.
_CHUNK_BYTES = 32 << 10  # rows of a 2-D dataset (n, dof)
_COLUMN_CHUNK_ROWS = 1024  # 1-D int64/float64 columns: 8 KB
_JPEG_CHUNK_BYTES = 64 << 10


class _Appender:
    """Rows appended to the resizable datasets of one group, buffered to a bound."""

    def __init__(self, group: h5py.Group) -> None:
        self.group = group
        self.buffers: dict[str, list[Any]] = {}
        self.pending = 0

    def column(self, name: str, dtype: Any, tail: tuple[int, ...] = ()) -> None:
        if dtype is np.uint8:
            rows = _JPEG_CHUNK_BYTES
        else:
            rows = max(1, _CHUNK_BYTES // (8 * max(1, int(np.prod(tail, dtype=np.int64))))) if tail else _COLUMN_CHUNK_ROWS
        self.group.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype, chunks=(rows, *tail))
        self.buffers[name] = []

    def add(self, name: str, values: Any, nbytes: int = 8) -> None:
        self.buffers[name].append(values)
        self.pending += nbytes
        if self.pending >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for name, parts in self.buffers.items():
            if not parts:
                continue
            ds = self.group[name]
            if ds.dtype.kind == "O":
                data = np.array(parts, dtype=object)
            elif isinstance(parts[0], np.ndarray) and parts[0].ndim == ds.ndim:
                data = np.concatenate(parts)
            else:
                data = np.asarray(parts, dtype=ds.dtype)
            n = ds.shape[0]
            ds.resize(n + data.shape[0], axis=0)
            ds[n:] = data
            parts.clear()
        self.pending = 0


def _write_episode(
    h5: h5py.File,
    meta: EpisodeMeta,
    records: Iterator[tuple[int, protocol.DataRecord]],
    missing: dict[str, list[int]],
    limit: str,
    source: Path,
) -> None:
    config = meta.config
    dof = len(config.get("joints", []))
    cameras = {c["name"]: c for c in config.get("cameras", []) if isinstance(c, dict) and "name" in c}
    h5.create_dataset("robot_config", data=json.dumps(config, sort_keys=True))
    numeric: dict[str, tuple[_Appender, int, tuple[str, ...] | None]] = {}
    frames: dict[str, tuple[_Appender, list[int]]] = {}
    events = _Appender(h5.create_group(EVENTS))
    for name in ("seq", "capture_ns", "source_index", "arrival_ns"):
        events.column(name, np.int64)
    events.group.create_dataset("json", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(1024,))
    events.buffers["json"] = []
    clocks = _Appender(h5.create_group("clock_sync"))
    for name in ("seq", "arrival_ns", "t1_ns", "t2_ns", "t3_ns", "t4_ns"):
        clocks.column(name, np.int64)
    for name in ("offset_ns", "round_trip_ns"):
        clocks.column(name, np.float64)
    info: dict[str, str] = {}

    for arrival_ns, record in records:
        header = record.header
        if isinstance(record, protocol.Samples):
            stream = header.stream
            rows, cols = record.values.shape
            if stream not in numeric:
                fields = NUMERIC_FIELDS.get(stream)
                split = fields if fields and dof and cols == dof * len(fields) else None
                app = _Appender(h5.create_group(f"streams/{stream}"))
                for name in ("capture_ns", "source_index", "seq", "arrival_ns"):
                    app.column(name, np.int64)
                for name in split or ("values",):
                    app.column(name, np.float64, (dof if split else cols,))
                numeric[stream] = (app, cols, split)
            app, first_cols, split = numeric[stream]
            if cols != first_cols:
                raise StoreError(
                    str(source),
                    f"stream {stream!r} batch seq {header.seq} has {cols} columns, its first batch had {first_cols}",
                )
            app.add("capture_ns", record.capture_ns, 8 * rows)
            app.add("source_index", record.source_index, 8 * rows)
            app.add("seq", np.full(rows, header.seq, dtype=np.int64), 8 * rows)
            app.add("arrival_ns", np.full(rows, arrival_ns, dtype=np.int64), 8 * rows)
            if split:
                for i, name in enumerate(split):
                    app.add(name, record.values[:, i * dof : (i + 1) * dof], 8 * rows * dof)
            else:
                app.add("values", record.values, 8 * rows * cols)
        elif isinstance(record, protocol.Frame):
            camera = header.stream
            if camera not in frames:
                app = _Appender(h5.create_group(f"cameras/{camera}"))
                for key in ("width", "height", "fps", "latency_ms"):
                    if key in cameras.get(camera, {}):
                        app.group.attrs[key] = cameras[camera][key]
                for name in ("seq", "capture_ns", "source_index", "arrival_ns", "jpeg_offsets"):
                    app.column(name, np.int64)
                app.column("jpeg_data", np.uint8)
                app.add("jpeg_offsets", 0)
                frames[camera] = (app, [0])
            app, end = frames[camera]
            end[0] += len(record.jpeg)
            app.add("seq", header.seq)
            app.add("capture_ns", header.capture_ns)
            app.add("source_index", header.source_index)
            app.add("arrival_ns", arrival_ns)
            app.add("jpeg_offsets", end[0])
            app.add("jpeg_data", np.frombuffer(record.jpeg, dtype=np.uint8), len(record.jpeg))
        elif isinstance(record, protocol.Event):
            events.add("seq", header.seq)
            events.add("capture_ns", header.capture_ns)
            events.add("source_index", header.source_index)
            events.add("arrival_ns", arrival_ns)
            text = json.dumps(record.body, sort_keys=True)
            events.add("json", text, len(text))
            _update_info(info, record.body)
        elif isinstance(record, protocol.ClockSample):
            clocks.add("seq", header.seq)
            clocks.add("arrival_ns", arrival_ns)
            for name in ("t1_ns", "t2_ns", "t3_ns", "t4_ns"):
                clocks.add(name, getattr(record, name))
            clocks.add("offset_ns", record.offset_ns)
            clocks.add("round_trip_ns", float(record.round_trip_ns))
    for app in [events, clocks, *(a for a, _, _ in numeric.values()), *(a for a, _ in frames.values())]:
        app.flush()

    attrs = {
        "format": RAW_FORMAT,
        "format_version": RAW_FORMAT_VERSION,
        "robot_id": meta.robot_id,
        "episode_id": meta.episode_id,
        "model": meta.model,
        "config_digest": meta.config_digest,
        "producer_key": meta.producer_key,
        "status": "incomplete" if missing else "complete",
        "missing": json.dumps(missing, sort_keys=True),
        "limit": limit,
        "outcome": info.get("outcome", ""),
        "task": info.get("task", ""),
        "operator": info.get("operator", ""),
        "created_ns": meta.created_ns,
        "sealed_ns": time.time_ns(),
    }
    try:
        h5.attrs.update(attrs)
    except ValueError as err:  # e.g. a NUL inside a string: HDF5 cannot store it
        raise StoreError(str(source), f"episode attributes cannot be stored: {err}") from err
    h5.attrs["content_sha256"] = content_digest(h5)


def _update_info(info: dict[str, str], body: dict[str, Any]) -> None:
    """Task, operator and outcome as the episode's events last stated them."""
    if body.get("kind") in ("start", "task") and body.get("task"):
        info["task"] = str(body["task"])
    if body.get("operator"):
        info["operator"] = str(body["operator"])
    if body.get("kind") == "stop":
        info["outcome"] = str(body.get("outcome", ""))


_HASH_ROWS_BYTES = 8 << 20


def content_digest(h5: h5py.File) -> str:
    """SHA-256 over every dataset and the identity attributes, in a fixed order.

    Datasets are read in slices of about 8 MB, so hashing a file of any size
    takes bounded memory; the bytes hashed are the same as hashing each whole
    array (C order), so files sealed before streaming still verify.
    """
    digest = _identity_digest(h5)
    for name, ds in _datasets(h5):
        digest.update(f"{name}|{ds.dtype.str}|{ds.shape}\n".encode())
        if ds.dtype.kind == "O" or ds.dtype.kind in "SU" or ds.shape == ():
            if ds.shape == ():
                data = ds[()]
                if ds.dtype.kind != "O" and not isinstance(data, (bytes, str)):
                    digest.update(np.ascontiguousarray(data).tobytes())
                    continue
                items: Iterator[Any] = iter([data])
            else:
                items = _iter_rows(ds, 4096)
            _hash_json_list(digest, items)
        else:
            row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
            for rows in _iter_blocks(ds, max(1, _HASH_ROWS_BYTES // row_bytes)):
                digest.update(np.ascontiguousarray(rows).tobytes())
    return digest.hexdigest()


def _identity_digest(h5: h5py.File) -> Any:
    digest = hashlib.sha256()
    for key in _HASHED_ATTRS:
        digest.update(f"{key}={h5.attrs.get(key, '')}\n".encode())
    if "producer_key" in h5.attrs:  # format 2; format 1 files have no such attribute
        digest.update(f"producer_key={h5.attrs['producer_key']}\n".encode())
    return digest


def _datasets(h5: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    """Every dataset with its path, in path order (the order the digest hashes them in)."""
    found: list[tuple[str, h5py.Dataset]] = []
    # visititems hands over each object: looking every name up again cost a third of a small file's read.
    h5.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found, key=lambda item: item[0])


def read_all_and_digest(h5: h5py.File) -> tuple[dict[str, Any], str]:
    """Every dataset read once, and :func:`content_digest` computed from what was read.

    For readers that load a whole episode anyway (processing): the checksum is
    verified without reading the file twice. The bytes hashed are the same as
    :func:`content_digest` hashes.
    """
    digest = _identity_digest(h5)
    values: dict[str, Any] = {}
    for name, ds in _datasets(h5):
        value = values[name] = ds[()]
        digest.update(f"{name}|{ds.dtype.str}|{ds.shape}\n".encode())
        if ds.dtype.kind == "O" or ds.dtype.kind in "SU" or ds.shape == ():
            if ds.shape == ():
                if ds.dtype.kind != "O" and not isinstance(value, (bytes, str)):
                    digest.update(np.ascontiguousarray(value).tobytes())
                    continue
                items: Iterator[Any] = iter([value])
            else:
                items = iter(value.tolist())
            _hash_json_list(digest, items)
        else:
            digest.update(np.ascontiguousarray(value).tobytes())
    return values, digest.hexdigest()


def _iter_blocks(ds: h5py.Dataset, step: int) -> Iterator[np.ndarray]:
    for start in range(0, ds.shape[0], step):
        yield ds[start : start + step]


def _iter_rows(ds: h5py.Dataset, step: int) -> Iterator[Any]:
    for block in _iter_blocks(ds, step):
        yield from block.tolist()


def _hash_json_list(digest: Any, items: Iterator[Any]) -> None:
    """Hash ``json.dumps(list(items))`` (strings decoded) without building the list."""
    digest.update(b"[")
    for i, item in enumerate(items):
        if i:
            digest.update(b", ")
        digest.update(json.dumps(item.decode() if isinstance(item, bytes) else item).encode())
    digest.update(b"]")


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    ok: bool
    problem: str = ""
    producer: str = ""  # who sealed it: "key <Z85>", "no key (plain)" or "unknown (format 1)"


def verify_episode(path: Path) -> VerifyResult:
    """Recompute a sealed file's checksum and compare it with the stored one."""
    try:
        with h5py.File(path, "r") as h5:
            stored = h5.attrs.get("content_sha256")
            if stored is None:
                return VerifyResult(path, False, "no content_sha256 attribute")
            actual = content_digest(h5)
            producer = _producer(h5)
    except (OSError, KeyError) as err:
        return VerifyResult(path, False, f"cannot read: {err}")
    if actual != stored:
        return VerifyResult(path, False, f"checksum mismatch: stored {stored[:12]}…, content {actual[:12]}…", producer)
    return VerifyResult(path, True, producer=producer)


def _producer(h5: h5py.File) -> str:
    if "producer_key" not in h5.attrs:
        return "producer unknown (sealed before format 2)"
    key = h5.attrs["producer_key"]
    key = key.decode() if isinstance(key, bytes) else str(key)
    return f"robot {h5.attrs.get('robot_id', '')} key {key}" if key else f"robot {h5.attrs.get('robot_id', '')} no key (plain)"


class RawEpisodeReader:
    """Read a sealed episode.

    Example::

        with RawEpisodeReader(path) as ep:
            pos = ep.numeric("joint_state")["position"]
            jpeg = ep.frame("head_left", 0)
    """

    def __init__(self, path: Path | str, *, verify: bool = False) -> None:
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(str(self.path), f"cannot open raw episode: {err}") from err
        if self._h5.attrs.get("format") != RAW_FORMAT:
            self._h5.close()
            raise StoreError(str(self.path), "not a Refinery raw episode (format attribute missing)")
        self._values: dict[str, Any] = {}
        self.content_sha256: str | None = None  # recomputed from the content, with verify=True
        if verify:
            try:
                self._values, self.content_sha256 = read_all_and_digest(self._h5)
            except (OSError, ValueError) as err:
                self._h5.close()
                raise StoreError(str(self.path), f"cannot read raw episode: {err}") from err

    def __enter__(self) -> RawEpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    def _read(self, name: str) -> Any:
        """A whole dataset: from what verify read, or from the file."""
        if name in self._values:
            return self._values[name]
        return self._h5[name][()]

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._h5.attrs.items()}

    @property
    def robot_config(self) -> dict[str, Any]:
        raw = self._read("robot_config")
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)

    @property
    def stream_names(self) -> list[str]:
        return sorted(self._h5.get("streams", {}).keys())

    @property
    def camera_names(self) -> list[str]:
        return sorted(self._h5.get("cameras", {}).keys())

    def numeric(self, stream: str) -> dict[str, np.ndarray]:
        if f"streams/{stream}" not in self._h5:
            raise StoreError(str(self.path), f"no stream {stream!r}; streams: {self.stream_names}")
        return {k: self._read(f"streams/{stream}/{k}") for k in self._h5[f"streams/{stream}"]}

    def camera(self, camera: str) -> dict[str, np.ndarray]:
        """Per-frame columns of a camera (capture_ns, seq, ...), without the JPEG data."""
        g = self._camera_group(camera)
        return {k: self._read(f"cameras/{camera}/{k}") for k in g if k != "jpeg_data"}

    def camera_attrs(self, camera: str) -> dict[str, Any]:
        return dict(self._camera_group(camera).attrs)

    def frame_count(self, camera: str) -> int:
        return int(self._camera_group(camera)["seq"].shape[0])

    def frame(self, camera: str, i: int) -> bytes:
        g = self._camera_group(camera)
        start, end = g["jpeg_offsets"][i : i + 2]
        return g["jpeg_data"][start:end].tobytes()

    def frames(self, camera: str) -> list[bytes]:
        self._camera_group(camera)
        offsets = self._read(f"cameras/{camera}/jpeg_offsets")
        data = self._read(f"cameras/{camera}/jpeg_data")
        return [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(x.decode() if isinstance(x, bytes) else x) for x in self._read("events/json")]

    def clock_sync(self) -> dict[str, np.ndarray]:
        return {k: self._read(f"clock_sync/{k}") for k in self._h5["clock_sync"]}

    def _camera_group(self, camera: str) -> h5py.Group:
        if f"cameras/{camera}" not in self._h5:
            raise StoreError(str(self.path), f"no camera {camera!r}; cameras: {self.camera_names}")
        return self._h5[f"cameras/{camera}"]

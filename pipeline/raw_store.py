"""Sealed raw episodes: one HDF5 file per episode, written once, atomically.

Layout of ``<data>/raw/<robot_id>/<episode_id>.h5`` (README, "Raw episode files"):

    /                       attrs: format, format_version, robot_id, episode_id, model,
                            config_digest, status (complete|incomplete), outcome, task,
                            operator, missing (JSON), created_ns, sealed_ns, content_sha256
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
order plus the identity attributes; :func:`verify_episode` recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import protocol
from pipeline.errors import StoreError
from pipeline.journal import EpisodeJournal, EpisodeMeta, read_journal
from pipeline.record_log import fsync_dir
from pipeline.streams import EVENTS, NUMERIC_FIELDS

RAW_FORMAT = "refinery-raw"
RAW_FORMAT_VERSION = 1
_HASHED_ATTRS = ("robot_id", "episode_id", "model", "config_digest", "status")


def raw_path(data_dir: Path, robot_id: str, episode_id: str) -> Path:
    return data_dir / "raw" / robot_id / f"{episode_id}.h5"


def seal_journal(journal_path: Path, out_path: Path, *, missing: dict[str, list[int]] | None = None) -> Path:
    """Write the journal's episode as one HDF5 file, atomically, and return its path.

    The file is written to ``<out>.partial``, fsynced, renamed into place and the
    directory fsynced, so a reader sees either no file or the whole one.
    """
    meta, records = read_journal(journal_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with h5py.File(partial, "w") as h5:
            _write_episode(h5, meta, records, missing or {})
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, out_path)
        fsync_dir(out_path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out_path


def seal_recovered(journal: EpisodeJournal, data_dir: Path, *, incomplete: bool = False) -> Path:
    """Seal an episode journal and delete the journal once the file is in place."""
    journal.close()
    out = raw_path(data_dir, journal.meta.robot_id, journal.meta.episode_id)
    seal_journal(journal.path, out, missing=journal.missing() if incomplete else None)
    journal.path.unlink()
    fsync_dir(journal.path.parent)
    return out


def _write_episode(
    h5: h5py.File, meta: EpisodeMeta, records: list[tuple[int, protocol.DataRecord]], missing: dict[str, list[int]]
) -> None:
    numeric: dict[str, list[tuple[int, protocol.Samples]]] = defaultdict(list)
    frames: dict[str, list[tuple[int, protocol.Frame]]] = defaultdict(list)
    events: list[tuple[int, protocol.Event]] = []
    clocks: list[tuple[int, protocol.ClockSample]] = []
    for arrival_ns, record in records:
        if isinstance(record, protocol.Samples):
            numeric[record.header.stream].append((arrival_ns, record))
        elif isinstance(record, protocol.Frame):
            frames[record.header.stream].append((arrival_ns, record))
        elif isinstance(record, protocol.Event):
            events.append((arrival_ns, record))
        elif isinstance(record, protocol.ClockSample):
            clocks.append((arrival_ns, record))

    config = meta.config
    info = _episode_info(events)
    h5.attrs.update(
        {
            "format": RAW_FORMAT,
            "format_version": RAW_FORMAT_VERSION,
            "robot_id": meta.robot_id,
            "episode_id": meta.episode_id,
            "model": meta.model,
            "config_digest": meta.config_digest,
            "status": "incomplete" if missing else "complete",
            "missing": json.dumps(missing, sort_keys=True),
            "outcome": info.get("outcome", ""),
            "task": info.get("task", ""),
            "operator": info.get("operator", ""),
            "created_ns": meta.created_ns,
            "sealed_ns": time.time_ns(),
        }
    )
    h5.create_dataset("robot_config", data=json.dumps(config, sort_keys=True))

    dof = len(config.get("joints", []))
    for stream, batches in numeric.items():
        g = h5.create_group(f"streams/{stream}")
        rows = [b.values.shape[0] for _, b in batches]
        g["capture_ns"] = np.concatenate([b.capture_ns for _, b in batches])
        g["source_index"] = np.concatenate([b.source_index for _, b in batches])
        g["seq"] = np.repeat([b.header.seq for _, b in batches], rows).astype(np.int64)
        g["arrival_ns"] = np.repeat([a for a, _ in batches], rows).astype(np.int64)
        values = np.concatenate([b.values for _, b in batches])
        fields = NUMERIC_FIELDS.get(stream)
        if fields and dof and values.shape[1] == dof * len(fields):
            for i, name in enumerate(fields):
                g.create_dataset(name, data=values[:, i * dof : (i + 1) * dof], chunks=True)
        else:
            g.create_dataset("values", data=values, chunks=True)

    cameras = {c["name"]: c for c in config.get("cameras", [])}
    for camera, items in frames.items():
        g = h5.create_group(f"cameras/{camera}")
        for key in ("width", "height", "fps", "latency_ms"):
            if key in cameras.get(camera, {}):
                g.attrs[key] = cameras[camera][key]
        _write_header_columns(g, items)
        sizes = np.fromiter((len(f.jpeg) for _, f in items), dtype=np.int64, count=len(items))
        g["jpeg_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        g.create_dataset(
            "jpeg_data", data=np.frombuffer(b"".join(f.jpeg for _, f in items), dtype=np.uint8), chunks=True
        )

    g = h5.create_group(EVENTS)
    _write_header_columns(g, events)
    g.create_dataset("json", data=[json.dumps(e.body, sort_keys=True) for _, e in events], dtype=h5py.string_dtype())

    g = h5.create_group("clock_sync")
    _write_header_columns(g, clocks, capture=False)
    for name in ("t1_ns", "t2_ns", "t3_ns", "t4_ns"):
        g[name] = np.array([getattr(c, name) for _, c in clocks], dtype=np.int64)
    g["offset_ns"] = np.array([c.offset_ns for _, c in clocks], dtype=np.float64)
    g["round_trip_ns"] = np.array([c.round_trip_ns for _, c in clocks], dtype=np.float64)

    h5.attrs["content_sha256"] = content_digest(h5)


def _write_header_columns(g: h5py.Group, items: list[tuple[int, Any]], capture: bool = True) -> None:
    g["seq"] = np.array([r.header.seq for _, r in items], dtype=np.int64)
    if capture:
        g["capture_ns"] = np.array([r.header.capture_ns for _, r in items], dtype=np.int64)
        g["source_index"] = np.array([r.header.source_index for _, r in items], dtype=np.int64)
    g["arrival_ns"] = np.array([a for a, _ in items], dtype=np.int64)


def _episode_info(events: list[tuple[int, protocol.Event]]) -> dict[str, str]:
    """Task, operator and outcome as the episode's events last stated them."""
    info: dict[str, str] = {}
    for _, event in events:
        body = event.body
        if body["kind"] in ("start", "task") and body.get("task"):
            info["task"] = str(body["task"])
        if body.get("operator"):
            info["operator"] = str(body["operator"])
        if body["kind"] == "stop":
            info["outcome"] = str(body.get("outcome", ""))
    return info


def content_digest(h5: h5py.File) -> str:
    """SHA-256 over every dataset and the identity attributes, in a fixed order."""
    digest = hashlib.sha256()
    for key in _HASHED_ATTRS:
        digest.update(f"{key}={h5.attrs.get(key, '')}\n".encode())
    paths: list[str] = []
    h5.visit(lambda name: paths.append(name) if isinstance(h5[name], h5py.Dataset) else None)
    for name in sorted(paths):
        ds = h5[name]
        data = ds[()]
        if ds.dtype.kind == "O" or isinstance(data, (bytes, str)):
            raw = json.dumps([x.decode() if isinstance(x, bytes) else x for x in np.atleast_1d(data).tolist()])
            blob = raw.encode()
        else:
            blob = np.ascontiguousarray(data).tobytes()
        digest.update(f"{name}|{ds.dtype.str}|{ds.shape}\n".encode())
        digest.update(blob)
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    ok: bool
    problem: str = ""


def verify_episode(path: Path) -> VerifyResult:
    """Recompute a sealed file's checksum and compare it with the stored one."""
    try:
        with h5py.File(path, "r") as h5:
            stored = h5.attrs.get("content_sha256")
            if stored is None:
                return VerifyResult(path, False, "no content_sha256 attribute")
            actual = content_digest(h5)
    except (OSError, KeyError) as err:
        return VerifyResult(path, False, f"cannot read: {err}")
    if actual != stored:
        return VerifyResult(path, False, f"checksum mismatch: stored {stored[:12]}…, content {actual[:12]}…")
    return VerifyResult(path, True)


class RawEpisodeReader:
    """Read a sealed episode.

    Example::

        with RawEpisodeReader(path) as ep:
            pos = ep.numeric("joint_state")["position"]
            jpeg = ep.frame("head_left", 0)
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(str(self.path), f"cannot open raw episode: {err}") from err
        if self._h5.attrs.get("format") != RAW_FORMAT:
            self._h5.close()
            raise StoreError(str(self.path), "not a Refinery raw episode (format attribute missing)")

    def __enter__(self) -> RawEpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._h5.attrs.items()}

    @property
    def robot_config(self) -> dict[str, Any]:
        raw = self._h5["robot_config"][()]
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
        return {k: v[()] for k, v in self._h5[f"streams/{stream}"].items()}

    def camera(self, camera: str) -> dict[str, np.ndarray]:
        """Per-frame columns of a camera (capture_ns, seq, ...), without the JPEG data."""
        g = self._camera_group(camera)
        return {k: v[()] for k, v in g.items() if k != "jpeg_data"}

    def camera_attrs(self, camera: str) -> dict[str, Any]:
        return dict(self._camera_group(camera).attrs)

    def frame_count(self, camera: str) -> int:
        return int(self._camera_group(camera)["seq"].shape[0])

    def frame(self, camera: str, i: int) -> bytes:
        g = self._camera_group(camera)
        start, end = g["jpeg_offsets"][i : i + 2]
        return g["jpeg_data"][start:end].tobytes()

    def frames(self, camera: str) -> list[bytes]:
        g = self._camera_group(camera)
        offsets = g["jpeg_offsets"][()]
        data = g["jpeg_data"][()]
        return [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(x.decode() if isinstance(x, bytes) else x) for x in self._h5["events/json"][()]]

    def clock_sync(self) -> dict[str, np.ndarray]:
        return {k: v[()] for k, v in self._h5["clock_sync"].items()}

    def _camera_group(self, camera: str) -> h5py.Group:
        if f"cameras/{camera}" not in self._h5:
            raise StoreError(str(self.path), f"no camera {camera!r}; cameras: {self.camera_names}")
        return self._h5[f"cameras/{camera}"]

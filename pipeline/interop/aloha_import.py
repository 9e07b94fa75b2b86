"""Import ALOHA / ACT episodes (``episode_*.hdf5``) as sealed raw episodes.

ACT's and ALOHA's recorders (``record_episodes.py``) write one HDF5 file per
episode, one row per control step at 50 Hz::

    /observations/qpos                (T, 14)  float   joint positions, robot order
    /observations/qvel                (T, 14)  float   optional (zeros when absent)
    /observations/effort              (T, 14)  float   optional (zeros when absent)
    /observations/images/<camera>     (T, H, W, 3) uint8 RGB
                                  or  (T, N) uint8     JPEG bytes zero-padded to N
                                                       (the ``compress`` option)
    /action                           (T, 14)  float   the leader arms' positions
    /compress_len                     (cameras, T)     compressed files only (not needed)
    attrs sim, compress                                optional

Other datasets (Mobile ALOHA's ``/base_action``, depth images) are not imported.

Each file becomes one raw episode through :class:`~pipeline.raw_builder.RawEpisodeBuilder`,
so it goes through the same processing as a recorded one:

* events: ``start`` (task, operator) at the base time, a ``label`` naming the
  source file, ``stop`` (outcome ``success``) one step after the last;
* ``joint_state``: qpos ++ qvel ++ effort at ``rate_hz``; ``action``: the
  action rows at the same stamps (step ``i`` at ``base + i / rate_hz``);
* one frame per camera per step, stamped like the joints: ACT's image recorder
  hands each step the newest frame, so the stamp is the frame's arrival and
  the camera's ``latency_ms`` (from the config) places its exposure before it;
* clock samples every 0.5 s with zero offset (one clock: the file's).

The files carry no capture times, so the base time is ``start_ns`` or, by
default, the file's modification time (roughly when the recorder wrote it):
importing the same file again, even into another folder, gives a raw episode
with the same id and content checksum, which the processing job skips.

Camera frames: raw RGB images are encoded as JPEG (``quality``; OpenCV wants
BGR, so channels are swapped first). Compressed files hold JPEGs that ACT
encoded with ``cv2.imencode`` straight from the RGB arrays, so a standard
decoder shows them with red and blue swapped; ``compressed_rgb=True`` (the
default) decodes and re-encodes them with the channels in the right order,
``False`` stores them as they are (for files whose JPEGs are true-colour).
The padding after a JPEG's end marker is zeros, so a frame is its row with
trailing zeros removed; ``/compress_len`` is not needed (its rows follow the
recorder's camera list, which the file does not store).

Robot config: ``config`` (default: the shipped ``aloha`` model) gives the
joints and each camera's latency; the raw episode's copy of it lists the
cameras the file has, at the size the file has (ALOHA variants record at
several resolutions), with ``fps`` and both stream rates set to ``rate_hz``.
A camera the config does not know is taken with latency 0 and a warning.

Nothing is written for a file that fails: every file is checked (datasets,
shapes, lengths) before the first is imported, and a file that fails half-way
(a compressed frame that is not a JPEG) has its journal removed. Episodes
already imported (same robot id and file name) are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from pipeline import protocol
from pipeline.dataset.frame_shards import check_frame
from pipeline.dataset.jpeg_codec import read_jpeg_header
from pipeline.errors import DatasetError, ProtocolError, RefineryError, StoreError
from pipeline.interop import Format, add_destination_arguments, destination
from pipeline.journal import JOURNAL_SUFFIX
from pipeline.raw_builder import RawEpisodeBuilder
from pipeline.raw_store import raw_path
from pipeline.robot_config import RobotConfig, load_robot_config, parse_robot_config
from pipeline.streams import ACTION, JOINT_STATE, RESERVED_STREAMS

log = logging.getLogger("refinery.import")

DEFAULT_CONFIG = "aloha"
QPOS = "/observations/qpos"
QVEL = "/observations/qvel"
EFFORT = "/observations/effort"
IMAGES = "/observations/images"
ACTION_PATH = "/action"

# Rows per joint_state / action message, and frames read from the file at a time.
_STEPS_PER_BATCH = 50
_FILE_RE = re.compile(r"episode_(\d+)\.hdf5$")
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class AlohaFormatError(StoreError):
    """An ALOHA file cannot be imported: names the file and the dataset inside it.

    Attributes:
        file: The HDF5 file.
        dataset: The dataset path inside it (``/observations/qpos``), or ``/``.
    """

    def __init__(self, file: Path, dataset: str, problem: str) -> None:
        self.file = Path(file)
        self.dataset = dataset
        super().__init__(f"{file} [{dataset}]", problem)


@dataclass(frozen=True)
class _Camera:
    name: str
    compressed: bool
    height: int
    width: int


@dataclass(frozen=True)
class _Source:
    """One checked ALOHA file: what it holds, before anything is read in full."""

    path: Path
    length: int
    has_qvel: bool
    has_effort: bool
    cameras: tuple[_Camera, ...]


def aloha_files(src: Path) -> list[Path]:
    """The ALOHA episode files of ``src``: the file itself, or its ``episode_*.hdf5`` in index order.

    Raises:
        StoreError: ``src`` does not exist or holds no ``episode_*.hdf5``.
    """
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise StoreError(str(src), "no such file or folder; point at a folder of ALOHA episode_*.hdf5 files")
    files = list(src.glob("episode_*.hdf5"))
    if not files:
        raise StoreError(str(src), "no episode_*.hdf5 files here; point at the folder ACT/ALOHA recorded into")

    def order(path: Path) -> tuple[int, str]:
        match = _FILE_RE.search(path.name)
        return (int(match.group(1)) if match else 1 << 62, path.name)

    return sorted(files, key=order)


def import_aloha(
    src_dir: Path,
    raw_dir: Path,
    *,
    robot_id: str = "aloha-0",
    rate_hz: float = 50.0,
    task: str = "",
    config: RobotConfig | str | Path | None = None,
    operator: str = "",
    start_ns: int | None = None,
    quality: int = 90,
    compressed_rgb: bool = True,
) -> list[Path]:
    """Import every ALOHA episode file of ``src_dir`` into ``raw_dir`` as sealed raw episodes.

    Args:
        src_dir: A folder of ``episode_*.hdf5`` files, or one such file.
        raw_dir: The data folder raw episodes go to (``<raw_dir>/raw/<robot_id>/``),
            e.g. an ingest's ``--data-dir``; ``refinery process`` reads it.
        robot_id: The robot id recorded with every episode.
        rate_hz: The files' step rate (ALOHA: 50 Hz).
        task: Task instruction recorded with every episode.
        config: Robot config (object, shipped model name or YAML path);
            default: the shipped ``aloha`` model.
        operator: Operator id recorded with every episode.
        start_ns: Base time of the first file's step 0 (ns since the epoch);
            each later file starts where the previous one ended. Default: each
            file's modification time.
        quality: JPEG quality of frames this importer encodes (1-100).
        compressed_rgb: Compressed files' JPEGs were encoded from RGB arrays by
            OpenCV (ACT's recorder): fix their channel order by re-encoding.

    Returns:
        The sealed raw episode of each file, in file order (episodes imported
        before are returned, not written again).

    Raises:
        AlohaFormatError: A file is not a readable ALOHA episode: names the
            file, the dataset and the problem. Nothing of that file is written,
            and no file is imported unless all pass the checks.
        ConfigError: The robot config is malformed.
        ProtocolError: ``robot_id`` is not a valid id.
    """
    robot = _robot_config(config)
    protocol.check_id(robot_id, "robot_id")
    if not (isinstance(rate_hz, (int, float)) and np.isfinite(rate_hz) and rate_hz > 0):
        raise StoreError(str(src_dir), f"rate_hz must be a positive number of steps per second, got {rate_hz!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise StoreError(str(src_dir), f"quality must be an integer 1-100, got {quality!r}")
    sources = [_inspect(path, robot) for path in aloha_files(src_dir)]
    period_ns = 1e9 / rate_hz
    written: list[Path] = []
    next_start = start_ns
    for source in sources:
        base_ns = next_start if next_start is not None else source.path.stat().st_mtime_ns
        episode_id = _episode_id(robot_id, source.path)
        out = raw_path(Path(raw_dir), robot_id, episode_id)
        if out.exists():
            log.info("%s: already imported as %s; skipped", source.path, out)
        else:
            out = _import_file(
                source, Path(raw_dir), robot_id, episode_id, _episode_config(robot, source, rate_hz),
                base_ns, period_ns, task, operator, quality, compressed_rgb,
            )
            log.info("%s: imported as %s (%d steps, cameras %s)", source.path, out, source.length,
                     [c.name for c in source.cameras])
        written.append(out)
        if next_start is not None:
            next_start = base_ns + round((source.length + 1) * period_ns)
    return written


def _robot_config(config: RobotConfig | str | Path | None) -> RobotConfig:
    if isinstance(config, RobotConfig):
        return config
    return load_robot_config(DEFAULT_CONFIG if config is None else config)


def _episode_id(robot_id: str, path: Path) -> str:
    stem = _BAD_ID_CHARS.sub("_", path.stem)
    episode_id = f"{robot_id}-{stem}"
    if len(episode_id) > 64:
        digest = hashlib.sha1(path.name.encode()).hexdigest()[:8]
        episode_id = f"{episode_id[:55]}-{digest}"
    return protocol.check_id(episode_id, "episode_id")


def _inspect(path: Path, robot: RobotConfig) -> _Source:
    """Check a file's structure (datasets, shapes, lengths) without reading its data."""
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise AlohaFormatError(path, "/", f"not a readable HDF5 file: {err}") from err
    with h5:
        length = _numeric_steps(h5, path, QPOS, None, robot)
        if length < 2:
            raise AlohaFormatError(path, QPOS, f"has {length} steps; an episode needs at least 2")
        _numeric_steps(h5, path, ACTION_PATH, length, robot)
        has_qvel = QVEL in h5 and _numeric_steps(h5, path, QVEL, length, robot) == length
        has_effort = EFFORT in h5 and _numeric_steps(h5, path, EFFORT, length, robot) == length
        cameras: list[_Camera] = []
        images = h5.get(IMAGES)
        if images is not None and not isinstance(images, h5py.Group):
            raise AlohaFormatError(path, IMAGES, "is not a group of camera datasets")
        for name in sorted(images.keys()) if images is not None else []:
            cameras.append(_camera(h5, path, f"{IMAGES}/{name}", name, length))
    return _Source(path, length, has_qvel, has_effort, tuple(cameras))


def _numeric_steps(h5: h5py.File, path: Path, name: str, length: int | None, robot: RobotConfig) -> int:
    """Check a (steps, dof) numeric dataset (``length`` steps, if given) and return its step count."""
    data = h5.get(name)
    if data is None:
        raise AlohaFormatError(path, name, "missing: an ALOHA episode has /observations/qpos and /action")
    if not isinstance(data, h5py.Dataset) or data.ndim != 2 or data.dtype.kind not in "fiu":
        what = type(data).__name__ if not isinstance(data, h5py.Dataset) else f"{data.dtype} {data.shape}"
        raise AlohaFormatError(path, name, f"is {what}; expected a (steps, {robot.dof}) numeric array")
    if data.shape[1] != robot.dof:
        raise AlohaFormatError(
            path, name, f"has {data.shape[1]} columns; robot model {robot.model!r} has {robot.dof} joints "
            f"({', '.join(robot.joint_names)}): pass the matching robot config",
        )
    if length is not None and data.shape[0] != length:
        raise AlohaFormatError(path, name, f"has {data.shape[0]} steps but {QPOS} has {length}")
    return int(data.shape[0])


def _camera(h5: h5py.File, path: Path, dataset: str, name: str, length: int) -> _Camera:
    try:
        protocol.check_id(name, "camera")
    except ProtocolError as err:
        problem = f"camera name {name!r} cannot be a stream name: rename the dataset"
        raise AlohaFormatError(path, dataset, problem) from err
    if name in RESERVED_STREAMS:
        problem = f"camera name {name!r} is reserved for another stream: rename the dataset"
        raise AlohaFormatError(path, dataset, problem)
    data = h5[dataset]
    if not isinstance(data, h5py.Dataset) or data.dtype != np.uint8 or data.ndim not in (2, 4):
        what = type(data).__name__ if not isinstance(data, h5py.Dataset) else f"{data.dtype} {data.shape}"
        raise AlohaFormatError(path, dataset, f"is {what}; expected uint8 (steps, H, W, 3) RGB or (steps, bytes) JPEG")
    if data.shape[0] != length:
        raise AlohaFormatError(path, dataset, f"has {data.shape[0]} frames but {QPOS} has {length} steps")
    if data.ndim == 4:
        if data.shape[3] != 3:
            raise AlohaFormatError(path, dataset, f"has {data.shape[3]} channels; expected 3 (RGB)")
        return _Camera(name, False, int(data.shape[1]), int(data.shape[2]))
    jpeg = _unpad(data[0])
    try:
        header = read_jpeg_header(jpeg)
    except DatasetError as err:
        raise AlohaFormatError(path, dataset, f"frame 0: {err.problem}") from err
    return _Camera(name, True, header.height, header.width)


def _unpad(row: np.ndarray) -> bytes:
    """A compressed frame's JPEG: its row without the zero padding after the end marker."""
    return row.tobytes().rstrip(b"\x00")


def _episode_config(robot: RobotConfig, source: _Source, rate_hz: float) -> RobotConfig:
    """The robot config stored with the episode: the file's cameras at the file's size and rate."""
    known = {c.name: c for c in robot.cameras}
    cameras = []
    for camera in source.cameras:
        spec = known.get(camera.name)
        if spec is None:
            log.warning("%s: camera %r is not in robot config %r; taken with latency 0 ms",
                        source.path, camera.name, robot.model)
        cameras.append({
            "name": camera.name, "width": camera.width, "height": camera.height,
            "fps": float(rate_hz), "latency_ms": spec.latency_ms if spec else 0.0,
        })
    raw = robot.to_dict()
    raw["streams"] = {"joint_state_hz": float(rate_hz), "action_hz": float(rate_hz)}
    raw["cameras"] = cameras
    where = f"{robot.path or robot.model} (cameras of {source.path})"
    try:
        return parse_robot_config(raw, where)
    except RefineryError as err:
        raise AlohaFormatError(source.path, IMAGES, str(err)) from err


def _import_file(
    source: _Source,
    raw_dir: Path,
    robot_id: str,
    episode_id: str,
    config: RobotConfig,
    base_ns: int,
    period_ns: float,
    task: str,
    operator: str,
    quality: int,
    compressed_rgb: bool,
) -> Path:
    # A journal of this episode left by a killed import is ours to replace.
    stale = raw_dir / "journal" / robot_id / f"{episode_id}{JOURNAL_SUFFIX}"
    stale.unlink(missing_ok=True)
    builder = RawEpisodeBuilder(raw_dir, robot_id, config, episode_id=episode_id)
    try:
        _write_streams(builder, source, base_ns, period_ns, task, operator, quality, compressed_rgb)
        return builder.seal("success", base_ns + round(source.length * period_ns))
    except BaseException:
        builder.journal.close()
        builder.journal.path.unlink(missing_ok=True)
        raise


def _write_streams(
    builder: RawEpisodeBuilder,
    source: _Source,
    base_ns: int,
    period_ns: float,
    task: str,
    operator: str,
    quality: int,
    compressed_rgb: bool,
) -> None:
    path = source.path
    length = source.length
    stamps = base_ns + np.round(np.arange(length) * period_ns).astype(np.int64)
    end_ns = base_ns + round(length * period_ns)
    builder.event({"kind": "start", "task": task, "operator": operator, "t0_ns": int(base_ns)}, base_ns)
    builder.event({"kind": "label", "text": f"imported from {path.name}"}, base_ns)
    with h5py.File(path, "r") as h5:
        qpos = h5[QPOS]
        action = h5[ACTION_PATH]
        qvel = h5[QVEL] if source.has_qvel else None
        effort = h5[EFFORT] if source.has_effort else None
        frames = {c.name: _frames(h5, path, c, quality, compressed_rgb) for c in source.cameras}
        next_clock = base_ns
        for first in range(0, length, _STEPS_PER_BATCH):
            last = min(length, first + _STEPS_PER_BATCH)
            next_clock = builder.same_clock_until(next_clock, int(stamps[last - 1]))
            t = stamps[first:last]
            index = np.arange(first, last, dtype=np.int64)
            position = np.asarray(qpos[first:last], dtype=np.float64)
            zeros = np.zeros_like(position)
            velocity = zeros if qvel is None else np.asarray(qvel[first:last], dtype=np.float64)
            torque = zeros if effort is None else np.asarray(effort[first:last], dtype=np.float64)
            builder.samples(JOINT_STATE, t, index, np.concatenate([position, velocity, torque], axis=1))
            builder.samples(ACTION, t, index, np.asarray(action[first:last], dtype=np.float64))
            for camera, produce in frames.items():
                for i, jpeg in zip(range(first, last), produce, strict=False):
                    builder.frame(camera, int(stamps[i]), i, jpeg)
        builder.same_clock(end_ns)


def _frames(h5: h5py.File, path: Path, camera: _Camera, quality: int, compressed_rgb: bool) -> Iterator[bytes]:
    """The camera's frames as JPEG bytes, read a batch at a time."""
    dataset = f"{IMAGES}/{camera.name}"
    data = h5[dataset]
    for first in range(0, data.shape[0], _STEPS_PER_BATCH):
        block = data[first : first + _STEPS_PER_BATCH]
        for offset, row in enumerate(block):
            index = first + offset
            try:
                if not camera.compressed:
                    yield _encode(row, quality)
                    continue
                jpeg = _unpad(row)
                check_frame(jpeg, camera.height, camera.width)
                yield _swap_channels(jpeg, quality) if compressed_rgb else jpeg
            except DatasetError as err:
                raise AlohaFormatError(path, dataset, f"frame {index}: {err.problem}") from err


def _encode(rgb: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DatasetError("jpeg", f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} frame")
    return encoded.tobytes()


def _swap_channels(jpeg: bytes, quality: int) -> bytes:
    """Re-encode a JPEG that OpenCV wrote from an RGB array, so it decodes to the right colours."""
    # cv2.imdecode returns the array ACT passed to cv2.imencode: RGB.
    rgb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if rgb is None:
        raise DatasetError("jpeg", f"{len(jpeg)} bytes do not decode as a JPEG")
    return _encode(rgb, quality)



def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, metavar="SRC", help="folder of episode_*.hdf5 files, or one file")
    add_destination_arguments(p)
    p.add_argument("--robot-id", default="aloha-0", help="robot id recorded with the episodes (default: %(default)s)")
    p.add_argument("--robot", default="aloha", help="robot config: a shipped model or a YAML path (default: %(default)s)")
    p.add_argument("--rate", type=float, default=50.0, help="the files' step rate in Hz (default: %(default)s)")
    p.add_argument("--task", default="", help="task instruction recorded with each episode")
    p.add_argument("--operator", default="", help="operator id recorded with each episode")
    p.add_argument("--keep-compressed", action="store_true",
                   help="store compressed files' JPEGs as they are (default: re-encode them, because ACT encoded "
                        "RGB arrays with OpenCV and their red and blue are swapped)")


def _run(args: argparse.Namespace) -> list[str]:
    data_dir = destination(args)
    paths = import_aloha(args.src, data_dir, robot_id=args.robot_id, rate_hz=args.rate, task=args.task,
                         config=args.robot, operator=args.operator, compressed_rgb=not args.keep_compressed)
    return [f"{len(paths)} raw episodes in {data_dir / 'raw' / args.robot_id}",
            f"refine them with: refinery process {data_dir} --out DATASET.zarr"]


FORMAT = Format(
    name="aloha",
    direction="import",
    summary="ALOHA / ACT episode_*.hdf5 files",
    description="One raw episode per episode_*.hdf5 (qpos, qvel, effort, action, cameras; raw RGB or ACT's "
                "compressed JPEG images). Re-running skips files already imported.",
    add_arguments=_add_arguments,
    run=_run,
)

"""A fault corpus from a second source: ALOHA-format episodes with real photographs.

Built independently of the simulator the pipeline was tuned on:

- motion: an operator's leader arms move between random waypoints on
  minimum-jerk paths (with hand tremor), the follower arms track them through
  a first-order lag with gravity sag, and both are read through 4096-count
  encoders (+-1 tick of noise on a still arm);
- cameras: crops of real photographs (scikit-image's ``coffee`` and
  ``chelsea``) that pan with the follower's joints, with sensor noise, seen
  ``latency_ms`` before their stamp as the robot config says;
- each episode is written as ACT's ``record_episodes.py`` writes one
  (compressed JPEG rows) and brought in by :func:`pipeline.interop.aloha_import.import_aloha`.

Faults: content faults (motion, images) are made in the ALOHA arrays before
the file is written; stamp and stream faults rewrite the imported raw file
(:func:`rewrite_raw`), as a broken driver or clock would have recorded it.
Every fault class has three severities and lands at a random place; each
injection returns where it is, so a test can check a finding is at the right place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import h5py
import numpy as np

from pipeline.interop.aloha_import import import_aloha
from pipeline.processing.episode import CameraStream, NumericStream, RawEpisode, load_raw_episode
from pipeline.raw_builder import RawEpisodeBuilder
from pipeline.robot_config import RobotConfig, load_robot_config
from pipeline.streams import ACTION, JOINT_STATE

RATE_HZ = 50.0
DT = 1.0 / RATE_HZ
DOF = 14
HEIGHT, WIDTH = 96, 128
TICK = 2 * np.pi / 4096  # a Dynamixel XM430's resolution
GRIPPERS = (6, 13)
LATENCY_S = 0.030  # the shipped aloha config's camera latency
CAMERAS = ("cam_high", "cam_left_wrist")
BASE_NS = 1_800_000_000_000_000_000
LEVELS = ("mild", "moderate", "severe")


@dataclass
class AlohaArrays:
    """One ALOHA episode before it is written: what record_episodes.py would hold."""

    qpos: np.ndarray  # (T, 14) follower, encoder-quantised
    action: np.ndarray  # (T, 14) leader, encoder-quantised
    follower: np.ndarray  # (T, 14) the follower's true (unquantised) pose: what the cameras see
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (T, H, W, 3) RGB

    @property
    def steps(self) -> int:
        return int(self.qpos.shape[0])


# --- motion ----------------------------------------------------------------------------


_CENTRE = np.array([0.0, -0.4, 0.5, 0.0, 0.3, 0.0, 0.5] * 2)
_REACH = np.array([0.5, 0.35, 0.35, 0.5, 0.4, 0.6, 0.45] * 2)
_SAG = np.array([0.0, -0.02, 0.015, 0.0, 0.01, 0.0, 0.0] * 2)  # gravity: shoulders and elbows hang low


def _min_jerk(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    return a + (b - a) * (10 * s**3 - 15 * s**4 + 6 * s**5)


def leader_path(active_steps: int, rng: np.random.Generator) -> np.ndarray:
    """The operator's leader arms: waypoint to waypoint on minimum-jerk paths, with tremor."""
    pieces = []
    here = _CENTRE + rng.uniform(-0.3, 0.3, DOF) * _REACH
    total = 0
    while total < active_steps:
        n = int(rng.uniform(0.7, 1.4) * RATE_HZ)
        target = _CENTRE + rng.uniform(-1, 1, DOF) * _REACH
        pieces.append(_min_jerk(here, target, n))
        here, total = target, total + n
    path = np.concatenate(pieces)[:active_steps]
    tremor = np.cumsum(rng.normal(0, 0.0015, path.shape), axis=0)
    tremor -= np.linspace(0, 1, active_steps)[:, None] * tremor[-1]  # pinned at both ends
    return path + tremor


def quantise(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An encoder reading: the nearest tick after +-0.4 tick of electrical noise (flickers by one at rest)."""
    out = np.round((q + rng.normal(0, 0.4 * TICK, q.shape)) / TICK) * TICK
    out[:, GRIPPERS] = np.round(q[:, GRIPPERS], 3)  # grippers are normalised 0..1 by the driver
    return out


def make_motion(active_s: float, rng: np.random.Generator, rest_head_s: float, rest_tail_s: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Leader (action) and true follower pose, still for the rests, at 50 Hz."""
    active = leader_path(int(round(active_s * RATE_HZ)), rng)
    head = np.repeat(active[:1], int(round(rest_head_s * RATE_HZ)), axis=0)
    tail = np.repeat(active[-1:], int(round(rest_tail_s * RATE_HZ)), axis=0)
    leader = np.concatenate([head, active, tail])
    leader[:, GRIPPERS] = np.clip(leader[:, GRIPPERS], 0.0, 1.0)
    follower = np.empty_like(leader)
    follower[0] = leader[0] + _SAG
    alpha = DT / (0.04 + DT)  # a 40 ms position loop
    for t in range(1, leader.shape[0]):
        follower[t] = follower[t - 1] + alpha * (leader[t] + _SAG - follower[t - 1])
    follower[:, GRIPPERS] = np.clip(0.05 + 0.9 * follower[:, GRIPPERS], 0.0, 1.0)  # another scale than the leader's
    return leader, follower


# --- cameras -----------------------------------------------------------------------------


_PHOTOS: dict[str, np.ndarray] = {}


def photo(camera: str) -> np.ndarray:
    """The real photograph a camera looks at, at half size (RGB)."""
    if camera not in _PHOTOS:
        from skimage import data  # test-only dependency: real photographs, shipped with the package

        image = data.coffee() if camera == "cam_high" else data.chelsea()
        _PHOTOS[camera] = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return _PHOTOS[camera]


def _view_offset(camera: str, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if camera == "cam_high":
        return 70 * (q[:, 0] + q[:, 7]) + 40 * (q[:, 1] - q[:, 8]), 45 * (q[:, 2] - q[:, 9])
    return 60 * q[:, 3] + 50 * q[:, 5], 45 * q[:, 4] + 30 * q[:, 1]


def render(camera: str, pose: np.ndarray, rng: np.random.Generator, blur: np.ndarray | None = None) -> np.ndarray:
    """Frames of ``camera`` for each row of ``pose``: a crop that pans with the joints, plus sensor noise.

    ``blur``: per frame, the sigma (px) of a defocus blur the lens adds before the sensor's noise.
    """
    image = photo(camera)
    dx, dy = _view_offset(camera, pose)
    cx, cy = (image.shape[1] - WIDTH) / 2, (image.shape[0] - HEIGHT) / 2
    xs = np.clip(np.round(cx + dx), 0, image.shape[1] - WIDTH).astype(int)
    ys = np.clip(np.round(cy + dy), 0, image.shape[0] - HEIGHT).astype(int)
    frames = np.empty((pose.shape[0], HEIGHT, WIDTH, 3), dtype=np.uint8)
    # Sensor noise (sigma ~2.5 levels) from a bank of 17 noise images, so no two frames encode alike.
    bank = np.round(rng.normal(0, 2.5, (17, HEIGHT, WIDTH, 3))).astype(np.int16)
    for t, (x, y) in enumerate(zip(xs.tolist(), ys.tolist(), strict=True)):
        crop = image[y : y + HEIGHT, x : x + WIDTH]
        if blur is not None and blur[t] > 0:
            crop = cv2.GaussianBlur(crop, (0, 0), float(blur[t]))
        frames[t] = np.clip(crop.astype(np.int16) + bank[t % 17], 0, 255)
    return frames


def seen_pose(follower: np.ndarray, late_s: float) -> np.ndarray:
    """The follower pose a frame stamped at each step shows: ``LATENCY_S + late_s`` earlier."""
    t = np.arange(follower.shape[0]) * DT
    when = np.clip(t - LATENCY_S - late_s, 0.0, None)
    return np.stack([np.interp(when, t, follower[:, j]) for j in range(DOF)], axis=1)


def make_episode(rng: np.random.Generator, *, active_s: float | None = None, rest_head_s: float | None = None,
                 rest_tail_s: float | None = None, render_images: bool = True) -> AlohaArrays:
    """A clean episode: 4-6 s of motion between short rests (0.2-0.5 s, an operator's reaction time)."""
    active_s = rng.uniform(4.0, 6.0) if active_s is None else active_s
    head = rng.uniform(0.2, 0.5) if rest_head_s is None else rest_head_s
    tail = rng.uniform(0.2, 0.5) if rest_tail_s is None else rest_tail_s
    leader, follower = make_motion(active_s, rng, head, tail)
    ep = AlohaArrays(qpos=quantise(follower, rng), action=quantise(leader, rng), follower=follower)
    if render_images:
        seen = seen_pose(follower, 0.0)
        ep.images = {camera: render(camera, seen, rng) for camera in CAMERAS}
    return ep


def rerender(ep: AlohaArrays, rng: np.random.Generator, late_s: float = 0.0) -> None:
    """Frames again from the (changed) follower pose; ``late_s``: the cameras show the scene late."""
    seen = seen_pose(ep.follower, late_s)
    ep.images = {camera: render(camera, seen, rng) for camera in CAMERAS}


# --- files -------------------------------------------------------------------------------


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


def write_aloha(path: Path, ep: AlohaArrays, frames: dict[str, list[bytes]] | None = None) -> None:
    """``episode_N.hdf5`` as ACT's recorder writes it with ``compress``: padded JPEG rows per camera.

    ``frames`` replaces a camera's encoded frames (corrupt bytes, say).
    """
    qvel = np.gradient(ep.follower, DT, axis=0)  # the driver's own velocity reading: a reading fault spares it
    with h5py.File(path, "w") as h5:
        h5.attrs["sim"] = False
        h5.attrs["compress"] = True
        obs = h5.create_group("observations")
        obs["qpos"] = ep.qpos.astype(np.float32)
        obs["qvel"] = qvel.astype(np.float32)
        h5["action"] = ep.action.astype(np.float32)
        images = obs.create_group("images")
        for camera, rgb in ep.images.items():
            jpegs = (frames or {}).get(camera) or [_jpeg(f) for f in rgb]
            padded = np.zeros((len(jpegs), max(map(len, jpegs))), dtype=np.uint8)
            for i, jpeg in enumerate(jpegs):
                padded[i, : len(jpeg)] = np.frombuffer(jpeg, np.uint8)
            images[camera] = padded


_CONFIG: list[RobotConfig] = []


def _aloha_config() -> RobotConfig:
    """The shipped aloha model, parsed once per process."""
    if not _CONFIG:
        _CONFIG.append(load_robot_config("aloha"))
    return _CONFIG[0]


def import_episode(work: Path, name: str, ep: AlohaArrays, frames: dict[str, list[bytes]] | None = None
                   ) -> RawEpisode:
    """Write ``ep`` as an ALOHA file, import it, and load the sealed raw episode."""
    src = work / f"src-{name}"
    src.mkdir(parents=True)
    write_aloha(src / "episode_0.hdf5", ep, frames)
    # compressed_rgb=False: these JPEGs were encoded with their channels in order.
    [path] = import_aloha(src, work / "raw", robot_id=f"aloha-{name}", task="pick up the cup", operator="op-7",
                          start_ns=BASE_NS, compressed_rgb=False, config=_aloha_config())
    return load_raw_episode(path)


def rewrite_raw(raw: RawEpisode, data_dir: Path) -> RawEpisode:
    """Write a (changed) raw episode as a new sealed raw file, the way the ingest seals one, and load it back.

    Samples and frames are written in capture order per stream with the
    given stamps, so stamp faults reach the file as a broken clock would
    have written them.
    """
    config = raw.config
    builder = RawEpisodeBuilder(data_dir, raw.robot_id, config, episode_id=f"{raw.episode_id}-rw")
    start = min(int(s.capture_ns.min()) for s in (raw.joint_state, raw.action) if s is not None)
    builder.event({"kind": "start", "task": str(raw.attrs.get("task", "")),
                   "operator": str(raw.attrs.get("operator", "")), "t0_ns": start}, start)
    for name, stream in ((JOINT_STATE, raw.joint_state), (ACTION, raw.action)):
        if stream is None:
            continue
        values = (np.concatenate([stream.fields[k] for k in ("position", "velocity", "effort") if k in stream.fields],
                                 axis=1) if name == JOINT_STATE else stream.fields["position"])
        for a in range(0, len(stream), 50):
            builder.samples(name, stream.capture_ns[a : a + 50], stream.source_index[a : a + 50], values[a : a + 50])
    for camera, cam in raw.cameras.items():
        for t, i, jpeg in zip(cam.capture_ns.tolist(), cam.source_index.tolist(), cam.jpeg, strict=True):
            builder.frame(camera, int(t), int(i), jpeg)
    clock = raw.clock
    for row in zip(clock.t1_ns.tolist(), clock.t2_ns.tolist(), clock.t3_ns.tolist(), clock.t4_ns.tolist(), strict=True):
        builder.clock(*row)
    end = max(int(s.capture_ns.max()) for s in (raw.joint_state, raw.action) if s is not None)
    return load_raw_episode(builder.seal("success", end + 20_000_000))


# --- faults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Injected:
    """Where a fault is: timeline steps ``[start, end)`` (50 Hz from the episode start), or None: everywhere."""

    where: tuple[int, int] | None
    what: str


@dataclass(frozen=True)
class FaultClass:
    """One fault class of the corpus.

    Attributes:
        name: as the table prints it.
        kinds: decision kinds that count as finding it.
        make: builds the faulty raw episode: ``(work, name, rng, level) -> (raw, injected)``.
    """

    name: str
    kinds: frozenset[str]
    make: Callable[[Path, str, np.random.Generator, str], tuple[RawEpisode, Injected]]


def _pick(level: str, mild: float, moderate: float, severe: float) -> float:
    return {"mild": mild, "moderate": moderate, "severe": severe}[level]


def _place(rng: np.random.Generator, steps: int, length: int, margin: int = 50) -> int:
    """A random start for a stretch of ``length`` steps, inside the motion (off the rests)."""
    return int(rng.integers(margin, max(margin + 1, steps - length - margin)))


def _content(modify: Callable[[AlohaArrays, np.random.Generator, str], Injected], *, active_s: float = 0.0,
             rest_head_s: float | None = None, rest_tail_s: float | None = None):  # noqa: ANN202
    """A fault made in the ALOHA arrays before the file is written."""

    def make(work: Path, name: str, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
        ep = make_episode(rng, active_s=rng.uniform(5.0, 6.0) + active_s, rest_head_s=rest_head_s,
                          rest_tail_s=rest_tail_s)
        injected = modify(ep, rng, level)
        return import_episode(work, name, ep), injected

    return make


def _stamps(modify: Callable[[RawEpisode, np.random.Generator, str], tuple[RawEpisode, Injected]]):  # noqa: ANN202
    """A fault made in the imported raw file's streams, rewritten as a new raw file."""

    def make(work: Path, name: str, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
        raw = import_episode(work, name, make_episode(rng))
        changed, injected = modify(raw, rng, level)
        return rewrite_raw(changed, work / "rewritten"), injected

    return make


def _numeric(stream: NumericStream, keep: np.ndarray | None = None, capture_ns: np.ndarray | None = None,
             order: np.ndarray | None = None) -> NumericStream:
    idx = np.arange(len(stream)) if order is None else order
    if keep is not None:
        idx = idx[keep[idx]]
    capture = stream.capture_ns if capture_ns is None else capture_ns
    return NumericStream(capture_ns=capture[idx], source_index=stream.source_index[idx],
                         arrival_ns=stream.arrival_ns[idx], fields={k: v[idx] for k, v in stream.fields.items()})


def _camera(cam: CameraStream, keep: np.ndarray | None = None, capture_ns: np.ndarray | None = None,
            jpeg: list[bytes] | None = None) -> CameraStream:
    idx = np.arange(len(cam)) if keep is None else np.flatnonzero(keep)
    frames = cam.jpeg if jpeg is None else jpeg
    capture = cam.capture_ns if capture_ns is None else capture_ns
    return replace(cam, capture_ns=capture[idx], source_index=cam.source_index[idx], arrival_ns=cam.arrival_ns[idx],
                   jpeg=[frames[i] for i in idx.tolist()])


# content faults: motion

def _nan(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    n = int(_pick(level, 1, 5, 25))
    a = _place(rng, ep.steps, n)
    joints = rng.choice(12, size=int(_pick(level, 1, 2, 4)), replace=False)
    for j in joints:
        ep.qpos[a : a + n, j] = np.nan if rng.random() < 0.7 else np.inf
    return Injected((a, a + n), f"{n} NaN/inf reading(s) on {len(joints)} joint(s)")


def _spikes(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    size, count = _pick(level, 0.15, 0.4, 1.0), int(_pick(level, 1, 3, 6))
    steps = sorted(rng.choice(np.arange(40, ep.steps - 40, 7), size=count, replace=False).tolist())
    for s in steps:
        ep.qpos[s, int(rng.integers(0, 6))] += size * rng.choice([-1, 1])
    return Injected((steps[0], steps[-1] + 1), f"{count} spike(s) of {size} rad")


def _limit(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    n = int(_pick(level, 0.1, 0.5, 2.0) * RATE_HZ)
    a = _place(rng, ep.steps, n)
    ep.qpos[a : a + n, 2] = 1.6057 + 0.08  # the left elbow past its upper limit (aloha.yaml)
    return Injected((a, a + n), f"elbow past its limit for {n} steps")


def _teleport(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    jump = _pick(level, 0.3, 0.8, 2.0)
    a = _place(rng, ep.steps, 10)
    ep.qpos[a:, 3] += jump
    return Injected((a, a + 1), f"left forearm reading jumps by {jump} rad and stays")


def _tracking(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    peak, seconds = _pick(level, 0.2, 0.4, 0.6), _pick(level, 2.0, 3.0, 5.0)
    n = int(seconds * RATE_HZ)
    a = _place(rng, ep.steps, n)
    bump = np.sin(np.linspace(0, np.pi, n)) ** 0.5 * peak  # the follower drifts off and comes back
    for j in rng.choice([1, 2, 4, 8, 9, 11], size=3, replace=False):
        ep.follower[a : a + n, j] += bump * rng.choice([-1, 1])
    ep.qpos = quantise(ep.follower, rng)
    rerender(ep, rng)
    return Injected((a, a + n), f"3 joints off the command by up to {peak} rad for {seconds} s")


def _stale(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    n = int(_pick(level, 0.5, 1.0, 2.0) * RATE_HZ)
    a = _place(rng, ep.steps, n)
    ep.qpos[a : a + n] = ep.qpos[a - 1]
    return Injected((a, a + n), f"every joint reading repeats for {n} steps while the arm moves")


def _idle_make(level: str):  # noqa: ANN202
    head, tail = {"mild": (2.5, 0.3), "moderate": (0.3, 4.0), "severe": (8.0, 8.0)}[level]

    def modify(ep: AlohaArrays, rng: np.random.Generator, _: str) -> Injected:
        del rng
        where = (0, int(head * RATE_HZ)) if head > 1 else (ep.steps - int(tail * RATE_HZ), ep.steps)
        return Injected(where, f"still for {head} s at the head and {tail} s at the tail")

    return _content(modify, active_s=-1.5, rest_head_s=head, rest_tail_s=tail)


def _idle(work: Path, name: str, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    return _idle_make(level)(work, name, rng, level)


# content faults: images

def _stretch_images(ep: AlohaArrays, rng: np.random.Generator, seconds: float,
                    change: Callable[[np.ndarray], np.ndarray], camera: str | None = None) -> tuple[int, int]:
    n = int(seconds * RATE_HZ)
    a = _place(rng, ep.steps, n)
    camera = camera or CAMERAS[int(rng.integers(0, len(CAMERAS)))]
    ep.images[camera][a : a + n] = change(ep.images[camera][a : a + n])
    return a, a + n


def _gain(gain: float, lift: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda f: np.clip(f.astype(np.float32) * gain + lift, 0, 255).astype(np.uint8)


def _overexposed(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    seconds = _pick(level, 0.5, 1.0, 2.0)
    where = _stretch_images(ep, rng, seconds, _gain(*{"mild": (1.5, 40), "moderate": (2.0, 60),
                                                       "severe": (3.0, 90)}[level]))
    return Injected(where, f"{seconds} s over-exposed")


def _underexposed(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    seconds = _pick(level, 0.5, 1.0, 2.0)
    where = _stretch_images(ep, rng, seconds, _gain(_pick(level, 0.45, 0.3, 0.15), 0))
    return Injected(where, f"{seconds} s under-exposed")


def _washed_out(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    camera = CAMERAS[int(rng.integers(0, len(CAMERAS)))]
    gain, lift = {"mild": (1.5, 70), "moderate": (2.0, 90), "severe": (3.0, 120)}[level]
    ep.images[camera] = _gain(gain, lift)(ep.images[camera])
    return Injected(None, f"{camera} washed out all episode")


def _defocus(ep: AlohaArrays, rng: np.random.Generator, seconds: float, sigma: float) -> tuple[int, int]:
    """One camera's lens out of focus for ``seconds``: those frames rendered again, blurred before the noise."""
    n = int(seconds * RATE_HZ)
    a = _place(rng, ep.steps, n)
    camera = CAMERAS[int(rng.integers(0, len(CAMERAS)))]
    blur = np.zeros(n)
    blur[:] = sigma
    seen = seen_pose(ep.follower, 0.0)[a : a + n]
    ep.images[camera][a : a + n] = render(camera, seen, rng, blur)
    return a, a + n


def _blur_half(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    sigma = _pick(level, 0.8, 1.5, 3.0)
    where = _defocus(ep, rng, ep.steps * DT * rng.uniform(0.5, 0.6), sigma)
    return Injected(where, f"blur sigma {sigma} px over half the episode")


def _blur_seconds(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    sigma, seconds = _pick(level, 0.8, 1.5, 3.0), _pick(level, 1.0, 2.0, 3.0)
    where = _defocus(ep, rng, seconds, sigma)
    return Injected(where, f"blur sigma {sigma} px for {seconds} s")


def _camera_late(ep: AlohaArrays, rng: np.random.Generator, level: str) -> Injected:
    late = _pick(level, 0.1, 0.25, 0.5)
    rerender(ep, rng, late_s=late)
    return Injected(None, f"cameras show the scene {late * 1000:.0f} ms late")


# stamp and stream faults: the imported raw file rewritten

def _gap(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    n = int(_pick(level, 0.1, 0.3, 1.0) * RATE_HZ)
    a = _place(rng, len(raw.joint_state), n)
    keep = np.ones(len(raw.joint_state), dtype=bool)
    keep[a : a + n] = False
    changed = replace(raw, joint_state=_numeric(raw.joint_state, keep), action=_numeric(raw.action, keep))
    return changed, Injected((a, a + n), f"no joint or action samples for {n * 20} ms")


def _dropped_frames(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    n = int(_pick(level, 3, 10, 50))
    camera = CAMERAS[int(rng.integers(0, len(CAMERAS)))]
    cam = raw.cameras[camera]
    a = _place(rng, len(cam), n)
    keep = np.ones(len(cam), dtype=bool)
    keep[a : a + n] = False
    return replace(raw, cameras={**raw.cameras, camera: _camera(cam, keep)}), Injected((a, a + n), f"{n} frames lost")


def _replace_frames(raw: RawEpisode, rng: np.random.Generator, n: int, make: Callable[[int, bytes], bytes]
                    ) -> tuple[RawEpisode, tuple[int, int]]:
    camera = CAMERAS[int(rng.integers(0, len(CAMERAS)))]
    cam = raw.cameras[camera]
    a = _place(rng, len(cam), n)
    jpeg = list(cam.jpeg)
    for i in range(a, a + n):
        jpeg[i] = make(i - a, jpeg[a])
    return replace(raw, cameras={**raw.cameras, camera: _camera(cam, jpeg=jpeg)}), (a, a + n)


def _frozen(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    n = int(_pick(level, 0.6, 1.0, 3.0) * RATE_HZ)
    changed, where = _replace_frames(raw, rng, n, lambda k, first: first)
    return changed, Injected(where, f"one frame repeated for {n} frames")


_BLACK = _jpeg(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8))


def _black(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    n = int(_pick(level, 2, 10, 100))
    changed, where = _replace_frames(raw, rng, n, lambda k, first: _BLACK)
    return changed, Injected(where, f"{n} black frames")


def _corrupt(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    n = int(_pick(level, 1, 5, 20))
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    # A JPEG start marker (the ingest refuses frames without one), then bit rot.
    changed, where = _replace_frames(raw, rng, n, lambda k, first: b"\xff\xd8" + noise[k * 50 : k * 50 + 3000])
    return changed, Injected(where, f"{n} frames of garbage bytes")


def _duplicate(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    n = int(_pick(level, 1, 5, 50))
    js = raw.joint_state
    a = _place(rng, len(js), n)
    order = np.concatenate([np.arange(a + n), np.arange(a, a + n), np.arange(a + n, len(js))])
    return replace(raw, joint_state=_numeric(js, order=order)), Injected((a, a + n), f"{n} samples sent twice")


def _backwards(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    n = int(_pick(level, 1, 3, 20))
    js = raw.joint_state
    a = _place(rng, len(js), n)
    capture = js.capture_ns.copy()
    capture[a : a + n] -= 200_000_000  # stamped 200 ms early
    return replace(raw, joint_state=_numeric(js, capture_ns=capture)), Injected((a, a + n), f"{n} stamps 200 ms back")


def _clock_jump(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    jump = int(_pick(level, 0.06, 0.3, -0.5) * 1e9)
    at = raw.joint_state.capture_ns[_place(rng, len(raw.joint_state), 20)]
    streams = {}
    for name in (JOINT_STATE, ACTION):
        s = getattr(raw, name)
        streams[name] = _numeric(s, capture_ns=np.where(s.capture_ns >= at, s.capture_ns + jump, s.capture_ns))
    cameras = {c: _camera(cam, capture_ns=np.where(cam.capture_ns >= at, cam.capture_ns + jump, cam.capture_ns))
               for c, cam in raw.cameras.items()}
    step = int((at - raw.joint_state.capture_ns[0]) // 20_000_000)
    return replace(raw, cameras=cameras, **streams), Injected((step, step + 1), f"collector clock jumps {jump / 1e6:+.0f} ms")


def _camera_offset(raw: RawEpisode, rng: np.random.Generator, level: str) -> tuple[RawEpisode, Injected]:
    offset = int(_pick(level, 0.06, -0.12, 0.2) * 1e9) * int(rng.choice([-1, 1]))
    camera = CAMERAS[int(rng.integers(0, len(CAMERAS)))]
    cam = raw.cameras[camera]
    changed = replace(raw, cameras={**raw.cameras, camera: _camera(cam, capture_ns=cam.capture_ns + offset)})
    return changed, Injected(None, f"{camera} stamps offset by {offset / 1e6:+.0f} ms")


FAULT_CLASSES: tuple[FaultClass, ...] = (
    FaultClass("NaN/inf readings", frozenset({"nonfinite"}), _content(_nan)),
    FaultClass("spikes", frozenset({"spike", "velocity_limit", "position_limit"}), _content(_spikes)),
    FaultClass("limit stretch", frozenset({"position_limit"}), _content(_limit)),
    FaultClass("teleport", frozenset({"velocity_limit"}), _content(_teleport)),
    FaultClass("joint gap", frozenset({"gap"}), _stamps(_gap)),
    FaultClass("dropped frames", frozenset({"frame_gap"}), _stamps(_dropped_frames)),
    FaultClass("frozen frames", frozenset({"frozen_frames"}), _stamps(_frozen)),
    FaultClass("black frames", frozenset({"black_frames"}), _stamps(_black)),
    FaultClass("corrupt frames", frozenset({"black_frames", "empty_frame"}), _stamps(_corrupt)),
    # A block sent again comes after later samples: its stamps are behind them, so "backwards" finds it too.
    FaultClass("duplicate stamps", frozenset({"duplicate_timestamp", "backwards_timestamp"}), _stamps(_duplicate)),
    FaultClass("backwards stamps", frozenset({"backwards_timestamp"}), _stamps(_backwards)),
    FaultClass("clock jump", frozenset({"gap", "backwards_timestamp", "duplicate_timestamp", "frame_gap"}),
               _stamps(_clock_jump)),
    FaultClass("tracking error 2-5 s", frozenset({"tracking_error"}), _content(_tracking, active_s=3.0)),
    FaultClass("stale joint stream", frozenset({"stale_joint_stream"}), _content(_stale)),
    FaultClass("idle head/tail 2.5-8 s", frozenset({"idle_head", "idle_tail"}), _idle),
    FaultClass("over-exposed stretch", frozenset({"overexposed"}), _content(_overexposed)),
    FaultClass("under-exposed stretch", frozenset({"underexposed", "black_frames"}), _content(_underexposed)),
    FaultClass("washed-out camera", frozenset({"overexposed"}), _content(_washed_out)),
    FaultClass("blur over half", frozenset({"blur"}), _content(_blur_half)),
    FaultClass("blur for seconds", frozenset({"blur"}), _content(_blur_seconds)),
    FaultClass("camera stamps offset", frozenset({"camera_latency_mismatch", "capture_after_arrival"}),
               _stamps(_camera_offset)),
    FaultClass("camera shows scene late", frozenset({"camera_latency_mismatch"}), _content(_camera_late)),
)


def clean_raw_episode(work: Path, name: str, rng: np.random.Generator) -> RawEpisode:
    return import_episode(work, name, make_episode(rng))

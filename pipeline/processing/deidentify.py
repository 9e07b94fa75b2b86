"""De-identify stage: keyed operator pseudonyms and blurred faces in camera frames.

Both parts are pure functions over in-memory data; the job decides when to
call them (only when it is asked to de-identify).

* :func:`pseudonymize` replaces an operator id by ``op-`` + 16 hex digits of
  HMAC-SHA256(key, id). The same key and id give the same pseudonym on every
  machine and run, so one operator's episodes stay linked across a dataset;
  without the key nobody can recompute the pseudonym from a guessed id or
  reverse it. Keep the key out of the dataset; rotating it unlinks old and
  new pseudonyms.
* :class:`FaceBlurrer` finds faces with OpenCV's bundled frontal-face Haar
  cascade (or an injected detector) on a small grayscale decode of each
  JPEG, and replaces each enlarged face box by a smoothed 8 x 8 block
  average, which no deblurring can bring back. A frame without faces is
  returned as the very same bytes object: the dataset then stores the JPEG
  as received (no re-encode, no generation loss, see DESIGN.md).

Limits: a Haar cascade finds frontal, upright faces of at least
``min_size`` pixels at the detection width (24 px at 320 px wide, about a
thirteenth of the image width); profiles, small or occluded faces can be
missed. It is a best-effort privacy filter, not a guarantee.

Cost per 640x480 frame, measured on this project's 2-core machine while it
was shared (so upper bounds), OpenCV 4.14: about 7-12 ms on a plain scene,
40-50 ms on a fine noise texture, 75-80 ms on the simulator's blob-textured
background (many windows there look face-like for several cascade stages),
about 60 ms for a frame with a face (detection, full decode, blur,
re-encode). ``HaarFaceDetector(scale_factor=1.2, equalize=False)`` is 2-4x
faster, at some cost in recall on small or dim faces.

A job therefore does not run the detector on every frame:
:meth:`FaceBlurrer.blur_frames` takes a camera's frames in order, detects
on key frames (every ``every``-th), searches only the parts of a key frame
that changed since the last one searched whole, detects on every frame
around the faces it finds, and carries boxes over a frame or two the
detector misses. Frames without faces cost nothing beyond the key frames.

OpenCV 5 moved ``CascadeClassifier`` and the cascade files out of
opencv-python(-headless); with it, :class:`FaceBlurrer` raises a
:class:`~pipeline.errors.ProcessingError` unless a detector is injected.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import ProcessingError
from pipeline.processing.episode import CameraStream

PSEUDONYM_PREFIX = "op-"
PSEUDONYM_HEX_DIGITS = 16  # 64 bits: no collision in any plausible operator roster
MIN_KEY_BYTES = 16

HAAR_FRONTAL_FACE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]
"""A face box ``(x, y, width, height)`` in pixels."""

Detector = Callable[[np.ndarray], Sequence[Box]]
"""Finds faces in a grayscale uint8 image; boxes in that image's pixels."""


def pseudonymize(operator_id: str, key: bytes) -> str:
    """The keyed pseudonym of an operator id: ``op-`` + 16 hex digits of HMAC-SHA256.

    Args:
        operator_id: the id as recorded (compared exactly, no normalisation);
            an empty id (no operator recorded) stays empty.
        key: the job's secret, at least 16 bytes (e.g. ``secrets.token_bytes(32)``).

    Returns:
        ``""`` for an empty id, else e.g. ``"op-3f1c0a9b5d2e7c48"``.

    Raises:
        ProcessingError: the key is shorter than 16 bytes: a short key can be
            guessed, and then every pseudonym with it.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ProcessingError(
            "pseudonymize",
            f"the pseudonym key must be at least {MIN_KEY_BYTES} random bytes; "
            "create one with secrets.token_bytes(32) and keep it outside the dataset",
        )
    if not operator_id:
        return ""
    digest = hmac.new(bytes(key), operator_id.encode("utf-8"), sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_DIGITS]


def haar_cascade_path(name: str = HAAR_FRONTAL_FACE) -> Path:
    """Where this OpenCV installation keeps a bundled Haar cascade.

    Raises:
        ProcessingError: this OpenCV has no Haar cascades (OpenCV 5 moved
            ``CascadeClassifier`` and its data out of the main package) or the file is missing.
    """
    if not hasattr(cv2, "CascadeClassifier"):
        raise ProcessingError(
            "face detection",
            f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved Haar cascades out of "
            "the main package); install opencv-python-headless < 5 to blur faces",
        )
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = Path(folder) / name
    if not folder or not path.is_file():
        raise ProcessingError(
            "face detection",
            f"OpenCV's bundled Haar cascade {name} is missing (looked in {folder or 'cv2.data.haarcascades'}); "
            "reinstall opencv-python-headless < 5, which ships it",
        )
    return path


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade as a :data:`Detector`.

    Args:
        path: cascade XML; the bundled frontal-face cascade by default.
        scale_factor, min_neighbors: ``detectMultiScale`` parameters; 4
            neighbours (OpenCV's default is 3) trades a few missed faces for
            fewer blurred table edges.
        min_size: smallest face side, in pixels of the detection image (the
            cascade's own window is 24 px, so less than 24 changes nothing).
        equalize: equalise the histogram first (OpenCV's face-detection
            sample does; it helps dim and low-contrast frames, and costs time on
            cluttered ones).

    Raises:
        ProcessingError: the cascade cannot be found or loaded.
    """

    def __init__(self, path: str | Path | None = None, scale_factor: float = 1.1, min_neighbors: int = 4,
                 min_size: int = 24, equalize: bool = True) -> None:
        self.path = Path(path) if path is not None else haar_cascade_path()
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.equalize = equalize
        if not hasattr(cv2, "CascadeClassifier"):
            haar_cascade_path()  # raises the explanation
        # Absent from OpenCV 5 (and its type stubs); present in 4.x.
        self._cascade = cv2.CascadeClassifier(str(self.path))  # type: ignore[attr-defined,unused-ignore]
        if self._cascade.empty():
            raise ProcessingError("face detection", f"{self.path}: not a loadable Haar cascade")

    def __reduce__(self) -> tuple[Any, ...]:
        # The OpenCV classifier does not pickle; a Ray worker reloads it from the path.
        return (HaarFaceDetector, (self.path, self.scale_factor, self.min_neighbors, self.min_size, self.equalize))

    def __call__(self, gray: np.ndarray) -> list[Box]:
        boxes = self._cascade.detectMultiScale(
            cv2.equalizeHist(gray) if self.equalize else gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        return [tuple(int(v) for v in box) for box in np.asarray(boxes).reshape(-1, 4)]  # type: ignore[misc]


def jpeg_size(jpeg: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's start-of-frame header, without decoding; None if not found."""
    i = 2
    n = len(jpeg)
    if n < 4 or jpeg[0] != 0xFF or jpeg[1] != 0xD8:
        return None
    while i + 4 <= n:
        if jpeg[i] != 0xFF:
            return None
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        length = (jpeg[i + 2] << 8) | jpeg[i + 3]
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            height = (jpeg[i + 5] << 8) | jpeg[i + 6]
            width = (jpeg[i + 7] << 8) | jpeg[i + 8]
            return (width, height) if width and height else None
        if marker == 0xDA:  # start of scan: no SOF before the data
            return None
        i += 2 + length
    return None


_EDGE_FRAMES = 2  # how far boxes are carried beyond the first or last frame a face was detected in

_REDUCED = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
            (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


class FaceBlurrer:
    """Blurs faces in JPEG frames.

    Args:
        detector: finds faces in a grayscale image; :class:`HaarFaceDetector`
            by default.
        detect_width: detection runs on a grayscale decode about this wide
            (JPEG's reduced decode, then a resize); boxes are mapped back.
        margin: each face box grows by this fraction of its size on every side,
            to cover hair, ears and chin that the cascade's box leaves out.
        blocks: a face box is averaged down to ``blocks`` x ``blocks`` cells.

    Raises:
        ProcessingError: no detector was given and the Haar cascade is unavailable.
    """

    def __init__(self, detector: Detector | None = None, *, detect_width: int = 320, margin: float = 0.25,
                 blocks: int = 8) -> None:
        self.detector: Detector = detector if detector is not None else HaarFaceDetector()
        self.detect_width = detect_width
        self.margin = margin
        self.blocks = blocks

    def detect(self, jpeg: bytes) -> list[Box]:
        """Face boxes in full-resolution pixels, enlarged by ``margin`` and clipped to the image.

        Raises:
            ProcessingError: the bytes are not a decodable JPEG.
        """
        gray, size = self._detection_image(jpeg)
        return self._detect_in(gray, size)

    def _detection_image(self, jpeg: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """The grey image the detector runs on (about ``detect_width`` wide) and the frame's (width, height)."""
        size = jpeg_size(jpeg)
        flag = cv2.IMREAD_GRAYSCALE
        if size is not None:
            for factor, reduced in _REDUCED:
                if size[0] // factor >= self.detect_width:
                    flag = reduced
                    break
        gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)
        if gray is None or gray.size == 0:
            raise ProcessingError("face blurring", f"a {len(jpeg)}-byte frame is not a decodable JPEG")
        width, height = size if size is not None else (gray.shape[1], gray.shape[0])
        if gray.shape[1] > self.detect_width * 1.25:
            det_h = max(1, round(gray.shape[0] * self.detect_width / gray.shape[1]))
            gray = cv2.resize(gray, (self.detect_width, det_h), interpolation=cv2.INTER_AREA)
        return gray, (width, height)

    def _detect_in(self, gray: np.ndarray, size: tuple[int, int],
                   regions: Sequence[tuple[int, int, int, int]] | None = None) -> list[Box]:
        """Run the detector on ``gray`` (or only on ``regions`` of it, ``(x0, y0, x1, y1)``); full-size boxes."""
        width, height = size
        sx, sy = width / gray.shape[1], height / gray.shape[0]
        found: list[Box] = []
        for x0, y0, x1, y1 in regions if regions is not None else [(0, 0, gray.shape[1], gray.shape[0])]:
            found += [(x + x0, y + y0, w, h) for x, y, w, h in self.detector(gray[y0:y1, x0:x1])]
        boxes = []
        for x, y, w, h in found:
            grow_x, grow_y = w * self.margin, h * self.margin
            bx0 = max(0, int((x - grow_x) * sx))
            by0 = max(0, int((y - grow_y) * sy))
            bx1 = min(width, int(np.ceil((x + w + grow_x) * sx)))
            by1 = min(height, int(np.ceil((y + h + grow_y) * sy)))
            if bx1 > bx0 and by1 > by0:
                boxes.append((bx0, by0, bx1 - bx0, by1 - by0))
        return boxes

    def blur_faces(self, jpeg: bytes, quality: int = 90) -> tuple[bytes, int]:
        """Blur every face in one JPEG frame.

        Returns:
            ``(jpeg, 0)`` with the very same bytes object when no face is found;
            otherwise a re-encoded JPEG (``quality``) and the number of faces.

        Raises:
            ProcessingError: the frame is not a decodable JPEG or cannot be encoded.
        """
        boxes = self.detect(jpeg)
        return self.blur_boxes(jpeg, boxes, quality), len(boxes)

    def blur_boxes(self, jpeg: bytes, boxes: Sequence[Box], quality: int = 90) -> bytes:
        """The frame with every box (full-resolution pixels) obscured, re-encoded; the same bytes without boxes.

        Raises:
            ProcessingError: the frame is not a decodable JPEG or cannot be encoded.
        """
        if not boxes:
            return jpeg
        boxes = _merged(boxes)  # one pixelation per area: overlapping ones would leave block edges
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ProcessingError("face blurring", f"a {len(jpeg)}-byte frame is not a decodable JPEG")
        for x, y, w, h in boxes:
            image[y:y + h, x:x + w] = self._obscure(image[y:y + h, x:x + w])
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ProcessingError("face blurring", "OpenCV could not re-encode a blurred frame as JPEG")
        return encoded.tobytes()

    def blur_frames(self, frames: Sequence[bytes], quality: int = 90, *, every: int = 1,
                    grow_per_frame: float = 0.1) -> tuple[list[bytes], list[int]]:
        """Blur faces in consecutive frames of one camera, running the detector on few of them.

        Offline, both directions are known, so:

        1. detect on every ``every``-th frame and on the last (key frames);
           where a key frame differs from the key frames before it only in
           some places, only those places are searched (:class:`_ChangeTracker`):
           what did not change since it was searched holds no face now either;
        2. between two key frames of which either found a face, detect on
           every frame: a face entering or leaving is found where it is;
        3. (``every`` > 1) a frame between two frames with faces at most
           ``every`` frames apart, or at most two frames beyond the first or
           last of a run of faces, also takes their boxes (the detector may
           have missed a face there), each grown by ``grow_per_frame`` of its
           size per frame of distance (the face may have moved);
        4. frames with boxes are decoded, blurred and re-encoded; the others
           stay the very same bytes objects, never decoded beyond step 1.

        A face that appears and leaves again between two key frames without
        faces (shorter than ``every`` frames, 0.2 s at 30 fps with 6) is
        not seen: the price of not running the detector on every frame.

        Returns:
            The frames, and per frame the number of boxes blurred.

        Raises:
            ProcessingError: a frame the detector or the blur needs cannot be
                decoded; ``problem`` starts with ``frame <index>``.
        """
        n = len(frames)
        every = max(1, int(every))
        found: dict[int, list[Box]] = {}

        def detect(i: int) -> list[Box]:
            if i not in found:
                try:
                    found[i] = self.detect(frames[i])
                except ProcessingError as err:
                    raise ProcessingError(err.where, f"frame {i}: {err.problem}") from err
            return found[i]

        keys = sorted(set(range(0, n, every)) | ({n - 1} if n else set()))
        changes = _ChangeTracker()
        for i in keys:
            try:
                gray, size = self._detection_image(frames[i])
            except ProcessingError as err:
                raise ProcessingError(err.where, f"frame {i}: {err.problem}") from err
            regions = changes.regions(gray) if every > 1 else None
            found[i] = self._detect_in(gray, size, regions)
            if regions and found[i]:  # a face in a changed part: search whole, as its neighbours will be
                found[i] = self._detect_in(gray, size)
            changes.searched(gray, regions, faces=bool(found[i]))
        for a, b in pairwise(keys):
            if found[a] or found[b]:
                for i in range(a + 1, b):
                    detect(i)
        with_faces = sorted(i for i, boxes in found.items() if boxes)
        out: list[bytes] = list(frames)
        counts = [0] * n
        for i in range(n):
            boxes = list(found.get(i, []))
            if with_faces and every > 1:
                # Also where the detector found something: it may have found one face and missed another.
                boxes += self._carried(i, with_faces, found, every, grow_per_frame, frames[i])
            if boxes:
                try:
                    out[i] = self.blur_boxes(frames[i], boxes, quality)
                except ProcessingError as err:
                    raise ProcessingError(err.where, f"frame {i}: {err.problem}") from err
                counts[i] = len(boxes)
        return out, counts

    def _carried(self, i: int, with_faces: list[int], found: dict[int, list[Box]], every: int, grow: float,
                 jpeg: bytes) -> list[Box]:
        """Boxes of the nearest frames with faces before and after ``i`` (within ``every``), grown with distance."""
        at = int(np.searchsorted(with_faces, i))
        sources = [with_faces[j] for j in (at - 1, at + (at < len(with_faces) and with_faces[at] == i))
                   if 0 <= j < len(with_faces) and 0 < abs(with_faces[j] - i) <= every]
        if len(sources) == 1 and abs(sources[0] - i) > _EDGE_FRAMES:
            return []  # beyond the end of a run of faces: the face has left (or not yet come)
        size = jpeg_size(jpeg)
        boxes = []
        for j in sources:
            for x, y, w, h in found[j]:
                gx, gy = int(np.ceil(w * grow * abs(i - j))), int(np.ceil(h * grow * abs(i - j)))
                x0, y0, x1, y1 = x - gx, y - gy, x + w + gx, y + h + gy
                if size is not None:
                    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size[0], x1), min(size[1], y1)
                if x1 > x0 and y1 > y0:
                    boxes.append((x0, y0, x1 - x0, y1 - y0))
        return boxes

    def _obscure(self, region: np.ndarray) -> np.ndarray:
        h, w = region.shape[:2]
        cells_x = max(1, min(self.blocks, w))
        cells_y = max(1, min(self.blocks, h))
        # Averaging into a few cells destroys the detail; the smooth upscale and
        # the blur remove cell edges, which would otherwise look like features.
        small = cv2.resize(region, (cells_x, cells_y), interpolation=cv2.INTER_AREA)
        smooth = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        sigma = max(w / cells_x, h / cells_y) / 2
        return cv2.GaussianBlur(smooth, (0, 0), sigma)


@dataclass(frozen=True)
class DeidReport:
    """What :func:`deidentify_camera` did to one camera stream.

    Attributes:
        frames_scanned: frames of the stream (the detector ran on the key
            frames and around faces; see :meth:`FaceBlurrer.blur_frames`).
        frames_changed: frames re-encoded with blurred faces.
        faces_found: face boxes blurred, over all frames.
        changed_indices: indices of the changed frames, ascending.
    """

    frames_scanned: int
    frames_changed: int
    faces_found: int
    changed_indices: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames_scanned": self.frames_scanned,
            "frames_changed": self.frames_changed,
            "faces_found": self.faces_found,
            "changed_indices": list(self.changed_indices),
        }


def deidentify_camera(stream: CameraStream, blurrer: FaceBlurrer, *, quality: int = 90,
                      name: str = "camera", detect_every: int = 1) -> tuple[CameraStream, DeidReport]:
    """Blur faces in every frame of one camera stream.

    Args:
        stream: the camera's frames; not modified.
        blurrer: the face blurrer to use.
        quality: JPEG quality of re-encoded frames.
        name: the camera's name, for error messages.
        detect_every: run the detector on every n-th frame and around the
            faces it finds (:meth:`FaceBlurrer.blur_frames`); 1 = every frame.

    Returns:
        A new stream (timestamp arrays copied) whose unchanged frames are the
        original bytes objects, and the report.

    Raises:
        ProcessingError: naming the camera and frame that cannot be decoded.
    """
    try:
        frames, counts = blurrer.blur_frames(stream.jpeg, quality, every=detect_every)
    except ProcessingError as err:
        frame, _, problem = err.problem.partition(": ")
        raise ProcessingError(f"camera {name} {frame}", problem) from err
    changed = [i for i, c in enumerate(counts) if c]
    faces = sum(counts)
    new_stream = CameraStream(
        capture_ns=stream.capture_ns.copy(),
        source_index=stream.source_index.copy(),
        arrival_ns=stream.arrival_ns.copy(),
        jpeg=frames,
        width=stream.width,
        height=stream.height,
        fps=stream.fps,
        latency_ms=stream.latency_ms,
    )
    return new_stream, DeidReport(len(stream.jpeg), len(changed), faces, tuple(changed))


def _merged(boxes: Sequence[Box]) -> list[Box]:
    """Overlapping boxes replaced by their bounding box, until none overlap."""
    out = [tuple(b) for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                (ax, ay, aw, ah), (bx, by, bw, bh) = out[i], out[j]
                if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                    x0, y0 = min(ax, bx), min(ay, by)
                    out[i] = (x0, y0, max(ax + aw, bx + bw) - x0, max(ay + ah, by + bh) - y0)
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out  # type: ignore[return-value]


class _ChangeTracker:
    """Which parts of a camera's key frames changed since they were last searched for faces.

    Key frames are compared cell by cell (``cell`` x ``cell`` pixels of the
    detection image, mean absolute grey difference) with the key frame before;
    the differences add up per cell until the cell is searched, so a slow
    change (a face fading in) is searched once it adds up to ``threshold``
    grey levels, and JPEG noise between two codings of the same scene (a
    level or two) takes many key frames to. A frame is searched whole when
    there is no earlier key frame of its size, the earlier one had a face,
    or the changed parts would cover more than ``max_share`` of it.
    """

    def __init__(self, cell: int = 16, threshold: float = 12.0, pad: int = 16, max_share: float = 0.8) -> None:
        self.cell, self.threshold, self.pad, self.max_share = cell, threshold, pad, max_share
        self.previous: np.ndarray | None = None
        self.pending: np.ndarray | None = None

    def regions(self, gray: np.ndarray) -> list[tuple[int, int, int, int]] | None:
        """Boxes ``(x0, y0, x1, y1)`` of ``gray`` to search, or None to search it whole."""
        if self.previous is None or self.previous.shape != gray.shape or self.pending is None:
            return None
        h, w = gray.shape
        rows, cols = self.pending.shape
        diff = cv2.absdiff(gray, self.previous)[: rows * self.cell, : cols * self.cell]
        self.pending += cv2.resize(diff, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
        changed = (self.pending > self.threshold).astype(np.uint8)
        if not changed.any():
            return []
        count, _, stats, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
        c, pad = self.cell, self.pad
        boxes = [(max(0, x * c - pad), max(0, y * c - pad), min(w, (x + bw) * c + pad), min(h, (y + bh) * c + pad))
                 for x, y, bw, bh, _ in stats[1:count]]
        if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) > self.max_share * h * w:
            return None
        self.pending[changed.astype(bool)] = 0.0
        return boxes

    def searched(self, gray: np.ndarray, regions: list[tuple[int, int, int, int]] | None, *, faces: bool) -> None:
        """Record a key frame's search: a face or a whole search starts the bookkeeping afresh."""
        self.previous = None if faces else gray
        if faces:
            self.pending = None
        elif regions is None:
            rows, cols = max(1, gray.shape[0] // self.cell), max(1, gray.shape[1] // self.cell)
            self.pending = np.zeros((rows, cols), np.float32)

"""De-identification: keyed operator pseudonyms and blurred faces in camera frames.

Face images are drawn at run time (an oval face with hair, brows, eyes, nose
and mouth) at sizes OpenCV's frontal-face Haar cascade detects; nothing is
downloaded and no image is stored in the repository.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import ProcessingError, RefineryError
from pipeline.processing.deidentify import (
    DeidReport,
    FaceBlurrer,
    HaarFaceDetector,
    deidentify_camera,
    haar_cascade_path,
    jpeg_size,
    pseudonymize,
)
from pipeline.processing.episode import CameraStream

KEY = b"refinery test key, 32 bytes long"


def _haar_available() -> bool:
    try:
        haar_cascade_path()
    except RefineryError:
        return False
    return True


HAAR = _haar_available()
needs_haar = pytest.mark.skipif(
    not HAAR, reason=f"OpenCV {cv2.__version__} ships no Haar cascades (OpenCV 5 moved them out); pin < 5"
)


# --- pseudonyms ---------------------------------------------------------------------------


def test_pseudonym_is_a_pinned_hmac_sha256_prefix() -> None:
    # Vector: HMAC-SHA256(KEY, "alice"), first 16 hex digits.
    assert pseudonymize("alice", KEY) == "op-e14db6f3738fa7ee"
    assert pseudonymize("alice", KEY) == "op-" + hmac.new(KEY, b"alice", hashlib.sha256).hexdigest()[:16]


def test_pseudonym_is_stable_for_the_same_key_and_id() -> None:
    assert pseudonymize("operator-7", KEY) == pseudonymize("operator-7", bytes(KEY))
    assert re.fullmatch(r"op-[0-9a-f]{16}", pseudonymize("operator-7", KEY))


def test_pseudonym_depends_on_the_key() -> None:
    other = bytes(reversed(KEY))
    assert pseudonymize("alice", KEY) != pseudonymize("alice", other)


def test_different_operators_get_different_pseudonyms() -> None:
    ids = [f"operator-{i}" for i in range(1000)] + ["alice", "Alice", "alice "]
    assert len({pseudonymize(i, KEY) for i in ids}) == len(ids)


def test_pseudonym_does_not_contain_the_id() -> None:
    for operator in ("alice", "bob", "operator-7", "0123", "deadbeef"):
        assert operator not in pseudonymize(operator, KEY)


def test_empty_operator_id_stays_empty() -> None:
    assert pseudonymize("", KEY) == ""


def test_short_key_is_refused() -> None:
    with pytest.raises(ProcessingError, match="16 random bytes"):
        pseudonymize("alice", b"short")
    with pytest.raises(ProcessingError):
        pseudonymize("alice", b"")


# --- synthetic images ---------------------------------------------------------------------


def scene(width: int, height: int) -> np.ndarray:
    """A face-free BGR scene: smooth shading and a box, like a table edge."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gray = 110 + 40 * np.sin(x / width * 3) + 20 * np.cos(y / height * 2)
    image = np.repeat(gray[:, :, None], 3, axis=2).astype(np.uint8)
    cv2.rectangle(image, (int(width * 0.05), int(height * 0.6)), (int(width * 0.3), int(height * 0.95)),
                  (60, 90, 140), -1)
    return image


def draw_face(image: np.ndarray, cx: int, cy: int, size: int) -> np.ndarray:
    """A frontal cartoon face about ``size`` pixels tall, centred at (cx, cy)."""
    s = size / 200.0

    def p(x: float, y: float) -> tuple[int, int]:
        return round(cx + x * s), round(cy + y * s)

    def n(v: float) -> int:
        return max(1, round(v * s))

    cv2.ellipse(image, p(0, -20), (n(80), n(105)), 0, 0, 360, (30, 30, 40), -1)  # hair
    cv2.ellipse(image, p(0, 0), (n(70), n(95)), 0, 0, 360, (150, 175, 215), -1)  # skin
    for side in (-1, 1):
        cv2.ellipse(image, p(side * 30, -32), (n(20), n(6)), 0, 180, 360, (40, 40, 50), n(5))  # brow
        cv2.ellipse(image, p(side * 30, -15), (n(16), n(8)), 0, 0, 360, (240, 240, 240), -1)  # eye white
        cv2.circle(image, p(side * 30, -15), n(7), (40, 30, 30), -1)  # iris
    cv2.line(image, p(0, -10), p(-6, 25), (120, 140, 180), n(3))  # nose ridge
    cv2.ellipse(image, p(0, 28), (n(12), n(6)), 0, 0, 180, (100, 120, 160), n(3))  # nostrils
    cv2.ellipse(image, p(0, 55), (n(25), n(8)), 0, 0, 360, (60, 60, 140), -1)  # mouth
    # A camera's optics never give hard cartoon edges.
    return cv2.GaussianBlur(image, (0, 0), max(0.5, size / 200))


def encode(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def face_jpeg(width: int = 640, height: int = 480, size_fraction: float = 0.4) -> bytes:
    return encode(draw_face(scene(width, height), width // 2, height // 2, int(height * size_fraction)))


def decode_gray(jpeg: bytes) -> np.ndarray:
    gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert gray is not None
    return gray


def laplacian_var(jpeg: bytes, box: tuple[int, int, int, int]) -> float:
    gray = decode_gray(jpeg)
    x, y, w, h = box
    return float(cv2.Laplacian(gray[y:y + h, x:x + w], cv2.CV_64F).var())


def stream_of(frames: list[bytes], width: int = 640, height: int = 480) -> CameraStream:
    n = len(frames)
    capture = np.arange(n, dtype=np.int64) * 33_333_333
    return CameraStream(capture, np.arange(n, dtype=np.int64), capture + 5_000_000, list(frames),
                        width, height, 30.0, 30.0)


# --- the real Haar cascade ------------------------------------------------------------------


@needs_haar
def test_bundled_haar_cascade_loads_and_runs() -> None:
    detector = HaarFaceDetector()
    assert detector.path.name == "haarcascade_frontalface_default.xml"
    assert detector(np.full((240, 320), 128, np.uint8)) == []


def test_opencv_without_cascades_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)  # as in OpenCV 5
    with pytest.raises(ProcessingError, match="opencv-python-headless < 5"):
        FaceBlurrer()


def test_missing_cascade_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not hasattr(cv2, "CascadeClassifier"):
        pytest.skip("this OpenCV has no CascadeClassifier at all")
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")  # type: ignore[attr-defined]
    with pytest.raises(ProcessingError, match=r"haarcascade_frontalface_default\.xml is missing"):
        FaceBlurrer()


@needs_haar
def test_frame_without_faces_keeps_its_exact_bytes() -> None:
    jpeg = encode(scene(640, 480))
    out, faces = FaceBlurrer().blur_faces(jpeg)
    assert faces == 0
    assert out is jpeg


@needs_haar
@pytest.mark.parametrize(("width", "height"), [(320, 240), (640, 480), (1280, 720)])
def test_synthetic_face_is_detected_at_several_resolutions(width: int, height: int) -> None:
    boxes = FaceBlurrer().detect(face_jpeg(width, height))
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert x < width // 2 < x + w and y < height // 2 < y + h


@needs_haar
def test_face_is_blurred_in_its_box() -> None:
    jpeg = face_jpeg()
    blurrer = FaceBlurrer()
    (box,) = blurrer.detect(jpeg)
    out, faces = blurrer.blur_faces(jpeg)
    assert faces == 1
    assert out != jpeg
    assert laplacian_var(out, box) < 0.05 * laplacian_var(jpeg, box)
    assert blurrer.detect(out) == []  # nothing left for the cascade to find


@needs_haar
def test_haar_detector_survives_pickling_for_ray_workers() -> None:
    blurrer = pickle.loads(pickle.dumps(FaceBlurrer()))
    assert len(blurrer.detect(face_jpeg())) == 1


# --- the blurring path with an injected detector (any OpenCV) --------------------------------


class RecordingDetector:
    """Returns fixed boxes and remembers the image it was shown."""

    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        self.boxes = boxes
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        self.shapes.append(gray.shape)
        return self.boxes


def test_detection_runs_on_a_small_grayscale_decode() -> None:
    detector = RecordingDetector([])
    FaceBlurrer(detector, detect_width=320).blur_faces(encode(scene(1280, 720)))
    assert detector.shapes == [(180, 320)]


def test_boxes_are_mapped_back_to_full_resolution_and_enlarged() -> None:
    # A box at (100, 60, 40, 40) in a 320x240 detection image of a 640x480
    # frame is (200, 120, 80, 80) in the frame; 25 % margin makes it 120x120.
    blurrer = FaceBlurrer(RecordingDetector([(100, 60, 40, 40)]), detect_width=320, margin=0.25)
    assert blurrer.detect(encode(scene(640, 480))) == [(180, 100, 120, 120)]


def test_boxes_are_clipped_to_the_image() -> None:
    blurrer = FaceBlurrer(RecordingDetector([(300, 220, 40, 40)]), detect_width=320)
    ((x, y, w, h),) = blurrer.detect(encode(scene(640, 480)))
    assert x + w <= 640 and y + h <= 480


def test_injected_detector_blurs_only_inside_the_box() -> None:
    image = scene(640, 480)
    rng = np.random.default_rng(0)
    image[100:300, 200:400] = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)  # sharp detail
    jpeg = encode(image)
    blurrer = FaceBlurrer(RecordingDetector([(110, 60, 80, 80)]), detect_width=320, margin=0.0)
    out, faces = blurrer.blur_faces(jpeg, quality=95)
    assert faces == 1
    box = (220, 120, 160, 160)
    assert laplacian_var(out, box) < 0.01 * laplacian_var(jpeg, box)
    before = decode_gray(jpeg).astype(int)
    after = decode_gray(out).astype(int)
    outside = np.ones_like(before, dtype=bool)
    outside[112:288, 212:388] = False  # the box, less JPEG's 8-pixel blocks at its edge
    assert np.abs(after - before)[outside].mean() < 2.0


def test_frames_keep_their_size_and_colour_after_blurring() -> None:
    jpeg = encode(scene(640, 480))
    out, _ = FaceBlurrer(RecordingDetector([(10, 10, 50, 50)])).blur_faces(jpeg)
    image = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape == (480, 640, 3)


def test_undecodable_frame_is_an_error_naming_camera_and_frame() -> None:
    frames = [encode(scene(64, 48)), b"\xff\xd8 not a jpeg"]
    with pytest.raises(ProcessingError, match="camera head frame 1"):
        deidentify_camera(stream_of(frames, 64, 48), FaceBlurrer(RecordingDetector([])), name="head")


def test_deidentify_camera_changes_only_frames_with_faces() -> None:
    plain = [encode(scene(160, 120)) for _ in range(3)]
    marked = encode(cv2.circle(scene(160, 120), (80, 60), 20, (0, 0, 255), -1))

    def detector(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        # "Faces" are where the red disc darkens the grayscale image.
        return [(60, 40, 40, 40)] if gray[60, 80] < 90 else []

    frames = [plain[0], marked, plain[1], marked, plain[2]]
    stream = stream_of(frames, 160, 120)
    out, report = deidentify_camera(stream, FaceBlurrer(detector))
    assert report == DeidReport(frames_scanned=5, frames_changed=2, faces_found=2, changed_indices=(1, 3))
    for i in (0, 2, 4):
        assert out.jpeg[i] is frames[i]
    for i in (1, 3):
        assert out.jpeg[i] != frames[i]
    assert stream.jpeg == frames  # the input is untouched
    assert np.array_equal(out.capture_ns, stream.capture_ns)
    assert (out.width, out.height, out.fps, out.latency_ms) == (160, 120, 30.0, 30.0)
    assert report.to_dict()["changed_indices"] == [1, 3]


@needs_haar
def test_deidentify_camera_with_the_real_cascade() -> None:
    frames = [encode(scene(640, 480)), face_jpeg(), encode(scene(640, 480))]
    out, report = deidentify_camera(stream_of(frames), FaceBlurrer())
    assert report.changed_indices == (1,)
    assert out.jpeg[0] is frames[0] and out.jpeg[2] is frames[2]


# --- JPEG header parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(16, 16), (64, 48), (641, 479), (1920, 1080)])
def test_jpeg_size_reads_the_frame_header(width: int, height: int) -> None:
    assert jpeg_size(encode(scene(width, height))) == (width, height)


def test_jpeg_size_of_garbage_is_none() -> None:
    assert jpeg_size(b"") is None
    assert jpeg_size(b"\xff\xd8\xff") is None
    assert jpeg_size(Path(__file__).read_bytes()) is None


# --- following faces between detections (FaceBlurrer.blur_frames) -------------------------------


def astronaut_frames(count: int, enter: int = 0, step_px: int = 6) -> list[bytes]:
    """640x480 frames of a face-free scene; from frame ``enter`` on, a real photograph of a face
    (scikit-image's astronaut) moves across it ``step_px`` pixels a frame."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = cv2.resize(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR), (280, 280))
    frames = []
    for k in range(count):
        image = scene(640, 480)
        if k >= enter:
            x = 40 + step_px * (k - enter)
            image[100:380, x:x + 280] = photo
        frames.append(encode(image))
    return frames


@needs_haar
def test_no_real_face_survives_when_detecting_on_every_sixth_frame() -> None:
    frames = astronaut_frames(20)
    out, counts = FaceBlurrer().blur_frames(frames, every=6)
    (face,) = FaceBlurrer(margin=0.0).detect(frames[0])  # the cascade's own box: the face, moving 6 px a frame
    eyes = HaarFaceDetector(haar_cascade_path("haarcascade_eye.xml"), min_size=8)
    for k, jpeg in enumerate(out):
        assert counts[k] >= 1, k
        x, y, w, h = face[0] + 6 * k, *face[1:]
        assert len(eyes(decode_gray(frames[k])[y:y + h, x:x + w])) >= 1  # the eyes are there to find
        assert eyes(decode_gray(jpeg)[y:y + h, x:x + w]) == [], f"eyes survived in frame {k}"
        assert laplacian_var(jpeg, (x, y, w, h)) < 0.1 * laplacian_var(frames[k], (x, y, w, h)), k


class CountingDetector:
    """Finds a "face" where the frame's grey level at (cx, cy) is dark; counts its calls."""

    def __init__(self, miss: tuple[int, ...] = ()) -> None:
        self.calls = 0
        self.miss = miss

    def __call__(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        self.calls += 1
        h, w = gray.shape
        if self.calls - 1 in self.miss:
            return []
        return [(w // 2 - 10, h // 2 - 10, 20, 20)] if gray[h // 2, w // 2] < 60 else []


def dark_centre_frames(count: int, dark: range) -> list[bytes]:
    frames = []
    for k in range(count):
        image = scene(320, 240)
        if k in dark:
            cv2.circle(image, (160, 120), 30, (10, 10, 10), -1)
        frames.append(encode(image))
    return frames


def test_face_free_frames_between_key_frames_are_not_even_decoded() -> None:
    detector = CountingDetector()
    frames = dark_centre_frames(30, range(0))
    out, counts = FaceBlurrer(detector).blur_frames(frames, every=6)
    assert detector.calls == 1  # frame 0, searched whole; the key frames 6, 12, 18, 24, 29 did not change
    assert all(a is b for a, b in zip(out, frames, strict=True)) and counts == [0] * 30


def test_a_face_entering_between_key_frames_is_found_where_it_enters() -> None:
    frames = dark_centre_frames(30, range(10, 30))
    out, counts = FaceBlurrer(CountingDetector()).blur_frames(frames, every=6)
    # Found where it enters; the boxes are carried two frames before it, in case the detector missed it there.
    assert [k for k, c in enumerate(counts) if c] == list(range(8, 30))
    assert all(out[k] is frames[k] for k in range(8))


def test_a_frame_the_detector_misses_takes_its_neighbours_boxes() -> None:
    frames = dark_centre_frames(13, range(13))
    detector = CountingDetector(miss=(3,))  # calls: key frames 0, 6, 12, then frames 1..5: frame 1 is missed
    out, counts = FaceBlurrer(detector, margin=0.0).blur_frames(frames, every=6)
    assert all(counts), counts
    assert counts[1] == 2  # the boxes of frames 0 and 2, each grown by 10 % a frame
    assert out[1] != frames[1]


@needs_haar
def test_the_job_stores_blurred_frames_and_counts_them() -> None:
    import dataclasses

    from pipeline.processing.config import DeidentifyConfig, ProcessConfig
    from pipeline.processing.refine_task import refine
    from tests.synthetic import CameraDef, make_episode, make_robot_config

    skimage_data = pytest.importorskip("skimage.data")
    photo = cv2.resize(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR), (200, 200))
    raw = make_episode(make_robot_config(cameras=(CameraDef("head", 320, 240),)), duration_s=2.0).raw
    cam = raw.cameras["head"]
    frames = []
    for k in range(len(cam)):
        image = scene(320, 240)
        cv2.circle(image, (10 + 3 * k, 230), 4, (0, 200, 0), -1)  # something moves: no frozen frames
        if k >= 40:  # a person steps into view
            image[20:220, 60:260] = photo
        frames.append(encode(image))
    raw.cameras["head"] = dataclasses.replace(cam, jpeg=frames)
    config = ProcessConfig(deidentify=DeidentifyConfig(blur_faces=True))
    result = refine(raw, config)
    (episode,) = result.episodes
    stored = episode.arrays.frames["head"]
    with_face = [k for k, jpeg in enumerate(stored) if jpeg not in frames[:40]]
    assert result.deid["frames_with_faces_blurred"]["head"] >= 18
    for jpeg in stored:
        assert jpeg in frames[:40] or jpeg not in frames  # a frame with the face is never stored as recorded
    assert with_face
    (face,) = FaceBlurrer(margin=0.0).detect(frames[-1])
    for k in with_face:  # the face's detail is gone: what is left is a smooth blur
        assert laplacian_var(stored[k], face) < 0.1 * laplacian_var(frames[-1], face), k

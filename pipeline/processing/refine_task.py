"""One raw episode through every stage into the dataset: the body of a Ray task.

``refine`` is pure (raw episode in, dataset episodes and reports out);
``process_raw_batch`` adds the file I/O at both ends (raw files in, one data
segment out) and is what the job submits to Ray. It returns only small index
entries; the frames go straight from this worker to the dataset.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset.frame_shards import check_frame, conform_frame
from pipeline.dataset.index import EpisodeEntry
from pipeline.dataset.segment import EpisodeArrays, SegmentWriter
from pipeline.errors import DatasetError, ProcessingError, RawChecksumMismatch, RefineryError
from pipeline.processing.align import align
from pipeline.processing.clean import CleanResult, Decision, clean_aligned, clean_raw
from pipeline.processing.config import ProcessConfig
from pipeline.processing.deidentify import FaceBlurrer, HaarFaceDetector, pseudonymize
from pipeline.processing.episode import AlignedEpisode, RawEpisode, load_raw_episode
from pipeline.processing.score import QualityReport, score_episode


@dataclass
class RefinedEpisode:
    """One dataset episode (a segment of a raw episode) ready to write."""

    key: str
    segment: int
    arrays: EpisodeArrays
    quality: QualityReport
    unique_frames: int
    steps: tuple[int, int] = (0, 0)  # [start, end) on the aligned timeline of the whole recording


@dataclass
class RefineResult:
    raw: RawEpisode
    episodes: list[RefinedEpisode] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    rejected: bool = False
    reasons: list[str] = field(default_factory=list)
    quality: QualityReport | None = None  # of the whole episode, when rejected
    rate_hz: float = 0.0  # of the aligned timeline
    deid: dict[str, Any] = field(default_factory=dict)


def refine(raw: RawEpisode, config: ProcessConfig) -> RefineResult:
    """Clean, align, clean again, score and de-identify one raw episode."""
    result = RefineResult(raw=raw)
    if raw.attrs.get("status") == "incomplete":
        result.reasons.append(f"incomplete recording: missing {raw.attrs.get('missing', '?')}")
    try:
        cleaned_raw, raw_decisions = clean_raw(raw, config.clean)
        aligned = align(cleaned_raw, config.align)
    except RefineryError as err:
        result.rejected = True
        result.reasons.append(f"cannot align: {err}")
        return result
    result.rate_hz = aligned.rate_hz
    cleaned: CleanResult = clean_aligned(aligned, config.clean)
    result.decisions = raw_decisions + aligned.decisions + cleaned.decisions
    if cleaned.rejected or not cleaned.segments:
        result.rejected = True
        result.reasons += cleaned.reject_reasons or ["no usable segment"]
        result.quality = score_episode(aligned, result.decisions, config.score)
        return result
    blurred: dict[str, dict[int, bytes]] = {}
    if config.deidentify.blur_faces:
        blurred, changed = _blur_used_frames(cleaned.segments, config)
        result.deid = {"frames_with_faces_blurred": changed}
    for n, segment in enumerate(cleaned.segments):
        quality = score_episode(segment, result.decisions, config.score)
        key = raw.episode_id if len(cleaned.segments) == 1 else f"{raw.episode_id}.s{n}"
        arrays, unique = _segment_arrays(segment, config, blurred)
        window = segment.report.get("clean", {})
        steps = (int(window.get("start_step", 0)), int(window.get("end_step", len(segment.t_ns))))
        result.episodes.append(RefinedEpisode(key, n, arrays, quality, unique, steps))
    return result


def _blur_used_frames(segments: list[AlignedEpisode], config: ProcessConfig
                      ) -> tuple[dict[str, dict[int, bytes]], dict[str, int]]:
    """Per camera, the frames the segments use with faces blurred (frame index -> bytes), and how many changed.

    The used frames of a camera go to the blurrer in order, as one run of
    consecutive frames, so it can detect on a few and follow faces between
    them (FaceBlurrer.blur_frames).
    """
    deid = config.deidentify
    blurrer = FaceBlurrer(HaarFaceDetector(), detect_width=deid.detect_width)
    out: dict[str, dict[int, bytes]] = {}
    changed: dict[str, int] = {}
    raw = segments[0].raw
    for camera, stream in raw.cameras.items():
        used = sorted({int(i) for seg in segments for i in np.unique(seg.frames.get(camera, np.empty(0, np.int64)))
                       if i >= 0})
        if not used:
            continue
        try:
            frames, counts = blurrer.blur_frames([stream.jpeg[i] for i in used], config.output.jpeg_quality,
                                                 every=deid.detect_every)
        except ProcessingError as err:
            raise ProcessingError(f"robot {raw.robot_id} episode {raw.episode_id} camera {camera}",
                                  err.problem) from err
        out[camera] = dict(zip(used, frames, strict=True))
        changed[camera] = sum(1 for c in counts if c)
    return out, changed


def _segment_arrays(
    seg: AlignedEpisode, config: ProcessConfig, blurred: dict[str, dict[int, bytes]]
) -> tuple[EpisodeArrays, int]:
    numeric = {f"state/{name}": values for name, values in seg.state.items()}
    if seg.action is not None:
        numeric["action/position"] = seg.action
    frames: dict[str, list[bytes]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    unique_total = 0
    for camera, index in seg.frames.items():
        index = _fill_missing(index)
        if index is None:
            continue  # no usable frame of this camera in this segment
        stream = seg.raw.cameras[camera]
        height, width = config.output.resize or (stream.height, stream.width)
        out: dict[int, bytes] = {}
        for i in np.unique(index):
            jpeg = blurred.get(camera, {}).get(int(i), stream.jpeg[int(i)])
            try:
                check_frame(jpeg, height, width)  # stored as received: no decode, no re-encode
            except DatasetError:
                jpeg = conform_frame(jpeg, height, width, config.output.jpeg_quality)
            out[int(i)] = jpeg
        unique_total += len(out)
        frames[camera] = [out[int(i)] for i in index]
        sizes[camera] = (height, width)
    arrays = EpisodeArrays(timestamps_ns=seg.t_ns, numeric=numeric, frames=frames, frame_size=sizes)
    return arrays, unique_total


def _fill_missing(index: np.ndarray) -> np.ndarray | None:
    """Steps without a frame (-1) take the nearest earlier frame, or the first one."""
    index = np.asarray(index, dtype=np.int64)
    valid = index >= 0
    if not valid.any():
        return None
    if valid.all():
        return index
    positions = np.where(valid, np.arange(index.size), -1)
    np.maximum.accumulate(positions, out=positions)
    first = int(np.argmax(valid))
    positions[positions < 0] = first
    return index[positions]


def _entry(raw: RawEpisode, result: RefineResult, operator: str) -> dict[str, Any]:
    return {
        "raw_episode_id": raw.episode_id,
        "raw_checksum": str(raw.attrs.get("content_sha256", "")),
        "robot_id": raw.robot_id,
        "model": raw.config.model,
        "task": str(raw.attrs.get("task", "")),
        "operator": operator,
        "outcome": str(raw.attrs.get("outcome", "")),
        "rate_hz": result.rate_hz,
        "raw_duration_s": raw_duration_s(raw),
        "producer": str(raw.attrs.get("producer_key", "")),
        "decisions": len(result.decisions),
        "decisions_json": json.dumps([d.as_dict() for d in result.decisions]),
    }


def raw_duration_s(raw: RawEpisode) -> float:
    """How long the recording ran: the span of capture stamps over every stream."""
    stamps = [s.capture_ns for s in (raw.joint_state, raw.action, *raw.cameras.values()) if s is not None and s.capture_ns.size]
    if not stamps:
        return 0.0
    return float(max(int(s.max()) for s in stamps) - min(int(s.min()) for s in stamps)) / 1e9


def unreadable_entry(raw_path: str, episode_id: str, checksum: str, problem: str) -> EpisodeEntry:
    """The index row of a raw file that cannot be read: rejected, with the reason."""
    return EpisodeEntry(
        key="", raw_episode_id=episode_id, raw_checksum=checksum, robot_id="", model="", task="", operator="",
        outcome="", length=0, rate_hz=0.0, start_ns=0, grade="F", overall=0.0, accepted=False,
        reasons=[f"unreadable: {problem}"], attrs_json=json.dumps({"raw_file": raw_path}),
    )


def process_raw_batch(
    raw_files: list[tuple[str, str, str]],
    dataset: str,
    config_dict: dict[str, Any],
    segment_id: str,
    crash_marker: str | None = None,
) -> dict[str, Any]:
    """Ray task: refine raw files and write their episodes into one data segment; return index rows.

    Every raw file gives at least one row: its dataset episodes (all in the
    segment ``segment_id``), or one rejected row with the reasons. The rows
    are returned, not committed: the driver commits them after the segment
    is in place.
    """
    config = ProcessConfig.from_dict(config_dict)
    dataset_path = Path(dataset)
    writer: SegmentWriter | None = None
    entries: list[dict[str, Any]] = []
    frames = 0
    segment_attrs: dict[str, Any] = {}
    try:
        for raw_path, episode_id, checksum in raw_files:
            rows, refined = _refine_file(raw_path, episode_id, checksum, config)
            for episode, entry in refined:
                if writer is None:
                    writer = SegmentWriter(
                        dataset_path, segment_id, shard_bytes=config.output.shard_mb * 1024 * 1024,
                        frames_per_shard=config.output.frames_per_shard, jpeg_quality=config.output.jpeg_quality,
                    )
                entry.data_segment = segment_id
                entry.offset = writer.add(entry.key, episode.arrays)
                frames += episode.unique_frames
                attrs = entry.attrs
                segment_attrs.setdefault("model", entry.model)
                segment_attrs.setdefault("joint_names", attrs.get("joint_names", []))
                segment_attrs.setdefault("standard_names", attrs.get("standard_names", []))
            entries += [row.to_dict() for row in rows]
        if writer is not None:
            hook = _crash_once(crash_marker) if crash_marker else None
            writer.publish(segment_attrs, before_publish=hook)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return {"entries": entries, "frames": frames}


def _refine_file(
    raw_path: str, episode_id: str, checksum: str, config: ProcessConfig
) -> tuple[list[EpisodeEntry], list[tuple[RefinedEpisode, EpisodeEntry]]]:
    """Index rows of one raw file, and its accepted episodes with their rows.

    ``episode_id`` and ``checksum`` are what the planner read from the file's
    attributes: a file rejected here is recorded under them, so a re-run skips it.
    """
    try:
        raw = load_raw_episode(raw_path)
    except RawChecksumMismatch as err:
        entry = unreadable_entry(raw_path, episode_id, checksum, "")
        entry.reasons = [f"corrupt: content checksum {err.actual} does not match the sealed {err.expected}"]
        return [entry], []
    except (RefineryError, OSError, KeyError, ValueError) as err:
        return [unreadable_entry(raw_path, episode_id, checksum, str(err))], []
    operator = str(raw.attrs.get("operator", ""))
    if config.deidentify.pseudonymize_operators:
        operator = pseudonymize(operator, config.deidentify.key())
    result = refine(raw, config)
    common = _entry(raw, result, operator)
    base_attrs = {
        "raw_file": Path(raw_path).name,
        "joint_names": list(raw.config.joint_names),
        "standard_names": list(raw.config.standard_names),
        "deidentify": result.deid,
    }
    if result.rejected:
        quality = result.quality.to_dict() if result.quality else {}
        entry = EpisodeEntry(
            key="", length=0, start_ns=0, segment=0, accepted=False, reasons=result.reasons,
            grade=str(quality.get("grade", "F")), overall=float(quality.get("overall", 0.0)),
            quality_json=json.dumps(quality), attrs_json=json.dumps(base_attrs), **common,
        )
        return [entry], []
    rows: list[EpisodeEntry] = []
    refined: list[tuple[RefinedEpisode, EpisodeEntry]] = []
    for episode in result.episodes:
        arrays = episode.arrays
        entry = EpisodeEntry(
            key=episode.key, length=arrays.length, start_ns=int(arrays.timestamps_ns[0]),
            segment=episode.segment, accepted=True, reasons=result.reasons,
            grade=episode.quality.grade, overall=episode.quality.overall,
            cameras=sorted(arrays.frames), stats=arrays.stats(),
            quality_json=json.dumps(episode.quality.to_dict()), attrs_json=json.dumps(base_attrs), **common,
        )
        rows.append(entry)
        refined.append((episode, entry))
    return rows, refined


def _crash_once(marker: str):  # noqa: ANN202
    """Fault injection: the first worker to get here dies by SIGKILL, mid-episode."""

    def hook() -> None:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    return hook

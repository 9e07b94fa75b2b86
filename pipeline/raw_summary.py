"""One line of facts per sealed raw episode: what the demo and `refinery verify` print."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.raw_store import RawEpisodeReader
from pipeline.streams import JOINT_STATE


@dataclass(frozen=True)
class EpisodeSummary:
    robot_id: str
    episode_id: str
    model: str
    status: str
    outcome: str
    duration_s: float
    joint_samples: int
    frames: dict[str, int]
    megabytes: float
    missing: str  # human-readable: what is absent or skipped

    def row(self) -> list[object]:
        frames = " ".join(f"{n}" for _, n in sorted(self.frames.items()))
        return [
            self.robot_id, self.episode_id, self.model, self.status, self.outcome,
            round(self.duration_s, 2), self.joint_samples, frames, round(self.megabytes, 2), self.missing or "-",
        ]


SUMMARY_HEADERS = ["robot", "episode", "model", "status", "outcome", "duration s", "joint samples",
                   "frames/camera", "MB", "missing"]


def _index_gaps(index: np.ndarray) -> int:
    """How many source samples were skipped between consecutive rows."""
    if index.size < 2:
        return 0
    steps = np.diff(index)
    return int(np.sum(np.clip(steps - 1, 0, None)))


def summarize(path: Path) -> EpisodeSummary:
    with RawEpisodeReader(path) as ep:
        attrs = ep.attrs
        problems: list[str] = []
        missing = json.loads(attrs.get("missing", "{}") or "{}")
        for stream, (first, last) in missing.items():
            problems.append(f"{stream} seq {first}..{last if last >= 0 else 'end'} never arrived")
        joint_samples = 0
        starts, ends = [], []
        if JOINT_STATE in ep.stream_names:
            js = ep.numeric(JOINT_STATE)
            joint_samples = int(js["capture_ns"].size)
            if joint_samples:
                starts.append(js["capture_ns"][0])
                ends.append(js["capture_ns"][-1])
            skipped = _index_gaps(js["source_index"])
            if skipped:
                problems.append(f"{skipped} joint samples skipped by the robot")
        frames = {}
        for camera in ep.camera_names:
            cols = ep.camera(camera)
            frames[camera] = int(cols["seq"].size)
            skipped = _index_gaps(cols["source_index"])
            if skipped:
                problems.append(f"{camera}: {skipped} frames dropped")
        duration = (max(ends) - min(starts)) / 1e9 if starts else 0.0
        return EpisodeSummary(
            robot_id=str(attrs["robot_id"]),
            episode_id=str(attrs["episode_id"]),
            model=str(attrs["model"]),
            status=str(attrs["status"]),
            outcome=str(attrs.get("outcome", "")),
            duration_s=float(duration),
            joint_samples=joint_samples,
            frames=frames,
            megabytes=path.stat().st_size / 1e6,
            missing="; ".join(problems),
        )


def raw_files(directory: Path) -> list[Path]:
    """Every sealed raw episode under a data directory (or its raw/ folder)."""
    return sorted(p for p in directory.rglob("*.h5") if not p.name.endswith(".partial"))

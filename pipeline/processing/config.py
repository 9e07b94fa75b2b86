"""The processing job's configuration: one YAML file, every stage's knobs.

``pipeline/processing/defaults.yaml`` holds the defaults (and documents them);
a user's file overrides any subset, and unknown keys are rejected with the
file and the key named.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.processing.align import AlignConfig
from pipeline.processing.clean import CleanConfig
from pipeline.processing.score import ScoreConfig

PSEUDONYM_KEY_ENV = "REFINERY_PSEUDONYM_KEY"


@dataclass(frozen=True)
class OutputConfig:
    """How frames are written.

    Attributes:
        resize: ``[height, width]`` to store camera frames at, or None to keep
            the recorded size (and store the received JPEG bytes unchanged).
        jpeg_quality: quality of frames that must be re-encoded (resized or
            with blurred faces).
        segment_mb: about how many megabytes of raw episodes one task writes
            into one data segment (files grow with bytes, not episodes).
        shard_mb: about how many megabytes of frames one camera shard file holds.
        frames_per_shard: a fixed number of camera frames per shard instead
            of ``shard_mb`` (None: by size).
    """

    resize: tuple[int, int] | None = None
    jpeg_quality: int = 90
    segment_mb: int = 2048
    shard_mb: int = 64
    frames_per_shard: int | None = None


@dataclass(frozen=True)
class DeidentifyConfig:
    """De-identification, off unless the job asks for it.

    Attributes:
        blur_faces: blur faces in camera frames (OpenCV's Haar cascade).
        detect_every: run the face detector on every n-th frame of a camera,
            and on every frame between two of those where either found a
            face; frames near faces without a detection of their own take the
            neighbours' boxes, grown with distance (FaceBlurrer.blur_frames).
            1 = every frame.
        detect_width: width of the grayscale image the detector runs on.
        pseudonymize_operators: replace operator ids by keyed pseudonyms; the
            key comes from the environment variable REFINERY_PSEUDONYM_KEY
            (never from the dataset or this file).
    """

    blur_faces: bool = False
    pseudonymize_operators: bool = False
    detect_every: int = 10
    detect_width: int = 320

    def __post_init__(self) -> None:
        for name, low in (("detect_every", 1), ("detect_width", 48)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError("<process config>", f"deidentify.{name}", f"must be an integer >= {low}, got {value!r}")

    def key(self) -> bytes:
        value = os.environ.get(PSEUDONYM_KEY_ENV, "")
        if len(value.encode()) < 16:
            raise ConfigError(
                PSEUDONYM_KEY_ENV, "deidentify.pseudonymize_operators",
                "set this environment variable to a secret of at least 16 characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`) and keep it",
            )
        return value.encode()


@dataclass(frozen=True)
class ProcessConfig:
    align: AlignConfig = field(default_factory=AlignConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    deidentify: DeidentifyConfig = field(default_factory=DeidentifyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (Ray task argument, dataset card)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<process config>") -> ProcessConfig:
        if not isinstance(data, dict):
            raise ConfigError(source, "<top level>", f"expected a mapping, got {type(data).__name__}")
        sections = {"align", "clean", "score", "deidentify", "output"}
        for key in data:
            if key not in sections:
                raise ConfigError(source, str(key), f"unknown section; sections: {', '.join(sorted(sections))}")
        return cls(
            align=AlignConfig.from_mapping(dict(data.get("align") or {}), source),
            clean=CleanConfig.from_mapping(dict(data.get("clean") or {}), source),
            score=_build(ScoreConfig, data.get("score") or {}, source, "score"),
            deidentify=_build(DeidentifyConfig, data.get("deidentify") or {}, source, "deidentify"),
            output=_build(OutputConfig, data.get("output") or {}, source, "output"),
        )

    def replace(self, **sections: Any) -> ProcessConfig:
        return dataclasses.replace(self, **sections)


def _build(cls: type, mapping: Any, source: str, section: str) -> Any:
    if not isinstance(mapping, dict):
        raise ConfigError(source, section, f"expected a mapping, got {type(mapping).__name__}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in mapping.items():
        if key not in allowed:
            raise ConfigError(source, f"{section}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        if key == "weights" and isinstance(value, dict):
            value = tuple((str(k), float(v)) for k, v in value.items())
        elif key == "weights" and isinstance(value, list):
            value = tuple((str(k), float(v)) for k, v in value)
        elif key == "resize" and value is not None:
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
                raise ConfigError(source, f"{section}.resize", f"expected [height, width] in pixels, got {value!r}")
            value = (int(value[0]), int(value[1]))
        values[key] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(source, section, str(err)) from err


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def defaults_path() -> Path:
    return Path(str(resources.files("pipeline.processing") / "defaults.yaml"))


def load_process_config(path: Path | None = None) -> ProcessConfig:
    """The defaults file, overridden by ``path`` when given."""
    merged: dict[str, Any] = {}
    for source in [defaults_path(), *( [path] if path else [])]:
        try:
            data = yaml.safe_load(Path(source).read_text()) or {}
        except OSError as err:
            raise ConfigError(str(source), "<file>", f"cannot read: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ConfigError(str(source), "<file>", f"not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(str(source), "<top level>", "expected a mapping of sections")
        for section, values in data.items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                merged[section] = {**merged[section], **values}
            else:
                merged[section] = values
        ProcessConfig.from_dict(merged, str(source))  # fail on the file that brought the error
    return ProcessConfig.from_dict(merged, str(path or defaults_path()))

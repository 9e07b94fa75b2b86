"""Robot configs: one YAML file per robot model, validated once at start.

A config fixes the joint order on the wire and in the raw store, the joint
limits the cleaning stage checks against, the stream rates and the cameras.
A malformed file is rejected with the file, the field and the problem.

A joint's limits may be unknown (a config generated from a foreign dataset
that records none): ``position``, ``velocity`` or ``effort`` is ``null``. An
unknown limit is held as an infinite bound, so no value ever violates it; the
clean and score stages skip the rules that need it and say so. ``standard``
may be ``null`` too (a joint with no standard humanoid name).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline.config_fields import Fields
from pipeline.errors import ConfigError
from pipeline.standard_joints import STANDARD_INDEX
from pipeline.streams import RESERVED_STREAMS

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")  # \Z: "$" would accept a trailing newline


@dataclass(frozen=True)
class JointSpec:
    """One joint: vendor name, standard name and limits in SI units.

    An unknown limit is infinite (``position_min=-inf, position_max=inf``,
    ``velocity_max=inf``, ``effort_max=inf``); ``standard`` is ``""`` for a
    joint with no standard name.
    """

    name: str
    standard: str
    position_min: float  # rad (or m for prismatic joints)
    position_max: float
    velocity_max: float  # rad/s, absolute
    effort_max: float  # N·m, absolute
    continuous: bool = False

    @property
    def position_known(self) -> bool:
        return math.isfinite(self.position_min) and math.isfinite(self.position_max)

    @property
    def velocity_known(self) -> bool:
        return math.isfinite(self.velocity_max)

    @property
    def effort_known(self) -> bool:
        return math.isfinite(self.effort_max)


@dataclass(frozen=True)
class CameraSpec:
    """One camera stream as the robot delivers it."""

    name: str
    width: int
    height: int
    fps: float
    latency_ms: float  # capture-to-arrival latency known for this camera


@dataclass(frozen=True)
class RobotConfig:
    """A validated robot model config."""

    model: str
    vendor: str
    source: str
    joints: tuple[JointSpec, ...]
    joint_state_hz: float
    action_hz: float
    cameras: tuple[CameraSpec, ...]
    path: str = ""

    @property
    def dof(self) -> int:
        return len(self.joints)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def standard_names(self) -> tuple[str, ...]:
        return tuple(j.standard for j in self.joints)

    def unknown_limits(self, which: str) -> tuple[str, ...]:
        """Names of the joints whose ``which`` limit (position, velocity, effort) is unknown."""
        return tuple(j.name for j in self.joints if not getattr(j, f"{which}_known"))

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise ConfigError(self.path or self.model, "cameras", f"no camera named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config in its YAML schema (no file path): what the handshake sends
        and the raw store keeps; :func:`parse_robot_config` reads it back."""
        joints = []
        for j in self.joints:
            item: dict[str, Any] = {
                "name": j.name,
                "standard": j.standard or None,
                "position": [j.position_min, j.position_max] if j.position_known else None,
                "velocity": j.velocity_max if j.velocity_known else None,
                "effort": j.effort_max if j.effort_known else None,
            }
            if j.continuous:
                item["continuous"] = True
            joints.append(item)
        return {
            "model": self.model,
            "vendor": self.vendor,
            "source": self.source,
            "streams": {"joint_state_hz": self.joint_state_hz, "action_hz": self.action_hz},
            "joints": joints,
            "cameras": [asdict(c) for c in self.cameras],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical content; the handshake compares it."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def builtin_config_dir() -> Path:
    """The folder of robot configs shipped with the package."""
    return Path(str(resources.files("robots") / "configs"))


def builtin_models() -> list[str]:
    return sorted(p.stem for p in builtin_config_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Accept a path to a YAML file or the name of a shipped config (``unitree_g1``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = builtin_config_dir() / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        str(name_or_path),
        "robot",
        f"no such file, and not a shipped model; shipped models: {', '.join(builtin_models())}",
    )


def load_robot_config(name_or_path: str | Path) -> RobotConfig:
    """Load and validate a robot config.

    Raises:
        ConfigError: naming the file, the field and what is wrong.
    """
    path = resolve_config_path(name_or_path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(source, "<file>", f"cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(source, "<file>", f"not UTF-8 text: {err.reason} at byte {err.start}") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, "<file>", f"not valid YAML: {err}") from err
    return parse_robot_config(raw, source)


def parse_robot_config(raw: Any, source: str = "<config>") -> RobotConfig:
    """Validate an already-parsed config mapping (from YAML or from a handshake)."""
    fields = _Fields(raw, source, "")
    model = fields.name("model")
    vendor = fields.text("vendor")
    origin = fields.text("source")
    streams = fields.sub("streams")
    joint_state_hz = streams.positive("joint_state_hz")
    action_hz = streams.positive("action_hz")
    joints = tuple(_parse_joint(j, source, i) for i, j in enumerate(fields.list("joints")))
    _unique(source, "joints", [j.name for j in joints], "name")
    _unique(source, "joints", [j.standard for j in joints if j.standard], "standard")
    cameras = tuple(_parse_camera(c, source, i) for i, c in enumerate(fields.list("cameras", allow_empty=True)))
    _unique(source, "cameras", [c.name for c in cameras], "name")
    fields.only({"model", "vendor", "source", "streams", "joints", "cameras"})
    streams.only({"joint_state_hz", "action_hz"})
    return RobotConfig(
        model=model,
        vendor=vendor,
        source=origin,
        joints=joints,
        joint_state_hz=joint_state_hz,
        action_hz=action_hz,
        cameras=cameras,
        path=source,
    )


def _parse_joint(raw: Any, source: str, index: int) -> JointSpec:
    f = _Fields(raw, source, f"joints[{index}].")
    name = f.name("name")
    f.prefix = f"joints[{index}] ({name})."
    standard = "" if f.raw.get("standard", "") is None else f.text("standard")
    if standard and standard not in STANDARD_INDEX:
        raise ConfigError(
            source,
            f"{f.prefix}standard",
            f"{standard!r} is not a standard joint name; see pipeline/standard_joints.py (null: none)",
        )
    if f.unknown("position"):
        lo, hi = -math.inf, math.inf
    else:
        position = f.list("position")
        if len(position) != 2:
            raise ConfigError(source, f"{f.prefix}position", "expected [min, max] in rad, or null (unknown)")
        lo, hi = (_number(v, source, f"{f.prefix}position") for v in position)
        if not lo < hi:
            raise ConfigError(source, f"{f.prefix}position", f"min {lo} must be below max {hi}")
    velocity = math.inf if f.unknown("velocity") else f.positive("velocity")
    effort = math.inf if f.unknown("effort") else f.positive("effort")
    continuous = f.flag("continuous", default=False)
    f.only({"name", "standard", "position", "velocity", "effort", "continuous"})
    return JointSpec(name, standard, lo, hi, velocity, effort, continuous)


def _parse_camera(raw: Any, source: str, index: int) -> CameraSpec:
    f = _Fields(raw, source, f"cameras[{index}].")
    name = f.name("name")
    if name in RESERVED_STREAMS:
        raise ConfigError(source, f"cameras[{index}].name", f"{name!r} is reserved for a non-camera stream")
    f.prefix = f"cameras[{index}] ({name})."
    width = f.integer("width", 16, 8192)
    height = f.integer("height", 16, 8192)
    fps = f.positive("fps")
    latency = f.number("latency_ms", minimum=0.0)
    f.only({"name", "width", "height", "fps", "latency_ms"})
    return CameraSpec(name, width, height, fps, latency)


def _unique(source: str, field: str, values: list[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ConfigError(source, field, f"{what} {v!r} appears twice")
        seen.add(v)


def _number(value: Any, source: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(source, field, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(source, field, f"expected a finite number, got {value!r}")
    return float(value)


class _Fields(Fields):
    """A mapping of a robot config, with the field types it needs."""

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.source, self.prefix + key, f"expected non-empty text, got {value!r}")
        return value

    def name(self, key: str) -> str:
        value = self.text(key)
        if not _NAME_RE.match(value):
            raise ConfigError(
                self.source,
                self.prefix + key,
                f"{value!r} must be 1-64 letters, digits, '_', '.' or '-'",
            )
        return value

    def number(self, key: str, minimum: float | None = None) -> float:
        value = _number(self._get(key), self.source, self.prefix + key)
        if minimum is not None and value < minimum:
            raise ConfigError(self.source, self.prefix + key, f"must be >= {minimum}, got {value}")
        return value

    def positive(self, key: str) -> float:
        value = self.number(key)
        if value <= 0:
            raise ConfigError(self.source, self.prefix + key, f"must be > 0, got {value}")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(self.source, self.prefix + key, f"expected an integer in [{lo}, {hi}], got {value!r}")
        return value

    def unknown(self, key: str) -> bool:
        """The field is present and ``null``: a limit the robot's source does not give."""
        return self._get(key) is None

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.source, self.prefix + key, f"expected true or false, got {value!r}")
        return value

    def list(self, key: str, allow_empty: bool = False) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list) or (not value and not allow_empty):
            raise ConfigError(self.source, self.prefix + key, f"expected a non-empty list, got {value!r}")
        return value

"""Checks at the ingest's door: every field of a message before it touches state.

Decoding (:mod:`pipeline.protocol.records`) checks that a message is well
formed; this module checks that it makes sense for the session it arrives on:
text a person typed (task, operator, label) is printable UTF-8 within a length
limit, a numeric batch has the columns the robot config says, a stream carries
the kind of message its name implies. Everything here is pure and cheap: it
runs on every message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ProtocolError
from pipeline.protocol.opcode import Opcode
from pipeline.streams import CLOCK, EVENTS, NUMERIC_FIELDS

TEXT_FIELDS = ("task", "operator", "text", "outcome", "reason")
"""Event body fields that hold free text (typed by an operator or set by a collector)."""

DEFAULT_MAX_TEXT_CHARS = 1000


def text_problem(value: object, max_chars: int) -> str | None:
    """Why ``value`` is not acceptable free text, or None when it is."""
    if not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    if len(value) > max_chars:
        return f"is {len(value):,} characters long; the ingest accepts at most {max_chars:,}"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return f"holds a control character (U+{ord(bad):04X}) at position {value.index(bad)}"
    return None


def check_text(value: object, field: str, max_chars: int) -> str:
    """Return ``value`` if it is printable text of at most ``max_chars``; else raise ProtocolError."""
    problem = text_problem(value, max_chars)
    if problem is not None:
        raise ProtocolError(f"{field} {problem}", field=field)
    return value  # type: ignore[return-value]


def screen_event_body(body: dict[str, Any], max_chars: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Drop the free-text fields of an event body that are not acceptable.

    An event holds its place in the events stream (a later stop event names it),
    so a bad field is refused, not the whole event: the field is removed and
    ``body["refused"]`` says which field and why. Returns the body to journal and
    ``{field: reason}`` (empty when everything passed, and the body is then
    returned unchanged).
    """
    refused: dict[str, str] = {}
    for name in TEXT_FIELDS:
        if name in body:
            problem = text_problem(body[name], max_chars)
            if problem is not None:
                refused[name] = problem
    if "refused" in body:  # a collector may not forge the ingest's own verdicts
        refused.setdefault("refused", "is set by the ingest only")
    if not refused:
        return body, refused
    clean = {k: v for k, v in body.items() if k not in refused}
    clean["refused"] = dict(refused)
    return clean, refused


# An enum member's look-up costs 0.1 us; StreamRules.check runs on every message.
_SAMPLES, _FRAME, _EVENT, _CLOCK = Opcode.SAMPLES, Opcode.FRAME, Opcode.EVENT, Opcode.CLOCK


@dataclass(frozen=True)
class StreamRules:
    """Which streams a robot may send and the shape of each numeric one."""

    numeric_cols: dict[str, int]
    cameras: frozenset[str]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StreamRules:
        dof = len(config.get("joints", []))
        return cls(
            numeric_cols={stream: dof * len(fields) for stream, fields in NUMERIC_FIELDS.items()},
            cameras=frozenset(str(c["name"]) for c in config.get("cameras", [])),
        )

    def check(self, opcode: Opcode, stream: str, cols: int) -> None:
        """Raise ProtocolError unless a message of ``opcode`` may travel on ``stream``."""
        if opcode == _SAMPLES:
            expected = self.numeric_cols.get(stream)
            if expected is None:
                raise ProtocolError(
                    f"SAMPLES on stream {stream!r}; numeric streams are {sorted(self.numeric_cols)}", field="stream"
                )
            if cols != expected:
                raise ProtocolError(
                    f"SAMPLES of stream {stream!r} with {cols} columns; the robot config says {expected}",
                    field="cols",
                )
        elif opcode == _FRAME:
            if stream not in self.cameras:
                raise ProtocolError(
                    f"FRAME on stream {stream!r}, which is not a camera of the robot config {sorted(self.cameras)}",
                    field="stream",
                )
        elif opcode == _EVENT:
            if stream != EVENTS:
                raise ProtocolError(f"EVENT on stream {stream!r}; events travel on {EVENTS!r}", field="stream")
        elif opcode == _CLOCK and stream != CLOCK:
            raise ProtocolError(f"CLOCK on stream {stream!r}; clock samples travel on {CLOCK!r}", field="stream")


# --------------------------------------------------------------------------- JSON

MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_depth(body: bytes) -> int:
    """Nesting depth of a JSON text, counted without parsing it (strings skipped).

    The parser recurses once per level, so a deep text must be refused before it
    is parsed (64 KB of ``[`` raised RecursionError out of ``json.loads``).
    """
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return body.count(b"[") + body.count(b"{")  # an upper bound, and small: the common case
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_json_object(body: bytes, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """Parse a JSON object from the wire with its size and depth bounded first.

    Raises:
        ProtocolError: too large, too deep, not UTF-8 JSON, NaN/Infinity, an
            integer beyond Python's digit limit, or not an object.
    """
    if len(body) > max_bytes:
        raise ProtocolError(f"{what} JSON body of {len(body):,} bytes exceeds {max_bytes:,}")
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError(f"{what} JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ProtocolError(f"{what} body is not UTF-8 JSON: {err}") from err
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} body must be a JSON object, got {type(obj).__name__}")
    return obj

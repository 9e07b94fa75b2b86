"""Names of the streams every episode carries besides its cameras."""

from __future__ import annotations

JOINT_STATE = "joint_state"
ACTION = "action"
EVENTS = "events"
CLOCK = "clock"

NUMERIC_FIELDS: dict[str, tuple[str, ...]] = {
    JOINT_STATE: ("position", "velocity", "effort"),
    ACTION: ("position",),
}
"""Numeric streams and the per-joint fields of their columns, in column order:
a joint_state row is position[dof] ++ velocity[dof] ++ effort[dof]."""

RESERVED_STREAMS = frozenset({JOINT_STATE, ACTION, EVENTS, CLOCK})
"""Camera names may not take these."""

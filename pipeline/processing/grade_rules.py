"""The grade rules as data: what takes an episode below A, and the record of why.

An episode's grade is the worst of:

1. the letter of its overall score (the weighted mean of the indicators);
2. the indicator caps (:data:`INDICATOR_CAPS`, :data:`INDICATOR_SCORE_CAPS`):
   one ruinous indicator is not averaged away, and an alignment that is not
   trusted (``sync_error_ms``) caps the grade by itself;
3. the decision caps (:data:`DECISION_CAPS`): a defect the clean or align
   stage found and *left in the data* (action ``flag``, or a correction that
   rests on an estimate) caps the grade by its kind and severity, wherever the
   indicators land;
4. the repair caps (:data:`REPAIR_SHARE_CAPS`): the share of the recording
   that cleaning had to repair or cut. Idle head/tail trims are not counted
   (:data:`NEUTRAL_KINDS`): trimming rest changes nothing a trainer sees.

So a faulty episode keeps an A only when every defect found was repaired or cut
(not flagged), and the repairs and cuts together touch at most 2 % of it: a
spike replaced by interpolation, a dropped duplicate stamp, a frozen frame
replaced by its neighbour. Every rule that lowered the grade is recorded as a
:class:`GradeCost` with the episode's quality report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GRADES = ("A", "B", "C", "D", "F")
SEVERITIES = ("mild", "moderate", "severe")
DEFAULT_SEVERITY = "moderate"
"""Severity of a capping decision that states none."""


@dataclass(frozen=True)
class GradeCost:
    """One rule that lowered an episode's grade.

    Attributes:
        rule: ``overall``, ``indicator``, ``decision`` or ``repair share``.
        name: the indicator or decision kind, or what was measured.
        grade: the best grade the rule allows.
        detail: what was measured, where, and why it costs.
    """

    rule: str
    name: str
    grade: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "name": self.name, "grade": self.grade, "detail": self.detail}


@dataclass(frozen=True)
class DecisionCap:
    """Grade caps of one decision kind left in the data, by severity.

    Attributes:
        kind: the decision kind.
        mild / moderate / severe: best grade at that severity.
        repaired: best grade when the decision's action corrected the data from
            an estimate (``correct``); None: such a decision does not cap.
        why: what a trainer would get.
    """

    kind: str
    mild: str
    moderate: str
    severe: str
    repaired: str | None
    why: str

    def cap(self, severity: str, action: str) -> str | None:
        if action == "flag":
            return {"mild": self.mild, "moderate": self.moderate, "severe": self.severe}.get(
                severity or DEFAULT_SEVERITY, self.moderate)
        if action == "correct":
            return self.repaired
        return None


DECISION_CAPS: tuple[DecisionCap, ...] = (
    DecisionCap("tracking_error", "B", "C", "D", None,
                "actions and states disagree: a policy learns commands the robot did not follow"),
    DecisionCap("overexposed", "B", "C", "D", None, "frames without detail where the scene was washed out"),
    DecisionCap("underexposed", "B", "C", "D", None, "frames without detail where the scene was too dark"),
    DecisionCap("blur", "B", "C", "D", None, "frames whose detail is smeared away"),
    DecisionCap("camera_latency_mismatch", "B", "C", "D", "B",
                "frames show another moment than the joints say; a corrected one still rests on an estimate"),
    DecisionCap("capture_after_arrival", "B", "C", "D", "B",
                "camera stamps that cannot be true: the frame-to-joint alignment is unknown"),
)
"""Decision kind -> grade caps; the README's grade table lists the same."""

_CAPS_BY_KIND = {c.kind: c for c in DECISION_CAPS}

REPAIR_SHARE_CAPS: tuple[tuple[float, str], ...] = ((0.30, "D"), (0.10, "C"), (0.02, "B"))
"""(share of the recording repaired or cut, grade cap), worst first: above 30 % D, 10 % C, 2 % B."""

REPAIR_ACTIONS = frozenset({"interpolate", "fill", "split", "trim", "drop"})
NEUTRAL_KINDS = frozenset({"idle_head", "idle_tail", "idle", "too_short", "outcome"})
"""Decision kinds that cost no grade: trimming rest, and dropping leftovers too short to use."""

@dataclass(frozen=True)
class IndicatorCap:
    """An indicator whose score below ``below`` caps the grade at ``grade``, whatever the mean says."""

    name: str
    below: float
    grade: str
    why: str


INDICATOR_SCORE_CAPS: tuple[IndicatorCap, ...] = (
    IndicatorCap("sync_error_ms", 0.5, "C", "alignment confidence: frames and joints disagree in time by well over "
                 "what nearest-frame picking explains"),
    IndicatorCap("sync_error_ms", 1.0, "B", "alignment confidence: frames and joints disagree in time by more "
                 "than nearest-frame picking explains"),
)
"""Indicator -> grade cap by its score, worst first; the README's grade table lists the same."""


def indicator_costs(scores: Mapping[str, tuple[float, float, str]]) -> list[GradeCost]:
    """Caps from :data:`INDICATOR_SCORE_CAPS`; ``scores`` maps a measured indicator to (score, value, unit)."""
    costs = []
    for rule in INDICATOR_SCORE_CAPS:
        measured = scores.get(rule.name)
        if measured is None or measured[0] >= rule.below - 1e-9:
            continue
        if any(c.name == rule.name for c in costs):
            continue  # a worse cap of the same indicator came first
        score, value, unit = measured
        costs.append(GradeCost("indicator", rule.name, rule.grade,
                               f"scores {score:.2f} (value {value:g} {unit}), under {rule.below:g}: {rule.why}"))
    return costs


INDICATOR_CAPS = (
    ("major indicator", "a major indicator (weight >= 1) at letter X caps the grade two letters better than X "
                        "(F caps at C, D at B)"),
    ("critical indicator", "a critical indicator at score 0 caps the grade at D"),
)
"""The indicator rules, as :func:`pipeline.processing.score._grade` applies them."""


def worst(a: str, b: str) -> str:
    return GRADES[max(GRADES.index(a), GRADES.index(b))]


def _field(decision: object, name: str, default: Any = None) -> Any:
    if isinstance(decision, Mapping):
        return decision.get(name, default)
    return getattr(decision, name, default)


def decision_costs(
    decisions: Sequence[object], window: tuple[int, int], steps: int, raw_lengths: Mapping[str, int]
) -> list[GradeCost]:
    """Decision and repair-share caps of the dataset episode that holds timeline steps ``window``.

    Args:
        decisions: every decision of the raw episode (``Decision`` objects or
            their dicts); timeline decisions outside ``window`` concern
            another segment and cap nothing here, but count in the repair share.
        window: ``[start, end)`` timeline steps of this episode.
        steps: timeline steps of the whole aligned recording.
        raw_lengths: raw samples per stream, for the raw stage's drops.
    """
    costs: list[GradeCost] = []
    a, b = window
    mask = bytearray(max(0, steps))
    dropped: dict[str, int] = {}
    for d in decisions:
        kind, action = str(_field(d, "kind", "")), str(_field(d, "action", ""))
        stage, stream = str(_field(d, "stage", "clean")), str(_field(d, "stream", ""))
        start, end = int(_field(d, "start", 0) or 0), int(_field(d, "end", 0) or 0)
        rule = _CAPS_BY_KIND.get(kind)
        if rule is not None:
            inside = stage != "clean" or (start < b and end > a) or (start == end and a <= start < b)
            severity = str(_field(d, "severity", "") or DEFAULT_SEVERITY)
            cap = rule.cap(severity, action) if inside else None
            if cap is not None and cap != "A":
                value = _field(d, "value")
                measured = f", measured {value:g}" if isinstance(value, (int, float)) and math.isfinite(value) else ""
                costs.append(GradeCost("decision", kind, cap, f"{severity} {kind} ({action}) on {stream}, "
                                       f"{_where(stage, start, end)}{measured}: {rule.why}"))
            continue
        if action not in REPAIR_ACTIONS or kind in NEUTRAL_KINDS:
            continue
        if stage == "raw" or (stage == "clean" and kind in _RAW_KINDS):
            dropped[stream] = dropped.get(stream, 0) + max(0, end - start)
        elif steps > 0:
            for i in range(max(0, start), min(steps, end)):
                mask[i] = 1
    raw_share = max((n / raw_lengths[s] for s, n in dropped.items() if raw_lengths.get(s, 0) > 0), default=0.0)
    share = max(sum(mask) / steps if steps > 0 else 0.0, min(1.0, raw_share))
    for limit, cap in REPAIR_SHARE_CAPS:
        if share > limit:
            costs.append(GradeCost("repair share", "repaired or cut", cap,
                                   f"{share:.1%} of the recording was repaired or cut (idle trims aside); "
                                   f"above {limit:.0%} caps at {cap}"))
            break
    return costs


# Kinds clean_raw records: their ranges are raw sample indices of ``stream``, not timeline steps.
_RAW_KINDS = frozenset({"nonfinite", "duplicate_timestamp", "backwards_timestamp", "empty_frame"})


def _where(stage: str, start: int, end: int) -> str:
    if stage != "clean":
        return f"{stage} stage"
    return f"steps {start}..{end}"


def costs_text(quality: Mapping[str, Any], limit: int = 3) -> str:
    """What cost an episode its grade, shortest form: ``tracking_error C, repaired or cut B``; ``-`` for none."""
    costs = [c for c in quality.get("grade_costs", []) if isinstance(c, Mapping)]
    if not costs:
        return "-"
    text = ", ".join(f"{c.get('name', '?')} {c.get('grade', '?')}" for c in costs[:limit])
    return text + (f" (+{len(costs) - limit})" if len(costs) > limit else "")

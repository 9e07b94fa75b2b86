"""A dataset's value, explained: quality, coverage and freshness, one score with its breakdown.

No money: a score from 0 to 100 whose every part shows its inputs, on fixed
scales, so that two datasets are compared on the same ruler
(``refinery report A --compare B``).

Kept as mergeable sums in the index state (``state["appraisal"]``), updated
by :func:`count` for each episode a commit adds (or curation takes out), so a
commit costs O(its rows) and a report reads one Parquet footer, whatever the
size of the dataset. The score itself is computed at report time
(:func:`appraise`), because freshness depends on the day it is asked.

The parts (weights in :data:`WEIGHTS`):

quality (50 %)
    grade points (A 1, B 0.75, C 0.5, D 0.25, F 0; mean over accepted
    episodes, 60 %), acceptance (accepted / (accepted + rejected) episodes,
    20 %), indicator summary (mean score of every weighted indicator over
    accepted episodes, 20 %).
coverage (35 %)
    hours of accepted data (log scale: 1000 h = 1), tasks (log: 100 = 1),
    robots and operators (effective number by the entropy of their hours,
    log: 20 = 1), motion diversity (per joint, the spread of the episodes'
    mean poses plus their mean range of motion, radians: 1 rad = 1). Each a
    fifth.
freshness (15 %)
    hours weighted by ``0.5 ** (age / 90 days)``, over all hours: 1 when
    everything was recorded today, 0.5 when all of it is three months old.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

GRADE_POINTS = {"A": 1.0, "B": 0.75, "C": 0.5, "D": 0.25, "F": 0.0}
WEIGHTS = {"quality": 0.50, "coverage": 0.35, "freshness": 0.15}
HALF_LIFE_DAYS = 90.0
_DAY_NS = 86_400 * 1_000_000_000
_KEPT = 1000  # distinct operators / cost names kept; the rest count as "(other)"
_DAYS_KEPT = 3660  # ten years of daily hours


def empty() -> dict[str, Any]:
    return {"operators": {}, "robot_seconds": {}, "costs": {}, "indicators": {}, "motion": {}, "days": {},
            "grade_points": 0.0, "episodes": 0}


def _bump(counter: dict[str, Any], key: str, by: float) -> None:
    if key not in counter and len(counter) >= _KEPT:
        key = "(other)"
    value = counter.get(key, 0) + by
    if abs(value) > 1e-9:
        counter[key] = value
    else:
        counter.pop(key, None)


def count(state: dict[str, Any], entry: Any, sign: int) -> None:
    """Add (+1) or take out (-1) one accepted episode's share: O(1) in the size of the dataset."""
    a = state.setdefault("appraisal", empty())
    seconds = entry.length / entry.rate_hz if entry.rate_hz else 0.0
    a["episodes"] += sign
    a["grade_points"] += sign * GRADE_POINTS.get(entry.grade, 0.0)
    if entry.operator:
        _bump(a["operators"], entry.operator, sign * seconds)
    _bump(a["robot_seconds"], entry.robot_id or "?", sign * seconds)
    if entry.start_ns > 0:
        _bump(a["days"], str(entry.start_ns // _DAY_NS), sign * seconds)
        if len(a["days"]) > _DAYS_KEPT:
            oldest = min(a["days"], key=lambda d: int(d) if d.lstrip("-").isdigit() else 0)
            a["days"].pop(oldest)
    try:
        quality = json.loads(entry.quality_json or "{}")
    except ValueError:
        quality = {}
    for cost in quality.get("grade_costs", []):
        _bump(a["costs"], f"{cost.get('name', '?')} -> {cost.get('grade', '?')}", sign)
    for ind in quality.get("indicators", []):
        if ind.get("weight", 0) > 0:
            total = a["indicators"].setdefault(ind["name"], [0.0, 0])
            total[0] += sign * float(ind.get("score", 0.0))
            total[1] += sign
    position = entry.stats.get("state/position") if isinstance(entry.stats, dict) else None
    if position and position.get("count"):
        n = float(position["count"])
        mean = [t / n for t in position["total"]]
        spread = [hi - lo for lo, hi in zip(position["minimum"], position["maximum"], strict=False)]
        m = a["motion"].setdefault(entry.model, {"n": 0, "mean": [0.0] * len(mean), "mean_sq": [0.0] * len(mean),
                                                 "range": [0.0] * len(mean)})
        if len(m["mean"]) == len(mean):
            m["n"] += sign
            for j, (x, r) in enumerate(zip(mean, spread, strict=True)):
                m["mean"][j] += sign * x
                m["mean_sq"][j] += sign * x * x
                m["range"][j] += sign * r


@dataclass(frozen=True)
class Part:
    """One scored part of the appraisal: its score in [0, 1], its weight, and what it was computed from."""

    name: str
    score: float
    weight: float
    inputs: dict[str, Any] = field(default_factory=dict)
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Appraisal:
    """The dataset's score (0-100) and its breakdown."""

    score: float
    parts: tuple[Part, ...]
    costs: tuple[tuple[str, int], ...]  # what cost accepted episodes their grade, most frequent first
    asked: str  # when (UTC): freshness depends on it

    def to_dict(self) -> dict[str, Any]:
        def part(p: Part) -> dict[str, Any]:
            return {"name": p.name, "score": round(p.score, 4), "weight": p.weight, "inputs": p.inputs,
                    "parts": [part(q) for q in p.parts]}

        return {"score": round(self.score, 1), "asked": self.asked, "parts": [part(p) for p in self.parts],
                "grade_costs": [list(c) for c in self.costs]}

    def lines(self) -> list[str]:
        """Plain text: the score, each part with its inputs, and what cost grades."""
        out = [f"value {self.score:.1f} / 100 (quality, coverage and freshness on fixed scales; asked {self.asked})"]
        for p in self.parts:
            out.append(f"  {p.name:<10} {100 * p.score:5.1f}  x {p.weight:.2f}")
            for q in p.parts:
                out.append(f"    {q.name:<20} {100 * q.score:5.1f}  {_inputs(q.inputs)}")
        if self.costs:
            out.append("  what cost accepted episodes their grade: "
                       + ", ".join(f"{name} ({n})" for name, n in self.costs[:8]))
        return out


def _inputs(inputs: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in inputs.items())


def _log_scale(value: float, full: float) -> float:
    return min(1.0, math.log1p(max(0.0, value)) / math.log1p(full))


def _effective(counter: dict[str, float]) -> float:
    """exp(entropy) of the shares: how many equally used members the spread is worth."""
    values = [v for v in counter.values() if v > 0]
    total = sum(values)
    if total <= 0:
        return 0.0
    return math.exp(-sum(v / total * math.log(v / total) for v in values))


def appraise(state: dict[str, Any], now_ns: int | None = None) -> Appraisal:
    """The appraisal of a dataset from its index state (see the module docstring for the scales)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    counts = state.get("counts", {})
    a = state.get("appraisal") or empty()
    accepted, rejected = int(counts.get("accepted", 0)), int(counts.get("rejected", 0))
    grades = counts.get("grades", {})
    scored = max(1, a.get("episodes", 0))
    grade_points = a.get("grade_points", 0.0) / scored if a.get("episodes") else 0.0
    acceptance = accepted / (accepted + rejected) if accepted + rejected else 0.0
    indicators = {k: v[0] / v[1] for k, v in a.get("indicators", {}).items() if v[1] > 0}
    indicator_mean = sum(indicators.values()) / len(indicators) if indicators else 0.0
    worst = sorted(indicators.items(), key=lambda kv: kv[1])[:3]
    quality = Part("quality", 0.6 * grade_points + 0.2 * acceptance + 0.2 * indicator_mean, WEIGHTS["quality"], parts=(
        Part("grade points", grade_points, 0.6, {"grades": dict(sorted(grades.items())) or "-",
                                                  "points": "A 1, B .75, C .5, D .25, F 0"}),
        Part("acceptance", acceptance, 0.2, {"accepted": accepted, "rejected": rejected}),
        Part("indicators", indicator_mean, 0.2, {"indicators": len(indicators), "lowest": ", ".join(
            f"{k} {v:.2f}" for k, v in worst) or "-"}),
    ))

    hours = float(counts.get("accepted_seconds", 0.0)) / 3600
    tasks = len([t for t in counts.get("tasks", {}) if t != "(other)"])
    robots = _effective(a.get("robot_seconds", {}))
    operators = _effective(a.get("operators", {}))
    spreads = []
    for m in a.get("motion", {}).values():
        n = m.get("n", 0)
        if n <= 0:
            continue
        for s, sq, r in zip(m["mean"], m["mean_sq"], m["range"], strict=False):
            variance = max(0.0, sq / n - (s / n) ** 2)
            spreads.append(math.sqrt(variance) + r / n)
    motion = sum(spreads) / len(spreads) if spreads else 0.0
    coverage_parts = (
        Part("hours", _log_scale(hours, 1000), 0.2, {"hours": round(hours, 2), "full at": "1000 h"}),
        Part("tasks", _log_scale(tasks, 100), 0.2, {"tasks": tasks, "full at": 100}),
        Part("robots", _log_scale(robots, 20), 0.2, {"robots": len(a.get("robot_seconds", {})),
                                                     "effective": round(robots, 2), "full at": 20}),
        Part("operators", _log_scale(operators, 20), 0.2, {"operators": len(a.get("operators", {})),
                                                           "effective": round(operators, 2), "full at": 20}),
        Part("motion diversity", min(1.0, motion), 0.2, {"rad per joint": round(motion, 3),
                                                         "models": len(a.get("motion", {})), "full at": "1 rad"}),
    )
    coverage = Part("coverage", sum(p.score * p.weight for p in coverage_parts), WEIGHTS["coverage"],
                    parts=coverage_parts)

    days = {int(d): s for d, s in a.get("days", {}).items() if d.lstrip("-").isdigit() and s > 0}
    total = sum(days.values())
    today = now_ns // _DAY_NS
    fresh = (sum(s * 0.5 ** (max(0, today - d) / HALF_LIFE_DAYS) for d, s in days.items()) / total) if total else 0.0
    ages = sorted((max(0, today - d), s) for d, s in days.items())
    median_age = _weighted_median(ages) if ages else None
    freshness = Part("freshness", fresh, WEIGHTS["freshness"], parts=(
        Part("recency", fresh, 1.0, {
            "newest": f"{ages[0][0]} days ago" if ages else "-", "oldest": f"{ages[-1][0]} days ago" if ages else "-",
            "median age": f"{median_age} days" if median_age is not None else "-",
            "half-life": f"{HALF_LIFE_DAYS:g} days"}),
    ))
    parts = (quality, coverage, freshness)
    score = 100 * sum(p.score * p.weight for p in parts)
    costs = tuple(sorted(((k, int(v)) for k, v in a.get("costs", {}).items() if v > 0), key=lambda kv: (-kv[1], kv[0])))
    asked = time.strftime("%Y-%m-%d", time.gmtime(now_ns / 1e9))
    return Appraisal(score, parts, costs, asked)


def _weighted_median(pairs: list[tuple[int, float]]) -> int:
    half = sum(w for _, w in pairs) / 2
    seen = 0.0
    for value, weight in pairs:
        seen += weight
        if seen >= half:
            return value
    return pairs[-1][0]


def comparison_lines(a: Appraisal, b: Appraisal, name_a: str, name_b: str) -> list[str]:
    """Two appraisals side by side, part by part (same scales, so the differences mean something)."""
    out = [f"{'':<24}{name_a[:18]:>18}{name_b[:18]:>18}", f"{'value':<24}{a.score:>18.1f}{b.score:>18.1f}"]
    for pa_, pb in zip(a.parts, b.parts, strict=True):
        out.append(f"{pa_.name:<24}{100 * pa_.score:>18.1f}{100 * pb.score:>18.1f}")
        for qa, qb in zip(pa_.parts, pb.parts, strict=True):
            out.append(f"  {qa.name:<22}{100 * qa.score:>18.1f}{100 * qb.score:>18.1f}")
    return out

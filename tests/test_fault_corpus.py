"""Detection by fault class and severity on a corpus the pipeline was not tuned on.

The corpus (:mod:`tests.aloha_corpus`): ALOHA-format episodes with leader/follower
motion, encoder quantisation and real photographs, imported with
``import_aloha``; every fault class at three severities, twice each, at random
places; and clean episodes. Each raw episode goes through the real stages
(``refine``: clean_raw, align, clean_aligned, score) in two worker processes.

Printed: a table of found / injected per class and severity, false rejections
and false findings on clean episodes, and every faulty episode that kept an A
with the rule that allows it. Goals (issue 14): >= 99 % found, <= 1 % of clean
episodes rejected, no faulty episode graded A unless the README's grade rules
say why (every finding repaired or cut, none left in, repairs <= 2 %).
"""

from __future__ import annotations

import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from pipeline.processing.grade_rules import DECISION_CAPS, NEUTRAL_KINDS, REPAIR_ACTIONS
from tests.aloha_corpus import FAULT_CLASSES, LEVELS, clean_raw_episode

SEEDS_PER_CELL = 2
CLEAN_EPISODES = 60
TOLERANCE_STEPS = 25  # a finding within half a second of the injected stretch is at the right place
FLAGGED_KINDS = frozenset(c.kind for c in DECISION_CAPS)


@dataclass
class Outcome:
    """What the stages made of one corpus episode (small: it crosses a process boundary)."""

    fault: str
    level: str
    seed: int
    what: str = ""
    found: bool = False
    rejected: bool = False
    grades: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # decision kinds other than idle trims
    a_allowed_because: str = ""  # for a faulty episode graded A: why the grade rules allow it
    a_unexplained: str = ""  # for a faulty episode graded A: why they should not have


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def _covers(d: dict, where: tuple[int, int] | None, kinds: frozenset[str]) -> bool:
    if d["kind"] not in kinds:
        return False
    if where is None:
        return True
    a, b = where
    if not (d["start"] < b + TOLERANCE_STEPS and max(d["end"], d["start"] + 1) > a - TOLERANCE_STEPS):
        return False
    if d["kind"] in ("idle_head", "idle_tail"):
        return d["end"] - d["start"] >= 0.7 * (b - a)  # most of the idle stretch trimmed, not a sliver
    return True


def run_case(fault: str, level: str, seed: int, work: str) -> Outcome:
    """Make one corpus episode, run the stages, and say whether the fault was found and how it was graded."""
    from pipeline.processing.config import ProcessConfig
    from pipeline.processing.refine_task import refine

    rng = np.random.default_rng(_seed(fault, level, seed))
    name = f"{zlib.crc32(fault.encode()):08x}-{level[:3]}-{seed}"
    out = Outcome(fault, level, seed)
    if fault == "clean":
        raw, cls, where = clean_raw_episode(Path(work), name, rng), None, None
    else:
        cls = next(c for c in FAULT_CLASSES if c.name == fault)
        raw, injected = cls.make(Path(work), name, rng, level)
        where, out.what = injected.where, injected.what
    result = refine(raw, ProcessConfig())
    decisions = [d.as_dict() for d in result.decisions]
    out.rejected = result.rejected
    out.grades = [e.quality.grade for e in result.episodes]
    out.kinds = sorted({d["kind"] for d in decisions if d["kind"] not in NEUTRAL_KINDS})
    if cls is None:
        return out
    hits = [d for d in decisions if _covers(d, where, cls.kinds)]
    out.found = bool(hits)
    for episode in (e for e in result.episodes if e.quality.grade == "A"):
        a, b = episode.steps
        flagged = [d for d in hits if d["action"] not in REPAIR_ACTIONS
                   and (d["stage"] != "clean" or (d["start"] < b and d["end"] > a))]
        if not hits:
            out.a_unexplained = "graded A and the fault was not found"
        elif flagged:
            out.a_unexplained = f"graded A with {flagged[0]['kind']} left in ({flagged[0]['action']})"
        elif any(d["action"] not in REPAIR_ACTIONS for d in hits):
            out.a_allowed_because = "found and flagged in another part of the split recording; this part is clean"
        else:
            actions = "/".join(sorted({d["action"] for d in hits}))
            out.a_allowed_because = (
                f"found and {actions}: idle trims cost no grade" if {d["kind"] for d in hits} <= NEUTRAL_KINDS
                else f"found and {actions}: nothing left in, repairs and cuts <= 2 % of the recording")
    return out


def _cases() -> list[tuple[str, str, int]]:
    cases = [(c.name, level, seed) for c in FAULT_CLASSES for level in LEVELS for seed in range(SEEDS_PER_CELL)]
    return cases + [("clean", "-", seed) for seed in range(CLEAN_EPISODES)]


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    # On tmpfs where there is one: the raw store fsyncs every sealed file, which a busy disk makes slow.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="fault-corpus-", dir=shm if shm.is_dir() else None) as work:
        # spawn: a forked child would inherit a Ray driver's threads from other tests.
        with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_case, f, lv, s, f"{work}/{i % 2}") for i, (f, lv, s) in enumerate(_cases())]
            return [f.result() for f in futures]


def _table(outcomes: list[Outcome]) -> str:
    lines = [f"{'fault class':<26} {'mild':>6} {'moderate':>9} {'severe':>7} {'found':>7}  grades",
             "-" * 78]
    for cls in FAULT_CLASSES:
        rows = [o for o in outcomes if o.fault == cls.name]
        cells = []
        for level in LEVELS:
            cell = [o for o in rows if o.level == level]
            cells.append(f"{sum(o.found for o in cell)}/{len(cell)}")
        grades = "".join(sorted("".join(o.grades) or "R" for o in rows))
        lines.append(f"{cls.name:<26} {cells[0]:>6} {cells[1]:>9} {cells[2]:>7} "
                     f"{sum(o.found for o in rows):>3}/{len(rows):<3}  {grades}")
    counted = [o for o in outcomes if o.fault != "clean"]
    lines.append("-" * 78)
    for level in LEVELS:
        cell = [o for o in counted if o.level == level]
        lines.append(f"{level:<10} found {sum(o.found for o in cell)}/{len(cell)}")
    lines.append(f"all        found {sum(o.found for o in counted)}/{len(counted)}")
    clean = [o for o in outcomes if o.fault == "clean"]
    lines.append(f"clean      rejected {sum(_rejected(o) for o in clean)}/{len(clean)}, with a finding "
                 f"{sum(bool(o.kinds) for o in clean)}/{len(clean)} "
                 f"({', '.join(sorted({k for o in clean for k in o.kinds})) or 'none'}), grades "
                 + "".join(sorted("".join(o.grades) for o in clean)))
    for o in outcomes:
        if o.a_allowed_because:
            lines.append(f"A kept: {o.fault} {o.level}: {o.what}: {o.a_allowed_because}")
    return "\n".join(lines)


def _rejected(o: Outcome) -> bool:
    return o.rejected or not o.grades


CAMERA_TIMING = {"camera stamps offset", "camera shows scene late"}


def _missed(outcomes: list[Outcome]) -> list[str]:
    return [f"{o.fault} {o.level} #{o.seed}: {o.what}; decisions {o.kinds}" for o in outcomes if not o.found]


@pytest.mark.slow
def test_fault_corpus_finds_99_percent_of_all_faults(outcomes: list[Outcome]) -> None:
    print("\n" + _table(outcomes))
    counted = [o for o in outcomes if o.fault != "clean"]
    assert sum(o.found for o in counted) >= 0.99 * len(counted), "missed:\n" + "\n".join(_missed(counted))


@pytest.mark.slow
def test_no_camera_timing_fault_keeps_an_a_unless_the_grade_rules_say_why(outcomes: list[Outcome]) -> None:
    counted = [o for o in outcomes if o.fault in CAMERA_TIMING]
    unexplained = [f"{o.fault} {o.level} #{o.seed}: {o.a_unexplained}" for o in counted if o.a_unexplained]
    assert not unexplained, "\n".join(unexplained)


@pytest.mark.slow
def test_fault_corpus_finds_every_signal_and_image_fault(outcomes: list[Outcome]) -> None:
    counted = [o for o in outcomes if o.fault not in CAMERA_TIMING | {"clean"}]
    assert sum(o.found for o in counted) >= 0.99 * len(counted), "missed:\n" + "\n".join(_missed(counted))


@pytest.mark.slow
def test_fault_corpus_rejects_at_most_one_percent_of_clean_episodes(outcomes: list[Outcome]) -> None:
    clean = [o for o in outcomes if o.fault == "clean"]
    assert sum(_rejected(o) for o in clean) <= 0.01 * len(clean)


@pytest.mark.slow
def test_no_signal_or_image_fault_keeps_an_a_unless_the_grade_rules_say_why(outcomes: list[Outcome]) -> None:
    counted = [o for o in outcomes if o.fault not in CAMERA_TIMING | {"clean"}]
    unexplained = [f"{o.fault} {o.level} #{o.seed}: {o.a_unexplained}" for o in counted if o.a_unexplained]
    assert not unexplained, "\n".join(unexplained)


@pytest.mark.slow
def test_clean_corpus_episodes_raise_few_findings(outcomes: list[Outcome]) -> None:
    """A rule that fires on clean data would cost good episodes their grade: at most 5 % may carry a finding."""
    clean = [o for o in outcomes if o.fault == "clean"]
    noisy = [f"#{o.seed}: {o.kinds}" for o in clean if o.kinds]
    assert len(noisy) <= 0.05 * len(clean), "\n".join(noisy)
    assert not [o for o in clean if set(o.kinds) & FLAGGED_KINDS], "a clean episode carries a grade-capping finding"

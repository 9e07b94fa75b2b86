"""The clean stage's stretch rules on realistic episodes, and the grade rules they feed.

Episodes come from :mod:`tests.aloha_corpus`: ALOHA leader/follower motion read
through 4096-count encoders, real photographs as camera frames, imported with
``import_aloha``. Each test breaks one thing and checks the decision that names it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.processing.align import align
from pipeline.processing.clean import CleanResult, Decision, clean_aligned, clean_raw
from pipeline.processing.episode import RawEpisode
from pipeline.processing.grade_rules import DECISION_CAPS, INDICATOR_SCORE_CAPS, decision_costs, indicator_costs
from pipeline.processing.score import QualityReport, score_episode
from tests import aloha_corpus as corpus


def refine(raw: RawEpisode) -> tuple[list[Decision], CleanResult]:
    cleaned, raw_decisions = clean_raw(raw)
    result = clean_aligned(align(cleaned))
    return raw_decisions + result.decisions, result


def found(decisions: list[Decision], kind: str) -> list[Decision]:
    return [d for d in decisions if d.kind == kind]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def test_a_clean_realistic_episode_raises_no_finding(work: Path) -> None:
    raw = corpus.import_episode(work, "clean", corpus.make_episode(np.random.default_rng(3)))
    decisions, result = refine(raw)
    assert {d.kind for d in decisions} <= {"idle_head", "idle_tail"}
    [segment] = result.segments
    assert score_episode(segment, decisions).grade == "A"


def test_an_idle_head_with_encoder_noise_is_trimmed_to_the_first_motion(work: Path) -> None:
    ep = corpus.make_episode(np.random.default_rng(4), active_s=3.0, rest_head_s=4.0, rest_tail_s=0.3)
    assert np.abs(np.diff(ep.qpos[:190, :6], axis=0)).max() > 0  # the still arm's reading flickers by a tick
    decisions, _ = refine(corpus.import_episode(work, "idle", ep))
    [head] = found(decisions, "idle_head")
    assert 3.5 <= head.value <= 4.3  # seconds still before the first motion
    assert head.end == pytest.approx(200 - 12, abs=8)  # 0.25 s of rest kept before step 200


def test_a_stale_joint_stream_is_cut_and_named(work: Path) -> None:
    ep = corpus.make_episode(np.random.default_rng(5), active_s=5.0)
    ep.qpos[120:170] = ep.qpos[119]  # the driver re-sends one reading for 1 s while the arms move
    decisions, result = refine(corpus.import_episode(work, "stale", ep))
    [stale] = found(decisions, "stale_joint_stream")
    assert (stale.stream, stale.action) == ("joint_state", "split")
    assert abs(stale.start - 120) <= 2 and abs(stale.end - 170) <= 2
    assert "repeats exactly for 1020 ms" in stale.reason
    assert all(not (s.report["clean"]["start_step"] < 160 < s.report["clean"]["end_step"]) for s in result.segments)


def test_a_follower_off_the_command_for_seconds_is_flagged_with_its_joints_and_error(work: Path) -> None:
    ep = corpus.make_episode(np.random.default_rng(6), active_s=6.0)
    bump = np.sin(np.linspace(0, np.pi, 150)) ** 2 * 0.4
    ep.follower[100:250, 2] += bump  # the left elbow sags 0.4 rad for 3 s (a weak motor)
    ep.qpos = corpus.quantise(ep.follower, np.random.default_rng(0))
    decisions, result = refine(corpus.import_episode(work, "tracking", ep))
    [flag] = found(decisions, "tracking_error")
    assert (flag.stream, flag.action, flag.severity) == ("action", "flag", "moderate")
    assert "left_elbow" in flag.reason and flag.value == pytest.approx(0.4, abs=0.05)
    assert 110 <= flag.start <= 150 and 200 <= flag.end <= 250
    [segment] = result.segments
    quality = score_episode(segment, decisions)
    assert quality.grade == "C"
    assert [(c.rule, c.name, c.grade) for c in quality.costs] == [("decision", "tracking_error", "C")]


def test_an_overexposed_stretch_is_flagged_on_its_camera(work: Path) -> None:
    ep = corpus.make_episode(np.random.default_rng(7), active_s=5.0)
    ep.images["cam_left_wrist"][150:200] = corpus._gain(1.8, 50)(ep.images["cam_left_wrist"][150:200])
    decisions, _ = refine(corpus.import_episode(work, "over", ep))
    [flag] = found(decisions, "overexposed")
    assert (flag.stream, flag.action) == ("cam_left_wrist", "flag")
    assert abs(flag.start - 150) <= 13 and abs(flag.end - 200) <= 13
    assert flag.value > 200  # the stretch's luma


def test_a_camera_washed_out_all_episode_is_flagged_severe(work: Path) -> None:
    ep = corpus.make_episode(np.random.default_rng(8))
    ep.images["cam_high"] = corpus._gain(1.5, 70)(ep.images["cam_high"])
    decisions, _ = refine(corpus.import_episode(work, "washed", ep))
    [flag] = found(decisions, "overexposed")
    assert (flag.stream, flag.severity) == ("cam_high", "severe") and "whole episode" in flag.reason


def test_blur_over_half_the_episode_is_flagged_against_the_sharp_half(work: Path) -> None:
    rng = np.random.default_rng(9)
    ep = corpus.make_episode(rng, active_s=5.0)
    seen = corpus.seen_pose(ep.follower, 0.0)[100:250]
    ep.images["cam_high"][100:250] = corpus.render("cam_high", seen, rng, np.full(150, 1.0))
    decisions, _ = refine(corpus.import_episode(work, "blur", ep))
    [flag] = found(decisions, "blur")
    assert flag.stream == "cam_high" and abs(flag.start - 100) <= 13 and abs(flag.end - 250) <= 13
    assert flag.value < 0.25


# --- grade rules --------------------------------------------------------------------------


def _flag(kind: str, severity: str, start: int = 10, end: int = 60) -> dict:
    return {"kind": kind, "stream": "cam_high", "start": start, "end": end, "action": "flag", "severity": severity,
            "reason": "test"}


@pytest.mark.parametrize(("severity", "grade"), [("mild", "B"), ("moderate", "C"), ("severe", "D")])
def test_a_defect_left_in_caps_the_grade_by_its_severity(severity: str, grade: str) -> None:
    [cost] = decision_costs([_flag("blur", severity)], (0, 500), 500, {})
    assert (cost.rule, cost.name, cost.grade) == ("decision", "blur", grade)


def test_a_defect_in_another_part_of_a_split_recording_costs_this_part_nothing() -> None:
    assert decision_costs([_flag("tracking_error", "severe", 300, 400)], (0, 250), 500, {}) == []


def test_repairs_cost_a_grade_only_above_two_percent_and_idle_trims_never() -> None:
    spike = {"kind": "spike", "stream": "joint_state", "start": 40, "end": 41, "action": "interpolate"}
    idle = {"kind": "idle_head", "stream": "joint_state", "start": 0, "end": 300, "action": "trim"}
    assert decision_costs([spike, idle], (300, 500), 500, {}) == []
    cut = {"kind": "frozen_frames", "stream": "cam_high", "start": 100, "end": 160, "action": "split"}
    [cost] = decision_costs([cut], (160, 500), 500, {})
    assert (cost.rule, cost.grade) == ("repair share", "C")  # 12 % of the recording cut


def test_raw_drops_count_as_a_share_of_their_stream() -> None:
    dropped = {"kind": "duplicate_timestamp", "stream": "joint_state", "start": 0, "end": 30, "action": "drop"}
    [cost] = decision_costs([dropped], (0, 100), 100, {"joint_state": 1000})
    assert cost.grade == "B"  # 3 % of the joint samples


def test_a_latency_mismatch_from_the_other_stage_caps_even_when_corrected() -> None:
    corrected = {"stage": "align", "kind": "camera_latency_mismatch", "stream": "cam_high", "start": 0, "end": 0,
                 "action": "correct", "severity": "severe"}
    [cost] = decision_costs([corrected], (0, 100), 100, {})
    assert cost.grade == "B"
    assert {c.kind for c in DECISION_CAPS} >= {"camera_latency_mismatch", "capture_after_arrival"}


def test_grade_costs_survive_the_quality_report_round_trip(work: Path) -> None:
    raw = corpus.import_episode(work, "rt", corpus.make_episode(np.random.default_rng(10)))
    decisions, result = refine(raw)
    quality = score_episode(result.segments[0], [*decisions, Decision(**_flag("blur", "mild"))])
    assert quality.grade == "B" and quality.costs[0].name == "blur"
    assert QualityReport.from_dict(quality.to_dict()) == quality


@pytest.mark.parametrize(("score", "caps"), [(1.0, []), (0.8, ["B"]), (0.3, ["C"])])
def test_an_alignment_that_is_not_trusted_caps_the_grade(score: float, caps: list[str]) -> None:
    costs = indicator_costs({"sync_error_ms": (score, 40.0, "ms")})
    assert [c.grade for c in costs] == caps
    assert all(c.name == "sync_error_ms" and "alignment confidence" in c.detail for c in costs)


def test_the_readme_grade_table_lists_every_rule_in_the_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("#### Grades: what takes an episode below A"):readme.index("#### A value, explained")]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    for cap in DECISION_CAPS:
        [row] = [line for name, line in rows.items() if f"`{cap.kind}`" in name]
        cells = [c.strip() for c in row.split("|")[2:6]]
        assert [cell.split()[0].rstrip(",") for cell in cells[:3]] == ["mild", "moderate", "severe"]
        assert (cap.mild, cap.moderate, cap.severe) == ("B", "C", "D")
    for cap in INDICATOR_SCORE_CAPS:
        [row] = [line for name, line in rows.items() if f"`{cap.name}`" in name]
        assert f"score < {cap.below:g}" in row.split("|")["ABCDF".index(cap.grade) + 1]

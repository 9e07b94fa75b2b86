"""The score stage: named indicators, one grade, and what each defect does to them."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ProcessingError, RefineryError
from pipeline.processing.episode import AlignedEpisode
from pipeline.processing.score import (
    GRADES,
    INDICATOR_NAMES,
    MAJOR_WEIGHT,
    QualityReport,
    ScoreConfig,
    band,
    letter,
    ramp,
    score_episode,
)
from tests import synthetic_score as synth


@pytest.fixture(scope="module")
def clean() -> AlignedEpisode:
    return synth.clean_episode()


@pytest.fixture(scope="module")
def clean_report(clean: AlignedEpisode) -> QualityReport:
    return score_episode(clean)


def _assert_well_formed(report: QualityReport) -> None:
    assert report.grade in GRADES
    assert 0.0 <= report.overall <= 1.0
    for ind in report.indicators:
        assert math.isfinite(ind.value), ind
        assert 0.0 <= ind.score <= 1.0, ind
        assert ind.weight >= 0.0, ind
        assert ind.unit and ind.description, ind


# --- the report ----------------------------------------------------------------------


def test_indicator_names_are_unique_and_at_least_22(clean_report: QualityReport) -> None:
    names = [ind.name for ind in clean_report.indicators]
    assert len(names) == len(set(names))
    assert len(names) >= 22
    assert tuple(names) == INDICATOR_NAMES


def test_every_indicator_documents_its_mapping(clean_report: QualityReport) -> None:
    for ind in clean_report.indicators:
        assert "Score" in ind.description, ind.name


def test_clean_episode_grades_a(clean_report: QualityReport) -> None:
    assert clean_report.grade == "A", clean_report.notes
    assert clean_report.overall >= 0.99
    low = {ind.name: ind.score for ind in clean_report.indicators if ind.score < 0.99}
    assert not low


def test_clean_episode_measures_every_indicator(clean_report: QualityReport) -> None:
    unmeasured = [ind.name for ind in clean_report.indicators if ind.weight == 0]
    assert not unmeasured, clean_report.notes


def test_all_values_are_finite(clean_report: QualityReport) -> None:
    _assert_well_formed(clean_report)


def test_report_round_trips_through_json(clean: AlignedEpisode) -> None:
    report = score_episode(synth.with_dropped_frames(clean), decisions=["trim head"])
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert QualityReport.from_dict(json.loads(text)) == report


def test_malformed_report_dict_is_rejected_with_the_field() -> None:
    with pytest.raises(ProcessingError, match="grade"):
        QualityReport.from_dict({"grade": "Z", "overall": 0.5, "indicators": []})
    with pytest.raises(ProcessingError, match="overall"):
        QualityReport.from_dict({"grade": "A", "overall": float("nan"), "indicators": []})
    with pytest.raises(RefineryError):
        QualityReport.from_dict({"grade": "A", "overall": 1.0, "indicators": [{"name": "x"}]})


def test_report_looks_up_indicators_by_name(clean_report: QualityReport) -> None:
    assert clean_report.indicator("sync_error_ms").unit == "ms"
    assert set(clean_report.scores) == set(INDICATOR_NAMES)
    with pytest.raises(KeyError):
        clean_report.indicator("no_such_indicator")


# --- each defect lowers its own indicator and the overall ---------------------------------

DEFECTS: dict[str, tuple[Callable[[AlignedEpisode], AlignedEpisode], tuple[str, ...]]] = {
    "dropped frames": (synth.with_dropped_frames, ("frame_completeness", "frame_drop_rate", "completeness")),
    "joint timing jitter": (synth.with_joint_jitter, ("timing_jitter_ms",)),
    "camera timing jitter": (synth.with_camera_jitter, ("camera_jitter_ms",)),
    "position spikes": (synth.with_spikes, ("jerk", "high_frequency_energy_ratio")),
    "idle robot": (synth.with_idle, ("idle_ratio",)),
    "position limit violations": (synth.with_limit_violations, ("limit_violations", "position_limit_margin")),
    "dark frames": (synth.with_dark_frames, ("brightness", "badly_exposed_frame_ratio")),
    "blurred frames": (synth.with_blurred_frames, ("sharpness",)),
    "black frames": (synth.with_black_frames, ("black_frame_ratio",)),
    "frozen frames": (synth.with_frozen_frames, ("frozen_frame_ratio",)),
    "large sync error": (synth.with_sync_error, ("sync_error_ms",)),
    "NaN positions": (synth.with_nans, ("nan_fraction", "completeness")),
    "slow clock sync": (synth.with_slow_clock_sync, ("clock_rtt_ms", "clock_offset_stability_ms")),
    "joint-state gap": (synth.with_joint_gap, ("max_gap_ms", "joint_sample_completeness")),
    "effort saturation": (synth.with_effort_saturation, ("effort_saturation",)),
    "slow command following": (synth.with_action_lag, ("action_state_lag_ms",)),
    "command tracking error": (synth.with_tracking_offset, ("action_state_tracking_error",)),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defect_lowers_its_indicator_and_the_overall(
    defect: str, clean: AlignedEpisode, clean_report: QualityReport
) -> None:
    inject, names = DEFECTS[defect]
    report = score_episode(inject(clean))
    _assert_well_formed(report)
    for name in names:
        assert report.indicator(name).score < clean_report.indicator(name).score - 0.2, name
    assert report.overall < clean_report.overall
    failed_major = [n for n in names if report.indicator(n).weight >= MAJOR_WEIGHT and report.indicator(n).score < 0.5]
    if failed_major:
        assert GRADES.index(report.grade) >= GRADES.index("C"), report.notes


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defect_leaves_unrelated_image_and_timing_indicators_alone(
    defect: str, clean: AlignedEpisode, clean_report: QualityReport
) -> None:
    # Indicators of another kind than the defect keep their clean score, so a
    # report points at the cause rather than smearing it over everything.
    inject, names = DEFECTS[defect]
    report = score_episode(inject(clean))
    groups = [
        {"sharpness", "frozen_frame_ratio"},
        {"timing_jitter_ms", "clock_rtt_ms"},
        {"sync_error_ms"},
    ]
    for group in groups:
        if group & set(names):
            continue
        for name in group:
            assert report.indicator(name).score == pytest.approx(clean_report.indicator(name).score), name


def test_many_cleaning_decisions_lower_the_score(clean: AlignedEpisode, clean_report: QualityReport) -> None:
    report = score_episode(clean, decisions=[{"rule": "spike", "step": i} for i in range(20)])
    assert report.indicator("decisions_count").value == 20
    assert report.indicator("decisions_count").score < clean_report.indicator("decisions_count").score
    assert report.overall < clean_report.overall


def test_worse_defects_score_lower(clean: AlignedEpisode) -> None:
    mild = score_episode(synth.with_dropped_frames(clean, fraction=0.05))
    severe = score_episode(synth.with_dropped_frames(clean, fraction=0.4))
    assert severe.indicator("frame_completeness").score < mild.indicator("frame_completeness").score
    assert severe.overall < mild.overall


# --- grading rules -------------------------------------------------------------------------


def test_grade_cutoffs() -> None:
    assert [letter(s) for s in (1.0, 0.9, 0.89, 0.8, 0.65, 0.64, 0.5, 0.49, 0.0)] == [
        "A", "A", "B", "B", "C", "D", "D", "F", "F"
    ]


def test_ramps_and_bands_map_documented_points() -> None:
    assert ramp(5, good=10, bad=20) == 1.0
    assert ramp(15, good=10, bad=20) == pytest.approx(0.5)
    assert ramp(25, good=10, bad=20) == 0.0
    assert ramp(0.95, good=0.99, bad=0.8) == pytest.approx(0.15 / 0.19)
    assert band(100, 25, 60, 190, 240) == 1.0
    assert band(25, 25, 60, 190, 240) == 0.0
    assert band(215, 25, 60, 190, 240) == pytest.approx(0.5)


def test_critical_indicator_at_zero_caps_grade_at_d(clean: AlignedEpisode) -> None:
    report = score_episode(synth.with_sync_error(clean, error_ms=500.0))
    assert report.indicator("sync_error_ms").critical
    assert report.indicator("sync_error_ms").score == 0.0
    assert report.overall >= 0.8  # the mean alone would give B or better
    assert report.grade == "D"
    assert any("critical" in note for note in report.notes)


def test_one_failed_major_indicator_caps_grade_at_c(clean: AlignedEpisode) -> None:
    report = score_episode(synth.with_frozen_frames(clean, fraction=0.5))
    assert report.indicator("frozen_frame_ratio").score == 0.0
    assert report.overall >= 0.9
    assert report.grade == "C"
    assert any("frozen_frame_ratio" in note for note in report.notes)


def test_grade_is_never_better_than_the_overall_letter(clean: AlignedEpisode) -> None:
    for inject, _ in DEFECTS.values():
        report = score_episode(inject(clean))
        assert GRADES.index(report.grade) >= GRADES.index(letter(report.overall))


def test_weight_overrides_change_the_overall(clean: AlignedEpisode) -> None:
    dropped = synth.with_dropped_frames(clean)
    default = score_episode(dropped)
    heavier = score_episode(dropped, config=ScoreConfig(weights=(("frame_completeness", 10.0),)))
    assert heavier.indicator("frame_completeness").weight == 10.0
    assert heavier.overall < default.overall


def test_unknown_weight_override_is_rejected(clean: AlignedEpisode) -> None:
    with pytest.raises(ProcessingError, match="no_such_indicator"):
        score_episode(clean, config=ScoreConfig(weights=(("no_such_indicator", 1.0),)))


# --- episodes missing parts ------------------------------------------------------------------


def test_missing_streams_are_noted_and_weigh_nothing(clean: AlignedEpisode) -> None:
    raw = replace(clean.raw, cameras={}, action=None)
    bare = replace(clean, raw=raw, frames={}, action=None)
    report = score_episode(bare)
    _assert_well_formed(report)
    for name in ("action_state_tracking_error", "frame_completeness", "sharpness", "black_frame_ratio"):
        assert report.indicator(name).weight == 0.0
        assert any(note.startswith(f"{name}: not measured") for note in report.notes)
    assert report.grade == "A"


def test_empty_episode_scores_without_crashing(clean: AlignedEpisode) -> None:
    empty = replace(
        clean,
        t_ns=clean.t_ns[:0],
        state={k: v[:0] for k, v in clean.state.items()},
        action=clean.action[:0] if clean.action is not None else None,
        frames={k: v[:0] for k, v in clean.frames.items()},
    )
    report = score_episode(empty)
    _assert_well_formed(report)
    assert GRADES.index(report.grade) >= GRADES.index("D")


def test_raw_gap_outside_the_aligned_window_is_not_blamed(clean: AlignedEpisode) -> None:
    # The clean stage trimmed the first second; a joint-state gap inside that
    # second belongs to the part that was cut, not to this episode.
    trimmed_steps = int(clean.rate_hz)
    trimmed = replace(
        clean,
        t_ns=clean.t_ns[trimmed_steps:],
        state={k: v[trimmed_steps:] for k, v in clean.state.items()},
        action=clean.action[trimmed_steps:] if clean.action is not None else None,
        frames={k: v[trimmed_steps:] for k, v in clean.frames.items()},
    )
    stream = clean.raw.joint_state
    assert stream is not None
    keep = np.ones(len(stream), dtype=bool)
    keep[100:400] = False  # 0.2 s to 0.8 s into the raw stream, before the trimmed start
    raw = replace(
        clean.raw,
        joint_state=replace(
            stream,
            capture_ns=stream.capture_ns[keep],
            source_index=stream.source_index[keep],
            arrival_ns=stream.arrival_ns[keep],
            fields={k: v[keep] for k, v in stream.fields.items()},
        ),
    )
    report = score_episode(replace(trimmed, raw=raw))
    assert report.indicator("joint_sample_completeness").score == 1.0
    assert report.indicator("max_gap_ms").score == 1.0


# --- invariants ----------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    seconds=st.floats(0.2, 4.0),
    rate_hz=st.sampled_from([10.0, 30.0, 50.0, 200.0]),
    defect=st.sampled_from(sorted(DEFECTS)),
)
def test_any_episode_gets_a_well_formed_report(seed: int, seconds: float, rate_hz: float, defect: str) -> None:
    ep = synth.clean_episode(seconds=seconds, rate_hz=rate_hz, seed=seed, width=64, height=48, frame_pool=8)
    with contextlib.suppress(ValueError, IndexError, AssertionError):
        ep = DEFECTS[defect][0](ep)  # unless the defect does not fit so short an episode
    report = score_episode(ep)
    _assert_well_formed(report)
    assert QualityReport.from_dict(json.loads(json.dumps(report.to_dict(), allow_nan=False))) == report


# --- cost ------------------------------------------------------------------------------------


def test_scoring_costs_well_under_a_tenth_of_a_millisecond_per_frame() -> None:
    # 60 s, two 640x480 cameras at 30 fps: 3,600+ frames. Measured here about
    # 0.02-0.03 ms per frame (80-100 ms per episode); 0.1 ms is the budget.
    # CPU time of this process, so other work on a shared machine does not count.
    ep = synth.clean_episode(seconds=60.0, width=640, height=480, frame_pool=30)
    frames = sum(len(c) for c in ep.raw.cameras.values())
    score_episode(ep)
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        score_episode(ep)
        best = min(best, time.process_time() - start)
    per_frame_ms = best / frames * 1e3
    print(f"score_episode: {best * 1e3:.1f} ms for {frames} frames = {per_frame_ms:.4f} ms/frame")
    assert per_frame_ms < 0.1


# --- with the real align and clean stages --------------------------------------------------


def test_episode_through_align_and_clean_grades_a() -> None:
    from pipeline.processing.align import AlignConfig, align
    from pipeline.processing.clean import clean_aligned, clean_raw
    from tests import synthetic

    made = synthetic.make_episode(duration_s=4.0, clock_offset_ms=40.0, clock_drift_ppm=20.0, clock_noisy=2)
    raw, raw_decisions = clean_raw(made.raw)
    result = clean_aligned(align(raw, AlignConfig(rate_hz=50.0)))
    assert len(result.segments) == 1
    report = score_episode(result.segments[0], [*raw_decisions, *result.decisions])
    _assert_well_formed(report)
    assert report.grade == "A", [(i.name, i.value, i.score) for i in report.indicators if i.score < 1]


def test_unknown_limits_leave_the_limit_indicators_unmeasured(clean: AlignedEpisode) -> None:
    joints = tuple(replace(j, position_min=-math.inf, position_max=math.inf, velocity_max=math.inf,
                           effort_max=math.inf) for j in clean.raw.config.joints)
    unknown = replace(clean, raw=replace(clean.raw, config=replace(clean.raw.config, joints=joints)))

    report = score_episode(unknown)

    _assert_well_formed(report)
    for name in ("jerk", "position_limit_margin", "limit_violations", "velocity_limit_violations",
                 "effort_saturation"):
        assert report.indicator(name).weight == 0.0, name
        assert any(note.startswith(f"{name}: not measured") and "known" in note for note in report.notes), name
    assert any("position limits of" in note and "unknown" in note for note in report.notes)
    assert report.grade == "A"


def test_skipped_checks_do_not_count_as_cleaning_decisions(clean: AlignedEpisode) -> None:
    skip = {"kind": "limits_unknown", "stream": "joint_state", "start": 0, "end": 10, "action": "skip",
            "reason": "limits unknown"}

    report = score_episode(clean, [skip] * 5)

    assert report.indicator("decisions_count").value == 0.0

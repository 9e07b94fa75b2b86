"""The align stage: clock fit, one uniform timeline, interpolation and frame choice.

Every episode here is synthetic (tests/synthetic.py) with a known truth: the
collector clock runs 37 ms ahead of the ingest clock and drifts 50 ppm, cameras
have known latencies, and joint positions are sinusoids of ingest time.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, ProcessingError
from pipeline.processing.align import AlignConfig, ClockFit, align, fit_clock, wrap_to_pi
from pipeline.processing.clean import clean_raw
from pipeline.processing.episode import ClockSamples
from tests.synthetic import (
    EPOCH_NS,
    NS,
    TrueClock,
    copy_numeric,
    keep_rows,
    make_clock_samples,
    make_episode,
    make_robot_config,
    replace_stream,
)

OFFSET_MS = 37.0
DRIFT_PPM = 50.0
JOINT_TOLERANCE_RAD = 1e-3  # linear interpolation of <= 0.7 Hz sinusoids from 500 Hz: ~1e-5 rad; clock error adds ~0
CLOCK_TOLERANCE_NS = 1_000  # exact exchanges are symmetric: the fit is exact up to ns rounding


@pytest.fixture(scope="module")
def synthetic():
    # Joint 5 is continuous and circles around ±pi; three delayed exchanges per exact one.
    return make_episode(
        make_robot_config(continuous=(5,)),
        duration_s=4.0,
        clock_offset_ms=OFFSET_MS,
        clock_drift_ppm=DRIFT_PPM,
        clock_noisy=3,
        clock_noise_ms=3.0,
        seed=1,
    )


@pytest.fixture(scope="module")
def aligned(synthetic):
    return align(synthetic.raw, AlignConfig(rate_hz=50.0))


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(wrap_to_pi(a - b))


# -- clock fit ------------------------------------------------------------------------------


def test_clock_fit_recovers_offset_and_drift_despite_delayed_exchanges(synthetic):
    fit = fit_clock(synthetic.raw.clock)
    t = synthetic.raw.joint_state.capture_ns
    assert fit.method == "linear"
    assert np.abs(fit.to_ingest(t) - synthetic.clock.to_ingest(t)).max() <= CLOCK_TOLERANCE_NS
    assert fit.drift_ppm == pytest.approx(DRIFT_PPM, abs=0.01)
    assert fit.samples_used < fit.samples_total
    # The delayed exchanges matter: a plain mean of every offset is far off.
    naive = synthetic.raw.clock.offset_ns.mean()
    assert abs(naive - OFFSET_MS * 1e6) > 100_000


def test_clock_fit_without_samples_assumes_equal_clocks():
    empty = np.array([], dtype=np.int64)
    fit = fit_clock(ClockSamples(empty, empty, empty, empty))
    assert (fit.method, fit.synced, fit.offset_ns, fit.drift_ppm, fit.samples_used) == ("none", False, 0.0, 0.0, 0)
    assert fit.to_ingest(np.array([EPOCH_NS]))[0] == EPOCH_NS


def test_clock_fit_with_one_sample_fits_the_offset_only():
    truth = TrueClock(offset_ns=-2.5e6, drift_ppm=30.0, ref_ns=EPOCH_NS)
    clock = make_clock_samples(truth, EPOCH_NS, EPOCH_NS + 1, interval_s=1.0)
    fit = fit_clock(clock)
    assert (fit.method, fit.samples_used, fit.drift_ppm) == ("offset", 1, 0.0)
    assert fit.offset_at(np.array([fit.ref_ns]))[0] == pytest.approx(-2.5e6, abs=CLOCK_TOLERANCE_NS)


def test_clock_fit_ignores_exchanges_with_impossible_round_trips():
    truth = TrueClock(offset_ns=5e6, drift_ppm=0.0, ref_ns=EPOCH_NS)
    clock = make_clock_samples(truth, EPOCH_NS, EPOCH_NS + 4 * NS, interval_s=0.5)
    # A corrupt exchange: t4 before t1 (negative round trip) with a wild offset.
    bad = ClockSamples(
        np.append(clock.t1_ns, EPOCH_NS + NS),
        np.append(clock.t2_ns, EPOCH_NS + 10 * NS),
        np.append(clock.t3_ns, EPOCH_NS + 10 * NS),
        np.append(clock.t4_ns, EPOCH_NS),
    )
    fit = fit_clock(bad)
    assert fit.samples_total == clock.t1_ns.shape[0] + 1
    assert fit.offset_ns == pytest.approx(5e6, abs=CLOCK_TOLERANCE_NS)


def test_clock_fit_round_trips_through_the_report(aligned):
    fit = ClockFit(**aligned.report["clock"])
    assert fit.drift_ppm == pytest.approx(DRIFT_PPM, abs=0.01)


@settings(max_examples=40, deadline=None)
@given(
    offset_ms=st.floats(-3_600_000, 3_600_000),
    drift_ppm=st.floats(-200, 200),
    delay_us=st.floats(10, 5_000),
    noisy=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_clock_fit_recovers_any_offset_and_drift(offset_ms, drift_ppm, delay_us, noisy, seed):
    """Bound: within 1 µs over a 60 s episode and 0.05 ppm, whatever the delays on noisy exchanges."""
    truth = TrueClock(offset_ns=offset_ms * 1e6, drift_ppm=drift_ppm, ref_ns=EPOCH_NS)
    clock = make_clock_samples(
        truth, EPOCH_NS - 2 * NS, EPOCH_NS + 60 * NS, delay_us=delay_us, noisy=noisy,
        rng=np.random.default_rng(seed),
    )
    fit = fit_clock(clock)
    t = EPOCH_NS + np.arange(0, 60 * NS, NS // 10, dtype=np.int64)
    assert np.abs(fit.to_ingest(t) - truth.to_ingest(t)).max() <= CLOCK_TOLERANCE_NS
    assert fit.drift_ppm == pytest.approx(drift_ppm, abs=0.05)


# -- timeline, interpolation, frames ------------------------------------------------------------


def test_joint_positions_match_the_truth_on_the_ingest_clock(synthetic, aligned):
    truth = synthetic.motion.position(aligned.t_ns)
    assert angle_error(aligned.state["position"], truth).max() < JOINT_TOLERANCE_RAD
    velocity = synthetic.motion.velocity(aligned.t_ns)
    assert np.abs(aligned.state["velocity"] - velocity).max() < 0.01


def test_actions_match_the_truth_where_the_motion_is_smooth(synthetic, aligned):
    # Actions are 50 Hz: linear interpolation of a 0.7 Hz, 0.8 rad sinusoid errs by up to
    # A w^2 h^2 / 8 = 8e-4 rad. The synthetic motion stops dead at the episode end, so
    # steps whose action target lies past it are left out.
    end = synthetic.motion.t0_ns + int(synthetic.motion.active_s * NS) - round(synthetic.action_lead_s * NS)
    smooth = aligned.t_ns < end - 20_000_000
    error = angle_error(aligned.action[smooth], synthetic.true_action(aligned.t_ns[smooth]))
    assert error.max() < 1e-3


def test_each_step_gets_the_frame_exposed_nearest_to_it(synthetic, aligned):
    """Bound: the chosen frame's true exposure is within half a frame period + 1 ms of the step,
    and no other frame is nearer by more than the clock error (1 µs)."""
    for name, frames in aligned.frames.items():
        exposure = synthetic.exposure_ns[name]
        assert (frames >= 0).all()
        chosen = np.abs(exposure[frames] - aligned.t_ns)
        best = np.abs(exposure[None, :] - aligned.t_ns[:, None]).min(axis=1)
        assert (chosen <= best + CLOCK_TOLERANCE_NS).all()
        half_period_ns = 0.5e9 / synthetic.raw.cameras[name].fps
        assert (chosen <= half_period_ns + 1_000_000).all()


def test_alignment_error_is_reported_per_stream(aligned):
    errors = aligned.alignment_error_ms
    assert set(errors) == {"clock", "joint_state", "action", "head_left", "head_right"}
    assert errors["joint_state"] <= 1.0  # 500 Hz: every step within 1 ms of a sample
    assert errors["action"] <= 10.0  # 50 Hz: within half a period
    for camera in ("head_left", "head_right"):
        stats = aligned.report["streams"][camera]
        assert errors[camera] == stats["mean_ms"] <= stats["p99_ms"] <= stats["max_ms"] <= 1000 / 30 / 2
    assert aligned.report["clock"]["method"] == "linear"
    json.dumps(aligned.report)  # plain values: the report goes into the dataset as JSON


@settings(max_examples=25, deadline=None)
@given(
    rate_hz=st.sampled_from([10.0, 15.0, 30.0, 50.0, 60.0, 100.0, 200.0]),
    late_ms=st.lists(st.floats(0, 300), min_size=4, max_size=4),
    early_ms=st.lists(st.floats(0, 300), min_size=4, max_size=4),
    offset_ms=st.floats(-1000, 1000),
    drift_ppm=st.floats(-100, 100),
)
def test_timeline_is_uniform_and_inside_every_stream(rate_hz, late_ms, early_ms, offset_ms, drift_ppm):
    syn = make_episode(
        duration_s=1.5, encode_frames=False, clock_offset_ms=offset_ms, clock_drift_ppm=drift_ppm, seed=3
    )
    raw = syn.raw
    names = ["joint_state", "action", "head_left", "head_right"]
    for name, late, early in zip(names, late_ms, early_ms, strict=True):
        stream = raw.joint_state if name == "joint_state" else raw.action if name == "action" else raw.cameras[name]
        t = stream.capture_ns
        keep = (t >= t[0] + late * 1e6) & (t <= t[-1] - early * 1e6)
        raw = replace_stream(raw, name, keep_rows(stream, keep))
    ep = align(raw, AlignConfig(rate_hz=rate_hz))
    period = 1e9 / rate_hz
    assert np.all(np.abs(np.diff(ep.t_ns) - period) <= 1)
    for name in names:
        times = ep.stream_time_ns[name]
        assert times[0] <= ep.t_ns[0] and ep.t_ns[-1] <= times[-1]
    # The timeline covers the common interval up to less than one step.
    end = min(int(times[-1]) for times in ep.stream_time_ns.values())
    assert end - ep.t_ns[-1] < period


@settings(max_examples=30, deadline=None)
@given(
    start=st.floats(-np.pi, np.pi),
    speed=st.floats(2.0, 12.0).flatmap(lambda s: st.sampled_from([s, -s])),
    rate_hz=st.sampled_from([30.0, 50.0, 100.0]),
)
def test_continuous_joint_interpolates_the_short_way_across_pi(start, speed, rate_hz):
    """A joint turning at constant speed crosses ±pi several times; the aligned angle
    is the wrapped straight line (exactly, up to float error), never a swing through 0."""
    syn = make_episode(make_robot_config(1, continuous=(0,)), duration_s=1.5, encode_frames=False)
    js = copy_numeric(syn.raw.joint_state)
    t_true = syn.clock.to_ingest(js.capture_ns)
    seconds = (t_true - t_true[0]).astype(np.float64) / NS
    js.fields["position"][:, 0] = wrap_to_pi(start + speed * seconds)
    ep = align(replace_stream(syn.raw, "joint_state", js), AlignConfig(rate_hz=rate_hz))
    expected = wrap_to_pi(start + speed * (ep.t_ns - t_true[0]).astype(np.float64) / NS)
    got = ep.state["position"][:, 0]
    assert np.all((got > -np.pi) & (got <= np.pi))
    assert angle_error(got, expected).max() < 1e-6


def test_lost_frames_leave_steps_without_a_frame(synthetic):
    cam = synthetic.raw.cameras["head_left"]
    lost = np.arange(40, 43)  # three frames: 100 ms
    ep = align(replace_stream(synthetic.raw, "head_left", keep_rows(cam, np.setdiff1d(np.arange(len(cam)), lost))))
    exposure = synthetic.exposure_ns["head_left"][lost]
    inside = (ep.t_ns > exposure[0]) & (ep.t_ns < exposure[-1])
    assert (ep.frames["head_left"][inside] == -1).all()
    assert (ep.frames["head_left"][~inside] >= 0).sum() >= len(ep.t_ns) - inside.sum() - 2
    assert ep.report["streams"]["head_left"]["matched_steps"] < len(ep.t_ns)


def test_frame_tolerance_can_be_set(synthetic):
    ep = align(synthetic.raw, AlignConfig(rate_hz=50.0, frame_tolerance_ms=1.0))
    assert (ep.frames["head_left"] == -1).any()
    assert ep.report["streams"]["head_left"]["max_ms"] <= 1.0


def test_joint_state_span_keeps_the_joint_timeline_and_holds_actions(synthetic):
    action = synthetic.raw.action
    late = keep_rows(action, action.capture_ns >= action.capture_ns[0] + 500_000_000)
    raw = replace_stream(synthetic.raw, "action", late)
    common = align(raw)
    spanned = align(raw, AlignConfig(rate_hz=50.0, span="joint_state"))
    assert spanned.t_ns[0] < common.t_ns[0]
    held = spanned.report["streams"]["action"]["held_steps"]
    assert held >= 20  # ~0.5 s at 50 Hz
    np.testing.assert_array_equal(spanned.action[:held], np.repeat(spanned.action[held - 1 : held], held, axis=0))


@pytest.mark.parametrize("stream", ["joint_state", "head_right"])
def test_align_refuses_stamps_that_do_not_increase_and_names_the_stream(synthetic, stream):
    raw = synthetic.raw
    original = raw.joint_state if stream == "joint_state" else raw.cameras[stream]
    broken = keep_rows(original, np.ones(len(original), dtype=bool))
    broken.capture_ns[10] = broken.capture_ns[9]
    with pytest.raises(ProcessingError, match=f"stream {stream}.*not strictly increasing at sample 10.*clean_raw"):
        align(replace_stream(raw, stream, broken))
    fixed, decisions = clean_raw(replace_stream(raw, stream, broken))
    assert [d.kind for d in decisions] == ["duplicate_timestamp"]
    align(fixed)


def test_align_refuses_non_finite_values(synthetic):
    js = copy_numeric(synthetic.raw.joint_state)
    js.fields["effort"][7, 2] = np.inf
    with pytest.raises(ProcessingError, match="'effort' has non-finite values .*sample 7"):
        align(replace_stream(synthetic.raw, "joint_state", js))


def test_align_refuses_an_episode_without_joint_state(synthetic):
    with pytest.raises(ProcessingError, match="no joint_state"):
        align(replace(synthetic.raw, joint_state=None))


def test_align_config_from_mapping_rejects_unknown_keys():
    assert AlignConfig.from_mapping({"rate_hz": 30}).rate_hz == 30
    with pytest.raises(ConfigError, match="process.yaml: field 'align.rate': unknown field"):
        AlignConfig.from_mapping({"rate": 30}, "process.yaml")
    with pytest.raises(ConfigError, match="field 'rate_hz'"):
        AlignConfig.from_mapping({"rate_hz": 0}, "process.yaml")

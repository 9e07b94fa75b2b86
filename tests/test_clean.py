"""The clean stage: each fault injected into a synthetic episode is found and handled by its rule.

Episodes come from tests/synthetic.py (4 s, 6 joints at 500 Hz, actions at
50 Hz, two 30 fps cameras, clock 37 ms off and drifting). A fault is injected
into a copy of the raw streams (or, where a fault is about the aligned
timeline itself, into a copy of the aligned arrays), then the episode runs
through clean_raw -> align -> clean_aligned.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.processing.align import AlignConfig, align
from pipeline.processing.clean import CleanConfig, CleanResult, Decision, clean_aligned, clean_raw
from pipeline.processing.episode import AlignedEpisode, RawEpisode
from tests.synthetic import (
    EPOCH_NS,
    NS,
    CameraDef,
    Synthetic,
    black_jpeg,
    copy_numeric,
    encode,
    frame_image,
    keep_rows,
    make_episode,
    make_robot_config,
    replace_stream,
)

MS = 1_000_000


@pytest.fixture(scope="module")
def syn() -> Synthetic:
    return make_episode(duration_s=4.0, clock_offset_ms=37.0, clock_drift_ppm=50.0, clock_noisy=1, seed=2)


def run(raw: RawEpisode) -> tuple[list[Decision], AlignedEpisode, CleanResult]:
    cleaned, raw_decisions = clean_raw(raw)
    ep = align(cleaned, AlignConfig(rate_hz=50.0))
    return raw_decisions, ep, clean_aligned(ep)


def kinds(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.kind, d.action) for d in decisions]


def window(stream, start_s: float, length_s: float) -> np.ndarray:
    """Rows captured in [start, start + length) seconds after the episode start (collector clock)."""
    t = stream.capture_ns - EPOCH_NS
    return (t >= start_s * NS) & (t < (start_s + length_s) * NS)


def steps_in(ep: AlignedEpisode, syn: Synthetic, start_s: float, length_s: float) -> np.ndarray:
    """Steps whose time lies in [start, start + length) seconds after the start (ingest clock)."""
    t = ep.t_ns - syn.clock.to_ingest(np.array([EPOCH_NS]))[0]
    return np.flatnonzero((t >= start_s * NS) & (t < (start_s + length_s) * NS))


def lose_joint_samples(syn: Synthetic, start_s: float, length_s: float) -> RawEpisode:
    js = syn.raw.joint_state
    return replace_stream(syn.raw, "joint_state", keep_rows(js, ~window(js, start_s, length_s)))


def with_joint_state(syn: Synthetic, change) -> RawEpisode:
    js = copy_numeric(syn.raw.joint_state)
    change(js)
    return replace_stream(syn.raw, "joint_state", js)


def with_frames(syn: Synthetic, camera: str, change) -> RawEpisode:
    cam = syn.raw.cameras[camera]
    jpeg = list(cam.jpeg)
    change(jpeg)
    return replace_stream(syn.raw, camera, replace(cam, jpeg=jpeg))


def assert_one_segment_of_everything(ep: AlignedEpisode, result: CleanResult) -> None:
    assert not result.rejected
    assert len(result.segments) == 1
    assert len(result.segments[0].t_ns) == len(ep.t_ns)


# -- a clean episode -------------------------------------------------------------------------


def test_a_clean_episode_passes_unchanged(syn):
    cleaned, raw_decisions = clean_raw(syn.raw)
    assert raw_decisions == []
    assert cleaned.joint_state is syn.raw.joint_state and cleaned.cameras == syn.raw.cameras
    ep = align(cleaned, AlignConfig(rate_hz=50.0))
    result = clean_aligned(ep)
    assert result.decisions == [] and result.reject_reasons == [] and not result.rejected
    [segment] = result.segments
    np.testing.assert_array_equal(segment.t_ns, ep.t_ns)
    for key, values in ep.state.items():
        np.testing.assert_array_equal(segment.state[key], values)
    np.testing.assert_array_equal(segment.action, ep.action)
    for camera, frames in ep.frames.items():
        np.testing.assert_array_equal(segment.frames[camera], frames)
    assert segment.report["clean"] == {"segment": 0, "segments": 1, "start_step": 0, "end_step": len(ep.t_ns), "steps": len(ep.t_ns)}


# -- clean_raw: stamps and values --------------------------------------------------------------


def test_duplicate_timestamps_are_dropped_keeping_the_first(syn):
    def duplicate(js):
        js.capture_ns[100] = js.capture_ns[99]
        js.capture_ns[200] = js.capture_ns[199]

    raw = with_joint_state(syn, duplicate)
    cleaned, decisions = clean_raw(raw)
    assert [(d.kind, d.stream, d.start, d.end, d.action) for d in decisions] == [
        ("duplicate_timestamp", "joint_state", 100, 101, "drop"),
        ("duplicate_timestamp", "joint_state", 200, 201, "drop"),
    ]
    js = cleaned.joint_state
    assert len(js) == len(syn.raw.joint_state) - 2
    assert np.all(np.diff(js.capture_ns) > 0)
    np.testing.assert_array_equal(js.fields["position"][99], syn.raw.joint_state.fields["position"][99])
    assert raw.joint_state.capture_ns[100] == raw.joint_state.capture_ns[99]  # the input is untouched
    align(cleaned, AlignConfig(rate_hz=50.0))


def test_backwards_timestamps_are_dropped(syn):
    period = 2 * MS

    def backwards(js):
        js.capture_ns[150] = js.capture_ns[149] - period  # the simulator's fault: one period back
        js.capture_ns[600] += NS  # one stamp a second in the future: only it is wrong

    cleaned, decisions = clean_raw(with_joint_state(syn, backwards))
    assert [(d.kind, d.start, d.end) for d in decisions] == [
        ("backwards_timestamp", 150, 151),
        ("backwards_timestamp", 600, 601),
    ]
    assert len(cleaned.joint_state) == len(syn.raw.joint_state) - 2
    assert np.all(np.diff(cleaned.joint_state.capture_ns) > 0)


def test_nan_and_inf_samples_are_dropped_and_recorded(syn):
    def poison(js):
        js.fields["position"][50, 1] = np.nan
        js.fields["velocity"][51, 0] = np.inf
        js.fields["effort"][400, 5] = -np.inf

    cleaned, decisions = clean_raw(with_joint_state(syn, poison))
    assert [(d.kind, d.start, d.end, d.action) for d in decisions] == [
        ("nonfinite", 50, 52, "drop"),
        ("nonfinite", 400, 401, "drop"),
    ]
    assert "position, velocity" in decisions[0].reason
    assert len(cleaned.joint_state) == len(syn.raw.joint_state) - 3
    assert all(np.isfinite(v).all() for v in cleaned.joint_state.fields.values())


def test_duplicate_frames_with_identical_capture_times_are_dropped(syn):
    cam = syn.raw.cameras["head_left"]
    rows = np.insert(np.arange(len(cam)), 11, 10)  # frame 10 delivered twice
    doubled = replace(
        cam,
        capture_ns=cam.capture_ns[rows],
        source_index=cam.source_index[rows],
        arrival_ns=cam.arrival_ns[rows],
        jpeg=[cam.jpeg[i] for i in rows],
    )
    cleaned, decisions = clean_raw(replace_stream(syn.raw, "head_left", doubled))
    assert [(d.kind, d.stream, d.start, d.end) for d in decisions] == [("duplicate_timestamp", "head_left", 11, 12)]
    assert cleaned.cameras["head_left"].jpeg == cam.jpeg


# -- gaps ------------------------------------------------------------------------------------


def test_a_short_joint_gap_is_interpolated_and_recorded(syn):
    raw = lose_joint_samples(syn, 2.0, 0.12)
    _, ep, result = run(raw)
    [gap] = result.decisions
    assert (gap.kind, gap.stream, gap.action) == ("gap", "joint_state", "interpolate")
    # The steps strictly between the last sample before (1.998 s) and the first after (2.12 s).
    np.testing.assert_array_equal(np.arange(gap.start, gap.end), steps_in(ep, syn, 1.998, 0.122))
    assert "122 ms" in gap.reason
    assert_one_segment_of_everything(ep, result)


def test_a_long_joint_gap_splits_the_episode_in_two(syn):
    raw = lose_joint_samples(syn, 2.0, 0.4)
    _, ep, result = run(raw)
    [gap] = result.decisions
    assert (gap.kind, gap.action) == ("gap", "split")
    assert "402 ms" in gap.reason  # 400 ms of samples lost: 402 ms between the two around them
    first, second = result.segments
    assert first.report["clean"]["end_step"] == gap.start and second.report["clean"]["start_step"] == gap.end
    lost_from, lost_to = syn.clock.to_ingest(EPOCH_NS + np.array([2.0, 2.4]) * NS)
    assert first.t_ns[-1] < lost_from and second.t_ns[0] > lost_to


def test_a_few_dropped_frames_are_filled_with_the_nearest_frame(syn):
    cam = syn.raw.cameras["head_left"]
    kept = np.setdiff1d(np.arange(len(cam)), [60, 61])
    _, ep, result = run(replace_stream(syn.raw, "head_left", keep_rows(cam, kept)))
    assert {(d.kind, d.stream, d.action) for d in result.decisions} == {("frame_gap", "head_left", "fill")}
    assert_one_segment_of_everything(ep, result)
    frames = result.segments[0].frames["head_left"]
    assert (frames >= 0).all()
    filled = np.concatenate([np.arange(d.start, d.end) for d in result.decisions])
    times = ep.stream_time_ns["head_left"]
    nearest = np.abs(times[None, :] - ep.t_ns[filled, None]).argmin(axis=1)
    np.testing.assert_array_equal(frames[filled], nearest)
    assert result.report["cameras"]["head_left"]["filled_steps"] == len(filled)


def test_many_dropped_frames_split_the_episode(syn):
    cam = syn.raw.cameras["head_right"]
    kept = np.setdiff1d(np.arange(len(cam)), np.arange(55, 67))  # 12 frames: 400 ms
    _, ep, result = run(replace_stream(syn.raw, "head_right", keep_rows(cam, kept)))
    assert kinds(result.decisions) == [("frame_gap", "split")]
    assert len(result.segments) == 2
    assert all((s.frames["head_right"] >= 0).all() for s in result.segments)


# -- joint limits and spikes -------------------------------------------------------------------


def test_a_long_position_limit_violation_is_cut_out(syn):
    limit = syn.raw.config.joints[1].position_max

    def violate(js):
        js.fields["position"][window(js, 2.0, 0.3), 1] = limit + 0.4

    _, ep, result = run(with_joint_state(syn, violate))
    assert ("position_limit", "split") in kinds(result.decisions)
    assert len(result.segments) == 2
    for segment in result.segments:
        assert segment.state["position"][:, 1].max() <= limit + CleanConfig().limit_tolerance_rad


def test_a_brief_position_limit_violation_is_interpolated(syn):
    ep = align(syn.raw, AlignConfig(rate_hz=50.0))
    position = ep.state["position"].copy()
    limit = syn.raw.config.joints[3].position_min
    position[100:102, 3] = limit - 0.3  # two steps (40 ms) out of range
    faulty = replace(ep, state={**ep.state, "position": position})
    result = clean_aligned(faulty)
    [d] = result.decisions
    assert (d.kind, d.start, d.end, d.action) == ("position_limit", 100, 102, "interpolate")
    assert "joint_3" in d.reason
    repaired = result.segments[0].state["position"][:, 3]
    np.testing.assert_allclose(repaired[100:102], np.interp([100, 101], [99, 102], position[[99, 102], 3]))
    assert faulty.state["position"][100, 3] == limit - 0.3  # the input is untouched


def test_velocity_field_violations_are_interpolated_when_brief_and_cut_when_long(syn):
    vmax = syn.raw.config.joints[0].velocity_max

    def violate(js):
        js.fields["velocity"][window(js, 2.5, 0.3), 0] = 2 * vmax

    ep = align(clean_raw(with_joint_state(syn, violate))[0], AlignConfig(rate_hz=50.0))
    velocity = ep.state["velocity"].copy()
    velocity[50:52, 4] = -3 * vmax
    result = clean_aligned(replace(ep, state={**ep.state, "velocity": velocity}))
    decisions = sorted(result.decisions, key=lambda d: d.start)
    assert [(d.kind, d.start, d.end, d.action) for d in decisions][0] == ("velocity_limit", 50, 52, "interpolate")
    assert kinds(decisions) == [("velocity_limit", "interpolate"), ("velocity_limit", "split")]
    assert len(result.segments) == 2
    for segment in result.segments:
        assert np.abs(segment.state["velocity"]).max() <= vmax * 1.1


def test_a_position_jump_faster_than_the_velocity_limit_splits_the_episode(syn):
    def jump(js):
        js.fields["position"][js.capture_ns - EPOCH_NS >= 2 * NS, 0] += 0.6  # 0.6 rad in one raw sample

    # Without a command stream: a reading that stays 0.6 rad off would also be a tracking error.
    _, ep, result = run(replace(with_joint_state(syn, jump), action=None))
    assert {(d.kind, d.action) for d in result.decisions} == {("velocity_limit", "split")}
    assert len(result.segments) == 2
    for segment in result.segments:
        speed = np.abs(np.diff(segment.state["position"], axis=0)) * ep.rate_hz
        assert speed.max() < 10.0


def test_a_spike_is_replaced_by_interpolation(syn):
    ep = align(syn.raw, AlignConfig(rate_hz=50.0))
    step = 120
    # Spike the raw samples within 3 ms of that step's time, so exactly one step sees it.
    capture = syn.clock.to_collector(ep.t_ns[[step]])[0]

    def spike(js):
        js.fields["position"][np.abs(js.capture_ns - capture) <= 3 * MS, 2] += 0.5

    _, ep, result = run(with_joint_state(syn, spike))
    [d] = result.decisions
    assert (d.kind, d.stream, d.start, d.end, d.action) == ("spike", "joint_state", step, step + 1, "interpolate")
    truth = syn.motion.position(ep.t_ns[[step]])[0, 2]
    assert ep.state["position"][step, 2] == pytest.approx(truth + 0.5, abs=1e-3)  # align kept the spike
    assert result.segments[0].state["position"][step, 2] == pytest.approx(truth, abs=5e-3)


def test_fast_smooth_motion_is_not_a_spike_but_a_spike_on_it_is(syn):
    """At 2.2 Hz and 0.7 rad a joint bends by ~0.07 rad between steps, above the 0.05 rad
    floor: the robust local scale, not the floor, keeps it from being flagged."""
    ep = align(syn.raw, AlignConfig(rate_hz=50.0))
    seconds = (ep.t_ns - ep.t_ns[0]).astype(np.float64) / NS
    position = ep.state["position"].copy()
    position[:, 4] = 0.7 * np.sin(2 * np.pi * 2.2 * seconds)
    action = ep.action.copy()
    action[:, 4] = position[:, 4]  # the command moved so too: no tracking error
    smooth = clean_aligned(replace(ep, state={**ep.state, "position": position}, action=action))
    assert smooth.decisions == []
    position[90, 4] += 0.5
    spiked = clean_aligned(replace(ep, state={**ep.state, "position": position}, action=action))
    assert [(d.kind, d.start) for d in spiked.decisions] == [("spike", 90)]


# -- cameras ---------------------------------------------------------------------------------


def test_a_frozen_camera_is_cut_out(syn):
    def freeze(jpeg):
        jpeg[40:70] = [jpeg[39]] * 30  # one second of the same bytes

    _, ep, result = run(with_frames(syn, "head_left", freeze))
    assert kinds(result.decisions) == [("frozen_frames", "split")]
    assert result.report["cameras"]["head_left"]["frozen"] == 30
    first, second = result.segments
    used = np.concatenate([first.frames["head_left"], second.frames["head_left"]])
    assert not np.isin(used, np.arange(40, 70)).any()


def test_a_brief_repeat_of_frames_is_not_frozen(syn):
    def repeat(jpeg):
        jpeg[40:45] = [jpeg[39]] * 5  # 0.2 s

    _, ep, result = run(with_frames(syn, "head_left", repeat))
    assert result.decisions == []


def test_black_frames_are_filled_when_brief_and_cut_when_long(syn):
    cam = syn.raw.cameras["head_right"]
    black = black_jpeg(cam.width, cam.height)

    def darken(jpeg):
        jpeg[20:22] = [black] * 2
        jpeg[50:70] = [black] * 20

    _, ep, result = run(with_frames(syn, "head_right", darken))
    assert kinds(result.decisions) == [("black_frames", "fill"), ("black_frames", "split")]
    assert len(result.segments) == 2
    for segment in result.segments:
        assert not np.isin(segment.frames["head_right"], [20, 21, *range(50, 70)]).any()
    assert result.report["cameras"]["head_right"]["black"] == 22
    assert result.report["cameras"]["head_right"]["decoded"] < len(cam.jpeg) / 2


def test_a_dark_noisy_stretch_is_found_though_its_frames_are_not_small(syn):
    cam = syn.raw.cameras["head_left"]
    rng = np.random.default_rng(0)
    dark = [encode(np.clip(rng.normal(6, 4, (cam.height, cam.width, 3)), 0, 255).astype(np.uint8)) for _ in range(45)]
    assert min(map(len, dark)) > 0.5 * np.median([len(b) for b in cam.jpeg])  # not a size candidate

    def darken(jpeg):
        jpeg[35:80] = dark  # 1.5 s

    _, ep, result = run(with_frames(syn, "head_left", darken))
    assert kinds(result.decisions) == [("black_frames", "split")]
    assert result.report["cameras"]["head_left"]["black"] == 45


# -- idle, too short, discarded ----------------------------------------------------------------


def test_idle_head_and_tail_are_trimmed_to_a_margin():
    syn = make_episode(duration_s=5.0, idle_head_s=1.5, idle_tail_s=1.0, seed=4)
    _, ep, result = run(syn.raw)
    assert kinds(result.decisions) == [("idle_head", "trim"), ("idle_tail", "trim")]
    [segment] = result.segments
    margin = CleanConfig().idle_margin_s
    moves_from, moves_to = syn.motion.t0_ns + np.array([1.5, 4.0]) * NS
    step_ns = NS / ep.rate_hz
    assert abs(segment.t_ns[0] - (moves_from - margin * NS)) <= 3 * step_ns
    assert abs(segment.t_ns[-1] - (moves_to + margin * NS)) <= 3 * step_ns


def test_an_episode_where_nothing_moves_is_rejected():
    syn = make_episode(duration_s=3.0, idle_head_s=3.0)
    _, _, result = run(syn.raw)
    assert result.rejected and result.segments == []
    assert kinds(result.decisions) == [("idle", "drop"), ("too_short", "reject")]


def test_a_too_short_episode_is_rejected():
    syn = make_episode(duration_s=0.8, seed=5)
    _, _, result = run(syn.raw)
    assert result.rejected and result.segments == []
    assert kinds(result.decisions) == [("too_short", "drop"), ("too_short", "reject")]
    assert "no segment of at least 1.0 s" in result.reject_reasons[0]


def test_a_segment_left_too_short_by_a_split_is_dropped(syn):
    raw = lose_joint_samples(syn, 0.5, 0.3)
    _, _, result = run(raw)
    assert kinds(result.decisions) == [("gap", "split"), ("too_short", "drop")]
    [segment] = result.segments
    assert segment.report["clean"]["start_step"] == result.decisions[0].end


def test_a_discarded_episode_is_rejected_with_its_reason():
    syn = make_episode(duration_s=2.0, outcome="discarded", encode_frames=False)
    _, _, result = run(syn.raw)
    assert result.rejected and result.segments == []
    [d] = result.decisions
    assert (d.kind, d.action) == ("outcome", "reject")
    assert result.reject_reasons == ["the operator marked the episode 'discarded'"]


# -- config ----------------------------------------------------------------------------------


def test_clean_config_from_mapping_accepts_known_keys_and_names_unknown_ones():
    config = CleanConfig.from_mapping({"split_gap_ms": 500, "reject_outcomes": ["discarded", "failure"]})
    assert config.split_gap_ms == 500 and config.reject_outcomes == ("discarded", "failure")
    with pytest.raises(ConfigError, match=r"clean\.yaml: field 'clean\.split_gap': unknown field"):
        CleanConfig.from_mapping({"split_gap": 500}, "clean.yaml")
    with pytest.raises(ConfigError, match="clean.yaml: field 'frozen_max_s': expected a finite number"):
        CleanConfig.from_mapping({"frozen_max_s": "long"}, "clean.yaml")
    with pytest.raises(ConfigError, match="field 'split_gap_ms': must be >= interpolate_max_gap_ms"):
        CleanConfig.from_mapping({"split_gap_ms": 10}, "clean.yaml")


# -- cost ------------------------------------------------------------------------------------


def test_clean_aligned_costs_well_under_half_a_millisecond_per_vga_frame():
    """Target: >= 2000 frames/s per core through the whole job, i.e. well under 0.5 ms
    per frame here. Measured 0.015-0.06 ms on textured frames; asserted < 0.25 ms
    (best of 3) to stay robust on a loaded machine. The exposure and blur scan's
    decodes are budgeted by count (next test): their time is a JPEG decoder's,
    measured by tools/bench_clean.py."""
    cameras = (CameraDef("head_left", 640, 480), CameraDef("head_right", 640, 480))
    syn = make_episode(make_robot_config(29, cameras=cameras), duration_s=20.0, frame_pool=4, seed=6)
    ep = align(syn.raw, AlignConfig(rate_hz=50.0))
    frames = sum(len(c.jpeg) for c in syn.raw.cameras.values())
    without_scan = CleanConfig(image_scan_s=1e9)
    best = min(_timed(clean_aligned, ep, without_scan) for _ in range(3))
    assert best / frames < 0.25e-3, f"{best / frames * 1e3:.3f} ms per frame"


def test_the_exposure_and_blur_scan_decodes_one_frame_per_camera_every_quarter_second(syn):
    ep = align(syn.raw, AlignConfig(rate_hz=50.0))
    result = clean_aligned(ep)
    seconds = len(ep.t_ns) / ep.rate_hz
    for name in ep.frames:
        # One every 12 steps of 20 ms (0.25 s rounded to whole steps) over the 4 s timeline.
        assert seconds / 0.25 - 1 <= result.report["cameras"][name]["scanned"] <= seconds / 0.24 + 1


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def test_frame_image_is_not_black():
    # The brightness rule relies on synthetic frames being clearly lit.
    assert frame_image(64, 48, 0, 0).mean() > 60


def unknown_limits(config, joints: range):
    """The config with the position and velocity limits of ``joints`` unknown (as an import generates)."""
    changed = list(config.joints)
    for j in joints:
        changed[j] = replace(changed[j], position_min=-np.inf, position_max=np.inf, velocity_max=np.inf)
    return replace(config, joints=tuple(changed))


def test_unknown_limits_are_not_checked_and_the_skip_is_recorded(syn):
    ep = align(syn.raw, AlignConfig(rate_hz=50.0))
    position = ep.state["position"].copy()
    position[100:140, 1] = syn.raw.config.joints[1].position_max + 0.4  # far outside the (now unknown) limit
    config = unknown_limits(syn.raw.config, range(syn.raw.config.dof))
    faulty = replace(ep, raw=replace(ep.raw, config=config), state={**ep.state, "position": position})

    result = clean_aligned(faulty)

    limit_rules = [d for d in result.decisions if d.kind in ("position_limit", "velocity_limit", "limits_unknown")]
    assert sorted(kinds(limit_rules)) == [("limits_unknown", "skip"), ("limits_unknown", "skip")]
    assert "position_limit not checked" in limit_rules[0].reason
    # The joint leaving its command is still a finding of its own (a flag: the data stays as it is).
    assert {d.action for d in result.decisions if d not in limit_rules} <= {"flag"}
    assert len(result.segments) == 1 and result.segments[0].state["position"][120, 1] == position[120, 1]


def test_known_limits_of_other_joints_are_still_checked(syn):
    ep = align(syn.raw, AlignConfig(rate_hz=50.0))
    position = ep.state["position"].copy()
    position[100:140, 1] = syn.raw.config.joints[1].position_max + 0.4
    config = unknown_limits(syn.raw.config, range(2, syn.raw.config.dof))  # joint 1 keeps its limits
    faulty = replace(ep, raw=replace(ep.raw, config=config), state={**ep.state, "position": position})

    result = clean_aligned(faulty)

    assert ("position_limit", "split") in kinds(result.decisions)

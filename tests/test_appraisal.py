"""The dataset appraisal: mergeable sums per episode, one score with its breakdown on fixed scales."""

from __future__ import annotations

import json

import pytest

from pipeline.dataset import appraisal
from pipeline.dataset.index import EpisodeEntry, _count_included, dataset_card, empty_state

DAY_NS = 86_400 * 10**9
NOW_NS = 20_000 * DAY_NS


def episode(n: int, *, grade: str = "A", task: str = "pick", operator: str = "op-1", robot: str = "r-1",
            days_old: int = 0, pose: float = 0.0, costs: tuple[str, ...] = ()) -> EpisodeEntry:
    quality = {"grade": grade, "grade_costs": [{"rule": "decision", "name": c, "grade": grade, "detail": ""}
                                               for c in costs],
               "indicators": [{"name": "completeness", "score": 0.9, "weight": 2.0}]}
    stats = {"state/position": {"count": 100, "total": [100 * pose, -100 * pose], "total_sq": [0.0, 0.0],
                                "minimum": [pose - 0.2, -pose - 0.1], "maximum": [pose + 0.2, -pose + 0.1]}}
    return EpisodeEntry(key=f"e{n}", raw_episode_id=f"e{n}", robot_id=robot, model="m", task=task, operator=operator,
                        length=500, rate_hz=50.0, start_ns=NOW_NS - days_old * DAY_NS, grade=grade, accepted=True,
                        quality_json=json.dumps(quality), stats=stats)


def state_of(entries: list[EpisodeEntry]) -> dict:
    state = empty_state()
    for e in entries:
        _count_included(state, e, +1)
    return state


def test_taking_an_episode_out_undoes_adding_it() -> None:
    base = state_of([episode(0), episode(1, grade="C", costs=("blur",))])
    more = json.loads(json.dumps(base))
    extra = episode(2, grade="B", task="place", operator="op-2", robot="r-2", pose=0.7, costs=("tracking_error",))
    _count_included(more, extra, +1)
    assert more["appraisal"] != base["appraisal"]
    _count_included(more, extra, -1)
    assert appraisal.appraise(more, NOW_NS).to_dict() == appraisal.appraise(base, NOW_NS).to_dict()


def test_better_grades_score_higher_quality_on_the_same_scale() -> None:
    good = appraisal.appraise(state_of([episode(i) for i in range(4)]), NOW_NS)
    poor = appraisal.appraise(state_of([episode(i, grade="C") for i in range(4)]), NOW_NS)
    assert good.parts[0].score > poor.parts[0].score
    assert good.parts[0].parts[0].score == 1.0 and poor.parts[0].parts[0].score == 0.5


def test_more_tasks_operators_and_poses_score_higher_coverage() -> None:
    narrow = appraisal.appraise(state_of([episode(i) for i in range(6)]), NOW_NS)
    wide = appraisal.appraise(state_of([episode(i, task=f"t{i}", operator=f"op{i}", robot=f"r{i % 3}",
                                                pose=0.3 * i) for i in range(6)]), NOW_NS)
    by_name = {p.name: p for p in wide.parts[1].parts}
    assert wide.parts[1].score > narrow.parts[1].score
    assert by_name["tasks"].inputs["tasks"] == 6 and by_name["operators"].inputs["effective"] == pytest.approx(6.0)
    assert by_name["motion diversity"].score > {p.name: p for p in narrow.parts[1].parts}["motion diversity"].score


def test_freshness_halves_every_ninety_days() -> None:
    today = appraisal.appraise(state_of([episode(0)]), NOW_NS)
    old = appraisal.appraise(state_of([episode(0, days_old=90)]), NOW_NS)
    assert today.parts[2].score == pytest.approx(1.0) and old.parts[2].score == pytest.approx(0.5)
    assert old.parts[2].parts[0].inputs["median age"] == "90 days"


def test_the_card_carries_the_appraisal_and_what_cost_grades() -> None:
    card = dataset_card(state_of([episode(0, grade="C", costs=("blur",)), episode(1, grade="C", costs=("blur",))]))
    assert 0 < card["appraisal"]["score"] <= 100
    assert [p["name"] for p in card["appraisal"]["parts"]] == ["quality", "coverage", "freshness"]
    assert card["appraisal"]["grade_costs"] == [["blur -> C", 2]]


def test_a_state_from_before_the_appraisal_still_appraises() -> None:
    state = state_of([episode(0)])
    del state["appraisal"]
    result = appraisal.appraise(state, NOW_NS)
    assert 0 <= result.score <= 100 and result.parts[2].score == 0.0

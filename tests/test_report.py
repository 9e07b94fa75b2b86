"""`refinery report`: what cleaning kept and did, rejections as rejections, readable plots, bounded size."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from collectors.drivers.sim_faults import SimFaults
from pipeline.dataset.appraisal import appraise
from pipeline.dataset.index import DatasetIndex, EpisodeEntry
from pipeline.dataset.store import Dataset, DatasetLock, load_index
from pipeline.errors import DatasetError
from pipeline.process_job import JobOptions, run_process_job
from pipeline.raw_builder import simulate_episode
from pipeline.report import (
    _anchor,
    body_part_groups,
    decision_table,
    kept_text,
    kind_totals,
    percent_text,
    value_text,
    write_report,
)
from pipeline.robot_config import load_robot_config
from pipeline.standard_joints import STANDARD_JOINT_NAMES

from .conftest import TINY_ROBOT

RATE = 30.0
# A raw episode of 5 s of which cleaning kept 1.0 s, with decisions of three kinds.
CUT_DECISIONS = [
    {"stage": "clean", "kind": "nonfinite", "stream": "joint_state", "start": 5, "end": 8, "action": "drop",
     "reason": "3 sample(s) with NaN or inf in position"},
    {"stage": "clean", "kind": "gap", "stream": "joint_state", "start": 30, "end": 60, "action": "split",
     "reason": "no joint_state samples for 1000 ms: split there"},
    {"stage": "clean", "kind": "gap", "stream": "action", "start": 30, "end": 60, "action": "split",
     "reason": "no action samples for 1000 ms: split there"},
    {"stage": "clean", "kind": "idle_tail", "stream": "joint_state", "start": 90, "end": 150, "action": "trim",
     "reason": "still for 2.00 s after the last motion"},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    work = tmp_path_factory.mktemp("report")
    tiny = load_robot_config(TINY_ROBOT)
    simulate_episode(work / "raw", tiny, robot_id="tiny-a", seconds=3.0, seed=1, task="wave")
    simulate_episode(work / "raw", tiny, robot_id="tiny-s", seconds=5.0, seed=2, task="stall",
                     faults=SimFaults(stall=((2.0, 0.6),)))
    simulate_episode(work / "raw", tiny, robot_id="tiny-x", seconds=2.0, seed=3, outcome="discarded")
    ds = work / "ds.zarr"
    run_process_job(JobOptions(raw_dir=work / "raw", dataset=ds))
    # The case as an index row: 5 s recorded, 1.0 s kept.
    model = next(e for e in load_index(ds) if e.robot_id == "tiny-a")
    cut = dataclasses.replace(model, key="cut-1", raw_episode_id="cut-1", raw_checksum="cut", robot_id="tiny-c",
                              length=int(RATE), rate_hz=RATE, raw_duration_s=5.0, grade="C", overall=0.7,
                              decisions=len(CUT_DECISIONS), decisions_json=json.dumps(CUT_DECISIONS),
                              entry_id=-1, commit=-1, split="")
    with DatasetLock(ds):
        DatasetIndex(ds).commit([cut])
    return ds


@pytest.fixture(scope="module")
def page(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_report(dataset, tmp_path_factory.mktemp("page") / "report.html").read_text()


def visible_text(page: str) -> str:
    """What a reader sees: no tags, no inline images, entities decoded."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.DOTALL)
    page = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", page)
    page = re.sub(r"<polyline[^>]*>", " ", page)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def section(page: str, anchor: str) -> str:
    """The HTML of the detail section with id ``anchor``."""
    start = page.index(f"<details id='{anchor}'")
    end = page.find("<details id='", start + 1)
    return page[start : end if end >= 0 else len(page)]


def test_a_cut_episode_says_how_much_of_its_recording_was_kept(page: str) -> None:
    text = " ".join(visible_text(page).split())

    assert "kept 1.0 of 5.0 s (20%)" in text


def test_every_raw_episode_and_the_total_show_raw_and_kept_duration(dataset: Path, page: str) -> None:
    entries = load_index(dataset)
    text = " ".join(visible_text(page).split())
    raw: dict[str, float] = {}
    kept: Counter[str] = Counter()
    for e in entries:
        raw[e.raw_episode_id] = e.raw_duration_s
        kept[e.raw_episode_id] += e.length / e.rate_hz if e.accepted and e.key else 0.0

    for raw_id, seconds in raw.items():
        assert kept_text(kept[raw_id], seconds) in text, raw_id
    total = kept_text(sum(kept.values()), sum(raw.values()))
    assert f"cleaning {total}" in text


def test_decisions_are_summed_per_kind_with_every_decision_one_click_away(page: str) -> None:
    detail = section(page, "ep-cut-1")
    rows = {m[0]: m[1:] for m in re.findall(
        r"<tr><td>(\w+)</td><td class='muted'>[^<]*</td><td class='n'>(\d+)</td><td class='n'>([^<]+)</td>", detail)}

    # 30 Hz: the two gap decisions cover the same steps 30..60 (1.0 s, counted once).
    assert rows == {"gap": ("2", "1.0 s"), "idle_tail": ("1", "2.0 s"), "nonfinite": ("1", "3 raw samples")}
    listed = re.search(r"<details><summary>All 4 decisions</summary>(.*?)</details>", detail, re.DOTALL)
    assert listed is not None
    for decision in CUT_DECISIONS:
        assert html.escape(decision["reason"], quote=True) in listed[1]


def test_the_summary_sums_decisions_per_kind_over_the_dataset(dataset: Path, page: str) -> None:
    first_rows = [e for e in load_index(dataset) if e.segment == 0]  # every part carries its raw episode's list
    counts = Counter(d["kind"] for e in first_rows for d in e.decision_list)
    summary = page[page.index("Cleaning decisions per kind") : page.index("Grades and rejections")]

    for kind, n in counts.items():
        assert re.search(rf"<td>{kind}</td><td class='muted'>[^<]*</td><td class='n'>{n}</td>", summary), kind


def test_a_rejected_episode_shows_its_rejection_not_a_grade(dataset: Path, page: str) -> None:
    rejected = next(e for e in load_index(dataset) if not e.accepted)
    assert rejected.grade and rejected.overall > 0.9  # what the score stage said before the rejection

    row = next(r for r in re.findall(r"<tr>.*?</tr>", page) if rejected.raw_episode_id in r and "rej" in r)
    assert "discarded" in row and "0.0 s" in row
    assert "class='grade" not in row and f"{rejected.overall:.2f}" not in row
    detail = section(page, f"ep-{rejected.raw_episode_id}")
    summary = detail[: detail.index("</summary>")]
    assert "REJECTED" in summary and "kept 0.0 of 2.0 s (0%)" in summary and "class='grade" not in summary
    assert "not a grade" in detail  # the indicators measured before the rejection are labelled so


def test_the_joint_plot_has_axes_units_and_every_joint_by_body_part(dataset: Path, page: str) -> None:
    entry = next(e for e in load_index(dataset) if e.robot_id == "tiny-a")
    detail = section(page, f"ep-{entry.key}")
    standard = entry.attrs["standard_names"]

    titles = re.findall(r"<div class='panel'><b>([^<]+)</b> <span class='muted'>\(rad\)</span>", detail)
    assert titles == ["Waist", "Left arm", "Right arm"]
    legend = re.findall(r"&#9632;</span>&nbsp;([\w]+)", detail)
    assert len(legend) == len(standard) == 6
    assert sorted(legend) == sorted(n.removeprefix("left_").removeprefix("right_") for n in standard)
    assert detail.count("time (s)") == 3 and detail.count(">rad</text>") == 3
    assert detail.count("<polyline") == 6


def test_values_read_in_human_units_and_the_card_is_not_json(page: str) -> None:
    text = visible_text(page)

    exponent = re.search(r".{0,40}\b\d+(\.\d+)?[eE][-+]\d+\b.{0,20}", text)
    assert exponent is None, exponent
    assert "{\"" not in text and not re.search(r"\d fraction", text)
    assert re.search(r"Grades\s+A\s+\d", text)  # the card's grades as a row, not {"A": 2}


def test_episodes_picks_the_detailed_ones_and_an_unknown_key_is_refused(dataset: Path, tmp_path: Path) -> None:
    out = write_report(dataset, tmp_path / "r.html", episodes=["cut-1"])
    page = out.read_text()

    assert re.findall(r"<details id='(ep-[^']+)'", page) == ["ep-cut-1"]
    with pytest.raises(DatasetError, match="no episode 'nope'"):
        write_report(dataset, tmp_path / "r2.html", episodes=["nope"])


def test_the_report_stays_bounded_as_the_index_grows(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds.zarr"
    shutil.copytree(dataset, copy)
    real = [e for e in load_index(copy)]
    sizes = {}
    added = 0
    for target in (200, 3000):
        # Index rows as a fleet makes them, pointing at the real episodes' rows, scores spread out.
        rows = []
        for n in range(added, target):
            model = real[n % len(real)]
            rows.append(dataclasses.replace(model, key=f"bulk-{n:05d}" if model.key else "",
                                            raw_episode_id=f"bulk-{n:05d}", raw_checksum=str(n),
                                            overall=0.5 + (n % 97) / 200, entry_id=-1, commit=-1, split=""))
        with DatasetLock(copy):
            DatasetIndex(copy).commit(rows)
        added = target
        started = time.monotonic()
        out = write_report(copy, tmp_path / f"report-{target}.html")
        seconds = time.monotonic() - started
        sizes[target] = out.stat().st_size
        page = out.read_text()
        assert len(re.findall(r"<details id='", page)) == 40  # the 20 worst accepted + 20 rejected, at any size
        summary = page[: page.index("<h2>Episodes in detail")]
        assert summary.count("<tr>") < 200  # tables of the worst 20, most cut 20, rejected 20, indicators
        assert seconds < 30, f"report took {seconds:.1f} s on {target} extra index rows"

    assert sizes[3000] < sizes[200] * 1.1, sizes
    assert sizes[3000] < 1_200_000, sizes  # README: about 0.9 MB for this robot


def test_kept_share_and_values_are_rounded_for_people() -> None:
    assert kept_text(1.0, 5.0) == "kept 1.0 of 5.0 s (20%)"
    assert kept_text(0.0, 2.0) == "kept 0.0 of 2.0 s (0%)"
    assert kept_text(600.0, 1200.0) == "kept 10.0 min of 20.0 min (50%)"
    assert value_text(3.876e-11, "fraction") == "<0.01%"
    assert value_text(0.0231, "fraction") == "2.3%"
    assert value_text(4.7e-07, "ms") == "<0.1 ms"
    assert value_text(62.4, "ms") == "62 ms"
    assert percent_text(0.004) == "0.40%"


def test_overlapping_decisions_count_their_time_once_per_kind() -> None:
    decisions = [
        {"kind": "spike", "stream": "joint_state", "start": 10, "end": 11, "action": "interpolate"},
        {"kind": "spike", "stream": "joint_state", "start": 10, "end": 11, "action": "interpolate"},
        {"kind": "position_limit", "stream": "joint_state", "start": 0, "end": 50, "action": "trim"},
        {"kind": "position_limit", "stream": "joint_state", "start": 25, "end": 75, "action": "split"},
        {"kind": "duplicate_timestamp", "stream": "joint_state", "start": 3, "end": 4, "action": "drop"},
        {"kind": "duplicate_timestamp", "stream": "action", "start": 3, "end": 4, "action": "drop"},
    ]

    totals = kind_totals(decision_table(decisions, 50.0))

    assert totals["spike"].decisions == 2 and totals["spike"].seconds == pytest.approx(0.02)
    assert totals["position_limit"].seconds == pytest.approx(1.5)
    assert totals["position_limit"].actions == Counter({"trim": 1, "split": 1})
    assert totals["duplicate_timestamp"].samples == 2  # one per raw stream


def test_standard_names_group_every_joint_by_body_part() -> None:
    names = list(STANDARD_JOINT_NAMES) + ["tail"]

    groups = body_part_groups(names, names, len(names))

    assert [title for title, _ in groups] == ["Left leg", "Right leg", "Waist", "Head", "Left arm", "Right arm",
                                              "Hands", "Other joints"]
    assert sorted(j for _, cols in groups for j in cols) == list(range(len(names)))
    assert all(len(cols) <= 8 for _, cols in groups)


def test_an_entry_row_without_decisions_or_quality_still_reports(tmp_path: Path, dataset: Path) -> None:
    copy = tmp_path / "ds.zarr"
    shutil.copytree(dataset, copy)
    bare = EpisodeEntry(raw_episode_id="unreadable-1", reasons=["unreadable: truncated file"], grade="F")
    with DatasetLock(copy):
        DatasetIndex(copy).commit([bare])

    text = visible_text(write_report(copy, tmp_path / "r.html").read_text())

    assert "unreadable: truncated file" in text and "no recorded raw duration" in text


def test_the_appraisal_shows_each_part_with_its_inputs(dataset: Path, page: str) -> None:
    mine = appraise(Dataset(dataset).state())
    text = " ".join(visible_text(page).split())

    assert f"Appraisal: {mine.score:.1f} / 100" in text
    for part in mine.parts:
        for sub in part.parts:
            assert f"{sub.name} {100 * sub.score:.1f} x {sub.weight:.2f}" in text
    assert "hours " in text and "full at 1000 h" in text and "half-life 90 days" in text


def test_each_detailed_episode_says_what_cost_it_its_grade(dataset: Path, page: str) -> None:
    shown = [e for e in load_index(dataset) if e.accepted and e.key and f"<details id='{_anchor(e.key)}'" in page]
    assert shown
    for entry in shown:
        part = " ".join(visible_text(section(page, _anchor(entry.key))).split())
        assert "What cost it its grade" in part
        costs = entry.quality.get("grade_costs", [])
        if entry.grade == "A":
            assert "Nothing: no rule takes it below A" in part
        for cost in costs:
            assert f"{cost['grade']} {cost['rule']} {cost['name']}" in part


def test_report_compare_prints_two_appraisals_part_by_part(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.zarr"
    shutil.copytree(dataset, other)
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(dataset), "--out", str(tmp_path / "r.html"),
                          "--compare", str(other)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    mine = appraise(Dataset(dataset).state())
    value = next(line for line in run.stdout.splitlines() if line.startswith("value"))
    assert value.split()[1:] == [f"{mine.score:.1f}", f"{mine.score:.1f}"]
    assert any(line.split()[:1] == ["coverage"] for line in run.stdout.splitlines())
    assert "Compared with other.zarr" in (tmp_path / "r.html").read_text()
    missing = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(dataset), "--out",
                              str(tmp_path / "r2.html"), "--compare", str(tmp_path / "nothing.zarr")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and len(missing.stderr.splitlines()) == 1

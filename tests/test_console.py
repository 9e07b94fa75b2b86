"""The fleet console without a browser: the view it builds from ingest and
collector snapshots (link state, alerts, rates), what it refuses from the
network, and who may see it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, ProtocolError
from pipeline.observability.console.fleet import (
    LINK_DOWN_AFTER_S,
    SPOOL_GROWING_S,
    FleetState,
    Source,
    build_view,
    latest_grades,
)
from pipeline.observability.console.server import (
    ConsoleConfig,
    FleetStatusError,
    parse_snapshot,
    start_console,
)
from pipeline.observability.http_server import serve_ingest_metrics
from pipeline.observability.metrics import collector_snapshot as collector_snapshot_of
from tests.processes import free_port
from tests.synthetic_fleet import CollectorOf, fleet_snapshot

TOKEN = "s3cret-token-0123456789"


def collector_snapshot(robot_id: str = "g1-01", spool: int = 1000, **changes: object) -> dict:
    snap = {"kind": "collector", "robot_id": robot_id, "model": "unitree_g1", "link": "up", "link_up": True,
            "episode": "", "episode_s": 0.0, "ack_lag_s": 0.02, "spool_bytes": spool, "spool_budget_bytes": 10**9,
            "unacked": 3, "paused": False, "error": ""}
    snap.update(changes)
    return snap


def view_of(*sources: Source, state: FleetState | None = None, now: float | None = None) -> dict:
    return build_view(list(sources), state or FleetState(), now or time.time())


def robot(view: dict, robot_id: str) -> dict:
    return next(r for r in view["robots"] if r["robot_id"] == robot_id)


def test_a_robot_silent_with_an_open_episode_is_link_down_and_critical() -> None:
    view = view_of(Source("http://i", "ingest", fleet_snapshot(64)))
    silent = robot(view, "h1-07")  # the fixture's robots 7 and 41 are silent mid-episode
    assert silent["link"] == "down" and silent["alerts"][0]["level"] == "critical"
    assert "episode(s) open" in silent["alerts"][0]["text"]
    assert robot(view, "h1-01")["link"] == "up" and not robot(view, "h1-01")["alerts"]
    assert view["totals"]["up"] == 62


def test_link_goes_down_after_the_stated_silence() -> None:
    snap = fleet_snapshot(3)
    snap["robots"][0]["silent_s"] = LINK_DOWN_AFTER_S - 0.5
    snap["robots"][1]["silent_s"] = LINK_DOWN_AFTER_S + 0.5
    view = view_of(Source("http://i", "ingest", snap))
    assert {r["robot_id"]: r["link"] for r in view["robots"]} == {"g1-00": "up", "h1-01": "down", "gr1-02": "up"}


def test_a_nearly_full_data_disk_is_a_fleet_alert() -> None:
    view = view_of(Source("http://i", "ingest", fleet_snapshot(2, data_free_fraction=0.07)))
    assert any(a["level"] == "critical" and "data disk 7% free" in a["text"] for a in view["alerts"])


def test_an_unreachable_ingest_is_a_fleet_alert() -> None:
    view = view_of(Source("http://i", "ingest", None, error="ClientConnectorError: connection refused"))
    assert view["alerts"][0]["level"] == "critical" and "unreachable" in view["alerts"][0]["text"]


def test_rates_come_from_counter_differences_between_polls() -> None:
    state = FleetState()
    first = fleet_snapshot(1)
    second = json.loads(json.dumps(first))
    second["robots"][0]["frames"] = {k: v + 60 for k, v in first["robots"][0]["frames"].items()}
    view_of(Source("http://i", "ingest", first), state=state, now=100.0)
    view = view_of(Source("http://i", "ingest", second), state=state, now=102.0)
    assert view["robots"][0]["frames_per_s"] == pytest.approx(60.0)  # 2 cameras x 60 frames in 2 s


def test_a_spool_growing_for_a_minute_is_a_warning_and_a_paused_one_critical() -> None:
    state = FleetState()
    ingest = Source("http://i", "ingest", fleet_snapshot(2))
    for step in range(int(SPOOL_GROWING_S) + 1):
        view = view_of(ingest, Source("http://c", "collector", collector_snapshot("g1-00", spool=1000 * step)),
                       state=state, now=1000.0 + step)
    assert any("spool growing" in a["text"] for a in robot(view, "g1-00")["alerts"])
    view = view_of(ingest, Source("http://c", "collector", collector_snapshot("g1-00", paused=True)), state=state)
    assert robot(view, "g1-00")["alerts"][0] == {"level": "critical", "text": "recording paused: spool full"}


def test_a_collector_that_stopped_answering_keeps_its_robot_tile() -> None:
    source = Source("http://c", "collector", collector_snapshot("g1-00"))
    state = FleetState()
    view_of(source, state=state)
    source.snapshot, source.error = None, "ClientConnectorError: connection refused"
    view = view_of(source, state=state)
    assert [r["robot_id"] for r in view["robots"]] == ["g1-00"]
    assert "unreachable" in view["robots"][0]["alerts"][0]["text"]


def test_latest_grades_are_each_robots_newest_oldest_first() -> None:
    rows = [("a", 3, "B"), ("a", 1, "A"), ("b", 5, "F"), ("a", 2, "C"), ("b", 1, "")]
    assert latest_grades(rows, keep=2) == {"a": ["C", "B"], "b": ["F"]}


def test_the_synthetic_fleet_has_the_fields_of_a_real_ingest(ingest, make_collector) -> None:
    c = make_collector(ingest.endpoint)
    c.start()
    c.start_episode(task="t", operator="o")
    deadline = time.monotonic() + 10
    while not ingest.server.counters.robots and time.monotonic() < deadline:
        time.sleep(0.05)
    metrics = serve_ingest_metrics(ingest.server, "127.0.0.1:0")
    try:
        real = json.loads(urllib.request.urlopen(f"{metrics.url}/fleet.json", timeout=10).read())
    finally:
        metrics.stop()
    synthetic = fleet_snapshot(1)
    assert set(synthetic) == set(real) and set(synthetic["status"]) == set(real["status"])
    assert set(synthetic["robots"][0]) == set(real["robots"][0])
    assert set(CollectorOf(0)()) == set(collector_snapshot_of(c))
    assert parse_snapshot(json.dumps(real).encode(), "ingest")["robots"][0]["robot_id"] == "tiny-0"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda s: s.update(kind="collector"), "not the /fleet.json of a refinery ingest"),
    (lambda s: s["robots"][0].update(robot_id="../../etc"), "robot_id"),
    (lambda s: s["robots"][0].pop("task"), "field 'task' is missing"),
    (lambda s: s["robots"][0].update(frames={"cam": "many"}), "map names to numbers"),
    (lambda s: s["status"].update(sealed=True), "field 'sealed'"),
    (lambda s: s.update(robots=s["robots"] * 5000), "more than 4096 robots"),
])
def test_a_hostile_fleet_json_is_refused_naming_the_field(change, problem: str) -> None:
    snap = fleet_snapshot(1)
    change(snap)
    with pytest.raises((FleetStatusError, ProtocolError), match=re.escape(problem)):
        parse_snapshot(json.dumps(snap).encode(), "ingest")


def test_long_text_from_a_source_is_cut() -> None:
    snap = fleet_snapshot(1)
    snap["robots"][0]["task"] = "x" * 10_000
    assert len(parse_snapshot(json.dumps(snap).encode(), "ingest")["robots"][0]["task"]) == 300


def test_off_loopback_the_console_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="token"):
        ConsoleConfig(ingests=("http://127.0.0.1:9108",), bind="0.0.0.0:8090")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_with_a_token_nothing_is_served_without_it() -> None:
    port = free_port()
    console = start_console(ConsoleConfig(ingests=("http://127.0.0.1:1",), bind=f"0.0.0.0:{port}", token=TOKEN))
    base = f"http://127.0.0.1:{port}"
    try:
        for path in ("/", "/static/console.js", "/api/fleet"):
            assert get(base + path)[0] == 401
        assert get(base + "/api/fleet", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        status, _, headers = get(base + "/?token=" + TOKEN)
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(base + "/api/fleet", {"Cookie": cookie})[0] == 200
        assert get(base + "/static/console.css", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        console.stop()


def test_the_console_is_read_only_and_serves_its_own_assets() -> None:
    console = start_console(ConsoleConfig(ingests=("http://127.0.0.1:1",), bind="127.0.0.1:0"))
    try:
        status, page, headers = get(console.url)
        assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
        assert b"http" not in page.replace(b"http://www.w3.org", b"")  # no asset from elsewhere
        request = urllib.request.Request(console.url + "api/fleet", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 405
        view = json.loads(get(console.url + "api/fleet")[1])
        assert view["ingests"][0]["reachable"] is False
    finally:
        console.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=60)


def test_console_without_sources_exits_2_with_one_line() -> None:
    result = run_cli("console")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--ingest" in result.stderr


def test_a_bad_metrics_address_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("ingest", "--plain", "--data-dir", str(tmp_path), "--metrics", "localhost:http")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "--metrics" in result.stderr


def test_a_fleet_json_that_is_not_json_is_refused() -> None:
    with pytest.raises(FleetStatusError, match="not JSON"):
        parse_snapshot(b"<html>", "ingest")

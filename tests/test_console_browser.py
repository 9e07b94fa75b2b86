"""The fleet console in a real headless Chromium (the system's package, driven by
Playwright), against a real ingest and real collector processes on loopback.

Screenshots go to test-artifacts/ (gitignored) for a look after a run."""

from __future__ import annotations

import math
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from prometheus_client import CollectorRegistry

from pipeline.observability.console.server import ConsoleConfig, start_console
from pipeline.observability.http_server import MetricsServer
from tests.conftest import TINY_ROBOT
from tests.processes import IngestProcess, RefineryProcess, distinct_free_ports, free_port
from tests.synthetic_fleet import CollectorOf, GrowingFleet

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LINK_DOWN_WITHIN_S = 10.0  # README: 3 s of silence + the next console poll (1 s here) + page refresh (2 s) + a busy CI

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)"),
]


@pytest.fixture
def browser_page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1366, "height": 768},
        )
        try:
            page = context.new_page()
            external: list[str] = []
            page.on("request", lambda r: external.append(r.url) if not r.url.startswith("http://127.0.0.1") else None)
            yield page
            assert not external, f"the console fetched assets from elsewhere: {external}"
        finally:
            context.close()


def shot(page, name: str) -> Path:  # noqa: ANN001
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def collector(tmp_path: Path, ingest: IngestProcess, robot_id: str) -> tuple[RefineryProcess, str]:
    port = free_port()
    proc = RefineryProcess(
        ["collect", "--plain", "--robot", str(TINY_ROBOT), "--robot-id", robot_id, "--ingest", ingest.endpoint,
         "--spool", str(tmp_path / "spool" / robot_id), "--episodes", "1", "--duration", "120",
         "--task", f"stack blocks {robot_id}", "--operator", "op-7", "--metrics", f"127.0.0.1:{port}",
         "--drain-timeout", "5"],
        tmp_path / f"{robot_id}.log",
    )
    proc.start()
    proc.wait_for_log("metrics on")
    return proc, f"http://127.0.0.1:{port}"


def test_console_shows_live_robots_and_a_killed_collector_turns_link_down(tmp_path: Path, browser_page) -> None:
    page = browser_page
    metrics_port, ingest_port = distinct_free_ports(2)
    ingest = IngestProcess(tmp_path / "ingest", ingest_port, "--metrics", f"127.0.0.1:{metrics_port}")
    ingest.start()
    robots = [collector(tmp_path, ingest, f"bt-{n}") for n in range(3)]
    console = start_console(ConsoleConfig(ingests=(f"http://127.0.0.1:{metrics_port}",),
                                          collectors=tuple(url for _, url in robots), bind="127.0.0.1:0",
                                          poll_interval_s=1.0))
    try:
        page.goto(console.url)
        # Each robot's tile: link up, recording (its timer), its task and operator from the episode's start event.
        for robot_id in ("bt-0", "bt-1", "bt-2"):
            tile = page.locator(f'[data-robot="{robot_id}"][data-link="up"]')
            expect(tile.locator(".rec")).to_have_count(1, timeout=30_000)
            expect(tile).to_contain_text(f"stack blocks {robot_id}", timeout=30_000)
            expect(tile.locator(".op")).to_have_text("op-7")
            expect(tile).to_contain_text(re.compile(r"· [1-9][0-9]* fps"), timeout=10_000)  # frames arrive
        shot(page, "console-live.png")

        robots[0][0].kill(signal.SIGKILL)
        killed = time.monotonic()
        expect(page.locator('[data-robot="bt-0"][data-link="down"]')).to_have_count(1, timeout=LINK_DOWN_WITHIN_S * 1000)
        took = time.monotonic() - killed
        down = page.locator('[data-robot="bt-0"]')
        assert "critical" in (down.get_attribute("class") or "")  # its episode is still open at the ingest
        alerts = page.locator("#alerts .alert.critical").all_inner_texts()
        assert any(a.startswith("bt-0:") and "episode(s) open" in a for a in alerts), alerts
        assert page.locator('[data-robot="bt-1"]').get_attribute("data-link") == "up"
        shot(page, "console-link-down.png")
        print(f"link down shown {took:.1f} s after SIGKILL")
    finally:
        console.stop()
        for proc, _ in robots:
            proc.stop()
        ingest.stop()


def test_console_is_readable_with_64_robots_on_a_laptop_screen(browser_page) -> None:
    page = browser_page
    fleet = MetricsServer("127.0.0.1:0", CollectorRegistry(), GrowingFleet(64)).start()
    robots = [MetricsServer("127.0.0.1:0", CollectorRegistry(), CollectorOf(n)).start() for n in range(64)]
    console = start_console(ConsoleConfig(ingests=(fleet.url,), collectors=tuple(r.url for r in robots),
                                          bind="127.0.0.1:0", poll_interval_s=0.5))
    grades = "ABACBAABCDABBAFA"
    # What the console would have gathered over the last hour, and the grades a dataset would give.
    now = time.time()
    console.console.state.chart.extend(
        {"t": now - 3600 + 10 * i, "mb_per_s": 120 + 25 * math.sin(i / 30) + (i % 7), "msg_per_s": 9000.0,
         "data_free_pct": 33 - i / 180} for i in range(359))
    console.console.state.grades = {f"{m}-{n:02d}": list(grades[n % 11:n % 11 + 5])
                                    for n in range(64) for m in ("g1", "h1", "gr1")}
    try:
        page.goto(console.url)
        expect(page.locator("[data-robot]")).to_have_count(64, timeout=15_000)
        expect(page.locator("#now-throughput")).not_to_have_text("0.0 MB/s", timeout=10_000)
        path = shot(page, "console-64-robots.png")
        # Every tile fits on one 1366x768 screen, without scrolling.
        bottom = page.locator("[data-robot]").evaluate_all("ts => Math.max(...ts.map(t => t.getBoundingClientRect().bottom))")
        assert bottom <= 768, f"the last tile ends at {bottom}px"
        assert page.locator("[data-robot][data-link=down]").count() == 3  # two silent, one cut off (collector)
        assert page.locator("#alerts .alert.critical").count() == 3
        expect(page.locator('[data-robot="g1-30"]')).to_have_class(re.compile(r"\bwarning\b"))  # slow acks
        expect(page.locator('[data-robot="g1-30"]')).to_contain_text("acknowledgement lag 2.8 s")
        assert page.locator('[data-robot="g1-00"] .grade').count() == 5
        print(f"screenshot: {path}")
    finally:
        console.stop()
        for server in (fleet, *robots):
            server.stop()

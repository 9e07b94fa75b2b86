"""Prometheus metrics of a real ingest and real collectors on loopback, checked
against what the collectors sent and what the sealed raw files hold."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from pipeline import protocol
from pipeline.errors import ConfigError
from pipeline.observability.http_server import (
    parse_host_port,
    serve_collector_metrics,
    serve_ingest_metrics,
)
from pipeline.raw_store import RawEpisodeReader, raw_path
from pipeline.streams import JOINT_STATE
from tests.conftest import record_episode


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url`` keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_stream(samples: dict, name: str, robot_id: str) -> dict[str, float]:
    return {dict(labels)["stream"]: v for (n, labels), v in samples.items()
            if n == name and dict(labels).get("robot_id") == robot_id}


@pytest.fixture
def fleet(ingest, make_collector):
    """A real ingest and two collectors, each with its --metrics endpoint on a free loopback port."""
    servers = [serve_ingest_metrics(ingest.server, "127.0.0.1:0")]
    collectors = [make_collector(ingest.endpoint, robot_id=f"tiny-{n}", seed=n) for n in range(2)]
    servers += [serve_collector_metrics(c, "127.0.0.1:0") for c in collectors]
    for c in collectors:
        c.start()
    yield ingest, collectors, [s.url for s in servers]
    for s in servers:
        s.stop()


def test_ingest_counts_match_what_collectors_sent_and_the_raw_files_hold(fleet) -> None:
    ingest, collectors, urls = fleet
    episodes = [record_episode(c, 0.6) for c in collectors]
    for c in collectors:
        assert c.drain(30)
    samples = scrape(urls[0])
    for c, episode in zip(collectors, episodes):
        robot = c.config.robot_id
        spooled, spooled_bytes = c.totals()
        accepted = by_stream(samples, "refinery_ingest_accepted_messages_total", robot)
        assert accepted == {stream: float(n) for stream, n in spooled.items()}  # every message, once
        assert sum(by_stream(samples, "refinery_ingest_accepted_bytes_total", robot).values()) == spooled_bytes
        with RawEpisodeReader(raw_path(ingest.data_dir, robot, episode)) as raw:
            frames = {camera: float(raw.frame_count(camera)) for camera in raw.camera_names}
            rows = len(raw.numeric(JOINT_STATE)["capture_ns"])
        assert by_stream(samples, "refinery_ingest_frames_total", robot) == frames
        assert by_stream(samples, "refinery_ingest_samples_total", robot)[JOINT_STATE] == rows
        labels = {"robot_id": robot, "model": "tiny_humanoid"}
        assert value(samples, "refinery_ingest_sealed_episodes_total", **labels) == 1
        assert value(samples, "refinery_ingest_open_episodes", **labels) == 0
        assert value(samples, "refinery_ingest_robot_connected", **labels) == 1
        assert value(samples, "refinery_ingest_received_bytes_total", **labels) >= spooled_bytes
        assert value(samples, "refinery_ingest_duplicate_messages_total", **labels) == 0
    assert value(samples, "refinery_ingest_connected_collectors") == 2
    assert value(samples, "refinery_ingest_seal_duration_seconds_count") == 2
    durable = value(samples, "refinery_ingest_capture_to_durable_seconds_count")
    assert durable >= 2
    assert value(samples, "refinery_ingest_capture_to_durable_seconds_bucket", le="5.0") == durable  # loopback: fast
    assert value(samples, "refinery_ingest_data_disk_free_bytes") > 0


def test_fleet_json_counts_todays_episodes_and_their_hours(fleet) -> None:
    _, collectors, urls = fleet
    record_episode(collectors[0], 0.6, task="fold the towel")
    assert collectors[0].drain(30)
    fleet_json = json.loads(urllib.request.urlopen(f"{urls[0]}/fleet.json", timeout=10).read())
    row = next(r for r in fleet_json["robots"] if r["robot_id"] == "tiny-0")
    assert row["today_episodes"] == 1
    assert 0.4 < row["today_seconds"] < 1.5  # start to stop event, capture clock
    assert (row["episode"], row["task"], row["operator"]) == ("", "fold the towel", "op-1")  # stopped: no episode


def test_collector_metrics_show_its_spool_and_link(fleet) -> None:
    _, collectors, urls = fleet
    c = collectors[0]
    record_episode(c, 0.4)
    assert c.drain(30)
    samples = scrape(urls[1])
    labels = {"robot_id": "tiny-0", "model": "tiny_humanoid"}
    spooled, spooled_bytes = c.totals()
    assert value(samples, "refinery_collector_link_up", **labels) == 1
    assert by_stream(samples, "refinery_collector_spooled_messages_total", "tiny-0") == {
        s: float(n) for s, n in spooled.items()}
    assert value(samples, "refinery_collector_spooled_bytes_total", **labels) == spooled_bytes
    assert value(samples, "refinery_collector_unacked_messages", **labels) == 0
    assert value(samples, "refinery_collector_recorded_episodes_total", **labels) == 1
    assert value(samples, "refinery_collector_unsealed_episodes", **labels) == 0


def test_collector_metrics_show_unacked_messages_while_the_ingest_is_gone(ingest, make_collector) -> None:
    c = make_collector(ingest.endpoint, resend_timeout_s=0.5)
    metrics = serve_collector_metrics(c, "127.0.0.1:0")
    try:
        c.start()
        c.start_episode(task="t", operator="op")
        time.sleep(0.3)
        ingest.stop()
        time.sleep(1.5)
        samples = scrape(metrics.url)
        labels = {"robot_id": "tiny-0", "model": "tiny_humanoid"}
        assert value(samples, "refinery_collector_link_up", **labels) == 0
        assert value(samples, "refinery_collector_unacked_messages", **labels) > 0
        assert value(samples, "refinery_collector_spool_bytes", **labels) > 0
    finally:
        metrics.stop()


def test_duplicates_gaps_and_malformed_messages_are_counted_per_robot(ingest, tiny_robot) -> None:
    metrics = serve_ingest_metrics(ingest.server, "127.0.0.1:0")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(ingest.endpoint)
        sock.send_multipart(protocol.Hello("tiny-x", tiny_robot.model, tiny_robot.digest, tiny_robot.to_dict()).encode())
        assert sock.poll(5000)
        assert isinstance(protocol.decode(sock.recv_multipart()), protocol.Welcome)

        def event(seq: int) -> list[bytes]:
            header = protocol.DataHeader("tiny-x", "tiny-x-ep1", "events", seq, time.time_ns())
            return protocol.Event(header, {"kind": "start", "task": "t", "operator": "o"}).encode()

        sock.send_multipart(event(0))
        sock.send_multipart(event(0))  # a duplicate
        sock.send_multipart(event(5))  # a gap (1-4 missing)
        sock.send_multipart([b"RF\x01garbage"])  # malformed
        deadline = time.monotonic() + 5
        labels = {"robot_id": "tiny-x", "model": "tiny_humanoid"}
        while time.monotonic() < deadline:
            samples = scrape(metrics.url)
            if value(samples, "refinery_ingest_malformed_messages_total", **labels) >= 1:
                break
            time.sleep(0.05)
        assert value(samples, "refinery_ingest_duplicate_messages_total", **labels) == 1
        assert value(samples, "refinery_ingest_gap_messages_total", **labels) == 1
        assert value(samples, "refinery_ingest_malformed_messages_total", **labels) == 1
        assert value(samples, "refinery_ingest_open_episodes", **labels) == 1
        fleet = json.loads(urllib.request.urlopen(f"{metrics.url}/fleet.json", timeout=10).read())
        row = next(r for r in fleet["robots"] if r["robot_id"] == "tiny-x")
        assert (row["episode"], row["task"], row["operator"]) == ("tiny-x-ep1", "t", "o")
    finally:
        ctx.destroy()
        metrics.stop()


def test_the_metrics_endpoint_is_read_only(ingest) -> None:
    metrics = serve_ingest_metrics(ingest.server, "127.0.0.1:0")
    try:
        request = urllib.request.Request(f"{metrics.url}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 405
    finally:
        metrics.stop()


@pytest.mark.parametrize(("text", "expected"), [
    ("9108", ("127.0.0.1", 9108)), (":9108", ("127.0.0.1", 9108)), ("0.0.0.0:9108", ("0.0.0.0", 9108)),
    ("[::1]:9108", ("::1", 9108)),
])
def test_metrics_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, "--metrics") == expected


@pytest.mark.parametrize("text", ["host:port", "127.0.0.1:99999", ""])
def test_a_bad_metrics_address_names_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics"):
        parse_host_port(text, "--metrics")

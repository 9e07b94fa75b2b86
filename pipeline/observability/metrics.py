"""Prometheus metrics of the ingest and the collector, made at scrape time.

Each process keeps the counters it always kept (``IngestServer.status()``,
:mod:`pipeline.observability.ingest_counters`, ``Collector.status()``); a
custom collector turns a snapshot of them into metric families when Prometheus
scrapes, so metrics cost the hot paths nothing. Names follow the Prometheus
conventions: ``refinery_<process>_<what>_<unit>``, ``_total`` for counters,
labels ``robot_id``, ``model`` and ``stream`` only (bounded: the ingest caps
the robots it tracks; episode ids are never labels).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as PrometheusCollector

if TYPE_CHECKING:
    from collectors.agent import Collector
    from pipeline.ingest import IngestServer

REFUSAL_REASONS = {  # IngestStats field -> reason label of refinery_ingest_refused_messages_total
    "refused": "handshake_or_version",
    "refused_fields": "event_field",
    "rate_limited": "rate_limit",
    "limited": "episode_limit",
    "unknown_session": "no_session",
}


def _disk(path: Path) -> tuple[int, int]:
    """(free bytes for this user, total bytes) of the file system holding ``path`` or its nearest parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def ingest_snapshot(server: IngestServer) -> dict[str, Any]:
    """What the ingest knows of itself and every robot, as plain data (also served as ``/fleet.json``)."""
    status = server.status()
    open_by_robot = {robot: len(episodes) for robot, episodes in dict(server.open_by_robot).items()}
    now_mono = time.monotonic()
    silent = {s.robot_id: now_mono - s.last_heard for s in list(server.sessions.values())}
    robots = server.counters.snapshot()
    now = time.time()
    for row in robots:
        row["connected"] = row["robot_id"] in silent
        row["open_episodes"] = open_by_robot.get(row["robot_id"], 0)
        # None once the ingest freed the session (silent past --session-timeout, or never connected this run).
        row["silent_s"] = round(silent[row["robot_id"]], 3) if row["robot_id"] in silent else None
    journal_free, journal_total = _disk(server.data_dir / "journal")
    raw_free, raw_total = _disk(server.data_dir / "raw")
    return {
        "kind": "ingest",
        "time": now,
        "endpoint": server.endpoint,
        "status": {k: v for k, v in status.items() if isinstance(v, (int, float, str))},
        "disk": {"journal_free_bytes": journal_free, "journal_size_bytes": journal_total,
                 "data_free_bytes": raw_free, "data_size_bytes": raw_total},
        "robots": robots,
    }


class IngestMetrics(PrometheusCollector):
    """The ingest's metric families, from :func:`ingest_snapshot` at each scrape."""

    def __init__(self, server: IngestServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        snap = ingest_snapshot(self.server)
        s, disk, robots = snap["status"], snap["disk"], snap["robots"]
        robot_labels = ["robot_id", "model"]

        def per_robot(name: str, doc: str, key: str, kind: type = CounterMetricFamily) -> Any:
            family = kind(name, doc, labels=robot_labels)
            for r in robots:
                family.add_metric([r["robot_id"], r["model"]], r[key])
            return family

        def per_stream(name: str, doc: str, key: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["robot_id", "model", "stream"])
            for r in robots:
                for stream, value in sorted(r[key].items()):
                    family.add_metric([r["robot_id"], r["model"], stream], value)
            return family

        yield per_robot("refinery_ingest_received_messages", "Messages received from a robot's collector, every kind",
                        "messages")
        yield per_robot("refinery_ingest_received_bytes", "Bytes received from a robot's collector", "bytes")
        yield per_stream("refinery_ingest_accepted_messages", "Data messages journaled, per stream", "accepted")
        yield per_stream("refinery_ingest_accepted_bytes", "Bytes of data messages journaled, per stream",
                         "accepted_bytes")
        yield per_stream("refinery_ingest_samples", "Samples (rows of joint and action batches) journaled", "samples")
        yield per_stream("refinery_ingest_frames", "Camera frames journaled", "frames")
        yield per_robot("refinery_ingest_duplicate_messages", "Messages dropped as already received (resends)",
                        "duplicates")
        yield per_robot("refinery_ingest_gap_messages",
                        "Messages dropped because an earlier one of their stream is missing (resent later)", "gaps")
        yield per_robot("refinery_ingest_malformed_messages", "Malformed messages from a robot's session, dropped",
                        "malformed")
        yield per_robot("refinery_ingest_sealed_episodes", "Episodes sealed into raw HDF5 files", "sealed")
        yield per_robot("refinery_ingest_sealed_incomplete_episodes",
                        "Episodes sealed as incomplete (collector silent past --abandon-after)", "sealed_incomplete")
        yield per_robot("refinery_ingest_open_episodes", "Episodes open (journaling, not sealed yet)", "open_episodes",
                        GaugeMetricFamily)
        connected = GaugeMetricFamily("refinery_ingest_robot_connected",
                                      "1 while the robot's collector has a session", labels=robot_labels)
        silence = GaugeMetricFamily("refinery_ingest_robot_silence_seconds",
                                    "Seconds since the last message from the robot's collector (collectors send a "
                                    "clock-sync request every 0.5 s); absent once its session is freed",
                                    labels=robot_labels)
        for r in robots:
            connected.add_metric([r["robot_id"], r["model"]], 1.0 if r["connected"] else 0.0)
            if r["silent_s"] is not None:
                silence.add_metric([r["robot_id"], r["model"]], r["silent_s"])
        yield connected
        yield silence
        yield GaugeMetricFamily("refinery_ingest_connected_collectors", "Collectors with a live session",
                                value=s["collectors"])
        yield GaugeMetricFamily("refinery_ingest_sealing_episodes", "Episodes being sealed now", value=s["sealing"])
        yield CounterMetricFamily("refinery_ingest_unattributed_malformed_messages",
                                  "Malformed messages from peers without a session (no robot to name)",
                                  value=max(0, s["malformed"] - sum(r["malformed"] for r in robots)))
        refused = CounterMetricFamily("refinery_ingest_refused_messages",
                                      "Messages and handshakes refused or not accepted, by reason", labels=["reason"])
        for key, reason in REFUSAL_REASONS.items():
            refused.add_metric([reason], s[key])
        yield refused
        yield CounterMetricFamily("refinery_ingest_refused_keys",
                                  "Messages refused because their CURVE key may not use the robot id or session",
                                  value=s["identity_refused"])
        yield CounterMetricFamily("refinery_ingest_quarantined_episodes",
                                  "Journals that could not be sealed, moved to quarantine/", value=s["quarantined"])
        yield CounterMetricFamily("refinery_ingest_commits", "Group commits (fsync, then acknowledgements)",
                                  value=s["commits"])
        yield CounterMetricFamily("refinery_ingest_disk_errors", "Journal writes, fsyncs or seals that failed",
                                  value=s["disk_errors"])
        yield GaugeMetricFamily("refinery_ingest_disk_error", "1 while the ingest cannot write (it stops acknowledging)",
                                value=1.0 if s["disk_error"] else 0.0)
        for name, doc in (("journal", "journal/ (open episodes)"), ("data", "raw/ (sealed episodes)")):
            yield GaugeMetricFamily(f"refinery_ingest_{name}_disk_free_bytes", f"Free bytes on the disk of {doc}",
                                    value=disk[f"{name}_free_bytes"])
            yield GaugeMetricFamily(f"refinery_ingest_{name}_disk_size_bytes", f"Size of the disk of {doc}",
                                    value=disk[f"{name}_size_bytes"])


def collector_snapshot(collector: Collector) -> dict[str, Any]:
    """What one collector knows of itself, as plain data (also served as ``/fleet.json``)."""
    status = collector.status()
    spooled, spooled_bytes = collector.totals()
    config = collector.config
    return {
        "kind": "collector",
        "time": time.time(),
        "robot_id": config.robot_id,
        "model": config.robot.model,
        "ingest": config.ingest,
        "link": status.link,
        "link_up": status.link == "up",
        "episode": "" if status.episode == "-" else status.episode,
        "episode_s": round(status.episode_s, 3),
        "rates": status.rates,
        "mb_per_s": status.mb_per_s,
        "unacked": status.unacked,
        "spool_bytes": collector.spool.bytes_used,
        "spool_budget_bytes": config.spool_budget_bytes,
        "ack_lag_s": status.ack_lag_ms / 1000,
        "resent": status.resent,
        "paused": status.paused,
        "episodes_done": status.episodes_done,
        "handshakes": collector.handshakes,
        # The spool's own short lock, never the collector's (the capture thread may hold that for long).
        "unsealed_episodes": len(collector.spool.unsealed()),
        "spooled": spooled,
        "spooled_bytes": spooled_bytes,
        "error": status.error[:300],
    }


class CollectorMetrics(PrometheusCollector):
    """One collector's metric families, from :func:`collector_snapshot` at each scrape."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Any]:
        snap = collector_snapshot(self.collector)
        labels = [snap["robot_id"], snap["model"]]
        names = ["robot_id", "model"]

        def one(kind: type, name: str, doc: str, value: float) -> Any:
            family = kind(name, doc, labels=names)
            family.add_metric(labels, value)
            return family

        yield one(GaugeMetricFamily, "refinery_collector_link_up", "1 while the link to the ingest is up (handshake done)",
                  1.0 if snap["link_up"] else 0.0)
        spooled = CounterMetricFamily("refinery_collector_spooled_messages",
                                      "Messages recorded into the spool (each is sent until acknowledged)",
                                      labels=[*names, "stream"])
        for stream, value in sorted(snap["spooled"].items()):
            spooled.add_metric([*labels, stream], value)
        yield spooled
        yield one(CounterMetricFamily, "refinery_collector_spooled_bytes", "Bytes recorded into the spool",
                  snap["spooled_bytes"])
        yield one(GaugeMetricFamily, "refinery_collector_unacked_messages",
                  "Messages in the spool the ingest has not acknowledged yet", snap["unacked"])
        yield one(GaugeMetricFamily, "refinery_collector_spool_bytes", "Bytes the spool holds on disk",
                  snap["spool_bytes"])
        yield one(GaugeMetricFamily, "refinery_collector_spool_budget_bytes", "The spool's disk budget (--spool-budget-mb)",
                  snap["spool_budget_bytes"])
        yield one(GaugeMetricFamily, "refinery_collector_ack_lag_seconds",
                  "From sending a message to its acknowledgement, latest", snap["ack_lag_s"])
        yield one(CounterMetricFamily, "refinery_collector_resent_messages",
                  "Messages sent again (reconnects, missing acknowledgements)", snap["resent"])
        yield one(CounterMetricFamily, "refinery_collector_handshakes", "Handshakes with the ingest (1 + reconnections)",
                  snap["handshakes"])
        yield one(CounterMetricFamily, "refinery_collector_recorded_episodes", "Episodes recorded and stopped",
                  snap["episodes_done"])
        yield one(GaugeMetricFamily, "refinery_collector_unsealed_episodes",
                  "Episodes recorded whose seal the ingest has not confirmed yet", snap["unsealed_episodes"])
        yield one(GaugeMetricFamily, "refinery_collector_recording_paused", "1 while recording is paused (spool full)",
                  1.0 if snap["paused"] else 0.0)
        yield one(GaugeMetricFamily, "refinery_collector_episode_duration_seconds",
                  "How long the current episode has run (0 when none is)", snap["episode_s"])

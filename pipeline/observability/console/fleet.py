"""The fleet view: ingest and collector snapshots merged into one row per robot,
with rates, alerts and an hour of history. Pure data in, pure data out; the
polling and the web server live in :mod:`.server`."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

LINK_DOWN_AFTER_S = 3.0
"""A collector sends a clock-sync request every 0.5 s: 3 s of silence is a dead link, not jitter."""
DISK_LOW_FRACTION = 0.10
SPOOL_GROWING_S = 60.0  # the console flags a spool that grew over this long (Prometheus alert: 5 minutes)
SPOOL_FULL_FRACTION = 0.5
ACK_LAG_WARN_S = 2.0
HISTORY_S = 3600.0
CHART_STEP_S = 5.0  # one chart point per 5 s: 720 points an hour


@dataclass
class Source:
    """One polled ``/fleet.json``: an ingest or a collector."""

    url: str
    kind: str  # "ingest" or "collector"
    snapshot: dict[str, Any] | None = None
    error: str = ""
    polled_at: float = 0.0
    robot_id: str = ""  # a collector's, once it answered: its tile stays its own while it is unreachable


@dataclass
class _Previous:
    at: float
    totals: dict[str, float]


@dataclass
class FleetState:
    """What the console remembers between polls: the last counters (for rates) and an hour of history."""

    previous: dict[str, _Previous] = field(default_factory=dict)  # robot id / "ingest <url>" -> last totals
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    spool_history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    chart: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=int(HISTORY_S / CHART_STEP_S)))
    grades: dict[str, list[str]] = field(default_factory=dict)  # robot id -> latest grades, newest last
    grades_error: str = ""


def _rate(state: FleetState, key: str, now: float, totals: dict[str, float]) -> dict[str, float]:
    """Per-second rates of ``totals`` since the previous poll (zero at the first; a restart resets)."""
    prev = state.previous.get(key)
    state.previous[key] = _Previous(now, totals)
    if prev is None or now <= prev.at:
        return state.rates.get(key, {name: 0.0 for name in totals})
    dt = now - prev.at
    rates = {name: max(0.0, (value - prev.totals.get(name, 0.0)) / dt) for name, value in totals.items()}
    state.rates[key] = rates
    return rates


def _alert(level: str, text: str) -> dict[str, str]:
    return {"level": level, "text": text}


def build_view(sources: list[Source], state: FleetState, now: float) -> dict[str, Any]:
    """The page's data: ingests (with disk and throughput), robots (one row each), alerts."""
    ingests, robots, fleet_alerts = [], {}, []
    total_mb_s, total_msg_s = 0.0, 0.0
    data_free_fraction = math.inf
    for source in (s for s in sources if s.kind == "ingest"):
        snap = source.snapshot
        if snap is None or source.error:
            fleet_alerts.append(_alert("critical", f"ingest {source.url} unreachable: {source.error or 'not polled yet'}"))
            ingests.append({"url": source.url, "reachable": False, "error": source.error})
            continue
        status, disk = snap["status"], snap["disk"]
        rates = _rate(state, f"ingest {source.url}", now, {"bytes": status["bytes"], "messages": status["messages"]})
        total_mb_s += rates["bytes"] / 1e6
        total_msg_s += rates["messages"]
        fractions = {name: disk[f"{name}_free_bytes"] / max(1, disk[f"{name}_size_bytes"]) for name in ("journal", "data")}
        data_free_fraction = min(data_free_fraction, *fractions.values())
        for name, fraction in fractions.items():
            if fraction < DISK_LOW_FRACTION:
                fleet_alerts.append(_alert("critical", f"ingest {source.url}: {name} disk {fraction:.0%} free"))
        if status.get("disk_error"):
            fleet_alerts.append(_alert("critical", f"ingest {source.url}: {status['disk_error']}"))
        ingests.append({
            "url": source.url, "reachable": True, "endpoint": snap.get("endpoint", ""),
            "collectors": status["collectors"], "open_episodes": status["open_episodes"], "sealed": status["sealed"],
            "mb_per_s": rates["bytes"] / 1e6, "msg_per_s": rates["messages"],
            "data_free_bytes": disk["data_free_bytes"], "data_free_fraction": fractions["data"],
            "journal_free_fraction": fractions["journal"],
            "malformed": status["malformed"], "refused": status["refused"], "quarantined": status["quarantined"],
        })
        for r in snap["robots"]:
            robots[r["robot_id"]] = _robot_from_ingest(state, r, now)
    for source in (s for s in sources if s.kind == "collector"):
        _merge_collector(state, robots, source, now)
    for robot_id, row in robots.items():
        row["grades"] = state.grades.get(robot_id, [])
    if state.grades_error:
        fleet_alerts.append(_alert("warning", state.grades_error))
    if any(i["reachable"] for i in ingests):
        last = state.chart[-1]["t"] if state.chart else -math.inf
        if now - last >= CHART_STEP_S:
            state.chart.append({"t": now, "mb_per_s": round(total_mb_s, 3), "msg_per_s": round(total_msg_s, 1),
                                "data_free_pct": round(100 * data_free_fraction, 2)})
    rows = [robots[k] for k in sorted(robots)]
    alerts = fleet_alerts + [dict(a, robot_id=r["robot_id"]) for r in rows for a in r["alerts"]]
    return {
        "time": now,
        "ingests": ingests,
        "robots": rows,
        "alerts": alerts,
        "totals": {"robots": len(rows), "up": sum(r["link"] == "up" for r in rows),
                   "recording": sum(bool(r["episode"]) for r in rows), "mb_per_s": total_mb_s,
                   "msg_per_s": total_msg_s},
        "chart": list(state.chart),
        "link_down_after_s": LINK_DOWN_AFTER_S,
    }


def _robot_from_ingest(state: FleetState, r: dict[str, Any], now: float) -> dict[str, Any]:
    silent = r["silent_s"]
    up = r["connected"] and silent is not None and silent < LINK_DOWN_AFTER_S
    accepted = r["accepted"]
    rates = _rate(state, r["robot_id"], now, {
        "messages": float(sum(accepted.values())), "bytes": float(sum(r["accepted_bytes"].values())),
        "frames": float(sum(r["frames"].values())), "samples": float(sum(r["samples"].values())),
        "problems": float(r["malformed"] + r["gaps"]),
    })
    row = {
        "robot_id": r["robot_id"], "model": r["model"], "link": "up" if up else "down",
        "silent_s": silent, "episode": r["episode"],
        "episode_s": max(0.0, now - r["episode_started"]) if r["episode"] and r["episode_started"] else None,
        "task": r["task"], "operator": r["operator"], "open_episodes": r["open_episodes"],
        "msg_per_s": rates["messages"], "mb_per_s": rates["bytes"] / 1e6, "frames_per_s": rates["frames"],
        "samples_per_s": rates["samples"], "today_episodes": r["today_episodes"],
        "today_hours": r["today_seconds"] / 3600, "duplicates": r["duplicates"], "gaps": r["gaps"],
        "malformed": r["malformed"], "ack_lag_s": None, "spool_bytes": None, "unacked": None,
        "collector": "", "alerts": [],
    }
    if not up:
        how_long = f"silent {silent:.0f} s" if silent is not None else "no session"
        if r["open_episodes"]:
            row["alerts"].append(_alert("critical", f"link down ({how_long}) with {r['open_episodes']} episode(s) open"))
        else:
            row["alerts"].append(_alert("warning", f"link down ({how_long})"))
    if rates["problems"] > 0:
        row["alerts"].append(_alert("warning", f"{rates['problems']:.1f} malformed or out-of-order messages/s"))
    return row


def _merge_collector(state: FleetState, robots: dict[str, dict[str, Any]], source: Source, now: float) -> None:
    snap = source.snapshot
    if snap is None or source.error:
        # Which robot an unreachable endpoint belongs to is known only once it answered.
        robot_id = source.robot_id or source.url
        row = robots.setdefault(robot_id, _blank_row(robot_id))
        row["collector"] = source.url
        row["alerts"].append(_alert("warning", f"collector status unreachable: {source.error or 'not polled yet'}"))
        return
    robot_id = source.robot_id = snap["robot_id"]
    row = robots.setdefault(robot_id, _blank_row(robot_id))
    row["collector"] = source.url
    row["model"] = row["model"] or snap["model"]
    row["ack_lag_s"] = snap["ack_lag_s"]
    row["spool_bytes"] = snap["spool_bytes"]
    row["unacked"] = snap["unacked"]
    if row["link"] == "unknown" and snap["episode"]:  # a robot no ingest has heard of: the collector's word
        row["episode"], row["episode_s"] = snap["episode"], snap["episode_s"]
    if snap["link_up"]:
        if row["link"] == "unknown":
            row["link"] = "up"
    else:
        if row["link"] in ("up", "unknown"):
            level = "critical" if snap["episode"] else "warning"
            row["alerts"].append(_alert(level, f"collector says: {snap['link']}"))
        row["link"] = "down"
    history = state.spool_history.setdefault(robot_id, deque())
    history.append((now, float(snap["spool_bytes"])))
    while history and history[0][0] < now - SPOOL_GROWING_S:
        history.popleft()
    if snap["paused"]:
        row["alerts"].append(_alert("critical", "recording paused: spool full"))
    elif snap["spool_bytes"] > SPOOL_FULL_FRACTION * snap["spool_budget_bytes"]:
        row["alerts"].append(_alert("critical", f"spool {snap['spool_bytes'] / snap['spool_budget_bytes']:.0%} of budget"))
    elif (len(history) > 2 and now - history[0][0] >= 0.8 * SPOOL_GROWING_S
          and all(b[1] >= a[1] for a, b in zip(history, list(history)[1:])) and history[-1][1] > history[0][1]):
        row["alerts"].append(_alert("warning", f"spool growing for {now - history[0][0]:.0f} s"))
    if snap["ack_lag_s"] > ACK_LAG_WARN_S:
        row["alerts"].append(_alert("warning", f"acknowledgement lag {snap['ack_lag_s']:.1f} s"))
    if snap["error"]:
        row["alerts"].append(_alert("warning", snap["error"][:160]))


def _blank_row(robot_id: str) -> dict[str, Any]:
    return {
        "robot_id": robot_id, "model": "", "link": "unknown", "silent_s": None, "episode": "", "episode_s": None,
        "task": "", "operator": "", "open_episodes": 0, "msg_per_s": 0.0, "mb_per_s": 0.0, "frames_per_s": 0.0,
        "samples_per_s": 0.0, "today_episodes": 0, "today_hours": 0.0, "duplicates": 0, "gaps": 0, "malformed": 0,
        "ack_lag_s": None, "spool_bytes": None, "unacked": None, "collector": "", "alerts": [],
    }


def latest_grades(rows: list[tuple[str, int, str]], keep: int = 5) -> dict[str, list[str]]:
    """(robot id, start time, grade) rows of a dataset index -> each robot's ``keep`` latest grades, oldest first."""
    by_robot: dict[str, list[tuple[int, str]]] = {}
    for robot_id, start_ns, grade in rows:
        if grade:
            by_robot.setdefault(robot_id, []).append((start_ns, grade))
    return {robot: [g for _, g in sorted(items)[-keep:]] for robot, items in by_robot.items()}

"""A large fleet's ``/fleet.json`` for the console's layout at scale (64 robots
need not run as 64 collector processes on a 2-core test machine). The rows have
the very fields a real ingest's snapshot has: tests check that against one."""

from __future__ import annotations

import random
import time
from typing import Any

TASKS = ["fold the towel", "pick the red cup into the bin", "open the drawer", "hand over the screwdriver",
         "stack three blocks", "wipe the table", "sort cables by colour", "load the dishwasher"]
OPERATORS = ["ana", "bo", "chen", "dara", "eli", "femi", "gus", "hana", "ivo", "jun"]
MODELS = ["unitree_g1", "unitree_h1", "fourier_gr1"]


def fleet_snapshot(robots: int = 64, seed: int = 0, started: float | None = None,
                   data_free_fraction: float = 0.31) -> dict[str, Any]:
    """An ingest snapshot of ``robots`` robots: most recording, a few idle, two silent mid-episode."""
    rng = random.Random(seed)
    now = time.time()
    started = started or now - 3 * 3600
    anchor = started + 3 * 3600  # episodes started a while before this moment, whenever it is asked
    rows = []
    for n in range(robots):
        model = MODELS[n % len(MODELS)]
        robot_id = f"{model.split('_')[-1]}-{n:02d}"
        elapsed = now - started
        silent = n in (7, 41)
        recording = n % 9 != 4
        streams = {"joint_state": 500 / 25, "action": 50 / 25, "head_left": 30, "head_right": 30, "clock": 2}
        accepted = {s: int(rate * elapsed) for s, rate in streams.items()}
        rows.append({
            "robot_id": robot_id, "model": model, "messages": sum(accepted.values()) + int(2 * elapsed),
            "bytes": int(2.1e6 * elapsed), "accepted": accepted,
            "accepted_bytes": {s: int(v * (42_000 if s.startswith("head") else 1_600)) for s, v in accepted.items()},
            "samples": {"joint_state": int(500 * elapsed), "action": int(50 * elapsed)},
            "frames": {"head_left": int(30 * elapsed), "head_right": int(30 * elapsed)},
            "duplicates": rng.randint(0, 40), "gaps": 0, "malformed": 0, "sealed": 10 + n % 30,
            "sealed_incomplete": 0,
            "episode": f"{robot_id}-20261130T{10 + n % 8:02d}1502-{n:06x}" if recording else "",
            "episode_started": anchor - rng.uniform(5, 600) if recording else 0.0,
            "task": TASKS[n % len(TASKS)] if recording else "", "operator": OPERATORS[n % len(OPERATORS)],
            "today_episodes": 10 + n % 30, "today_seconds": (10 + n % 30) * rng.uniform(60, 240),
            "connected": not silent, "open_episodes": 1 if recording else 0,
            "silent_s": 45.0 if silent else round(rng.random() * 0.4, 3),
        })
    size = 4_000_000_000_000
    return {
        "kind": "ingest", "time": now, "endpoint": "tcp://0.0.0.0:5555",
        "status": {"collectors": sum(r["connected"] for r in rows), "open_episodes": sum(r["open_episodes"] for r in rows),
                   "sealing": 0, "disk_error": "", "messages": sum(r["messages"] for r in rows),
                   "bytes": sum(r["bytes"] for r in rows), "accepted": 0, "duplicates": 0, "gaps": 0, "malformed": 0,
                   "refused": 0, "unknown_session": 0, "identity_refused": 0, "refused_fields": 0, "rate_limited": 0,
                   "limited": 0, "quarantined": 0, "sessions_freed": 0, "sealed": sum(r["sealed"] for r in rows),
                   "sealed_incomplete": 0, "commits": 0, "disk_errors": 0, "last_error": ""},
        "disk": {"journal_free_bytes": int(size * data_free_fraction), "journal_size_bytes": size,
                 "data_free_bytes": int(size * data_free_fraction), "data_size_bytes": size},
        "robots": rows,
    }


class GrowingFleet:
    """Each call returns the fleet a poll later: counters grow, so the console shows rates."""

    def __init__(self, robots: int = 64, **options: Any) -> None:
        self.robots = robots
        self.options = options
        self.started = time.time() - 3 * 3600

    def __call__(self) -> dict[str, Any]:
        return fleet_snapshot(self.robots, started=self.started, **self.options)


class CollectorOf:
    """One robot's collector ``/fleet.json`` beside :func:`fleet_snapshot` (robot ``n``): a little spool and
    lag; robot 12 cannot reach the ingest and spools, robot 30 is acknowledged slowly."""

    def __init__(self, n: int) -> None:
        model = MODELS[n % len(MODELS)]
        self.n, self.model, self.robot_id = n, model, f"{model.split('_')[-1]}-{n:02d}"
        self.started = time.time()

    def __call__(self) -> dict[str, Any]:
        n, age = self.n, time.time() - self.started
        cut_off = n == 12
        return {
            "kind": "collector", "time": time.time(), "robot_id": self.robot_id, "model": self.model,
            "ingest": "tcp://ingest:5555", "link": "down: ingest unreachable, spooling" if cut_off else "up",
            "link_up": not cut_off, "episode": "" if n % 9 == 4 else f"{self.robot_id}-ep", "episode_s": 60.0 + age,
            "rates": {"joint_state": 20.0, "head_left": 30.0, "head_right": 30.0}, "mb_per_s": 2.6,
            "unacked": 4000 + int(900 * age) if cut_off else 3 + n % 7,
            "spool_bytes": int(3e8 + 2.6e6 * age) if cut_off else 400_000 + 37_000 * n,
            "spool_budget_bytes": 2_000_000_000, "ack_lag_s": 2.8 if n == 30 else 0.018 + n % 5 * 0.004,
            "resent": 0, "paused": False, "episodes_done": 12, "handshakes": 1, "unsealed_episodes": 1,
            "spooled": {"joint_state": 1000, "head_left": 1800}, "spooled_bytes": 10**8, "error": "",
        }

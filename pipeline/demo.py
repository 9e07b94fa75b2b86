"""`refinery demo`: the whole pipeline on one machine.

An ingest and simulated humanoid collectors on loopback (threads of this
process, a free port, no authentication) record a few episodes; an embedded
Ray refines them into a Zarr dataset; a quality report is written. Every file
stays in the data directory for a look. The live fleet console watches it all
(its address is printed first) until the demo ends.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from collectors.agent import Collector, CollectorConfig
from collectors.drivers import make_driver
from pipeline.console import ProgressBar, StatusLine, format_table
from pipeline.dataset.store import load_index
from pipeline.errors import BindError, RefineryError
from pipeline.ingest import IngestConfig, IngestServer
from pipeline.observability.console.server import ConsoleConfig, RunningConsole, start_console
from pipeline.observability.http_server import MetricsServer, serve_collector_metrics, serve_ingest_metrics
from pipeline.process_job import JobOptions, run_process_job
from pipeline.raw_store import raw_path
from pipeline.raw_summary import SUMMARY_HEADERS, summarize
from pipeline.report import write_report
from pipeline.robot_config import load_robot_config

log = logging.getLogger("refinery.demo")


@dataclass(frozen=True)
class DemoConfig:
    data_dir: Path
    models: list[str]
    episodes: int = 2
    duration_s: float = 3.0
    seed: int = 0
    process: bool = True  # then refine into a Zarr dataset and write the quality report
    console: str = "127.0.0.1:8090"  # the live fleet console (another free port when taken); "" for none


def run_demo(config: DemoConfig) -> int:
    """Record ``episodes`` episodes from one simulated robot per model; print a table."""
    data_dir = config.data_dir.resolve()
    ingest_dir = data_dir / "ingest"
    server = IngestServer(IngestConfig(data_dir=ingest_dir, bind="tcp://127.0.0.1:*", allow_plain=True))
    server_thread = threading.Thread(target=server.run, name="ingest", daemon=True)
    server_thread.start()
    if not server.ready.wait(10):
        raise RefineryError("the demo ingest did not start within 10 s")
    print(f"ingest on {server.endpoint}, data in {ingest_dir}", file=sys.stderr)

    collectors = []
    for n, model in enumerate(config.models):
        robot = load_robot_config(model.strip())
        robot_id = f"{robot.model}-sim{n}"
        driver = make_driver("sim", robot, seed=config.seed + n)
        collectors.append(
            Collector(
                CollectorConfig(
                    robot_id=robot_id,
                    robot=robot,
                    ingest=server.endpoint,
                    spool_dir=data_dir / "spool" / robot_id,
                    allow_plain=True,
                ),
                driver,
            )
        )
    watchers: list[MetricsServer | RunningConsole] = []
    try:
        watchers = _watch(config, server, collectors, data_dir / "dataset.zarr")
        for c in collectors:
            c.start()
        return _record_and_process(config, server, collectors, ingest_dir, data_dir)
    finally:
        for watcher in watchers:
            watcher.stop()
        for c in collectors:
            c.close()
        server.stop()
        server_thread.join(30)


def _watch(config: DemoConfig, server: IngestServer, collectors: list[Collector],
           dataset: Path) -> list[MetricsServer | RunningConsole]:
    """Metrics endpoints of the ingest and every collector, and the console reading them."""
    if not config.console:
        return []
    metrics = [serve_ingest_metrics(server, "127.0.0.1:0")]
    metrics += [serve_collector_metrics(c, "127.0.0.1:0") for c in collectors]
    console_config = ConsoleConfig(ingests=(metrics[0].url,), collectors=tuple(m.url for m in metrics[1:]),
                                   datasets=(dataset,), bind=config.console, grades_interval_s=5.0)
    try:
        console = start_console(console_config)
    except BindError:
        host = config.console.rpartition(":")[0] or "127.0.0.1"
        console = start_console(replace(console_config, bind=f"{host}:0"))
    print(f"live fleet console: {console.url} (open it in a browser; up while the demo runs)", file=sys.stderr,
          flush=True)
    return [console, *metrics]


def _record_and_process(config: DemoConfig, server: IngestServer, collectors: list[Collector], ingest_dir: Path,
                        data_dir: Path) -> int:
    status = StatusLine(log_every_s=2.0)
    recorded: list[tuple[str, str]] = []
    try:
        for episode in range(config.episodes):
            for c in collectors:
                recorded.append(
                    (c.config.robot_id, c.start_episode(task=f"demo task {episode + 1}: wave both arms",
                                                        operator="demo-operator"))
                )
            deadline = time.monotonic() + config.duration_s
            while time.monotonic() < deadline:
                _show(status, server, collectors, episode + 1, config.episodes)
                time.sleep(0.25)
            # Together: a stop waits until its robot's capture has caught up with the
            # moment asked, so one robot after another would stretch the later episodes.
            stoppers = [threading.Thread(target=c.stop_episode, args=("success",)) for c in collectors]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(c.drain(0.05) for c in collectors):
            _show(status, server, collectors, config.episodes, config.episodes)
            time.sleep(0.2)
    finally:
        status.done()

    files = [raw_path(ingest_dir, robot_id, episode) for robot_id, episode in recorded]
    missing = [p for p in files if not p.exists()]
    summaries = [summarize(p) for p in files if p.exists()]
    print()
    print(f"1. Recorded {len(summaries)} raw episodes in {ingest_dir / 'raw'}:")
    print(format_table(SUMMARY_HEADERS, [s.row() for s in summaries]))
    if missing:
        print(f"{len(missing)} episodes were not sealed: {', '.join(p.stem for p in missing)}", file=sys.stderr)
        return 1
    if not config.process:
        return 0

    dataset = data_dir / "dataset.zarr"
    print(f"\n2. Processing them with Ray into {dataset} ...", flush=True)
    summary = run_process_job(JobOptions(raw_dir=ingest_dir / "raw", dataset=dataset), progress=ProgressBar("processing"))
    for line in summary.lines():
        print("   " + line)
    print("\n3. The dataset:")
    rows = [
        [e.key or e.raw_episode_id, e.model, e.task, round(e.length / e.rate_hz, 2), e.length, e.grade,
         round(e.overall, 3), "yes" if e.accepted else "no", "; ".join(e.reasons) or "-"]
        for e in load_index(dataset)
    ]
    print(format_table(["episode", "model", "task", "seconds", "steps", "grade", "score", "accepted", "reasons"], rows))
    report = write_report(dataset, data_dir / "quality-report.html")
    print(f"\n4. Quality report: {report}")
    size = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
    print(f"\nThe demo wrote {size / 1e6:,.0f} MB to {data_dir}; remove it with: rm -r {_shell_path(data_dir)}")
    return 1 if summary.failed else 0


def _shell_path(path: Path) -> str:
    import shlex

    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))


def _show(status: StatusLine, server: IngestServer, collectors: list[Collector], episode: int, total: int) -> None:
    s = server.status()
    unacked = sum(c.spool.unacked() for c in collectors)
    status.update(
        f"demo episode {episode}/{total} | {len(collectors)} robots | ingest accepted {s['accepted']} messages, "
        f"{s['bytes'] / 1e6:.1f} MB, sealed {s['sealed']} | unacknowledged {unacked}"
    )

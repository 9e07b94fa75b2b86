"""Several ingest processes: a fleet spread by robot id, one process killed, the supervisor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.agent import home_index
from pipeline.errors import ConfigError
from pipeline.ingest_supervisor import plan_processes
from pipeline.process_job import find_raw_inputs
from pipeline.raw_store import RawEpisodeReader
from tests.conftest import record_episode
from tests.processes import RUNNING, IngestProcess, RefineryProcess, distinct_free_ports, free_port
from tests.test_faults import assert_exactly_once, small_disk, wait_for  # noqa: F401 (small_disk: a fixture)


def free_ports(n: int) -> int:
    """A base port with the n-1 ports after it free too."""
    for _ in range(50):
        base = free_port()
        if base + n - 1 <= 65535 and all(_free(base + i) for i in range(1, n)):
            return base
    raise AssertionError("no run of free ports")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def robot_ids_homed(count: int, ingests: int) -> dict[int, list[str]]:
    """``count`` robot ids for each ingest index, by the collectors' own hash."""
    homed: dict[int, list[str]] = {i: [] for i in range(ingests)}
    n = 0
    while any(len(v) < count for v in homed.values()):
        rid = f"tiny-{n}"
        n += 1
        if len(homed[home_index(rid, ingests)]) < count:
            homed[home_index(rid, ingests)].append(rid)
    return homed


def test_processes_get_consecutive_ports_and_their_own_data_folders(tmp_path) -> None:
    specs = plan_processes("tcp://*:5555", tmp_path, 3)
    assert [s.bind for s in specs] == ["tcp://*:5555", "tcp://*:5556", "tcp://*:5557"]
    assert [s.data_dir for s in specs] == [tmp_path / "ingest-0", tmp_path / "ingest-1", tmp_path / "ingest-2"]
    for bad in ("tcp://*:0", "ipc:///tmp/ingest", "tcp://*:65535"):
        with pytest.raises(ConfigError, match="--bind"):
            plan_processes(bad, tmp_path, 2)


def test_a_fleet_spreads_over_ingest_processes_by_robot_id(tmp_path, make_collector, tiny_robot) -> None:
    port = free_ports(2)
    data = tmp_path / "data"
    supervisor = RefineryProcess(["ingest", "--plain", "--data-dir", str(data), "--bind", f"tcp://127.0.0.1:{port}",
                                  "--processes", "2"], tmp_path / "supervisor.log")
    supervisor.start()
    supervisor.wait_for_log(f"listening on tcp://127.0.0.1:{port + 1}")
    supervisor.wait_for_log(f"listening on tcp://127.0.0.1:{port}")
    endpoints = f"tcp://127.0.0.1:{port},tcp://127.0.0.1:{port + 1}"
    homed = robot_ids_homed(2, 2)
    collectors = [make_collector(endpoints, robot_id=rid) for rids in homed.values() for rid in rids]
    for c in collectors:
        c.start()
    wait_for(lambda: all("2/2 ingests up" in c.link_state for c in collectors), 20, "every link up")
    episodes = {c.config.robot_id: record_episode(c, 0.4) for c in collectors}
    for c in collectors:
        assert c.drain(30), f"{c.config.robot_id}: {c.status()}"
    for index, rids in homed.items():
        for rid in rids:
            path = data / f"ingest-{index}" / "raw" / rid / f"{episodes[rid]}.h5"
            assert path.exists(), f"{rid} should land on ingest {index}"
            assert_exactly_once(path, tiny_robot)
    assert len(find_raw_inputs([data])) == 4  # one `refinery process DATA` reads all of them
    supervisor.kill(signal.SIGTERM)
    assert supervisor.proc.returncode == 0


def test_a_killed_ingest_keeps_its_open_episode_and_the_next_goes_to_a_live_one(
    tmp_path, make_collector, tiny_robot
) -> None:
    ingests = [IngestProcess(tmp_path / f"ingest-{i}", port) for i, port in enumerate(distinct_free_ports(2))]
    for ingest in ingests:
        ingest.start()
    rid = robot_ids_homed(1, 2)[0][0]  # its home is ingests[0]
    c = make_collector(",".join(i.endpoint for i in ingests), robot_id=rid, resend_timeout_s=0.5, hello_timeout_s=0.3)
    c.start()
    wait_for(lambda: "2/2 ingests up" in c.link_state, 20, "both links up")
    first = c.start_episode()
    time.sleep(0.4)
    ingests[0].kill(signal.SIGKILL)
    time.sleep(0.3)
    c.stop_episode("success")  # the rest of the first episode waits in the spool
    wait_for(lambda: "1/2 ingests up" in c.link_state, 10, "the killed ingest seen down")
    second = record_episode(c, 0.4)
    wait_for(lambda: second not in c.unsealed_episodes(), 20, "the second episode sealed on the live ingest")
    assert first in c.unsealed_episodes() and c.spool.has_entries(first)
    assert ingests[1].raw_files() == [ingests[1].data_dir / "raw" / rid / f"{second}.h5"]
    assert ingests[0].raw_files() == []
    ingests[0].start()  # back: the first episode drains to the ingest holding its journal
    assert c.drain(30), c.status()
    assert ingests[0].raw_files() == [ingests[0].data_dir / "raw" / rid / f"{first}.h5"]
    assert len(ingests[1].raw_files()) == 1
    for path in (*ingests[0].raw_files(), *ingests[1].raw_files()):
        assert_exactly_once(path, tiny_robot)
        with RawEpisodeReader(path) as ep:
            assert ep.attrs["status"] == "complete"
    for ingest in ingests:
        ingest.stop()


def test_a_full_disk_under_one_ingest_holds_its_robots_in_their_spools_and_spares_the_others(
    tmp_path, small_disk, make_collector, tiny_robot
) -> None:
    ports = distinct_free_ports(2)
    ingests = [IngestProcess(small_disk / "ingest-0", ports[0]), IngestProcess(tmp_path / "ingest-1", ports[1])]
    ingests[0].log_path = tmp_path / "ingest-0.log"  # not on the disk about to be full
    for ingest in ingests:
        ingest.start()
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * (6 << 20))
        except OSError:
            pass  # ingest 0's disk is full now
    homed = robot_ids_homed(1, 2)
    endpoints = ",".join(i.endpoint for i in ingests)
    on_full, on_free = (make_collector(endpoints, robot_id=homed[i][0], resend_timeout_s=1.0) for i in (0, 1))
    for c in (on_full, on_free):
        c.start()
    wait_for(lambda: all("2/2 ingests up" in c.link_state for c in (on_full, on_free)), 20, "every link up")
    held = on_full.start_episode()
    wait_for(lambda: "disk full" in on_full.status().error, 20, "the collector to hear its ingest's disk is full")
    spared = record_episode(on_free, 0.4)
    assert on_free.drain(30), on_free.status()  # the other ingest goes on as if nothing happened
    assert on_full.spool.unacked() > 0
    filler.unlink()  # space returns
    on_full.stop_episode("success")
    assert on_full.drain(60), on_full.status()
    (full_path,) = ingests[0].raw_files()
    (free_path,) = ingests[1].raw_files()
    assert (full_path.stem, free_path.stem) == (held, spared)
    for path in (full_path, free_path):
        assert_exactly_once(path, tiny_robot)
    assert "disk full" in ingests[0].log() and "disk full" not in ingests[1].log()
    for ingest in ingests:
        ingest.stop()


def test_the_supervisor_exits_nonzero_naming_a_child_that_died(tmp_path) -> None:
    port = free_ports(2)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ingest", "--plain", "--data-dir", str(data),
         "--bind", f"tcp://127.0.0.1:{port}", "--processes", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    RUNNING.append(proc)  # type: ignore[arg-type]
    child = IngestProcess(data / "ingest-1", port + 1)  # only to find the child's pid by its data dir
    wait_for(lambda: _pid_of(child.data_dir) is not None, 20, "the second ingest process")
    time.sleep(1.0)
    subprocess.run(["kill", "-KILL", str(_pid_of(child.data_dir))], check=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last == (f"refinery ingest: error: ingest process 1 of 2 (tcp://127.0.0.1:{port + 1}, {data / 'ingest-1'}) "
                    "was killed by SIGKILL; stopped the others")
    assert _pid_of(data / "ingest-0") is None


def _pid_of(data_dir: Path) -> int | None:
    out = subprocess.run(["pgrep", "-f", "--", f"--data-dir {data_dir}$"], capture_output=True, text=True, check=False).stdout.split()
    return int(out[0]) if out else None

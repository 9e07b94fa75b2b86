"""Nothing lost: real processes killed with SIGKILL, outages, a slow and a full disk.

Each test checks exact counts against what the simulated robot produced:
every sample index present once, in order, with the simulator's values, and
frames byte for byte.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from collectors.drivers.sim import SimHumanoid
from pipeline.raw_store import RawEpisodeReader, verify_episode
from pipeline.robot_config import RobotConfig
from tests.conftest import TINY_ROBOT
from tests.processes import IngestProcess, RefineryProcess, free_port


def assert_exactly_once(path: Path, robot: RobotConfig, seed: int = 0) -> dict[str, int]:
    """Every stream holds indices 0..n-1 once with the simulator's values; return n per stream."""
    sim = SimHumanoid(robot, seed=seed)
    counts = {}
    with RawEpisodeReader(path) as ep:
        js = ep.numeric("joint_state")
        n = js["source_index"].size
        assert np.array_equal(js["source_index"], np.arange(n)), "joint samples missing or repeated"
        expected = np.stack([sim.joint_state(k)[0] for k in range(n)]) if n else np.empty((0, robot.dof))
        assert np.array_equal(js["position"], expected)
        assert np.array_equal(np.unique(js["seq"]), np.arange(js["seq"].max() + 1 if n else 0))
        counts["joint_state"] = n
        for camera in ep.camera_names:
            frames = ep.frames(camera)
            cols = ep.camera(camera)
            assert np.array_equal(cols["source_index"], np.arange(len(frames))), f"{camera} frames missing"
            assert np.array_equal(cols["seq"], np.arange(len(frames)))
            assert all(f == sim.frame_jpeg(camera, k) for k, f in enumerate(frames))
            counts[camera] = len(frames)
    assert verify_episode(path).ok
    return counts


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ------------------------------------------------------------------ ingest crashes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 22, 33])
def test_ingest_killed_at_random_moments_loses_nothing(tmp_path, make_collector, tiny_robot, seed) -> None:
    rng = random.Random(seed)
    ingest = IngestProcess(tmp_path / "ingest", free_port())
    ingest.start()
    collectors = [make_collector(ingest.endpoint, robot_id=f"tiny-{i}", resend_timeout_s=1.0) for i in range(2)]
    for c in collectors:
        c.start()
        c.start_episode(task="survive", operator="op")
    kills = 0
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 1.2))
        ingest.kill(signal.SIGKILL)
        kills += 1
        time.sleep(rng.uniform(0.0, 0.6))
        ingest.start()
    time.sleep(rng.uniform(0.2, 0.8))
    for c in collectors:
        c.stop_episode("success")
    for c in collectors:
        assert c.drain(60), f"{c.config.robot_id}: {c.status()}"
    files = ingest.raw_files()
    assert len(files) == 2
    for path in files:
        counts = assert_exactly_once(path, tiny_robot)
        with RawEpisodeReader(path) as ep:
            assert ep.attrs["status"] == "complete"
            last = [e for e in ep.events() if e["kind"] == "stop"][0]["last_seq"]
        assert counts["joint_state"] > 0 and last
    assert kills == 3 and ingest.starts == 4
    # Every collector lost its ingest and handshook again with a restarted one. (Whether
    # anything needed resending depends on the moment: what the killed ingest had written
    # survives in the journal even when it was not yet acknowledged.)
    assert all(c.handshakes >= 2 for c in collectors)
    ingest.stop()


@pytest.mark.slow
def test_ingest_killed_while_it_writes_journal_files_over_spares_loses_nothing(
    tmp_path, make_collector, tiny_robot
) -> None:
    # 50 kB journal files: each sealed episode frees several, kept as spares and written
    # over by the next ones, and the kills land while files are recycled.
    rng = random.Random(7)
    ingest = IngestProcess(tmp_path / "ingest", free_port(), "--journal-segment-mb", "0.05")
    ingest.start()
    shared = ingest.data_dir / "journal" / "shared"
    collectors = [make_collector(ingest.endpoint, robot_id=f"tiny-{i}", resend_timeout_s=1.0) for i in range(2)]
    for c in collectors:
        c.start()
    spares_seen = 0
    for _ in range(3):
        for c in collectors:
            c.start_episode(task="recycle", operator="op")
        deadline = time.monotonic() + rng.uniform(0.6, 1.2)
        while time.monotonic() < deadline:
            spares_seen += len(list(shared.glob("*.spare")))
            time.sleep(0.05)
        ingest.kill(signal.SIGKILL)
        ingest.start()
        time.sleep(rng.uniform(0.1, 0.4))
        for c in collectors:
            c.stop_episode("success")
        time.sleep(rng.uniform(0.2, 0.6))  # sealed (segments freed) or not, when the next episode starts
    for c in collectors:
        assert c.drain(60), f"{c.config.robot_id}: {c.status()}"
    files = ingest.raw_files()
    assert len(files) == 6
    for path in files:
        assert assert_exactly_once(path, tiny_robot)["joint_state"] > 0
    assert spares_seen > 0, "no journal file was kept as a spare"
    ingest.stop()


def test_ingest_restart_seals_an_episode_finished_while_it_was_down(tmp_path, make_collector, tiny_robot) -> None:
    ingest = IngestProcess(tmp_path / "ingest", free_port())
    ingest.start()
    c = make_collector(ingest.endpoint, resend_timeout_s=0.5, hello_timeout_s=0.3)
    c.start()
    c.start_episode()
    time.sleep(0.5)
    ingest.kill(signal.SIGKILL)
    time.sleep(0.3)
    c.stop_episode("success")  # the stop event waits in the spool
    time.sleep(0.5)
    ingest.start()
    assert c.drain(30)
    (path,) = ingest.raw_files()
    assert_exactly_once(path, tiny_robot)
    assert not list((tmp_path / "ingest" / "journal").rglob("*.rfj"))
    ingest.stop()


# ------------------------------------------------------------------ collector crashes


def collector_args(ingest: IngestProcess, spool: Path, *extra: str) -> list[str]:
    return ["collect", "--robot", str(TINY_ROBOT), "--robot-id", "tiny-k", "--ingest", ingest.endpoint,
            "--plain", "--spool", str(spool), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [5, 6])
def test_collector_killed_mid_episode_resends_after_restart(tmp_path, tiny_robot, seed) -> None:
    rng = random.Random(seed)
    ingest = IngestProcess(tmp_path / "ingest", free_port(), "--window", "16", "--inject-sync-delay-ms", "50")
    ingest.start()
    spool = tmp_path / "spool"
    collector = RefineryProcess(collector_args(ingest, spool, "--episodes", "1", "--duration", "30"), tmp_path / "c.log")
    collector.start()
    collector.wait_for_log("started task")
    time.sleep(rng.uniform(1.0, 2.5))
    collector.kill(signal.SIGKILL)
    assert list(spool.glob("seg-*.rfs")), "the killed collector left no spool"
    assert ingest.raw_files() == []  # not sealed: the stop event was never sent
    restarted = RefineryProcess(collector_args(ingest, spool, "--drain-only", "--drain-timeout", "60"), tmp_path / "c2.log")
    restarted.start()
    assert restarted.wait(90) == 0, restarted.log()[-2000:]
    (path,) = ingest.raw_files()
    counts = assert_exactly_once(path, tiny_robot)
    assert counts["joint_state"] > 400  # > 1 s of 500 Hz samples made it
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["outcome"] == "interrupted"
        assert ep.attrs["status"] == "complete"
        stop = [e for e in ep.events() if e["kind"] == "stop"][0]
        assert stop["reason"] == "collector restarted"
    assert "resending" in restarted.log()
    ingest.stop()


# ------------------------------------------------------------------ outages and the spool budget


@pytest.mark.slow
def test_sixty_second_outage_is_spooled_and_drained(tmp_path, make_collector, tiny_robot) -> None:
    port = free_port()
    ingest = IngestProcess(tmp_path / "ingest", port)
    ingest.start()
    c = make_collector(ingest.endpoint, resend_timeout_s=1.0, hello_timeout_s=0.5)
    c.start()
    c.start_episode(task="long outage")
    time.sleep(1.0)
    ingest.kill(signal.SIGTERM)
    outage_start = time.monotonic()
    wait_for(lambda: c.status().link.startswith("down"), 10, "the collector to show the link down")
    spool_during = []
    while time.monotonic() - outage_start < 60:
        spool_during.append(c.status().spool_mb)
        time.sleep(1.0)
    assert c.status().link.startswith("down")
    assert spool_during[-1] > spool_during[0] > 0  # recording goes on, into the spool
    unacked_before = c.status().unacked
    ingest.start()
    drain_start = time.monotonic()
    wait_for(lambda: c.spool.unacked() < 50, 60, "the spool to drain")
    drain_s = time.monotonic() - drain_start
    c.stop_episode("success")
    assert c.drain(30)
    (path,) = ingest.raw_files()
    counts = assert_exactly_once(path, tiny_robot)
    assert counts["joint_state"] >= 60 * 500
    # Draining a minute of backlog must be far faster than recording it.
    assert drain_s < 20, f"drained {unacked_before} messages in {drain_s:.1f} s"
    ingest.stop()


@pytest.mark.parametrize("policy", ["pause", "stop"])
def test_full_spool_budget_follows_the_operator_policy(tmp_path, make_collector, tiny_robot, policy) -> None:
    port = free_port()
    ingest = IngestProcess(tmp_path / "ingest", port)  # not started: the ingest is down
    c = make_collector(
        ingest.endpoint, spool_budget_bytes=400_000, on_spool_full=policy, hello_timeout_s=0.3,
    )
    c.start()
    c.start_episode(task="budget")
    if policy == "pause":
        wait_for(lambda: c.status().paused, 20, "recording to pause")
        assert "spool" in c.status().error
    else:
        wait_for(lambda: c.episode is None, 20, "the episode to stop")
    ingest.start()
    if policy == "pause":
        wait_for(lambda: not c.status().paused, 30, "recording to resume")
        c.stop_episode("success")
    assert c.drain(30)
    (path,) = ingest.raw_files()
    with RawEpisodeReader(path) as ep:
        kinds = [e["kind"] for e in ep.events()]
        stop = [e for e in ep.events() if e["kind"] == "stop"][0]
        seqs = ep.numeric("joint_state")["seq"]
    assert np.array_equal(np.unique(seqs), np.arange(seqs.max() + 1))  # every spooled message arrived
    if policy == "pause":
        assert "pause" in kinds and "resume" in kinds
    else:
        assert stop["reason"] == "spool full"
    ingest.stop()


# ------------------------------------------------------------------ backpressure and disk full


@pytest.mark.slow
def test_slow_disk_slows_acks_and_collectors_spool_with_bounded_ingest_memory(tmp_path, make_collector, tiny_robot) -> None:
    window = 8
    ingest = IngestProcess(tmp_path / "ingest", free_port(), "--window", str(window), "--inject-sync-delay-ms", "300")
    ingest.start()
    rss_start = ingest.rss_mb()
    collectors = [make_collector(ingest.endpoint, robot_id=f"tiny-{i}", resend_timeout_s=5.0) for i in range(2)]
    for c in collectors:
        c.start()
        c.start_episode()
    max_in_flight, max_unacked, rss_max = 0, 0, rss_start
    end = time.monotonic() + 2  # ~500 messages each, against ~27/s acknowledged: the rest waits in the spools
    while time.monotonic() < end:
        for c in collectors:
            max_in_flight = max(max_in_flight, c.spool.in_flight())
            max_unacked = max(max_unacked, c.spool.unacked())
        rss_max = max(rss_max, ingest.rss_mb())
        time.sleep(0.02)
    for c in collectors:
        c.stop_episode("success")
    assert max_in_flight <= window  # the credit window holds
    assert max_unacked > 10 * window  # so the rest waited in the collectors' spools
    assert rss_max - rss_start < 100, f"ingest grew {rss_max - rss_start:.0f} MB"
    for c in collectors:
        assert c.drain(120)
    for path in ingest.raw_files():
        assert_exactly_once(path, tiny_robot)
    ingest.stop()


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_stops_acks_corrupts_nothing_and_resumes(tmp_path, small_disk, make_collector, tiny_robot) -> None:
    ingest = IngestProcess(small_disk / "ingest", free_port())
    ingest.log_path = tmp_path / "ingest.log"
    ingest.start()
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * (6 << 20))
        except OSError:
            pass  # the disk is full now
    c = make_collector(ingest.endpoint, resend_timeout_s=1.0)
    c.start()
    c.start_episode()
    wait_for(lambda: "disk full" in c.status().error, 20, "the collector to hear the disk is full")
    assert c.spool.unacked() > 0
    time.sleep(1.0)
    filler.unlink()  # space returns
    c.stop_episode("success")
    assert c.drain(60), c.status()
    (path,) = ingest.raw_files()
    assert_exactly_once(path, tiny_robot)
    assert "disk full" in ingest.log()
    ingest.stop()


@pytest.fixture
def full_raw_disk(tmp_path: Path):  # noqa: ANN201
    """``<data>/raw`` on an 8 MB disk of its own with 64 kB free, less than an episode's file
    (the journal beside it has room); unlink ``<data>/raw/filler`` to give room back."""
    raw = tmp_path / "ingest" / "raw"
    raw.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(raw)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    (raw / "filler").write_bytes(b"\0" * ((8 << 20) - (64 << 10)))
    yield raw
    subprocess.run(["umount", "-l", str(raw)], check=False)


@pytest.mark.parametrize("seal_workers", ["0", "1"])
def test_episode_finished_on_a_full_disk_is_sealed_once_there_is_room(
    tmp_path, full_raw_disk, make_collector, tiny_robot, seal_workers
) -> None:
    # HDF5 crashed the process that sealed onto a full disk (a segmentation fault: the ingest
    # itself with --seal-workers 0), and a seal that failed waited for the next start.
    ingest = IngestProcess(tmp_path / "ingest", free_port(), "--seal-workers", seal_workers)
    ingest.start()
    c = make_collector(ingest.endpoint, resend_timeout_s=1.0)
    c.start()
    c.start_episode()
    time.sleep(1.0)
    c.stop_episode("success")
    wait_for(lambda: "no room" in ingest.log(), 20, "the seal to find no room for the raw file")
    assert ingest.alive() and ingest.raw_files() == []
    (full_raw_disk / "filler").unlink()  # room again
    assert c.drain(60), c.status()
    (path,) = ingest.raw_files()
    assert_exactly_once(path, tiny_robot)
    ingest.stop()


def test_episode_whose_collector_never_returns_is_sealed_incomplete(tmp_path, tiny_robot) -> None:
    import zmq

    from pipeline import protocol

    ingest = IngestProcess(tmp_path / "ingest", free_port(), "--abandon-after", "1")
    ingest.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ingest.endpoint)
    sock.send_multipart(protocol.Hello("gone-1", tiny_robot.model, tiny_robot.digest, tiny_robot.to_dict()).encode())
    assert sock.poll(5000)
    sock.recv_multipart()
    header = protocol.DataHeader("gone-1", "ep-gone", "events", 0, time.time_ns())
    sock.send_multipart(protocol.Event(header, {"kind": "start", "task": "t"}).encode())
    samples = protocol.Samples.build("gone-1", "ep-gone", "joint_state", 0, np.array([1, 2]), np.array([0, 1]), np.zeros((2, 18)))
    sock.send_multipart(samples.encode())
    acked: set[str] = set()
    while acked != {"events", "joint_state"}:  # both acknowledged: durable
        assert sock.poll(5000), "no acknowledgement"
        reply = protocol.decode(sock.recv_multipart())
        if isinstance(reply, protocol.Ack):
            acked |= {stream for _, stream, _ in reply.acks}
    ctx.destroy()  # the collector vanishes for good
    ingest.kill(signal.SIGKILL)
    ingest.start()  # recovers the journal, then gives up on it
    wait_for(lambda: ingest.raw_files() != [], 15, "the abandoned episode to be sealed")
    (path,) = ingest.raw_files()
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "incomplete"
        assert "events" in json.loads(ep.attrs["missing"])
        assert ep.numeric("joint_state")["source_index"].tolist() == [0, 1]
    ingest.stop()


# ------------------------------------------------------------------ integrity


def test_verify_reports_a_corrupted_episode(ingest, make_collector, tmp_path) -> None:
    c = make_collector(ingest.endpoint)
    c.start()
    c.start_episode()
    time.sleep(0.3)
    c.stop_episode()
    assert c.drain(20)
    (path,) = ingest.raw_files()
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(ingest.data_dir)], capture_output=True, text=True)
    assert ok.returncode == 0 and "1 of 1 raw episodes verified" in ok.stdout
    import h5py

    with h5py.File(path, "r+") as h5:
        data = h5["streams/joint_state/position"]
        data[0, 0] = data[0, 0] + 1.0  # one flipped sample
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(ingest.data_dir)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "checksum mismatch" in bad.stdout

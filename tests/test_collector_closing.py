"""Every episode gets closed and its seal confirmed (issue 10), or the collector says
which ones were not and exits non-zero.

The collector keeps, in its spool folder, every episode it started until the
ingest confirms it sealed; every HELLO asks about all of them, and the WELCOME
states each one's state (``Welcome.episodes``). Real processes are killed with
SIGKILL; a scripted ingest (tests/fake_ingest.py) stages the lost notices.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.protocol.records import MAX_PENDING
from pipeline.raw_store import RawEpisodeReader, verify_episode
from tests.conftest import TINY_ROBOT
from tests.fake_ingest import FakeIngest
from tests.processes import IngestProcess, RefineryProcess, distinct_free_ports, free_port


@pytest.fixture
def fake_ingest() -> Iterator[FakeIngest]:
    ingest = FakeIngest()
    yield ingest
    ingest.close()


@pytest.fixture
def quiet_robot(tmp_path: Path) -> Path:
    """The tiny humanoid without cameras: with its joints stalled (``--faults stall``)
    it sends only a clock sample every 0.5 s, so its spool is empty most of the time."""
    config = yaml.safe_load(TINY_ROBOT.read_text())
    config["cameras"] = []
    path = tmp_path / "quiet_humanoid.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def collect_args(robot: Path, endpoint: str, spool: Path, robot_id: str, *extra: str) -> list[str]:
    return ["collect", "--robot", str(robot), "--robot-id", robot_id, "--ingest", endpoint,
            "--plain", "--spool", str(spool), *extra]


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.002)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def segments(spool: Path) -> list[Path]:
    return list(spool.glob("seg-*.rfs"))


# ------------------------------------------------------------------ --drain-only after a crash


def test_drain_only_closes_an_episode_interrupted_when_everything_was_acknowledged(tmp_path, quiet_robot) -> None:
    ingest = IngestProcess(tmp_path / "ingest", free_port())
    ingest.start()
    # The kill must land while the spool is empty (everything acknowledged). A clock
    # sample can be spooled between the check and the kill; then try again, so the
    # test always exercises that moment.
    for attempt in range(5):
        robot_id, spool = f"quiet-{attempt}", tmp_path / f"spool-{attempt}"
        collector = RefineryProcess(
            collect_args(quiet_robot, ingest.endpoint, spool, robot_id,
                         "--episodes", "1", "--duration", "120", "--faults", "stall=0.3:1000"),
            tmp_path / f"c-{attempt}.log",
        )
        collector.start()
        collector.wait_for_log("started task")
        shared = ingest.data_dir / "journal" / "shared"
        tag = f"{robot_id}/".encode()
        wait_for(lambda: any(tag in p.read_bytes() for p in shared.glob("*.rfl")), 20, "the ingest to open the episode")
        time.sleep(0.6)  # past the stall's start
        wait_for(lambda: not segments(spool), 20, "an empty spool")
        collector.kill(signal.SIGKILL)
        if not segments(spool):
            break
    else:
        pytest.fail("never caught the collector with an empty spool")
    assert (spool / "episode.open").exists()
    episode = (spool / "episode.open").read_text().strip()

    restarted = RefineryProcess(
        collect_args(quiet_robot, ingest.endpoint, spool, robot_id, "--drain-only", "--drain-timeout", "30"),
        tmp_path / "restart.log",
    )
    restarted.start()
    assert restarted.wait(60) == 0, restarted.log()[-2000:]
    path = ingest.data_dir / "raw" / robot_id / f"{episode}.h5"
    assert path.exists(), f"the interrupted episode was not sealed:\n{restarted.log()[-2000:]}"
    assert verify_episode(path).ok
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "complete"
        assert ep.attrs["outcome"] == "interrupted"
        stop = [e for e in ep.events() if e["kind"] == "stop"][0]
        assert stop["reason"] == "collector restarted"
        assert ep.numeric("joint_state")["capture_ns"].size > 0
    ingest.stop()


def test_drain_only_exits_non_zero_naming_the_episode_it_could_not_close(tmp_path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "episode.open").write_text("tiny-k-20261130T120000-abcdef")  # a collector died mid-episode
    nobody = f"tcp://127.0.0.1:{free_port()}"
    drain = RefineryProcess(collect_args(TINY_ROBOT, nobody, spool, "tiny-k", "--drain-only", "--drain-timeout", "2"),
                            tmp_path / "drain.log")
    drain.start()
    assert drain.wait(30) == 1, drain.log()
    lines = [line for line in drain.log().splitlines() if "tiny-k-20261130T120000-abcdef" in line]
    assert len(lines) == 1 and "not closed" in lines[0], drain.log()


# ------------------------------------------------------------------ sealed notices that never came


def record(collector, seconds: float = 0.3) -> str:  # noqa: ANN001
    episode = collector.start_episode(task="t", operator="op")
    time.sleep(seconds)
    collector.stop_episode("success")
    wait_for(lambda: collector.spool.unacked() == 0, 10, "every message acknowledged")
    return episode


def test_hello_after_a_dropped_session_asks_about_an_acknowledged_unsealed_episode(fake_ingest, make_collector) -> None:
    c = make_collector(fake_ingest.endpoint)
    c.start()
    episode = record(c)
    assert not c.drain(0.3)  # acknowledged, but not sealed: still waiting
    fake_ingest.seal_on_hello.add(episode)
    fake_ingest.drop_session()
    hello = fake_ingest.wait_for_hellos(2)
    assert episode in hello.pending
    assert c.drain(5)


def test_restarted_collector_asks_about_an_episode_whose_seal_it_never_heard(fake_ingest, make_collector) -> None:
    first = make_collector(fake_ingest.endpoint)
    first.start()
    episode = record(first)
    first.close()  # all acknowledged, seal never confirmed
    fake_ingest.states_on_hello[episode] = "sealed"
    fake_ingest.seal_on_hello.add(episode)
    second = make_collector(fake_ingest.endpoint)
    second.start()
    hello = fake_ingest.wait_for_hellos(2)
    assert episode in hello.pending
    assert second.drain(5)
    third = make_collector(fake_ingest.endpoint)  # confirmed: nobody asks again
    third.start()
    assert episode not in fake_ingest.wait_for_hellos(3).pending


def test_a_seal_announced_while_connected_ends_the_wait(fake_ingest, make_collector) -> None:
    c = make_collector(fake_ingest.endpoint)
    c.start()
    episode = record(c)
    fake_ingest.announce_sealed(episode)
    assert c.drain(5)
    assert c.unsealed_episodes() == []


def test_collector_stops_waiting_on_an_episode_the_ingest_quarantined(fake_ingest, make_collector) -> None:
    first = make_collector(fake_ingest.endpoint)
    first.start()
    episode = record(first)
    first.close()
    fake_ingest.states_on_hello[episode] = "quarantined"
    second = make_collector(fake_ingest.endpoint)
    second.start()
    started = time.monotonic()
    assert not second.drain(10)
    assert time.monotonic() - started < 5  # nothing left to wait for
    assert second.failed_episodes() == {episode: "quarantined by the ingest (it could not be sealed)"}


def test_collect_exits_non_zero_naming_unsealed_episodes_when_it_gives_up(tmp_path, fake_ingest) -> None:
    spool = tmp_path / "spool"
    proc = RefineryProcess(
        collect_args(TINY_ROBOT, fake_ingest.endpoint, spool, "tiny-g",
                     "--episodes", "1", "--duration", "0.3", "--drain-timeout", "2"),
        tmp_path / "collect.log",
    )
    proc.start()
    assert proc.wait(30) == 1, proc.log()
    episode = re.search(r"episode=(\S+) started", proc.log()).group(1)
    lines = [line for line in proc.log().splitlines() if "not sealed" in line]
    assert len(lines) == 1 and episode in lines[0] and "--drain-timeout" in lines[0], proc.log()


def test_hello_asks_about_interrupted_episodes_first_and_within_the_ingest_limit(make_collector) -> None:
    probe = make_collector("tcp://127.0.0.1:1")  # never started: only its spool is read
    spool = probe.config.spool_dir
    probe.close()
    (spool / "unsealed.json").write_text(json.dumps([f"tiny-0-{n:05d}" for n in range(MAX_PENDING + 10)]))
    (spool / "episode.open").write_text("tiny-0-zzz-interrupted")
    asked = make_collector("tcp://127.0.0.1:1")._asked_about()
    assert len(asked) == MAX_PENDING and asked[0] == "tiny-0-zzz-interrupted"


def test_seal_finished_by_a_restarted_ingest_reaches_the_collector(tmp_path, make_collector) -> None:
    """The ingest dies after acknowledging everything, before it announced the seal;
    restarted while the collector cannot reach it (here: on another port), it seals
    the journal during recovery and tells nobody. The collector's next HELLO asks
    about the episode, so it hears of the seal instead of waiting out its drain
    timeout."""
    port, elsewhere_port = distinct_free_ports(2)
    ingest = IngestProcess(tmp_path / "ingest", port)
    ingest.start()
    c = make_collector(ingest.endpoint, resend_timeout_s=0.5, hello_timeout_s=0.3)
    c.start()
    for _ in range(5):
        episode = c.start_episode(task="t", operator="op")
        time.sleep(0.3)
        c.stop_episode("success")
        wait_for(lambda: c.spool.unacked() == 0, 20, "every message acknowledged")
        ingest.kill(signal.SIGKILL)
        if not c.spool.is_sealed(episode):
            break  # caught it: acknowledged, seal not announced
        ingest.start()
    else:
        pytest.fail("the seal notice always came before the kill")
    assert episode in c.unsealed_episodes()
    raw = ingest.data_dir / "raw" / "tiny-0" / f"{episode}.h5"
    elsewhere = IngestProcess(ingest.data_dir, elsewhere_port)
    elsewhere.start()
    wait_for(raw.exists, 20, "the recovery seal")
    elsewhere.stop()
    ingest.start()
    assert c.drain(20), c.status()
    assert (ingest.data_dir / "raw" / "tiny-0" / f"{episode}.h5").exists()
    ingest.stop()


def test_an_episode_interrupted_before_anything_was_recorded_is_dropped_quietly(fake_ingest, make_collector) -> None:
    probe = make_collector(fake_ingest.endpoint)
    spool = probe.config.spool_dir
    probe.close()
    (spool / "episode.open").write_text("tiny-0-20261130T120000-000000")  # killed before its first message
    fake_ingest.states_on_hello["tiny-0-20261130T120000-000000"] = "unknown"
    c = make_collector(fake_ingest.endpoint)
    c.start()
    assert c.drain(5)
    assert c.failed_episodes() == {} and c.unsealed_episodes() == []
    assert fake_ingest.events == []  # no stop event for an episode nobody holds


def test_an_interrupted_episode_the_ingest_is_sealing_gets_no_second_stop(fake_ingest, make_collector) -> None:
    probe = make_collector(fake_ingest.endpoint)
    spool = probe.config.spool_dir
    probe.close()
    episode = "tiny-0-20261130T120000-111111"
    (spool / "episode.open").write_text(episode)  # the ingest abandoned it and seals it as incomplete
    fake_ingest.states_on_hello[episode] = "sealing"
    c = make_collector(fake_ingest.endpoint)
    c.start()
    assert not c.drain(0.5)  # waits for the seal
    assert c.unsealed_episodes() == [episode] and fake_ingest.events == []
    fake_ingest.announce_sealed(episode)
    assert c.drain(5)


def test_a_lost_seal_notice_on_a_live_link_is_asked_for_again(fake_ingest, make_collector) -> None:
    """The link never drops, but the ACK naming the episode sealed never arrives (an
    ingest can lose it in a reconnect ZeroMQ hides): the collector asks again with a
    new HELLO after a quiet while, instead of waiting out its drain timeout."""
    c = make_collector(fake_ingest.endpoint, seal_query_interval_s=1.0)
    c.start()
    episode = record(c)
    fake_ingest.seal_on_hello.add(episode)  # sealed, but nobody told the collector
    started = time.monotonic()
    assert c.drain(10)
    assert time.monotonic() - started < 5
    assert episode in fake_ingest.hellos[-1].pending and len(fake_ingest.hellos) == 2

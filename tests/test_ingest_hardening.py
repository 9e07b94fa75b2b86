"""Issue 10, ingest side: no single message or record stops the ingest, limits,
quarantine, what a HELLO learns about sealed episodes, and how `refinery ingest`
fails. Each test reproduces a defect of the ingest before the fix."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from pipeline import protocol
from pipeline.ingest import IngestLimits
from pipeline.journal import JOURNAL_SUFFIX, EpisodeJournal, EpisodeMeta
from pipeline.journal_writer import JournalWriter
from pipeline.shared_journal import SHARED_DIR, SharedJournal
from pipeline.raw_store import RawEpisodeReader, verify_episode
from tests.processes import IngestProcess, free_port

ROBOT = "tiny-h"


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class RawPeer:
    """A hand-driven collector: a DEALER that speaks the protocol message by message."""

    def __init__(self, endpoint: str, robot, robot_id: str = ROBOT, episode: str = "ep-h1") -> None:  # noqa: ANN001
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)
        self.sock.connect(endpoint)
        self.robot = robot
        self.robot_id = robot_id
        self.episode = episode
        self.seq: dict[str, int] = {}
        self.replies: list[protocol.Record] = []

    def hello(self, pending: tuple[str, ...] = ()) -> protocol.Record:
        self.send(protocol.Hello(self.robot_id, self.robot.model, self.robot.digest, self.robot.to_dict(),
                                 pending=pending).encode())
        return self.wait_for(lambda r: isinstance(r, (protocol.Welcome, protocol.Refuse)))

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def next_seq(self, stream: str) -> int:
        seq = self.seq.get(stream, 0)
        self.seq[stream] = seq + 1
        return seq

    def header(self, stream: str, capture_ns: int = 1_000, seq: int | None = None) -> protocol.DataHeader:
        seq = self.next_seq(stream) if seq is None else seq
        return protocol.DataHeader(self.robot_id, self.episode, stream, seq, capture_ns)

    def event(self, body: dict, capture_ns: int = 1_000) -> None:
        self.send(protocol.Event(self.header("events", capture_ns), body).encode())

    def samples(self, rows: int = 2, cols: int | None = None, stream: str = "joint_state", t0: int = 1_000) -> None:
        cols = 3 * self.robot.dof if cols is None else cols
        record = protocol.Samples.build(
            self.robot_id, self.episode, stream, self.next_seq(stream),
            np.arange(rows, dtype=np.int64) + t0, np.arange(rows, dtype=np.int64), np.ones((rows, cols)),
        )
        self.send(record.encode())

    def stop(self) -> None:
        last = {s: q - 1 for s, q in self.seq.items()}
        last["events"] = self.seq.get("events", 0)
        self.event({"kind": "stop", "outcome": "success", "last_seq": last})

    def drain(self, timeout_ms: int = 200) -> list[protocol.Record]:
        got = []
        while self.sock.poll(timeout_ms):
            frames = self.sock.recv_multipart()
            try:
                got.append(protocol.decode(frames))
            except protocol.VersionMismatch:
                continue
            timeout_ms = 50
        self.replies.extend(got)
        return got

    def wait_for(self, match, timeout: float = 5.0):  # noqa: ANN001, ANN201
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.replies:
                if match(r):
                    self.replies.remove(r)
                    return r
            if self.sock.poll(50):
                self.replies.append(protocol.decode(self.sock.recv_multipart()))
        raise AssertionError(f"no matching reply; got {self.replies}")

    def notices(self) -> list[str]:
        self.drain(100)
        return [r.message for r in self.replies if isinstance(r, protocol.Notice)]

    def close(self, linger_ms: int = 0) -> None:
        """``linger_ms``: how long what is still queued may take to leave (0: dropped)."""
        self.ctx.destroy(linger_ms)


@pytest.fixture
def peer(ingest, tiny_robot):  # noqa: ANN001, ANN201
    made: list[RawPeer] = []

    def make(robot_id: str = ROBOT, episode: str = "ep-h1", endpoint: str | None = None) -> RawPeer:
        p = RawPeer(endpoint or ingest.endpoint, tiny_robot, robot_id, episode)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def sealed_path(ingest, robot_id: str = ROBOT, episode: str = "ep-h1") -> Path:  # noqa: ANN001
    return ingest.data_dir / "raw" / robot_id / f"{episode}.h5"


# ------------------------------------------------------------------ poison messages


def test_nul_in_task_text_is_refused_and_the_episode_still_seals(ingest, peer) -> None:
    p = peer()
    assert isinstance(p.hello(), protocol.Welcome)
    p.event({"kind": "start", "task": "pick\x00the cup", "operator": "op\x07"})
    p.samples()
    p.event({"kind": "label", "text": "ok label"})
    p.stop()
    wait_for(lambda: sealed_path(ingest).exists(), 10, "the episode to be sealed")
    assert ingest.thread.is_alive()
    with RawEpisodeReader(sealed_path(ingest)) as ep:
        assert "\x00" not in ep.attrs["task"] and "\x07" not in ep.attrs["operator"]
        start = ep.events()[0]
        assert start["kind"] == "start" and set(start["refused"]) == {"task", "operator"}
    assert verify_episode(sealed_path(ingest)).ok
    assert any("task" in n and "control character" in n for n in p.notices())
    assert ingest.server.stats.refused_fields == 2


def test_a_batch_with_another_column_count_is_refused_and_the_stream_goes_on(ingest, peer) -> None:
    p = peer()
    p.hello()
    p.event({"kind": "start", "task": "t"})
    p.samples(rows=2)
    p.samples(rows=2, cols=5)  # refused at the door: the config says 18
    p.seq["joint_state"] -= 1  # the honest resend of that seq
    p.samples(rows=3)
    p.stop()
    wait_for(lambda: sealed_path(ingest).exists(), 10, "the episode to be sealed")
    with RawEpisodeReader(sealed_path(ingest)) as ep:
        assert ep.numeric("joint_state")["position"].shape == (5, 6)
        assert ep.attrs["status"] == "complete"
    assert ingest.server.stats.malformed == 1
    assert any("columns" in n for n in p.notices())


def test_samples_on_a_camera_stream_are_refused(ingest, peer, tiny_robot) -> None:
    p = peer()
    p.hello()
    p.samples(stream=tiny_robot.cameras[0].name)
    p.samples(stream="made_up_stream")
    wait_for(lambda: ingest.server.stats.malformed == 2, 5, "both refused")
    assert ingest.thread.is_alive()


@pytest.mark.parametrize("opening", [b"[", b"{\"a\":"])
def test_deeply_nested_json_hello_and_event_are_dropped(ingest, peer, opening: bytes) -> None:
    p = peer()
    body = opening * (64 * 1024 // len(opening))
    p.send([b"RF\x01\x01" + body[: protocol.records.MAX_HEADER_BYTES - 4]])
    p.hello()
    p.send([protocol.DataHeader(ROBOT, "ep-h1", "events", 0, 0).pack(protocol.Opcode.EVENT), body])
    wait_for(lambda: ingest.server.stats.malformed >= 2, 5, "both counted as malformed")
    assert ingest.thread.is_alive()
    p.event({"kind": "start", "task": "after the poison"})
    p.stop()
    wait_for(lambda: sealed_path(ingest).exists(), 10, "an episode after the poison to be sealed")


def test_huge_numbers_and_wrong_types_in_json_are_refused(ingest, peer) -> None:
    p = peer()
    p.hello()
    bodies = [
        b'{"kind":"start","task":' + b"9" * 5000 + b"}",
        b'{"kind":"stop","last_seq":{"events":1e400}}',
        b'{"kind":"stop","last_seq":{"events":' + b"9" * 40 + b"}}",
        b'{"kind":"start","task":NaN}',
    ]
    for i, body in enumerate(bodies):
        p.send([protocol.DataHeader(ROBOT, "ep-h1", "events", 0, 0).pack(protocol.Opcode.EVENT), body])
    wait_for(lambda: ingest.server.stats.malformed == len(bodies), 5, "every hostile body counted")
    assert ingest.thread.is_alive()
    p.event({"kind": "start", "task": "fine"})
    p.stop()
    wait_for(lambda: sealed_path(ingest).exists(), 10, "the episode to be sealed")
    with RawEpisodeReader(sealed_path(ingest)) as ep:
        assert ep.attrs["task"] == "fine"


# ------------------------------------------------------------------ quarantine


def write_poison_journal(data_dir: Path, robot, robot_id: str = ROBOT, episode: str = "ep-poison") -> Path:  # noqa: ANN001
    """A journal as an older ingest could write it: a NUL in the task and a second
    batch with another column count, then a stop."""
    path = data_dir / "journal" / robot_id / f"{episode}{JOURNAL_SUFFIX}"
    meta = EpisodeMeta(robot_id, episode, robot.model, robot.digest, robot.to_dict(), time.time_ns())
    journal = EpisodeJournal.create(path, meta)
    records = [
        protocol.Event(protocol.DataHeader(robot_id, episode, "events", 0, 1), {"kind": "start", "task": "a\x00b"}),
        protocol.Samples.build(robot_id, episode, "joint_state", 0, np.array([1]), np.array([0]), np.ones((1, 18))),
        protocol.Samples.build(robot_id, episode, "joint_state", 1, np.array([2]), np.array([1]), np.ones((1, 7))),
        protocol.Event(protocol.DataHeader(robot_id, episode, "events", 1, 3),
                       {"kind": "stop", "outcome": "success", "last_seq": {"events": 1, "joint_state": 1}}),
    ]
    for record in records:
        journal.append(5, record.encode(), record)
    journal.close()
    return path


def test_a_journal_that_cannot_be_sealed_is_quarantined_and_the_ingest_serves_on(
    start_ingest, make_collector, tiny_robot, tmp_path
) -> None:
    from tests.conftest import record_episode

    data_dir = tmp_path / "ingest"
    journal = write_poison_journal(data_dir, tiny_robot)
    ingest = start_ingest()
    quarantined = data_dir / "quarantine" / ROBOT / "ep-poison.rfj"
    wait_for(lambda: ingest.server.stats.quarantined == 1, 10, "the journal to be quarantined")
    assert quarantined.exists() and not journal.exists()
    reason = (data_dir / "quarantine" / ROBOT / "ep-poison.reason.txt").read_text()
    assert "ep-poison" in reason and "column" in reason
    assert ingest.thread.is_alive()
    c = make_collector(ingest.endpoint)
    c.start()
    record_episode(c, 0.3)
    assert c.drain(20)
    ingest.stop()
    again = start_ingest()  # no crash loop: the next start does not see the journal again
    assert again.server.stats.quarantined == 0 and again.thread.is_alive()


def test_a_seal_that_fails_with_an_io_error_is_tried_again_and_no_second_journal_is_opened(
    start_ingest, tiny_robot, monkeypatch
) -> None:
    # The seal's failure left the episode in no table ("kept for the next start"): the
    # collector's resend then opened a second journal with a second header for the same
    # episode, which the next start could not replay (quarantined), and nothing was sealed
    # until a restart.
    from pipeline import ingest as ingest_module

    real_seal, calls = ingest_module.seal_recovered, []

    def seal_failing_once(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_seal(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "seal_recovered", seal_failing_once)
    monkeypatch.setattr(ingest_module, "SEAL_ROOM_RETRY_S", (0.5, 1.0))
    ingest = start_ingest(seal_workers=0)
    p = RawPeer(ingest.endpoint, tiny_robot)
    try:
        assert isinstance(p.hello(), protocol.Welcome)
        p.event({"kind": "start", "task": "t", "operator": "op"})
        p.samples()
        p.stop()
        wait_for(lambda: len(calls) == 1, 10, "the first seal to fail")
        p.samples(t0=5_000)  # a message of the episode while it is not sealed
        p.seq["joint_state"] -= 1
        wait_for(lambda: sealed_path(ingest).exists(), 10, "the seal to be tried again")
    finally:
        p.close()
    assert len(calls) == 2
    assert (ROBOT, "ep-h1") not in ingest.server.journals  # no second journal opened
    with RawEpisodeReader(sealed_path(ingest)) as ep:
        assert ep.attrs["status"] == "complete" and ep.numeric("joint_state")["seq"].tolist() == [0, 0]


# ------------------------------------------------------------------ limits


def test_overlong_text_is_refused_with_a_notice(start_ingest, tiny_robot, tmp_path) -> None:
    ingest = start_ingest(limits=IngestLimits(max_text_chars=16))
    p = RawPeer(ingest.endpoint, tiny_robot)
    try:
        p.hello()
        p.event({"kind": "start", "task": "x" * 20_000, "operator": "op-1"})
        p.stop()
        wait_for(lambda: sealed_path(ingest).exists(), 10, "the episode to be sealed")
        with RawEpisodeReader(sealed_path(ingest)) as ep:
            assert ep.attrs["task"] == "" and ep.attrs["operator"] == "op-1"
        assert any("task" in n and "16" in n for n in p.notices())
    finally:
        p.close()


def test_episode_byte_limit_keeps_what_was_acknowledged_and_seals_incomplete(start_ingest, tiny_robot) -> None:
    ingest = start_ingest(limits=IngestLimits(max_episode_bytes=2_000))
    p = RawPeer(ingest.endpoint, tiny_robot)
    try:
        p.hello()
        p.event({"kind": "start", "task": "big"})
        for _ in range(10):
            p.samples(rows=2)  # ~400 bytes each
        acks = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "joint_state" not in acks:
            for r in p.drain(100):
                if isinstance(r, protocol.Ack):
                    acks.update({s: q for _, s, q in r.acks})
        assert any("limit" in n for n in p.notices())
        p.stop()
        wait_for(lambda: sealed_path(ingest).exists(), 10, "the episode to be sealed")
        with RawEpisodeReader(sealed_path(ingest)) as ep:
            assert ep.attrs["status"] == "incomplete"
            assert "bytes" in ep.attrs["limit"]
            rows = ep.numeric("joint_state")["position"].shape[0]
        assert 0 < rows < 20
        assert rows >= 2 * (acks["joint_state"] + 1)  # everything acknowledged is in the file
    finally:
        p.close()


def test_episode_duration_limit(start_ingest, tiny_robot) -> None:
    ingest = start_ingest(limits=IngestLimits(max_episode_s=1.0))
    p = RawPeer(ingest.endpoint, tiny_robot)
    try:
        p.hello()
        p.event({"kind": "start", "task": "long"}, capture_ns=0)
        p.samples(rows=2, t0=500_000_000)
        p.samples(rows=2, t0=3_000_000_000)  # 3 s after the start
        p.stop()
        wait_for(lambda: sealed_path(ingest).exists(), 10, "the episode to be sealed")
        with RawEpisodeReader(sealed_path(ingest)) as ep:
            assert ep.attrs["status"] == "incomplete" and "duration" in ep.attrs["limit"]
            assert ep.numeric("joint_state")["position"].shape[0] == 2
        assert any("duration" in n for n in p.notices())
    finally:
        p.close()


def test_byte_rate_limit_sends_a_notice_and_loses_nothing(start_ingest, make_collector) -> None:
    from tests.conftest import record_episode

    ingest = start_ingest(limits=IngestLimits(max_bytes_per_s=40_000))
    c = make_collector(ingest.endpoint, resend_timeout_s=0.5)
    c.start()
    record_episode(c, 1.0)
    wait_for(lambda: ingest.server.stats.rate_limited > 0, 10, "the rate limit to act")
    assert c.drain(60)
    (path,) = ingest.raw_files()
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "complete"
        n = ep.numeric("joint_state")["source_index"].size
        assert np.array_equal(ep.numeric("joint_state")["source_index"], np.arange(n))


# ------------------------------------------------------------------ what a HELLO learns


def test_hello_states_every_asked_episode(ingest, peer) -> None:
    p = peer(episode="ep-done")
    p.hello()
    p.event({"kind": "start", "task": "t"})
    p.stop()
    wait_for(lambda: sealed_path(ingest, episode="ep-done").exists(), 10, "sealed")
    q = peer(episode="ep-open")
    q.hello()
    q.event({"kind": "start", "task": "t"})
    q.wait_for(lambda r: isinstance(r, protocol.Ack))
    r = peer()
    welcome = r.hello(pending=("ep-done", "ep-open", "ep-never"))
    assert isinstance(welcome, protocol.Welcome)
    assert welcome.episodes == {"ep-done": "sealed", "ep-open": "open", "ep-never": "unknown"}
    assert welcome.sealed == ("ep-done",)


def test_hello_after_a_restart_learns_seals_done_during_recovery(start_ingest, tiny_robot, tmp_path) -> None:
    first = start_ingest()
    p = RawPeer(first.endpoint, tiny_robot, episode="ep-r")
    p.hello()
    p.event({"kind": "start", "task": "t"})
    p.samples()
    p.wait_for(lambda r: isinstance(r, protocol.Ack))
    first.stop()
    p.close()
    # The stop is journaled as the ingest went down (a kill -9 after the write): recovery seals it.
    shared, found = SharedJournal.recover(tmp_path / "ingest" / "journal" / SHARED_DIR,
                                          is_finished=lambda key: False, skip=set())
    (journal,) = found.journals
    writer = JournalWriter(shared=shared)
    journal.attach(writer)
    stop = protocol.Event(protocol.DataHeader(ROBOT, "ep-r", "events", 1, 5),
                          {"kind": "stop", "outcome": "success", "last_seq": {"events": 1, "joint_state": 0}})
    journal.append(6, stop.encode(), stop)
    writer.close()
    second = start_ingest()
    wait_for(lambda: sealed_path(second, episode="ep-r").exists(), 10, "recovery to seal it")
    q = RawPeer(second.endpoint, tiny_robot, episode="ep-r")
    try:
        welcome = q.hello(pending=("ep-r",))
        assert welcome.episodes == {"ep-r": "sealed"} and welcome.sealed == ("ep-r",)
    finally:
        q.close()


def test_a_journal_file_left_by_an_earlier_version_is_recovered_and_sealed(start_ingest, tiny_robot, tmp_path) -> None:
    data_dir = tmp_path / "ingest"
    path = data_dir / "journal" / ROBOT / f"ep-old{JOURNAL_SUFFIX}"
    journal = EpisodeJournal.create(path, EpisodeMeta(ROBOT, "ep-old", tiny_robot.model, tiny_robot.digest,
                                                      tiny_robot.to_dict(), time.time_ns()))
    for record in (
        protocol.Event(protocol.DataHeader(ROBOT, "ep-old", "events", 0, 1), {"kind": "start", "task": "t"}),
        protocol.Samples.build(ROBOT, "ep-old", "joint_state", 0, np.array([2]), np.array([0]), np.ones((1, 18))),
        protocol.Event(protocol.DataHeader(ROBOT, "ep-old", "events", 1, 3),
                       {"kind": "stop", "outcome": "success", "last_seq": {"events": 1, "joint_state": 0}}),
    ):
        journal.append(5, record.encode(), record)
    journal.close()
    ingest = start_ingest()
    wait_for(lambda: sealed_path(ingest, episode="ep-old").exists(), 10, "the old journal to be sealed")
    assert not path.exists()
    with RawEpisodeReader(sealed_path(ingest, episode="ep-old")) as ep:
        assert ep.attrs["status"] == "complete" and len(ep.numeric("joint_state")["position"]) == 1


def test_hello_names_a_quarantined_episode(start_ingest, tiny_robot, tmp_path) -> None:
    write_poison_journal(tmp_path / "ingest", tiny_robot)
    ingest = start_ingest()
    wait_for(lambda: ingest.server.stats.quarantined == 1, 10, "quarantine")
    q = RawPeer(ingest.endpoint, tiny_robot)
    try:
        assert q.hello(pending=("ep-poison",)).episodes == {"ep-poison": "quarantined"}
    finally:
        q.close()


# ------------------------------------------------------------------ sessions


def test_silent_sessions_are_freed(start_ingest, tiny_robot) -> None:
    ingest = start_ingest(session_timeout_s=0.5)
    peers = [RawPeer(ingest.endpoint, tiny_robot, f"tiny-s{i}") for i in range(5)]
    try:
        for p in peers:
            p.hello()
        assert ingest.server.status()["collectors"] == 5
        wait_for(lambda: ingest.server.status()["collectors"] == 0, 5, "silent sessions to be freed")
        assert not ingest.server._hello_hints and not ingest.server._disk_notice_after
    finally:
        for p in peers:
            p.close()


@pytest.mark.slow
def test_reconnect_storm_leaves_memory_near_baseline(tmp_path, tiny_robot) -> None:
    port = free_port()
    ingest = IngestProcess(tmp_path / "ingest", port, "--session-timeout", "1")
    ingest.start()
    try:
        time.sleep(1.0)
        baseline = ingest.rss_mb()
        jpeg = b"\xff\xd8" + bytes(60_000)
        camera = tiny_robot.cameras[0].name
        for wave in range(30):  # 20 robots reconnect 30 times: 600 connections, each resending 2 MB
            peers = [RawPeer(ingest.endpoint, tiny_robot, f"storm-{i}", episode=f"ep-storm-{i}") for i in range(20)]
            for p in peers:
                p.send(protocol.Hello(p.robot_id, tiny_robot.model, tiny_robot.digest, tiny_robot.to_dict()).encode())
                p.event({"kind": "start", "task": "storm"})
                for _ in range(32):
                    p.send(protocol.Frame(p.header(camera), jpeg).encode())
            for p in peers:  # each hears from the ingest, and leaves once all it sent has left
                p.wait_for(lambda r: isinstance(r, protocol.Ack), timeout=30)
                p.close(linger_ms=5000)
        peak = ingest.rss_mb()
        mark = len(ingest.log())
        # The status line goes to the log every 10 s when stdout is not a terminal.
        wait_for(lambda: "| collectors " in ingest.log()[mark:], 15, "a status line after the storm")
        status = [line for line in ingest.log()[mark:].splitlines() if "| collectors " in line][-1]
        after = ingest.rss_mb()
        print(f"ingest RSS: baseline {baseline:.0f} MB, after storm {peak:.0f} MB, idle {after:.0f} MB; {status}")
        assert "| collectors 0 |" in status
        assert after < baseline + 40, (baseline, peak, after)
    finally:
        ingest.stop()


# ------------------------------------------------------------------ refinery ingest fails loudly


def run_ingest_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ingest", "--plain", "--data-dir", str(tmp_path / "d"), *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_port_in_use_is_one_line_and_non_zero(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_ingest_cli(tmp_path, "--bind", f"tcp://127.0.0.1:{port}")
    assert result.returncode != 0
    assert f"port {port} is in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("bind, needle", [("tcp://127.0.0.1:notaport", "--bind"), ("nonsense", "--bind")])
def test_malformed_bind_is_one_line_and_non_zero(tmp_path, bind: str, needle: str) -> None:
    result = run_ingest_cli(tmp_path, "--bind", bind)
    assert result.returncode != 0
    assert needle in result.stderr and bind in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("option, value", [("--gather-ms", "-1"), ("--gather-ms", "nan"),
                                           ("--commit-interval-ms", "nan"), ("--commit-interval-ms", "inf"),
                                           ("--seal-workers", "-1"), ("--seal-workers", "two")])
def test_a_timing_option_that_is_not_a_finite_number_in_range_is_one_line_and_non_zero(
        tmp_path, option: str, value: str) -> None:
    result = run_ingest_cli(tmp_path, "--bind", "tcp://127.0.0.1:*", option, value)
    assert result.returncode != 0
    assert option in result.stderr and value in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("argv, direct_io", [([], True), (["--journal-io", "page-cache"], False)])
def test_journal_io_chooses_how_the_shared_journal_is_written(tmp_path, argv: list[str], direct_io: bool) -> None:
    from pipeline import cli

    args = cli._parse_arguments(["ingest", "--plain", "--data-dir", str(tmp_path), *argv])
    assert cli._ingest_config(args).journal_direct_io is direct_io


@pytest.mark.parametrize("argv, gather_s", [([], 0.002), (["--gather-ms", "0"], 0.0), (["--gather-ms", "5"], 0.005)])
def test_gather_ms_sets_how_long_the_loop_lets_messages_gather(tmp_path, argv: list[str], gather_s: float) -> None:
    from pipeline import cli

    args = cli._parse_arguments(["ingest", "--plain", "--data-dir", str(tmp_path), *argv])
    assert cli._ingest_config(args).gather_s == pytest.approx(gather_s)


@pytest.mark.parametrize("argv, workers", [([], 2), (["--seal-workers", "0"], 0), (["--seal-workers", "4"], 4)])
def test_seal_workers_sets_how_many_processes_seal(tmp_path, argv: list[str], workers: int) -> None:
    from pipeline import cli

    args = cli._parse_arguments(["ingest", "--plain", "--data-dir", str(tmp_path), *argv])
    assert cli._ingest_config(args).seal_workers == workers


def test_an_unexpected_exception_in_the_ingest_exits_non_zero(tmp_path, monkeypatch, capsys) -> None:
    from pipeline import cli
    from pipeline.ingest import IngestServer

    def broken(self, sock):  # noqa: ANN001, ANN202
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(IngestServer, "_loop", broken)
    code = cli.main(["ingest", "--plain", "--data-dir", str(tmp_path / "d"), "--bind", "tcp://127.0.0.1:*"])
    assert code not in (0, None)
    err = capsys.readouterr().err
    assert "simulated bug" in err and "Traceback" not in err


def test_an_exception_in_a_worker_thread_stops_the_ingest_non_zero(tmp_path, monkeypatch, capsys, tiny_robot) -> None:
    import threading

    from pipeline import cli
    from pipeline import ingest as ingest_module

    def broken(journal):  # noqa: ANN001, ANN202
        raise RuntimeError("fsync worker bug")

    monkeypatch.setattr(ingest_module, "_sync", broken)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(cli.main(["ingest", "--plain", "--data-dir", str(tmp_path / "d"), "--bind", endpoint])),
        daemon=True,
    )
    thread.start()
    p = RawPeer(endpoint, tiny_robot)
    try:
        p.hello()
        p.event({"kind": "start", "task": "t"})  # the next group commit runs the broken worker
        thread.join(15)
    finally:
        p.close()
    assert not thread.is_alive(), "the ingest kept running after a worker thread failed"
    assert result and result[0] not in (0, None)
    assert "fsync worker bug" in capsys.readouterr().err


def test_a_sealed_notice_whose_send_failed_is_sent_again(tmp_path, tiny_robot, monkeypatch) -> None:
    from pipeline.ingest import IngestConfig, IngestServer, Session

    server = IngestServer(IngestConfig(data_dir=tmp_path / "d", allow_plain=True))
    session = Session(b"peer", ROBOT, tiny_robot.model, tiny_robot.digest, tiny_robot.to_dict(), sealed={"ep-1"})
    server.sessions[b"peer"] = session
    sent: list[protocol.Record] = []
    monkeypatch.setattr(server, "_send", lambda sock, identity, record: False)  # the peer's pipe is full
    server._acknowledge(None, session, [])
    assert session.sealed == {"ep-1"}
    monkeypatch.setattr(server, "_send", lambda sock, identity, record: sent.append(record) or True)
    server._acknowledge(None, session, [])
    assert session.sealed == set() and sent[0].sealed == ("ep-1",)


def test_a_flood_of_hellos_is_throttled(ingest, peer) -> None:
    p = peer()
    hello = protocol.Hello(ROBOT, p.robot.model, p.robot.digest, p.robot.to_dict(),
                           pending=tuple(f"{'x' * 60}-{i}" for i in range(512))).encode()
    for _ in range(50):
        p.send(hello)
    wait_for(lambda: ingest.server.stats.messages >= 50, 10, "every HELLO to be handled")
    welcomes = [r for r in p.drain(500) if isinstance(r, protocol.Welcome)]
    assert 1 <= len(welcomes) <= 7
    assert ingest.server.stats.rate_limited >= 40
    assert len(welcomes[0].episodes) == 512 and set(welcomes[0].episodes.values()) == {"unknown"}


def test_a_journal_that_does_not_replay_is_quarantined_at_start(start_ingest, tiny_robot, tmp_path) -> None:
    from pipeline.record_log import RecordWriter

    path = tmp_path / "ingest" / "journal" / ROBOT / f"ep-garbled{JOURNAL_SUFFIX}"
    path.parent.mkdir(parents=True)
    with RecordWriter(path) as writer:  # intact records (CRC fine) that are not a journal's
        writer.append(b"RFJ1" + b'{"robot_id": "tiny-h"}')
        writer.append(b"\x00" * 40)
    ingest = start_ingest()
    assert ingest.server.stats.quarantined == 1 and ingest.thread.is_alive()
    reason = (tmp_path / "ingest" / "quarantine" / ROBOT / "ep-garbled.reason.txt").read_text()
    assert "does not replay" in reason

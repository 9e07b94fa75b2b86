"""The collector agent: runs beside one robot, streams its episodes to the ingest.

Two threads share the spool:

* the **capture** thread polls the driver, batches joint samples, wraps frames,
  numbers every message per stream and appends it to the spool;
* the **link** thread owns the DEALER socket: handshake, sending within the
  credit window, acknowledgements, clock sync, and reconnecting (Lazy Pirate:
  close, reopen, resend what is unacknowledged) when the ingest goes quiet.

Nothing is sent that is not spooled first, so a dead link, a dead ingest or a
killed collector loses nothing: the spool is resent after the handshake.

Every episode is closed and its seal confirmed: the spool remembers each episode
until the ingest says it is sealed, every HELLO asks about all of them
(``Hello.pending``), and the WELCOME states each one's state
(``Welcome.episodes``); an episode a killed collector left open is closed with
an ``interrupted`` stop event after the first handshake of the next start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from collectors.drivers.base import ActionReading, Driver, FrameReading, JointReading
from collectors.spool import Spool
from pipeline import protocol
from pipeline.auth import ClientKeys
from pipeline.errors import HandshakeRefused, ProtocolError, SpoolFullError
from pipeline.protocol.framing import refusal_reason
from pipeline.protocol.records import MAX_PENDING
from pipeline.robot_config import RobotConfig
from pipeline.streams import ACTION, CLOCK, EVENTS, JOINT_STATE

log = logging.getLogger("refinery.collector")

SpoolFullPolicy = Literal["pause", "stop"]


@dataclass(frozen=True)
class CollectorConfig:
    """How one collector runs; every field has a CLI option."""

    robot_id: str
    robot: RobotConfig
    ingest: str
    spool_dir: Path
    spool_budget_bytes: int = 2 << 30
    on_spool_full: SpoolFullPolicy = "pause"
    batch_max_rows: int = 25
    batch_max_age_s: float = 0.02
    resend_timeout_s: float = 2.0
    hello_timeout_s: float = 1.0
    clock_sync_interval_s: float = 0.5
    # Everything acknowledged, an episode not confirmed sealed, nothing heard of it for
    # this long: handshake again, and the WELCOME states it (a seal notice can be lost).
    seal_query_interval_s: float = 5.0
    keys: ClientKeys | None = None
    allow_plain: bool = False
    capture_period_s: float = 0.002


@dataclass
class _Batch:
    capture_ns: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    first_at: float = 0.0


@dataclass
class CollectorStatus:
    link: str
    episode: str
    episode_s: float
    rates: dict[str, float]
    mb_per_s: float
    unacked: int
    spool_mb: float
    ack_lag_ms: float
    resent: int
    paused: bool
    episodes_done: int
    error: str


class Collector:
    """Start with :meth:`start`; drive episodes with :meth:`start_episode` and
    :meth:`stop_episode`; :meth:`close` when done (after :meth:`drain` to wait
    for the ingest to seal everything)."""

    def __init__(self, config: CollectorConfig, driver: Driver) -> None:
        protocol.check_id(config.robot_id, "robot_id")
        if config.keys is None and not config.allow_plain:
            raise HandshakeRefused(
                f"robot {config.robot_id}: no CURVE keys given; pass --key/--ingest-key, or --plain for loopback"
            )
        self.config = config
        self.driver = driver
        self.spool = Spool(config.spool_dir, config.spool_budget_bytes)
        self._lock = threading.RLock()
        self._next_seq: dict[tuple[str, str], int] = {}
        for (episode, stream), seq in self.spool.next_seqs().items():
            self._next_seq[(episode, stream)] = seq
        self._episode: str | None = None
        self._episode_started = 0.0
        self._episode_counter = 0
        self._batches: dict[str, _Batch] = {}
        self._paused = False
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clock_samples: deque[tuple[int, int, int, int]] = deque(maxlen=16)
        self._counts: dict[str, int] = {}
        self._bytes = 0
        self._rate_mark = (time.monotonic(), dict[str, int](), 0)
        self._rates: dict[str, float] = {}
        self._mb_per_s = 0.0
        self.link_state = "connecting"
        self.error = ""
        self.fatal: BaseException | None = None
        self.episodes_done = 0
        self._wake = threading.Event()
        self.window = 1
        self.handshakes = 0  # WELCOMEs received: 1 + reconnections
        self._ingest_notice = ""
        self._stop_request: tuple[str, int] | None = None  # (outcome, stop time) for the capture thread
        self._stop_done = threading.Event()
        self._marker = config.spool_dir / "episode.open"
        self._interrupted = set(self.spool.recovered_without_stop)
        if self._marker.exists():
            self._interrupted.add(self._marker.read_text().strip())
        self._interrupted.discard("")
        # A spool written before unsealed.json existed, or a collector killed between
        # its marker and its first message: wait on those episodes' seals too.
        for episode in sorted(self._interrupted | set(self.spool.pending_episodes())):
            self.spool.expect_seal(episode)
        self._failed: dict[str, str] = {}  # episode -> why the ingest can never seal it

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._running.set()
        for name, target in (("capture", self._capture_loop), ("link", self._link_loop)):
            thread = threading.Thread(target=target, name=f"{self.config.robot_id}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        if self._episode is not None:
            self.stop_episode("interrupted")
        self._running.clear()
        for thread in self._threads:
            thread.join(timeout=5)
        self.driver.close()
        self.spool.close()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every message is acknowledged and every episode sealed.

        Returns True then; False when ``timeout_s`` runs out first, or when nothing
        is left to wait for but some episode can never be sealed
        (:meth:`failed_episodes`). Raises what ended the link (a refused handshake).
        """
        deadline = time.monotonic() + timeout_s
        while self.waiting():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return not self._failed

    def waiting(self) -> bool:
        """True while messages are unacknowledged or episodes unclosed or unsealed."""
        if self.fatal is not None:
            raise self.fatal
        return bool(self.spool.unacked() or self.unsealed_episodes())

    def unsealed_episodes(self) -> list[str]:
        """Episodes recorded (or interrupted) whose seal the ingest has not confirmed yet."""
        with self._lock:
            return sorted(set(self.spool.unsealed()) | self._interrupted)

    def unclosed_episodes(self) -> list[str]:
        """Episodes a killed collector left open that are not closed yet (no handshake since)."""
        with self._lock:
            return sorted(self._interrupted)

    def failed_episodes(self) -> dict[str, str]:
        """Episodes the ingest says it can never seal, with the reason."""
        with self._lock:
            return dict(self._failed)

    def _close_interrupted(self, ingest_acked: dict[str, dict[str, int]], states: dict[str, str]) -> None:
        """A collector killed mid-episode left it without a stop event. Close it after
        the first handshake, numbering the stop after everything the spool or the
        ingest holds, so the ingest can seal what was recorded."""
        with self._lock:
            for episode in sorted(self._interrupted):
                if self.spool.is_sealed(episode) or states.get(episode) in ("sealed", "sealing", "quarantined"):
                    continue  # the ingest closed it itself (abandoned: sealed as incomplete), or gave it up
                for stream, seq in ingest_acked.get(episode, {}).items():
                    key = (episode, stream)
                    self._next_seq[key] = max(self._next_seq.get(key, 0), seq + 1)
                if not any(e == episode for e, _ in self._next_seq):
                    # Neither side holds anything of it (killed before its first message).
                    log.info("robot=%s episode=%s was interrupted before anything was recorded",
                             self.config.robot_id, episode)
                    self.spool.forget(episode)
                    continue
                log.warning(
                    "robot=%s episode=%s was interrupted by a collector restart; closing it",
                    self.config.robot_id, episode,
                )
                self._emit_stop(episode, "interrupted", reason="collector restarted")
            self._interrupted.clear()
            self._marker.unlink(missing_ok=True)

    # ------------------------------------------------------------------ operator controls

    def start_episode(self, task: str = "", operator: str = "") -> str:
        with self._lock:
            if self._episode is not None:
                self.stop_episode("interrupted")
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            self._episode_counter += 1
            episode = f"{self.config.robot_id}-{stamp}-{uuid.uuid4().hex[:6]}"
            t0 = time.time_ns()
            self.driver.start(t0)
            self._write_marker(episode)
            self.spool.expect_seal(episode)
            self._episode = episode
            self._episode_started = time.monotonic()
            self._batches = {}
            self._paused = False
            self._emit_event(episode, {"kind": "start", "task": task, "operator": operator, "t0_ns": t0})
            for sample in list(self._clock_samples):
                self._emit_clock(episode, *sample)
            log.info("robot=%s episode=%s started task=%r", self.config.robot_id, episode, task)
            return episode

    def stop_episode(self, outcome: str = "success") -> str | None:
        """End the current episode: ``success``, ``failure``, ``discarded`` or ``interrupted``.

        The episode ends at the moment of this call: the capture thread records
        what the robot captured up to then (even if it is behind), closes the
        episode, and this call returns once it has.
        """
        with self._lock:
            episode = self._episode
            if episode is None:
                return None
            if self._stop_request is None:
                self._stop_request = (outcome, time.time_ns())
                self._stop_done = threading.Event()
            done = self._stop_done
            capture = next((t for t in self._threads if t.name.endswith("-capture")), None)
        if capture is not None and capture.is_alive():
            done.wait(timeout=30)
        with self._lock:
            if self._episode == episode and self._stop_request is not None:
                self._finish_stop()  # no capture thread (not started, or stuck): do it here
        return episode

    def _finish_stop(self) -> None:
        """Record the rest up to the requested stop time and close the episode (holding the lock)."""
        episode, request = self._episode, self._stop_request
        if episode is None or request is None:
            return
        outcome, until_ns = request
        try:
            self._record(episode, self.driver.poll(until_ns), final=True)
        except SpoolFullError as err:
            self.error = str(err)  # the stop event below may exceed the budget; nothing else does
        self._episode = None
        self._emit_stop(episode, outcome)
        self._marker.unlink(missing_ok=True)
        self.episodes_done += 1
        self._stop_request = None
        self._stop_done.set()
        log.info("robot=%s episode=%s stopped outcome=%s", self.config.robot_id, episode, outcome)

    def label(self, text: str) -> None:
        with self._lock:
            if self._episode is not None:
                self._emit_event(self._episode, {"kind": "label", "text": text})

    def set_task(self, task: str) -> None:
        with self._lock:
            if self._episode is not None:
                self._emit_event(self._episode, {"kind": "task", "task": task})

    def _write_marker(self, episode: str) -> None:
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(episode)
        os.replace(tmp, self._marker)

    @property
    def episode(self) -> str | None:
        return self._episode

    # ------------------------------------------------------------------ message building

    def _take_seq(self, episode: str, stream: str) -> int:
        key = (episode, stream)
        seq = self._next_seq.get(key, 0)
        self._next_seq[key] = seq + 1
        return seq

    def _spool(self, episode: str, stream: str, seq: int, frames: list[bytes], force: bool = False) -> None:
        try:
            self.spool.append(frames, episode, stream, seq, force=force)
        except SpoolFullError:
            self._next_seq[(episode, stream)] = seq  # the number was not used
            raise
        self._counts[stream] = self._counts.get(stream, 0) + 1
        self._bytes += sum(len(f) for f in frames)
        self._wake.set()

    def _header(self, episode: str, stream: str, seq: int, capture_ns: int, index: int = 0) -> protocol.DataHeader:
        return protocol.DataHeader(self.config.robot_id, episode, stream, seq, capture_ns, index)

    def _emit_event(self, episode: str, body: dict) -> None:
        seq = self._take_seq(episode, EVENTS)
        record = protocol.Event(self._header(episode, EVENTS, seq, time.time_ns()), body)
        self._spool(episode, EVENTS, seq, record.encode(), force=True)

    def _emit_stop(self, episode: str, outcome: str, reason: str = "") -> None:
        last = {stream: seq - 1 for (e, stream), seq in self._next_seq.items() if e == episode}
        last[EVENTS] = self._next_seq.get((episode, EVENTS), 0)  # the stop event's own seq
        body = {"kind": "stop", "outcome": outcome, "last_seq": last}
        if reason:
            body["reason"] = reason
        self._emit_event(episode, body)

    def _emit_clock(self, episode: str, t1: int, t2: int, t3: int, t4: int) -> None:
        seq = self._take_seq(episode, CLOCK)
        record = protocol.ClockSample(self._header(episode, CLOCK, seq, t1), t1, t2, t3, t4)
        self._spool(episode, CLOCK, seq, record.encode(), force=True)

    def _emit_batch(self, episode: str, stream: str, batch: _Batch) -> None:
        seq = self._take_seq(episode, stream)
        record = protocol.Samples.build(
            self.config.robot_id, episode, stream, seq,
            np.array(batch.capture_ns, dtype=np.int64), np.array(batch.index, dtype=np.int64), np.stack(batch.rows),
        )
        self._spool(episode, stream, seq, record.encode())

    def _emit_frame(self, episode: str, reading: FrameReading) -> None:
        seq = self._take_seq(episode, reading.camera)
        header = self._header(episode, reading.camera, seq, reading.capture_ns, reading.index)
        self._spool(episode, reading.camera, seq, protocol.Frame(header, reading.jpeg).encode())

    # ------------------------------------------------------------------ capture thread

    def _capture_loop(self) -> None:
        period = self.config.capture_period_s
        while self._running.is_set():
            with self._lock:
                episode, stopping = self._episode, self._stop_request is not None
                if episode is not None and stopping:
                    self._finish_stop()
                    continue
            if episode is not None:
                # Poll outside the lock: a driver may render or encode for a while,
                # and operator controls must not wait behind it.
                readings = self.driver.poll(time.time_ns())
                with self._lock:
                    if self._episode == episode:
                        try:
                            self._record(episode, readings, final=False)
                        except SpoolFullError as err:
                            self._spool_full(err)
            self._update_rates()
            time.sleep(period)

    def _record(self, episode: str, readings: list, final: bool) -> None:  # noqa: ANN001
        """Batch and spool readings of the current episode (holding the lock)."""
        if self._paused:
            if self.spool.bytes_used < 0.9 * self.spool.budget_bytes:
                self._paused = False
                self._emit_event(episode, {"kind": "resume", "reason": "spool has room again"})
                self.error = ""
            else:
                return  # paused: the operator was told; these readings are not recorded
        now = time.monotonic()
        for reading in readings:
            if isinstance(reading, JointReading):
                row = np.concatenate([reading.position, reading.velocity, reading.effort])
                self._add_row(episode, JOINT_STATE, reading.capture_ns, reading.index, row, now)
            elif isinstance(reading, ActionReading):
                self._add_row(episode, ACTION, reading.capture_ns, reading.index, reading.position, now)
            elif isinstance(reading, FrameReading):
                self._emit_frame(episode, reading)
        for stream, batch in list(self._batches.items()):
            if batch.rows and (final or now - batch.first_at >= self.config.batch_max_age_s):
                self._emit_batch(episode, stream, batch)
                self._batches[stream] = _Batch()

    def _add_row(self, episode: str, stream: str, capture_ns: int, index: int, row: np.ndarray, now: float) -> None:
        batch = self._batches.setdefault(stream, _Batch())
        if not batch.rows:
            batch.first_at = now
        batch.capture_ns.append(capture_ns)
        batch.index.append(index)
        batch.rows.append(np.asarray(row, dtype=np.float64))
        if len(batch.rows) >= self.config.batch_max_rows:
            self._emit_batch(episode, stream, batch)
            self._batches[stream] = _Batch()

    def _spool_full(self, err: SpoolFullError) -> None:
        self.error = str(err)
        episode = self._episode
        if episode is None:
            return
        if self.config.on_spool_full == "stop":
            log.error("robot=%s: %s; stopping the episode (--on-spool-full stop)", self.config.robot_id, err)
            self._episode = None
            self._emit_stop(episode, "interrupted", reason="spool full")
            self._marker.unlink(missing_ok=True)
            self.episodes_done += 1
            if self._stop_request is not None:
                self._stop_request = None
                self._stop_done.set()
        elif not self._paused:
            log.error("robot=%s: %s; recording paused until it drains (--on-spool-full pause)", self.config.robot_id, err)
            self._paused = True
            self._batches = {}
            self._emit_event(episode, {"kind": "pause", "reason": "spool full"})

    # ------------------------------------------------------------------ link thread

    def _link_loop(self) -> None:
        context = zmq.Context()
        try:
            while self._running.is_set():
                sock = self._connect(context)
                if sock is None:
                    continue
                try:
                    self._serve(sock)
                except _Reconnect as why:
                    self.link_state = f"reconnecting: {why}"
                finally:
                    sock.close(0)
        except HandshakeRefused as err:
            self.fatal = err
            self.error = str(err)
            self.link_state = "refused"
            log.error("%s", err)
        finally:
            context.term()

    def _connect(self, context: zmq.Context) -> zmq.Socket | None:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.IDENTITY, f"{self.config.robot_id}:{uuid.uuid4().hex[:8]}".encode())
        monitor = None
        if self.config.keys is not None:
            self.config.keys.apply(sock)
            # A CURVE key the ingest does not allow fails silently at the ZeroMQ
            # level; the socket monitor is the only place that says so.
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        welcomed = False
        try:
            sock.connect(self.config.ingest)
            welcomed = self._handshake(sock, monitor)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            if not welcomed:
                sock.close(0)
        return sock if welcomed else None

    def _handshake(self, sock: zmq.Socket, monitor: zmq.Socket | None) -> bool:
        """Say HELLO until WELCOME (True), a timeout (False) or a refusal (raises)."""
        hello = protocol.Hello(
            robot_id=self.config.robot_id,
            model=self.config.robot.model,
            config_digest=self.config.robot.digest,
            config=self.config.robot.to_dict(),
            software=f"refinery-collector pid={os.getpid()}",
            pending=tuple(self._asked_about()),
        )
        deadline = time.monotonic() + self.config.hello_timeout_s
        sent = False
        while self._running.is_set() and time.monotonic() < deadline:
            if monitor is not None and monitor.poll(0):
                event = recv_monitor_message(monitor)
                raise HandshakeRefused(
                    f"robot {self.config.robot_id}: the ingest rejected this collector's CURVE key "
                    f"(event {event['event']}): ask its operator to add this collector's public key "
                    "to the ingest's --allow folder, and check --ingest-key is the ingest's public key"
                )
            if not sent:
                try:
                    sock.send_multipart(hello.encode(), zmq.NOBLOCK)
                    sent = True
                except zmq.Again:
                    time.sleep(0.02)  # IMMEDIATE: no connection yet
                    continue
            if sock.poll(50):
                frames = sock.recv_multipart()
                reason = refusal_reason(frames)
                if reason is not None:
                    raise HandshakeRefused(f"robot {self.config.robot_id}: ingest refused the handshake: {reason}")
                try:
                    record = protocol.decode(frames)
                except ProtocolError as err:
                    log.warning("robot=%s: unreadable reply to HELLO: %s", self.config.robot_id, err)
                    continue
                if isinstance(record, protocol.Welcome):
                    self.spool.set_acked(record.acked, record.sealed)
                    if self._interrupted:
                        self._close_interrupted(record.acked, record.episodes)
                    self._adopt_states(record.episodes)
                    self.window = record.window
                    self.handshakes += 1
                    resent = self.spool.rewind()
                    self.link_state = "up"
                    log.info("robot=%s connected to %s; resending %d", self.config.robot_id, self.config.ingest, resent)
                    return True
        self.link_state = "down: ingest unreachable, spooling"
        return False

    def _seal_overdue(self) -> bool:
        """Everything acknowledged, yet an ended episode is not confirmed sealed."""
        with self._lock:
            ended = set(self.spool.unsealed()) - {self._episode}
        return bool(ended) and self.spool.unacked() == 0

    def _asked_about(self) -> list[str]:
        """What a HELLO asks the ingest about: every episode still waited on.

        Interrupted episodes first (they must be closed); at most MAX_PENDING, the
        ingest's limit: the rest are asked about at a later handshake.
        """
        with self._lock:
            interrupted = sorted(self._interrupted)
            rest = sorted(set(self.spool.pending_episodes()) - self._interrupted)
        return (interrupted + rest)[:MAX_PENDING]

    def _adopt_states(self, states: dict[str, str]) -> None:
        """Act on the WELCOME's state of each episode asked about (empty from older ingests)."""
        waited_on = set(self.spool.unsealed())
        for episode, state in states.items():
            if episode not in waited_on:
                continue  # sealed, or forgotten as interrupted before anything was recorded
            if state == "sealed":
                self.spool.mark_sealed(episode)
            elif state == "quarantined":
                self._give_up(episode, "quarantined by the ingest (it could not be sealed)")
            elif state == "unknown" and not self.spool.has_entries(episode) and episode != self._episode:
                self._give_up(episode, "unknown to the ingest, and this spool holds nothing of it to send")

    def _give_up(self, episode: str, why: str) -> None:
        with self._lock:
            if episode in self._failed:
                return
            self._failed[episode] = why
            self.spool.forget(episode)
        log.error("robot=%s episode=%s %s", self.config.robot_id, episode, why)

    def _serve(self, sock: zmq.Socket) -> None:
        """Send within the credit window and read replies until the ingest goes quiet.

        A live ingest answers every clock-sync request, so silence longer than
        ``resend_timeout_s`` means the link or the ingest is gone: reconnect.
        An ingest that answers but does not acknowledge (its disk is slow or
        full, or it dropped messages after a gap) gets the unacknowledged
        messages again (go-back-N), on the same connection.
        """
        last_heard = last_progress = last_news = time.monotonic()
        next_clock = 0.0
        while self._running.is_set():
            now = time.monotonic()
            if now >= next_clock:
                try:
                    sock.send_multipart(protocol.TimeRequest(time.time_ns()).encode(), zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_clock = now + self.config.clock_sync_interval_s
            in_flight = self.spool.in_flight()
            while in_flight < self.window:
                frames = self.spool.next_to_send()
                if frames is None:
                    break
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK, copy=len(frames[-1]) < 65536)
                except zmq.Again:
                    self.spool.unsend()
                    break
                in_flight += 1
            if in_flight == 0:
                last_progress = now
            if sock.poll(5):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    last_heard = time.monotonic()
                    if self._on_message(frames):
                        last_progress = last_news = last_heard
            elif now - last_heard > self.config.resend_timeout_s:
                log.warning(
                    "robot=%s: nothing from the ingest for %.1f s; reconnecting", self.config.robot_id, now - last_heard
                )
                self.link_state = "down: ingest silent, spooling"
                return
            elif not in_flight:
                self._wake.wait(0.005)
                self._wake.clear()
            if now - last_news > self.config.seal_query_interval_s:
                last_news = now
                if self._seal_overdue():
                    log.info("robot=%s: episodes acknowledged but not confirmed sealed for %.0f s; asking the ingest",
                             self.config.robot_id, self.config.seal_query_interval_s)
                    raise _Reconnect("asking the ingest which episodes are sealed")
            if in_flight and now - last_progress > self.config.resend_timeout_s:
                resent = self.spool.rewind()
                log.info("robot=%s: no acknowledgement for %.1f s; resending %d", self.config.robot_id,
                         now - last_progress, resent)
                last_progress = now

    def _on_message(self, frames: list[bytes]) -> bool:
        """Handle one message from the ingest; True when it acknowledged something."""
        reason = refusal_reason(frames)
        if reason is not None:
            raise HandshakeRefused(f"robot {self.config.robot_id}: ingest refused: {reason}")
        try:
            record = protocol.decode(frames)
        except ProtocolError as err:
            log.warning("robot=%s: unreadable message from the ingest: %s", self.config.robot_id, err)
            return False
        if isinstance(record, protocol.Ack):
            for episode, stream, seq in record.acks:
                self.spool.ack(episode, stream, seq)
            for episode in record.sealed:
                self.spool.mark_sealed(episode)
            if record.acks and self.error == self._ingest_notice:
                self.error = self._ingest_notice = ""  # the ingest is acknowledging again
            return True
        if isinstance(record, protocol.TimeReply):
            t4 = time.time_ns()
            sample = (record.t1_ns, record.t2_ns, record.t3_ns, t4)
            with self._lock:
                self._clock_samples.append(sample)
                if self._episode is not None:
                    self._emit_clock(self._episode, *sample)
            return False
        if isinstance(record, protocol.Notice):
            self.error = self._ingest_notice = f"ingest: {record.message}"
            log.warning("robot=%s: ingest says: %s", self.config.robot_id, record.message)
            if record.level == "handshake":
                raise _Reconnect("the ingest lost our session")
        return False

    # ------------------------------------------------------------------ status

    def _update_rates(self) -> None:
        now = time.monotonic()
        mark_t, mark_counts, mark_bytes = self._rate_mark
        if now - mark_t >= 1.0:
            dt = now - mark_t
            self._rates = {s: (n - mark_counts.get(s, 0)) / dt for s, n in self._counts.items()}
            self._mb_per_s = (self._bytes - mark_bytes) / dt / 1e6
            self._rate_mark = (now, dict(self._counts), self._bytes)

    def totals(self) -> tuple[dict[str, int], int]:
        """Messages spooled per stream and bytes spooled since start (for metrics)."""
        return dict(self._counts), self._bytes

    def status(self) -> CollectorStatus:
        return CollectorStatus(
            link=self.link_state,
            episode=self._episode or "-",
            episode_s=time.monotonic() - self._episode_started if self._episode else 0.0,
            rates=dict(self._rates),
            mb_per_s=self._mb_per_s,
            unacked=self.spool.unacked(),
            spool_mb=self.spool.bytes_used / 1e6,
            ack_lag_ms=self.spool.last_ack_latency_s * 1000,
            resent=self.spool.resent,
            paused=self._paused,
            episodes_done=self.episodes_done,
            error=self.error,
        )


class _Reconnect(Exception):
    """Handshake again: the ingest lost our session (it restarted), or a seal is overdue."""

"""The ingest service: many collectors in, durable raw episodes out.

One ROUTER socket, one event loop. The loop drains the socket without
blocking, checks each message from its header alone (a data message's payload
is journaled as received, large frames without a copy) and queues every
accepted one to its episode's journal on the writer thread
(:mod:`pipeline.journal_writer`: CRC and ``writev`` run beside the loop);
every ``commit_interval`` the dirty journals are fsynced together (group
commit, once the writer has passed the commit's barrier) and only then does
each collector get one cumulative acknowledgement per stream, sent as soon as
the fsyncs are done (the commit's worker wakes the loop through a pipe). A collector never has more than
``window`` unacknowledged messages in flight, so a slow disk slows the acks
and therefore the collectors (which spool), and the ingest's memory stays
bounded. Episodes are sealed into HDF5 once their stop event and every
stream up to its last sequence number are durable, by worker processes
(:mod:`pipeline.seal_workers`) that have a GIL of their own and run on the
CPU time the ingest leaves.

Trust: with CURVE, every message carries its sender's public key (the ZAP
``User-Id``); a session belongs to the key that said HELLO, a robot id to the
keys the allow-list names, and an episode to the key that opened it. Every
field is checked at the door (:mod:`pipeline.protocol.validation`) before it
touches any state; per-robot limits bound rate, size and duration. A journal
that cannot be sealed is moved to ``quarantine/`` and the ingest serves on.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from pipeline import protocol
from pipeline.auth import AllowList, ServerKeys
from pipeline.errors import BindError, ConfigError, JournalSyncFailed, ProtocolError, StoreError
from pipeline.journal import (
    JOURNAL_SUFFIX,
    EpisodeJournal,
    EpisodeMeta,
    quarantine_journal,
    quarantine_path,
    quarantine_records,
)
from pipeline.heap import calm_garbage_collector, trim_heap
from pipeline.journal_writer import Barrier, JournalWriter
from pipeline.observability.ingest_counters import IngestCounters, RobotCounters
from pipeline.protocol.validation import DEFAULT_MAX_TEXT_CHARS, MAX_JSON_BYTES, StreamRules, screen_event_body
from pipeline.raw_store import raw_path, seal_recovered
from pipeline.record_log import RecordAppender
from pipeline.robot_config import parse_robot_config
from pipeline.router_receive import IMPLEMENTATION as RECEIVE_IMPLEMENTATION
from pipeline.router_receive import Received, receive_batch
from pipeline.seal_workers import BrokenProcessPool, SealFailed, SealJob, SealWorkers
from pipeline.shared_journal import (
    DEFAULT_GRADUATE_AFTER_S,
    DEFAULT_SEGMENT_BYTES,
    DEFAULT_SPARE_SEGMENTS,
    SHARED_DIR,
    SharedJournal,
    episode_tag,
)
from pipeline.thread_names import name_os_thread

log = logging.getLogger("refinery.ingest")

_DATA_OPCODES = protocol.DATA_OPCODES
_EVENT = protocol.Opcode.EVENT

DEFAULT_WINDOW = 128  # messages; a robot needs ~10 in flight at 190 msg/s, and memory is window x collectors
MAX_ACKS_PER_MESSAGE = 4096
ZERO_COPY_BYTES = 64 * 1024  # a view of ZeroMQ's buffer pays off above about 64 KB, a copy is cheaper below
RECEIVE_BATCH = 256  # messages received in a row before the loop looks at its timers again
COMMIT_TURN_MESSAGES = 32  # messages handled between two looks at the group commit (about 1 ms)
FSYNC_THREADS = 32  # a commit fsyncs every dirty journal at once: one thread each for up to 32 open episodes
HEAP_TRIM_ROUNDS = 10  # housekeeping rounds (seconds) between returning freed heap memory to the OS
DEFAULT_SEAL_WORKERS = 2  # one seals about 28 G1s recording without pause, two about 53 (README, "Sealing a fleet")
SEAL_ATTEMPTS = 3  # a seal whose worker process died is tried again, up to this many times
SEAL_ROOM_RETRY_S = (2.0, 60.0)  # a seal that failed (disk full, an I/O error) is tried again after 2, 4, ... 60 s
HELLO_BURST = 5  # HELLOs one connection may send at once; then one a second (a HELLO may ask about 4,096 episodes)


@dataclass(frozen=True)
class IngestLimits:
    """What one robot may send; every field has a CLI option.

    Defaults leave room for the largest robot here (a G1 with three 640x480
    cameras streams about 7 MB/s, a 10-minute episode about 4 GB) while
    bounding what one misbehaving collector can cost everyone else.
    """

    max_bytes_per_s: float = 64e6  # per robot, averaged over burst_s
    burst_s: float = 2.0
    max_episode_bytes: int = 32_000_000_000
    max_episode_s: float = 4 * 3600.0  # capture time from the episode's first message
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # task, operator, label, outcome, reason
    max_open_episodes: int = 16  # per robot, open at once


@dataclass(frozen=True)
class IngestConfig:
    """How the ingest service runs; every field has a CLI option."""

    data_dir: Path
    bind: str = "tcp://127.0.0.1:5555"
    window: int = DEFAULT_WINDOW
    commit_interval_s: float = 0.01
    gather_s: float = 0.002  # after a receive that emptied the socket, let the next messages gather this long
    max_message_bytes: int = 32 * 1024 * 1024
    abandon_after_s: float = 600.0
    keys: ServerKeys | None = None
    allow_plain: bool = False
    limits: IngestLimits = IngestLimits()
    session_timeout_s: float = 15.0  # a collector sends a clock-sync request every 0.5 s
    inject_sync_delay_s: float = 0.0  # fault injection: a slow disk, for backpressure tests
    journal_segment_bytes: int = DEFAULT_SEGMENT_BYTES  # the shared journal's file size before the next one starts
    journal_direct_io: bool = True  # the shared journal bypasses the page cache where the file system allows
    journal_spare_segments: int = DEFAULT_SPARE_SEGMENTS  # freed shared segments kept to be written over
    graduate_after_s: float = DEFAULT_GRADUATE_AFTER_S  # an episode pinning older shared segments moves to a file
    seal_workers: int = DEFAULT_SEAL_WORKERS  # processes that seal episodes at once; 0: one thread of the ingest


@dataclass
class IngestStats:
    messages: int = 0
    bytes: int = 0
    accepted: int = 0
    duplicates: int = 0
    gaps: int = 0
    malformed: int = 0
    refused: int = 0
    unknown_session: int = 0
    identity_refused: int = 0
    refused_fields: int = 0
    rate_limited: int = 0
    limited: int = 0
    quarantined: int = 0
    sessions_freed: int = 0
    sealed: int = 0
    sealed_incomplete: int = 0
    commits: int = 0
    disk_errors: int = 0
    last_error: str = ""


@dataclass
class Session:
    """One connected collector, identified by its ROUTER identity."""

    identity: bytes
    robot_id: str
    model: str
    config_digest: str
    config: dict
    key: str = ""  # the CURVE public key (Z85) that said HELLO; "" without CURVE
    rules: StreamRules = field(default_factory=lambda: StreamRules({}, frozenset()))
    last_heard: float = 0.0
    tokens: float = 0.0  # byte-rate bucket
    tokens_at: float = 0.0
    notice_after: dict[str, float] = field(default_factory=dict)  # notice topic -> next time it may be sent
    dirty: set[tuple[str, str]] = field(default_factory=set)  # (episode, stream) to acknowledge
    sealed: set[str] = field(default_factory=set)  # episodes to report sealed
    counters: RobotCounters = field(default_factory=lambda: RobotCounters(""))  # its robot's, for metrics


class IngestServer:
    """Run with :meth:`run`; stop from another thread with :meth:`stop`."""

    def __init__(self, config: IngestConfig) -> None:
        if config.keys is None and not config.allow_plain:
            raise ConfigError(
                "ingest", "keys", "no CURVE keys given: pass --keys/--allow, or --plain for a loopback demo or test"
            )
        if config.window < 1:
            raise ConfigError("ingest", "window", f"must be >= 1, got {config.window}")
        self.config = config
        self.limits = config.limits
        self.data_dir = config.data_dir
        self.stats = IngestStats()
        self.counters = IngestCounters()  # per robot, read by pipeline.observability at scrape time
        self.allow: AllowList | None = config.keys.load_allow_list() if config.keys is not None else None
        self.sessions: dict[bytes, Session] = {}
        self.robots: dict[str, bytes] = {}  # robot id -> identity of its live session
        self.journals: dict[tuple[str, str], EpisodeJournal] = {}
        self.open_by_robot: dict[str, set[str]] = {}
        self.sealing: dict[tuple[str, str], Future[Path]] = {}
        self._sealing_journals: dict[tuple[str, str], EpisodeJournal] = {}
        self._shared: SharedJournal | None = None  # opened by run()
        self.last_activity: dict[tuple[str, str], float] = {}
        self._dirty_journals: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        # A seal thread waits for the journal writer, then for its worker process.
        self._seal_pool = ThreadPoolExecutor(max_workers=max(1, config.seal_workers), thread_name_prefix="seal",
                                             initializer=name_os_thread)
        self._seal_workers: SealWorkers | None = None  # started by run()
        self._fsync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit", initializer=name_os_thread)
        self._sync_workers = ThreadPoolExecutor(max_workers=FSYNC_THREADS, thread_name_prefix="fsync", initializer=name_os_thread)
        self._journal_writer: JournalWriter | None = None  # started by run(); without it appends are synchronous
        self._commit_future: Future[list[OSError | None]] | None = None
        self._next_commit = 0.0  # monotonic time the next group commit is due
        self._sync_failed = False
        # (dirty journals, acks by peer, complete episodes, (journal, failure mark, next seqs) of each acknowledged)
        self._commit_snapshot: tuple[list[tuple[tuple[str, str], EpisodeJournal]],
                                     dict[bytes, list[tuple[str, str, int]]], list[tuple[str, str]],
                                     list[tuple[EpisodeJournal, int, dict[str, int]]]] | None = None
        self._final_acks: dict[tuple[str, str], dict[str, int]] = {}
        self._disk_error: str = ""
        self._notice_after = 0.0
        self._hello_hints: dict[bytes, float] = {}
        self._disk_notice_after: dict[bytes, float] = {}
        self._log_after: dict[str, float] = {}
        self._hello_budget: dict[bytes, tuple[float, float]] = {}  # identity -> (HELLOs left, when)
        self.endpoint = ""
        self.ready = threading.Event()
        self._wake_read = self._wake_write = -1  # a pipe while run() serves: commit workers wake the loop

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()

    def recover(self, shared_journals: Iterable[EpisodeJournal] = ()) -> None:
        """Reopen every journal a previous run left (journal files, and the episodes
        of the shared journal, already replayed by :meth:`_open_shared_journal`);
        seal those already complete.

        A journal that does not replay is quarantined, never left to fail again
        at the next start."""
        recovered = list(shared_journals)
        for path in sorted((self.data_dir / "journal").glob(f"*/*{JOURNAL_SUFFIX}")):
            robot_id, episode_id = path.parent.name, path.name[: -len(JOURNAL_SUFFIX)]
            try:
                journal = EpisodeJournal.recover(path)
            except StoreError as err:
                self._quarantine(path, robot_id, episode_id, f"journal does not replay: {err}")
                continue
            except Exception as err:  # noqa: BLE001 - no journal may stop the ingest at every start
                self._quarantine(path, robot_id, episode_id, f"journal does not replay: {type(err).__name__}: {err}")
                continue
            if raw_path(self.data_dir, *journal.key).exists():
                # Sealed before the crash, journal not yet deleted.
                journal.close()
                path.unlink()
                continue
            recovered.append(journal)
        for journal in recovered:
            key = journal.key
            self._add_journal(key, journal)
            self._limit_check_recovered(journal)
            log.info("recovered journal robot=%s episode=%s streams=%s", *key, journal.acked)
            if journal.complete:
                self._start_seal(key)

    def _open_shared_journal(self) -> tuple[SharedJournal, list[EpisodeJournal]]:
        """Replay the shared journal (before its writer thread owns it); quarantine
        the episodes whose records do not replay."""
        journal_dir = self.data_dir / "journal"
        # Journal files (graduated, or from earlier versions) are the whole truth for their episodes.
        # (A robot named "shared" has its journal files beside the segments: those are .rfl, so no clash.)
        graduated = {(p.parent.name, p.name[: -len(JOURNAL_SUFFIX)]) for p in journal_dir.glob(f"*/*{JOURNAL_SUFFIX}")}
        shared, found = SharedJournal.recover(
            journal_dir / SHARED_DIR,
            is_finished=lambda key: (raw_path(self.data_dir, *key).exists()
                                     or quarantine_path(self.data_dir, *key).exists()),
            skip=graduated,
            segment_bytes=self.config.journal_segment_bytes,
            graduate_after_s=self.config.graduate_after_s,
            direct_io=self.config.journal_direct_io,
            spare_segments=self.config.journal_spare_segments,
        )
        for key, reason in found.unreadable.items():
            places = found.unreadable_places[key]
            if not self._quarantine_records(shared.read_payloads(places, episode_tag(*key)), key,
                                            f"journal does not replay: {reason}", str(shared.directory)):
                shared.keep(key, places)  # what could not be copied out stays
        shared.collect()
        return shared, found.journals

    def _limit_check_recovered(self, journal: EpisodeJournal) -> None:
        if not journal.limit and journal.size > self.limits.max_episode_bytes:
            journal.mark_limit(f"episode bytes above {self.limits.max_episode_bytes:,}")
            self._dirty_journals.add(journal.key)

    def run(self) -> None:
        """Serve until :meth:`stop` is called.

        Raises:
            BindError: cannot listen on ``config.bind`` (port in use, bad address).
            Exception: anything unexpected; the caller must exit non-zero.
        """
        if threading.current_thread() is not threading.main_thread():
            name_os_thread()  # the event loop's thread, as `top -H` shows it (the main thread keeps the process name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        context = zmq.Context()
        sock = context.socket(zmq.ROUTER)
        auth = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
            if self.config.keys is not None:
                auth = self.config.keys.apply(context, sock, self.allow)
            self._bind(sock)
            self._shared, shared_journals = self._open_shared_journal()
            self._journal_writer = JournalWriter(shared=self._shared, graduate_to=self.data_dir / "journal")
            if self.config.seal_workers > 0:
                self._seal_workers = SealWorkers(self.config.seal_workers)
            self.recover(shared_journals)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("ingest listening on %s, data in %s (receive: %s)", self.endpoint, self.data_dir, RECEIVE_IMPLEMENTATION)
            self.ready.set()
            with calm_garbage_collector():
                self._loop(sock)
        finally:
            try:
                if (self._commit_future is not None or self._dirty_journals) and not self._sync_failed:
                    self._commit(sock, wait=True)
            finally:
                self._seal_pool.shutdown(wait=True)
                if self._seal_workers is not None:
                    self._seal_workers.shutdown()
                self._fsync_pool.shutdown(wait=True)
                self._sync_workers.shutdown(wait=True)
                if self._journal_writer is not None:
                    self._journal_writer.close()
                for journal in self.journals.values():
                    journal.close()
                sock.close(0)
                if auth is not None:
                    auth.stop()
                context.term()
                os.close(self._wake_read)
                os.close(self._wake_write)

    def _bind(self, sock: zmq.Socket) -> None:
        endpoint = self.config.bind
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as err:
            if err.errno == errno.EADDRINUSE:
                port = endpoint.rsplit(":", 1)[-1]
                raise BindError(
                    endpoint, f"port {port} is in use (--bind {endpoint}): stop what listens there or choose another port"
                ) from err
            raise BindError(
                endpoint,
                f"--bind {endpoint!r} is not an address this host can listen on ({err.strerror}); "
                "expected e.g. tcp://*:5555 or tcp://10.0.0.5:5555",
            ) from err

    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        commit_poller = zmq.Poller()
        commit_poller.register(self._wake_read, zmq.POLLIN)
        gather_ms = self.config.gather_s * 1000
        self._next_commit = time.monotonic() + self.config.commit_interval_s
        next_housekeeping = time.monotonic() + 1.0
        housekeeping_rounds = 0
        # With CURVE every message carries its sender's key as the User-Id
        # property, readable only from frames received without copying.
        authenticated = self.config.keys is not None
        while not self._stop.is_set():
            now = self._commit_turn(sock)
            if now >= next_housekeeping:
                self._housekeeping(sock)
                next_housekeeping = now + 1.0
                housekeeping_rounds += 1
                if housekeeping_rounds % HEAP_TRIM_ROUNDS == 0:
                    # Not on this thread: malloc_trim can take tens of milliseconds
                    # under load, a stall every acknowledgement would wait for.
                    self._seal_pool.submit(trim_heap)
            wait_until = next_housekeeping if self._commit_future is not None else min(self._next_commit, next_housekeeping)
            ready = dict(poller.poll(max(0.0, (wait_until - now) * 1000)))
            if ready.get(self._wake_read):
                self._drain_wake_pipe()
            if not ready.get(sock):
                continue
            # A bounded batch, then the timers get their turn again; the commit gets
            # it within the batch too: a batch of 256 takes about 10 ms to handle,
            # and acknowledgements whose fsync is done should not wait for its end.
            batch = self._receive(sock, authenticated)
            for handled, (identity, key, message, arrival_ns) in enumerate(batch, 1):
                self._handle(sock, identity, key, message, arrival_ns)
                if handled % COMMIT_TURN_MESSAGES == 0:
                    self._commit_turn(sock)
            if self._journal_writer is not None:
                self._journal_writer.flush()
            if len(batch) < RECEIVE_BATCH and gather_ms > 0:
                # The socket is empty: woken at once by the next message, the loop would
                # handle one message per wake-up, and the journal writer and ZeroMQ's
                # I/O thread would wake as often. Letting messages gather for 2 ms (a
                # finished commit still ends the wait) took a quarter off the ingest's
                # CPU at 40 robots (README, Performance, "Gathered receives").
                if commit_poller.poll(gather_ms):
                    self._drain_wake_pipe()

    def _commit_turn(self, sock: zmq.Socket) -> float:
        """Finish the commit whose fsyncs are done, start the next one if it is due;
        returns the time it looked (monotonic).

        A commit's acknowledgements go out as soon as its fsyncs are done (its worker
        wakes the poll), and the next commit starts then or at its tick, whichever is
        later: under load, commits follow each other."""
        if self._commit_future is not None and self._commit_future.done():
            self._finish_commit(sock)
        now = time.monotonic()
        if now >= self._next_commit and self._commit_future is None:
            self._commit(sock)
            self._next_commit = now + self.config.commit_interval_s
        return now

    def _receive(self, sock: zmq.Socket, authenticated: bool) -> list[Received]:
        """Up to RECEIVE_BATCH waiting messages as (identity, key, frames, arrival time).

        All of them are received before any is handled: each pyzmq receive released
        the GIL, and between handling steps the journal writer's thread took it from
        under the loop at almost every message; received in a row, the loop's CPU per
        message fell by about a third (README, Performance, "The event loop's
        receive"); received in C, with the GIL held, by more (pipeline.router_receive)."""
        return receive_batch(sock, RECEIVE_BATCH, ZERO_COPY_BYTES, authenticated)

    def _drain_wake_pipe(self) -> None:
        try:
            os.read(self._wake_read, 4096)
        except BlockingIOError:
            pass

    def _wake_loop(self, _: object = None) -> None:
        """Interrupt the event loop's poll (from a commit worker, once its fsyncs are done)."""
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (the pipe holds bytes), or shutting down: the loop checks the future anyway

    # ------------------------------------------------------------------ messages

    def _handle(self, sock: zmq.Socket, identity: bytes, key: str, message: list[bytes],
                arrival_ns: int | None = None) -> None:
        """One message; ``arrival_ns`` is when it was received (wall clock), now if not given."""
        if arrival_ns is None:
            arrival_ns = time.time_ns()
        now = time.monotonic()
        size = sum(map(len, message))
        stats = self.stats
        stats.messages += 1
        stats.bytes += size
        session = self.sessions.get(identity)
        if session is not None:
            if session.key != key:
                self._identity_refused(
                    sock, identity, key, session.robot_id,
                    f"a message on the session of robot {session.robot_id} comes from another key", reply=False,
                )
                return
            session.last_heard = now
            session.counters.received(size)
        try:
            opcode = protocol.peek_opcode(message)
            if opcode in _DATA_OPCODES:
                self._data(sock, identity, session, arrival_ns, now, opcode, message, size)
            elif opcode == protocol.Opcode.TIME_REQUEST:
                request = protocol.decode(message)
                self._send(sock, identity, protocol.TimeReply(request.t1_ns, arrival_ns, time.time_ns()))
            elif opcode == protocol.Opcode.HELLO:
                if self._hello_allowed(identity):
                    self._hello(sock, identity, key, protocol.decode(message))
            else:
                raise ProtocolError(f"{opcode.name} is not a message a collector sends")
        except protocol.VersionMismatch as err:
            self.stats.refused += 1
            log.warning("refused peer %s: %s", identity.hex(), err)
            self._send(sock, identity, protocol.Refuse(str(err)))
        except ProtocolError as err:
            self.stats.malformed += 1
            session = self.sessions.get(identity)
            who = session.robot_id if session else identity.hex()
            if session is not None:
                session.counters.malformed += 1
            self._log_limited("malformed", logging.WARNING, "dropped malformed message from %s: %s", who, err)
            self.stats.last_error = str(err)
            if session is not None and err.field in ("cols", "stream"):
                self._notice(sock, session, f"bad-{err.field}", "error", f"message refused: {err.problem}")

    def _hello_allowed(self, identity: bytes) -> bool:
        """A connection may say HELLO a few times at once, then once a second: each
        one costs a look-up per episode it asks about."""
        now = time.monotonic()
        left, at = self._hello_budget.get(identity, (float(HELLO_BURST), now))
        left = min(float(HELLO_BURST), left + (now - at))
        if left < 1.0:
            self.stats.rate_limited += 1
            self._hello_budget[identity] = (left, now)
            return False
        self._hello_budget[identity] = (left - 1.0, now)
        return True

    def _hello(self, sock: zmq.Socket, identity: bytes, key: str, hello: protocol.Hello) -> None:
        if self.allow is not None and not self.allow.may_use(key, hello.robot_id):
            mine = sorted(self.allow.robots.get(key, ()))
            return self._identity_refused(
                sock, identity, key, hello.robot_id,
                f"{self.allow.describe(key)} may not use robot id {hello.robot_id!r} "
                f"(it may use {mine or 'none'}); the ingest's allow-list binds robot ids to keys: "
                f"add <robot-id>.key or an allow.yaml entry for it",
            )
        old_identity = self.robots.get(hello.robot_id)
        old = self.sessions.get(old_identity) if old_identity is not None else None
        if old is not None and old_identity != identity and old.key != key:
            return self._identity_refused(
                sock, identity, key, hello.robot_id,
                f"robot {hello.robot_id!r} is connected with another key; a second key may not take over its session",
            )
        try:
            config = parse_robot_config(hello.config, f"robot {hello.robot_id} config")
        except ConfigError as err:
            return self._refuse(sock, identity, hello.robot_id, f"robot config rejected: {err}")
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
            return self._refuse(sock, identity, hello.robot_id, f"robot config rejected: malformed ({err})")
        if config.digest != hello.config_digest:
            return self._refuse(
                sock, identity, hello.robot_id,
                f"config digest mismatch: collector says {hello.config_digest[:12]}, "
                f"config hashes to {config.digest[:12]}; collector and ingest run different Refinery versions",
            )
        if config.model != hello.model:
            return self._refuse(sock, identity, hello.robot_id, f"model {hello.model!r} differs from config {config.model!r}")
        unannounced: set[str] = set()  # seals the old session had not told yet
        if old is not None and old_identity != identity:
            unannounced |= old.sealed
            self._free_session(old)
            log.info("robot %s reconnected; replacing its old session", hello.robot_id)
        previous = self.sessions.get(identity)
        if previous is not None:
            if previous.robot_id == hello.robot_id:
                unannounced |= previous.sealed
            else:
                self._free_session(previous)
        config_dict = config.to_dict()
        now = time.monotonic()
        session = Session(
            identity, hello.robot_id, hello.model, hello.config_digest, config_dict, key=key,
            rules=StreamRules.from_config(config_dict), last_heard=now,
            tokens=self.limits.max_bytes_per_s * self.limits.burst_s, tokens_at=now, sealed=unannounced,
            counters=self.counters.robot(hello.robot_id, hello.model),
        )
        self.sessions[identity] = session
        self.robots[hello.robot_id] = identity
        acked: dict[str, dict[str, int]] = {}
        for episode in self.open_by_robot.get(hello.robot_id, ()):
            journal = self.journals[(hello.robot_id, episode)]
            if journal.meta.producer_key in ("", key):
                acked[episode] = journal.durable_acked  # the collector deletes what this names
        states = {episode: self._episode_state(hello.robot_id, episode, key) for episode in hello.pending}
        sealed = tuple(e for e, state in states.items() if state == "sealed")
        log.info("collector connected robot=%s model=%s pending=%d", hello.robot_id, hello.model, len(hello.pending))
        self._send(
            sock, identity,
            protocol.Welcome(self.config.window, self.config.max_message_bytes, acked, sealed, states),
        )

    def _episode_state(self, robot_id: str, episode: str, key: str) -> str:
        journal = self.journals.get((robot_id, episode))
        if journal is not None:
            return "open" if journal.meta.producer_key in ("", key) else "unknown"
        if raw_path(self.data_dir, robot_id, episode).exists():
            return "sealed"  # renamed into place only once complete and fsynced
        if (robot_id, episode) in self.sealing:
            return "sealing"
        if quarantine_path(self.data_dir, robot_id, episode).exists():
            return "quarantined"
        return "unknown"

    def _refuse(self, sock: zmq.Socket, identity: bytes, robot_id: str, reason: str) -> None:
        self.stats.refused += 1
        log.warning("refused robot %s: %s", robot_id, reason)
        self._send(sock, identity, protocol.Refuse(reason))

    def _identity_refused(
        self, sock: zmq.Socket, identity: bytes, key: str, robot_id: str, reason: str, reply: bool = True
    ) -> None:
        self.stats.identity_refused += 1
        self.stats.refused += 1
        self._log_limited(
            f"identity-{key}", logging.WARNING, "refused key %s claiming robot %s: %s", key or "(none)", robot_id, reason
        )
        if reply:
            self._send(sock, identity, protocol.Refuse(reason))

    def _data(self, sock: zmq.Socket, identity: bytes, session: Session | None, arrival_ns: int, now: float,
              opcode: protocol.Opcode, message: list[bytes], size: int) -> None:
        """One data message: checked, then journaled as it came (the hot path: the
        payload's record is built only for events, whose body the ingest reads)."""
        if session is None:
            # After an ingest restart a collector's queued messages arrive before its
            # new HELLO: answer once a second, not once per message.
            self.stats.unknown_session += 1
            now = time.monotonic()
            if self._hello_hints.get(identity, 0.0) <= now:
                self._hello_hints[identity] = now + 1.0
                self._send(sock, identity, protocol.Notice("handshake", "no session: send HELLO first"))
            return
        if opcode == _EVENT:
            record = protocol.decode(message)
            header = record.header
        else:
            record = None
            header = protocol.data_header(opcode, message)
        if header.robot_id != session.robot_id:
            raise ProtocolError(
                f"message names robot {header.robot_id!r} on the session of {session.robot_id!r}", field="robot_id"
            )
        session.rules.check(opcode, header.stream, header.cols)
        key = (header.robot_id, header.episode_id)
        journal = self.journals.get(key)
        if journal is None:
            if key in self.sealing:
                self.stats.duplicates += 1
                session.counters.duplicates += 1
                session.dirty.add((header.episode_id, header.stream))  # re-acknowledge its final seq
                return
            if raw_path(self.data_dir, *key).exists():
                self.stats.duplicates += 1
                session.counters.duplicates += 1
                session.sealed.add(header.episode_id)
                return
            if quarantine_path(self.data_dir, *key).exists():
                self.stats.duplicates += 1
                session.counters.duplicates += 1
                self._notice(sock, session, f"quarantined-{header.episode_id}", "error",
                             f"episode {header.episode_id} could not be sealed and is in quarantine at the ingest")
                return
            journal = self._open_journal(sock, session, header.episode_id)
            if journal is None:
                return
        if journal.write_error is not None:
            self._write_failed(sock, session, journal)
            return  # not accepted: the collector resends it once the journal is rolled back
        if journal.meta.producer_key not in ("", session.key):
            self._identity_refused(
                sock, identity, session.key, session.robot_id,
                f"episode {header.episode_id} was opened by another key", reply=False,
            )
            return
        self.last_activity[key] = now
        verdict = journal.accepts(header)
        if verdict == "duplicate":
            self.stats.duplicates += 1
            session.counters.duplicates += 1
            session.dirty.add((header.episode_id, header.stream))
            return
        if verdict == "gap":
            self.stats.gaps += 1
            session.counters.gaps += 1
            return
        if not self._within_limits(sock, session, journal, opcode, header, size, now):
            return
        stop = None
        if record is not None:
            body, refused = screen_event_body(record.body, self.limits.max_text_chars)
            if refused:
                record = protocol.Event(header, body)
                message = record.encode()
                if len(message[1]) > MAX_JSON_BYTES:  # re-encoding escapes non-ASCII text: it can grow
                    raise ProtocolError(f"EVENT body grows beyond {MAX_JSON_BYTES:,} bytes once screened")
                self.stats.refused_fields += len(refused)
                detail = "; ".join(f"{name} {why}" for name, why in refused.items())
                self._log_limited(f"fields-{session.robot_id}", logging.WARNING,
                                  "robot=%s episode=%s: refused event fields: %s", *key, detail)
                self._notice(sock, session, f"fields-{header.seq}", "warning",
                             f"{record.kind} event of episode {header.episode_id}: not recorded: {detail}")
            if record.kind == "stop":
                stop = record.body
        try:
            journal.append_frames(arrival_ns, message, header, stop)
        except OSError as err:
            self._disk_failure(sock, session, journal.path, err)
            return
        self._disk_error = ""
        self.stats.accepted += 1
        session.counters.accepted_message(opcode, header, record, size)
        self._dirty_journals.add(key)
        session.dirty.add((header.episode_id, header.stream))

    def _within_limits(self, sock: zmq.Socket, session: Session, journal: EpisodeJournal,
                       opcode: protocol.Opcode, header: protocol.DataHeader, size: int, now: float) -> bool:
        """Check the robot's limits before a message is journaled; False drops it
        (not acknowledged: the collector keeps it in its spool)."""
        limits = self.limits
        session.tokens = min(limits.max_bytes_per_s * limits.burst_s,
                             session.tokens + (now - session.tokens_at) * limits.max_bytes_per_s)
        session.tokens_at = now
        if session.tokens <= 0:
            self.stats.rate_limited += 1
            self._notice(sock, session, "rate", "warning",
                         f"robot {session.robot_id} sends more than the ingest's limit of "
                         f"{limits.max_bytes_per_s / 1e6:g} MB/s; the rest waits in the spool")
            return False
        session.tokens -= size
        if opcode == _EVENT:
            return True  # events close and label an episode: always accepted past its limits
        if journal.limit:
            self.stats.limited += 1
            return False
        reason = ""
        if journal.size + size > limits.max_episode_bytes:
            reason = f"episode bytes above {limits.max_episode_bytes:,}"
        elif (journal.first_capture_ns is not None
              and header.capture_ns - journal.first_capture_ns > limits.max_episode_s * 1e9):
            reason = f"episode duration above {limits.max_episode_s:g} s"
        if not reason:
            return True
        self.stats.limited += 1
        try:
            journal.mark_limit(reason)
        except OSError as err:
            self._disk_failure(sock, session, journal.path, err)
            return False
        self._dirty_journals.add((session.robot_id, header.episode_id))
        log.warning("robot=%s episode=%s reached a limit: %s; data after it is not recorded",
                    session.robot_id, header.episode_id, reason)
        self._notice(sock, session, f"limit-{header.episode_id}", "error",
                     f"episode {header.episode_id} reached the ingest's limit ({reason}): data after it is "
                     "not recorded; stop the episode (it is sealed as incomplete with what came before)")
        return False

    def _open_journal(self, sock: zmq.Socket, session: Session, episode_id: str) -> EpisodeJournal | None:
        key = (session.robot_id, episode_id)
        open_now = self.open_by_robot.get(session.robot_id, set())
        if len(open_now) >= self.limits.max_open_episodes:
            self.stats.limited += 1
            self._notice(sock, session, "open-episodes", "error",
                         f"robot {session.robot_id} has {len(open_now)} episodes open at the ingest, the limit; "
                         f"episode {episode_id} waits until one is sealed")
            return None
        meta = EpisodeMeta(session.robot_id, episode_id, session.model, session.config_digest, session.config,
                           time.time_ns(), session.key)
        if self._shared is not None and self._journal_writer is not None:
            # Its header is queued like any record: durable with the commit that acknowledges its first messages.
            journal = EpisodeJournal.start_shared(self._shared, meta, self._journal_writer)
        else:
            path = self.data_dir / "journal" / session.robot_id / f"{episode_id}{JOURNAL_SUFFIX}"
            try:
                journal = EpisodeJournal.create(path, meta)
            except OSError as err:
                self._disk_failure(sock, session, path, err)
                path.unlink(missing_ok=True)
                return None
        self._add_journal(key, journal)
        log.info("episode started robot=%s episode=%s", *key)
        return journal

    def _add_journal(self, key: tuple[str, str], journal: EpisodeJournal) -> None:
        if self._journal_writer is not None and journal.queue is None:
            journal.attach(self._journal_writer)
        self.journals[key] = journal
        self.open_by_robot.setdefault(key[0], set()).add(key[1])
        self.last_activity[key] = time.monotonic()

    def _remove_journal(self, key: tuple[str, str]) -> EpisodeJournal:
        journal = self.journals.pop(key)
        episodes = self.open_by_robot.get(key[0])
        if episodes is not None:
            episodes.discard(key[1])
            if not episodes:
                del self.open_by_robot[key[0]]
        self._dirty_journals.discard(key)
        self.last_activity.pop(key, None)
        return journal

    def _write_failed(self, sock: zmq.Socket | None, session: Session | None, journal: EpisodeJournal,
                      report: bool = True) -> None:
        """A queued append of ``journal`` failed: tell, stop accepting for it, and
        once the writer has passed its rollback request, reset it to what is on disk."""
        err = journal.write_error
        if err is None:
            return
        if report and session is not None:
            self._disk_failure(sock, session, journal.path, err)
        if journal.rollback_ready:
            journal.roll_back_to_written()
        elif not journal.rollback_requested and self._journal_writer is not None:
            journal.rollback_requested = True
            self._journal_writer.request_rollback(journal)

    def _disk_failure(self, sock: zmq.Socket | None, session: Session, path: Path, err: OSError) -> None:
        self.stats.disk_errors += 1
        reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        self._disk_error = f"cannot write {path.relative_to(self.data_dir)}: {reason}; not acknowledging until it can"
        now = time.monotonic()
        if now >= self._notice_after:
            log.error("%s", self._disk_error)
            self._notice_after = now + 5.0
        if sock is not None and self._disk_notice_after.get(session.identity, 0.0) <= now:
            self._disk_notice_after[session.identity] = now + 1.0
            self._send(sock, session.identity, protocol.Notice("error", self._disk_error))

    def _notice(self, sock: zmq.Socket, session: Session, topic: str, level: str, message: str) -> None:
        """A NOTICE the operator sees, at most once a second per topic and session."""
        now = time.monotonic()
        if session.notice_after.get(topic, 0.0) > now:
            return
        if len(session.notice_after) > 64:
            session.notice_after = {t: v for t, v in session.notice_after.items() if v > now}
        session.notice_after[topic] = now + 1.0
        self._send(sock, session.identity, protocol.Notice(level, message))

    def _log_limited(self, topic: str, level: int, msg: str, *args: object) -> None:
        """Log at most once a second per topic: a flood of bad messages must not flood the log."""
        now = time.monotonic()
        if self._log_after.get(topic, 0.0) > now:
            log.debug(msg, *args)
            return
        if len(self._log_after) > 1024:
            self._log_after = {t: v for t, v in self._log_after.items() if v > now}
        self._log_after[topic] = now + 1.0
        log.log(level, msg, *args)

    # ------------------------------------------------------------------ commit, acks, sealing

    def _commit(self, sock: zmq.Socket, wait: bool = False) -> None:
        """Group commit, pipelined: fsync what was written so far on worker threads
        while the loop goes on receiving; when the fsyncs are done, acknowledge
        exactly what they covered (a snapshot taken before they started).

        The fsyncs of one commit run in parallel (``os.fsync`` releases the GIL),
        so a commit costs about one fsync, not one per open episode.
        """
        if self._commit_future is not None:
            if not (wait or self._commit_future.done()):
                return  # the previous commit is still syncing; writes keep accumulating
            self._finish_commit(sock)
        dirty = [(key, self.journals[key]) for key in self._dirty_journals if key in self.journals]
        self._dirty_journals.clear()
        # Each journal whose state this commit acknowledges: its count of failed writes, and
        # what it will have made durable.
        marks = {id(journal): (journal, journal.failure_mark(), dict(journal.next_seq)) for _, journal in dirty}
        acks: dict[bytes, list[tuple[str, str, int]]] = {}
        for session in self.sessions.values():
            entries = []
            for episode, stream in session.dirty:
                journal = self.journals.get((session.robot_id, episode))
                if journal is not None:  # its next seq, not journal.acked: that builds a dict per call
                    next_seq = journal.next_seq.get(stream)
                    if next_seq is not None:
                        entries.append((episode, stream, next_seq - 1))
                        if id(journal) not in marks:
                            marks[id(journal)] = (journal, journal.failure_mark(), dict(journal.next_seq))
                    continue
                acked = self._final_acks.get((session.robot_id, episode), {})
                if stream in acked:
                    entries.append((episode, stream, acked[stream]))
            session.dirty.clear()
            if entries:
                acks[session.identity] = entries
        complete = [key for key, journal in dirty if journal.complete]
        self._commit_snapshot = (dirty, acks, complete, list(marks.values()))
        barrier = self._journal_writer.barrier() if self._journal_writer is not None else None
        self._commit_future = self._fsync_pool.submit(self._sync_all, [journal for _, journal in dirty], barrier)
        self._commit_future.add_done_callback(self._wake_loop)
        self.counters.commit_started()
        if wait:
            self._finish_commit(sock)

    def _sync_all(self, journals: list[EpisodeJournal], barrier: Barrier | None) -> list[OSError | None]:
        """Sync what the commit covers: the shared journal's segment (one fdatasync for
        every episode in it) and each journal file (in parallel: fsync releases the GIL)."""
        if barrier is not None and self._journal_writer is not None:
            self._journal_writer.wait(barrier)  # every write this commit covers is in the files
        segment = barrier.segment if barrier is not None else None
        shared_failure = _sync(segment) if segment is not None and any(j.shared for j in journals) else None
        files = [j for j in journals if j.writer is not None]
        synced = dict(zip(map(id, files), self._sync_workers.map(_sync, files)))
        failures = [synced[id(j)] if id(j) in synced else shared_failure for j in journals]
        if journals and self.config.inject_sync_delay_s:
            time.sleep(self.config.inject_sync_delay_s)
        return failures

    def _finish_commit(self, sock: zmq.Socket) -> None:
        if self._commit_future is None or self._commit_snapshot is None:
            raise RuntimeError("no commit in progress")
        future = self._commit_future
        dirty, acks, complete, marks = self._commit_snapshot
        self._commit_future = self._commit_snapshot = None
        failures = future.result()  # an unexpected exception in a worker ends the ingest (non-zero)
        self._stop_if_a_sync_failed([journal for _, journal in dirty], failures)
        failed = False
        for key, journal in dirty:
            err = journal.write_error
            if err is not None:
                self._write_failed(sock, None, journal, report=False)
                session = self.sessions.get(self.robots.get(key[0], b""))
                if session is not None:
                    self._disk_failure(sock, session, journal.path, err)
                failed = True
                break
        # A write this commit covers failed, even if the loop has rolled it back since (it
        # was reported then): what the snapshot holds for that journal never reached the file.
        failed = failed or any(journal.failed_writes != mark or journal.write_error is not None
                               for journal, mark, _ in marks)
        if failed:  # nothing of this commit is acknowledged; the next commit tries again
            self._dirty_journals.update(k for k, _ in dirty)
            for identity, entries in acks.items():
                if identity in self.sessions:
                    self.sessions[identity].dirty.update((e, s) for e, s, _ in entries)
            return
        for journal, _, next_seq in marks:
            journal.durable = next_seq
        for key in complete:
            if key in self.journals:
                self._start_seal(key)
        self.stats.commits += 1
        self.counters.commit_durable()
        self._collect_seals()
        for session in list(self.sessions.values()):
            self._acknowledge(sock, session, acks.get(session.identity, []))

    def _stop_if_a_sync_failed(self, journals: list[EpisodeJournal], failures: list[OSError | None]) -> None:
        """A failed fsync ends the ingest (non-zero, one line): what it covered may not be on
        disk and a retry would report success without writing it (Linux marks the pages of a
        failed writeback clean). Nothing it covered is acknowledged; the collectors keep it."""
        failed = [(str(j.path), err) for j, err in zip(journals, failures) if err is not None]
        if not failed and self._shared is not None and self._shared.sync_failure is not None:
            failed = [(str(self._shared.directory), self._shared.sync_failure)]
        if failed:
            self._sync_failed = True  # no last commit on the way out either
            path, err = failed[0]
            raise JournalSyncFailed(path, f"fsync failed ({err.strerror or err}): what it covered may not be on "
                                          "disk, and no retry can tell; stopping without acknowledging it (the "
                                          "collectors keep it in their spools). Check the disk (dmesg), then restart "
                                          "the ingest")

    def _acknowledge(self, sock: zmq.Socket, session: Session, acks: list[tuple[str, str, int]]) -> None:
        if not acks and not session.sealed:
            return
        sealed = tuple(sorted(session.sealed))
        for start in range(0, max(len(acks), 1), MAX_ACKS_PER_MESSAGE):
            chunk = tuple(acks[start : start + MAX_ACKS_PER_MESSAGE])
            if self._send(sock, session.identity, protocol.Ack(chunk, sealed if start == 0 else ())) and start == 0:
                session.sealed.difference_update(sealed)  # kept for the next ACK when this send failed

    def _start_seal(self, key: tuple[str, str]) -> None:
        journal = self._remove_journal(key)
        journal.sealing = True  # before the barrier: the writer moves it no more
        incomplete = not journal.complete
        self._final_acks[key] = journal.durable_acked
        self._sealing_journals[key] = journal
        barrier = self._journal_writer.barrier() if self._journal_writer is not None else None
        self.sealing[key] = self._seal_pool.submit(self._seal_when_written, barrier, journal, incomplete)
        self.counters.seal_started(key, incomplete, self.sealing[key])

    def _seal_when_written(self, barrier: threading.Event | None, journal: EpisodeJournal, incomplete: bool) -> Path:
        if barrier is not None and self._journal_writer is not None:
            self._journal_writer.wait(barrier)  # the journal's last queued writes are in its file
        delay, longest = SEAL_ROOM_RETRY_S
        while True:
            try:
                return self._seal(journal, incomplete)
            except OSError as err:
                # A full disk empties again (an operator, a sync job), a disk's error may pass:
                # the episode stays "sealing" (a message of it is a duplicate; its journal is
                # never opened twice) and is tried again meanwhile, and at the next start.
                if self._stop.is_set():
                    raise
                room = err.errno in (errno.ENOSPC, errno.EDQUOT)
                log.log(logging.WARNING if room else logging.ERROR,
                        "sealing robot=%s episode=%s: %s; trying again in %.0f s", *journal.key,
                        err.strerror or err, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, longest)

    def _seal(self, journal: EpisodeJournal, incomplete: bool) -> Path:
        if self._seal_workers is None:
            return seal_recovered(journal, self.data_dir, incomplete=incomplete)
        journal.close()
        job = SealJob.of(journal, self.data_dir, incomplete=incomplete)
        for attempt in range(1, SEAL_ATTEMPTS):
            try:
                return self._seal_workers.submit(job).result()
            except BrokenProcessPool:
                log.warning("robot=%s episode=%s: a seal worker process died (attempt %d of %d); sealing again",
                            *journal.key, attempt, SEAL_ATTEMPTS)
        return self._seal_workers.submit(job).result()  # BrokenProcessPool: the journal stays for the next start

    def _collect_seals(self) -> None:
        for key, future in list(self.sealing.items()):
            if not future.done():
                continue
            del self.sealing[key]
            self._final_acks.pop(key, None)
            journal = self._sealing_journals.pop(key)
            try:
                path = future.result()
            except OSError as err:
                self.stats.disk_errors += 1
                log.error("sealing robot=%s episode=%s failed: %s; journal kept for the next start", *key, err)
                continue
            except BrokenProcessPool:
                log.error("sealing robot=%s episode=%s failed: its seal worker process died %d times (out of "
                          "memory?); journal kept for the next start", *key, SEAL_ATTEMPTS)
                continue
            except Exception as err:  # noqa: BLE001 - whatever a journal holds must not stop the ingest
                kind = "" if isinstance(err, SealFailed) else f"{type(err).__name__}: "  # it names its kind
                reason = f"sealing failed: {kind}{err}"
                if journal.shared is not None:
                    if self._quarantine_records(journal.shared.read_payloads(journal.written.places, journal.tag),
                                                key, reason, str(journal.path)):
                        self._release(journal)
                else:
                    self._quarantine(journal.path, *key, reason)
                continue
            self._release(journal)
            self.stats.sealed += 1
            self.counters.episode_sealed(key)
            log.info("sealed robot=%s episode=%s -> %s", key[0], key[1], path)
            identity = self.robots.get(key[0])
            if identity in self.sessions:
                self.sessions[identity].sealed.add(key[1])

    def _release(self, journal: EpisodeJournal) -> None:
        if journal.shared is not None and self._journal_writer is not None:
            self._journal_writer.release(journal)

    def _quarantine_records(self, payloads: Iterator[bytes], key: tuple[str, str], reason: str, source: str) -> bool:
        """Quarantine an episode of the shared journal (its records copied out). False:
        the copy failed, and its records must stay in the shared journal."""
        try:
            dest = quarantine_records(self.data_dir, payloads, *key, reason, source)
        except OSError as err:
            log.error("robot=%s episode=%s cannot be sealed (%s) nor quarantined (%s); its records stay in "
                      "the shared journal for the next start", *key, reason, err)
            return False
        self.stats.quarantined += 1
        log.error("robot=%s episode=%s cannot be sealed: %s; its records copied to %s", *key, reason, dest)
        return True

    def _quarantine(self, journal_path: Path, robot_id: str, episode_id: str, reason: str) -> None:
        try:
            dest = quarantine_journal(self.data_dir, journal_path, robot_id, episode_id, reason)
        except OSError as err:
            log.error("robot=%s episode=%s cannot be sealed (%s) nor quarantined (%s); journal left in place",
                      robot_id, episode_id, reason, err)
            return
        self.stats.quarantined += 1
        log.error("robot=%s episode=%s cannot be sealed: %s; journal moved to %s", robot_id, episode_id, reason, dest)

    def _housekeeping(self, sock: zmq.Socket) -> None:
        """Free silent sessions; seal, as incomplete, episodes whose collector has been silent too long."""
        now = time.monotonic()
        self._hello_hints = {k: v for k, v in self._hello_hints.items() if v > now}
        self._disk_notice_after = {k: v for k, v in self._disk_notice_after.items() if v > now}
        self._hello_budget = {k: v for k, v in self._hello_budget.items() if v[1] > now - HELLO_BURST}
        silent = now - self.config.session_timeout_s
        for session in [s for s in self.sessions.values() if s.last_heard < silent]:
            log.info("robot=%s silent for %.0f s; session freed", session.robot_id, now - session.last_heard)
            self._free_session(session)
            self.stats.sessions_freed += 1
        syncing = {key for key, _ in self._commit_snapshot[0]} if self._commit_snapshot else set()
        deadline = now - self.config.abandon_after_s
        for key, journal in list(self.journals.items()):
            if journal.write_error is not None:  # no message may come to roll it back
                self._write_failed(None, None, journal)
        for key, last in list(self.last_activity.items()):
            if (last < deadline and key in self.journals and key not in syncing
                    and self.journals[key].write_error is None):
                journal = self.journals[key]
                log.warning(
                    "robot=%s episode=%s silent for %.0f s; sealing as incomplete, missing %s",
                    *key, self.config.abandon_after_s, journal.missing(),
                )
                self.stats.sealed_incomplete += 1
                self._start_seal(key)

    def _free_session(self, session: Session) -> None:
        self.sessions.pop(session.identity, None)
        if self.robots.get(session.robot_id) == session.identity:
            del self.robots[session.robot_id]
        self._hello_hints.pop(session.identity, None)
        self._disk_notice_after.pop(session.identity, None)
        self._hello_budget.pop(session.identity, None)

    def _send(self, sock: zmq.Socket, identity: bytes, record: protocol.Record) -> bool:
        try:
            sock.send_multipart([identity, *record.encode()], zmq.NOBLOCK)
        except zmq.ZMQError as err:
            # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY); EAGAIN: its pipe is full.
            # Acks are cumulative, so the next one carries whatever this one said.
            log.debug("could not send %s to %s: %s", type(record).__name__, identity.hex(), err)
            return False
        return True

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        return {
            "collectors": len(self.sessions),
            "open_episodes": len(self.journals),
            "sealing": len(self.sealing),
            "disk_error": self._disk_error,
            **self.stats.__dict__,
        }


def _sync(journal: EpisodeJournal | RecordAppender) -> OSError | None:
    try:
        journal.sync()
    except OSError as err:
        return err
    return None

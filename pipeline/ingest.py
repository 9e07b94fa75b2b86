"""The ingest service: many collectors in, durable raw episodes out.

One ROUTER socket, one event loop. Every accepted data message is appended to
its episode's journal; every ``commit_interval`` the dirty journals are
fsynced together (group commit) and only then does each collector get one
cumulative acknowledgement per stream. A collector never has more than
``window`` unacknowledged messages in flight, so a slow disk slows the acks
and therefore the collectors (which spool), and the ingest's memory stays
bounded. Episodes are sealed into HDF5 on a worker thread once their stop
event and every stream up to its last sequence number are durable.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from pipeline import protocol
from pipeline.auth import ServerKeys
from pipeline.errors import ConfigError, ProtocolError, RefineryError, StoreError
from pipeline.journal import JOURNAL_SUFFIX, EpisodeJournal, EpisodeMeta
from pipeline.raw_store import raw_path, seal_recovered
from pipeline.robot_config import parse_robot_config

log = logging.getLogger("refinery.ingest")

DEFAULT_WINDOW = 128  # messages; a robot needs ~10 in flight at 190 msg/s, and memory is window x collectors
MAX_ACKS_PER_MESSAGE = 4096


@dataclass(frozen=True)
class IngestConfig:
    """How the ingest service runs; every field has a CLI option."""

    data_dir: Path
    bind: str = "tcp://127.0.0.1:5555"
    window: int = DEFAULT_WINDOW
    commit_interval_s: float = 0.02
    max_message_bytes: int = 32 * 1024 * 1024
    abandon_after_s: float = 600.0
    keys: ServerKeys | None = None
    allow_plain: bool = False
    inject_sync_delay_s: float = 0.0  # fault injection: a slow disk, for backpressure tests


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
    dirty: set[tuple[str, str]] = field(default_factory=set)  # (episode, stream) to acknowledge
    sealed: set[str] = field(default_factory=set)  # episodes to report sealed


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
        self.data_dir = config.data_dir
        self.stats = IngestStats()
        self.sessions: dict[bytes, Session] = {}
        self.robots: dict[str, bytes] = {}  # robot id -> identity of its live session
        self.journals: dict[tuple[str, str], EpisodeJournal] = {}
        self.sealing: dict[tuple[str, str], Future[Path]] = {}
        self.last_activity: dict[tuple[str, str], float] = {}
        self._dirty_journals: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._seal_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seal")
        self._fsync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._sync_workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
        self._commit_future: Future[list[OSError | None]] | None = None
        self._commit_snapshot: tuple[list[tuple[tuple[str, str], EpisodeJournal]],
                                     dict[bytes, list[tuple[str, str, int]]], list[tuple[str, str]]] | None = None
        self._final_acks: dict[tuple[str, str], dict[str, int]] = {}
        self._disk_error: str = ""
        self._notice_after = 0.0
        self._hello_hints: dict[bytes, float] = {}
        self._disk_notice_after: dict[bytes, float] = {}
        self.endpoint = ""
        self.ready = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()

    def recover(self) -> None:
        """Reopen every journal a previous run left; seal those already complete."""
        for path in sorted((self.data_dir / "journal").glob(f"*/*{JOURNAL_SUFFIX}")):
            try:
                journal = EpisodeJournal.recover(path)
            except StoreError as err:
                log.error("cannot recover journal %s: %s (left in place)", path, err)
                continue
            key = (journal.meta.robot_id, journal.meta.episode_id)
            if raw_path(self.data_dir, *key).exists():
                # Sealed before the crash, journal not yet deleted.
                journal.close()
                path.unlink()
                continue
            self.journals[key] = journal
            self.last_activity[key] = time.monotonic()
            log.info("recovered journal robot=%s episode=%s streams=%s", *key, journal.acked)
            if journal.complete:
                self._start_seal(key)

    def run(self) -> None:
        """Serve until :meth:`stop` is called."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.recover()
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
                auth = self.config.keys.apply(context, sock)
            sock.bind(self.config.bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("ingest listening on %s, data in %s", self.endpoint, self.data_dir)
            self.ready.set()
            self._loop(sock)
        finally:
            self._commit(sock, wait=True)
            self._seal_pool.shutdown(wait=True)
            self._fsync_pool.shutdown(wait=True)
            self._sync_workers.shutdown(wait=True)
            for journal in self.journals.values():
                journal.close()
            sock.close(0)
            if auth is not None:
                auth.stop()
            context.term()

    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        interval = self.config.commit_interval_s
        next_commit = time.monotonic() + interval
        next_housekeeping = time.monotonic() + 1.0
        while not self._stop.is_set():
            timeout_ms = max(0.0, (next_commit - time.monotonic()) * 1000)
            if poller.poll(timeout_ms):
                # Drain what is queued, but commit on schedule even under full load.
                while time.monotonic() < next_commit:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(sock, frames)
            now = time.monotonic()
            if now >= next_commit:
                self._commit(sock)
                next_commit = now + interval
            if now >= next_housekeeping:
                self._housekeeping(sock)
                next_housekeeping = now + 1.0

    # ------------------------------------------------------------------ messages

    def _handle(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        identity, message = frames[0], frames[1:]
        arrival_ns = time.time_ns()
        self.stats.messages += 1
        self.stats.bytes += sum(len(f) for f in message)
        try:
            opcode = protocol.peek_opcode(message)
            if opcode == protocol.Opcode.TIME_REQUEST:
                request = protocol.decode(message)
                self._send(sock, identity, protocol.TimeReply(request.t1_ns, arrival_ns, time.time_ns()))
            elif opcode == protocol.Opcode.HELLO:
                self._hello(sock, identity, protocol.decode(message))
            elif opcode in protocol.DATA_OPCODES:
                self._data(sock, identity, arrival_ns, message)
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
            log.warning("dropped malformed message from %s: %s", who, err)
            self.stats.last_error = str(err)

    def _hello(self, sock: zmq.Socket, identity: bytes, hello: protocol.Hello) -> None:
        try:
            config = parse_robot_config(hello.config, f"robot {hello.robot_id} config")
        except ConfigError as err:
            return self._refuse(sock, identity, hello.robot_id, f"robot config rejected: {err}")
        if config.digest != hello.config_digest:
            return self._refuse(
                sock, identity, hello.robot_id,
                f"config digest mismatch: collector says {hello.config_digest[:12]}, "
                f"config hashes to {config.digest[:12]}; collector and ingest run different Refinery versions",
            )
        if config.model != hello.model:
            return self._refuse(sock, identity, hello.robot_id, f"model {hello.model!r} differs from config {config.model!r}")
        old = self.robots.get(hello.robot_id)
        if old is not None and old != identity:
            self.sessions.pop(old, None)
            log.info("robot %s reconnected; replacing its old session", hello.robot_id)
        session = Session(identity, hello.robot_id, hello.model, hello.config_digest, config.to_dict())
        self.sessions[identity] = session
        self.robots[hello.robot_id] = identity
        acked: dict[str, dict[str, int]] = {}
        sealed: list[str] = []
        for (robot, episode), journal in self.journals.items():
            if robot == hello.robot_id:
                acked[episode] = journal.acked
        for episode in hello.pending:
            try:
                protocol.check_id(episode, "episode_id")
            except ProtocolError:
                continue
            if episode not in acked and raw_path(self.data_dir, hello.robot_id, episode).exists():
                sealed.append(episode)
        log.info("collector connected robot=%s model=%s pending=%d", hello.robot_id, hello.model, len(hello.pending))
        self._send(
            sock, identity,
            protocol.Welcome(self.config.window, self.config.max_message_bytes, acked, tuple(sealed)),
        )

    def _refuse(self, sock: zmq.Socket, identity: bytes, robot_id: str, reason: str) -> None:
        self.stats.refused += 1
        log.warning("refused robot %s: %s", robot_id, reason)
        self._send(sock, identity, protocol.Refuse(reason))

    def _data(self, sock: zmq.Socket, identity: bytes, arrival_ns: int, message: list[bytes]) -> None:
        session = self.sessions.get(identity)
        if session is None:
            # After an ingest restart a collector's queued messages arrive before its
            # new HELLO: answer once a second, not once per message.
            self.stats.unknown_session += 1
            now = time.monotonic()
            if self._hello_hints.get(identity, 0.0) <= now:
                self._hello_hints[identity] = now + 1.0
                self._send(sock, identity, protocol.Notice("handshake", "no session: send HELLO first"))
            return
        record = protocol.decode(message)
        header = record.header
        if header.robot_id != session.robot_id:
            raise ProtocolError(
                f"message names robot {header.robot_id!r} on the session of {session.robot_id!r}", field="robot_id"
            )
        key = (header.robot_id, header.episode_id)
        journal = self.journals.get(key)
        if journal is None:
            if key in self.sealing:
                self.stats.duplicates += 1
                session.dirty.add((header.episode_id, header.stream))  # re-acknowledge its final seq
                return
            if raw_path(self.data_dir, *key).exists():
                self.stats.duplicates += 1
                session.sealed.add(header.episode_id)
                return
            journal = self._open_journal(sock, session, header.episode_id)
            if journal is None:
                return
        self.last_activity[key] = time.monotonic()
        verdict = journal.accepts(header)
        if verdict == "duplicate":
            self.stats.duplicates += 1
            session.dirty.add((header.episode_id, header.stream))
            return
        if verdict == "gap":
            self.stats.gaps += 1
            return
        try:
            journal.append(arrival_ns, message, record)
        except OSError as err:
            self._disk_failure(sock, session, journal.path, err)
            return
        self._disk_error = ""
        self.stats.accepted += 1
        self._dirty_journals.add(key)
        session.dirty.add((header.episode_id, header.stream))

    def _open_journal(self, sock: zmq.Socket, session: Session, episode_id: str) -> EpisodeJournal | None:
        key = (session.robot_id, episode_id)
        path = self.data_dir / "journal" / session.robot_id / f"{episode_id}{JOURNAL_SUFFIX}"
        meta = EpisodeMeta(session.robot_id, episode_id, session.model, session.config_digest, session.config, time.time_ns())
        try:
            journal = EpisodeJournal.create(path, meta)
        except OSError as err:
            self._disk_failure(sock, session, path, err)
            path.unlink(missing_ok=True)
            return None
        self.journals[key] = journal
        log.info("episode started robot=%s episode=%s", *key)
        return journal

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
        acks: dict[bytes, list[tuple[str, str, int]]] = {}
        for session in self.sessions.values():
            entries = []
            for episode, stream in session.dirty:
                journal = self.journals.get((session.robot_id, episode))
                acked = journal.acked if journal is not None else self._final_acks.get((session.robot_id, episode), {})
                if stream in acked:
                    entries.append((episode, stream, acked[stream]))
            session.dirty.clear()
            if entries:
                acks[session.identity] = entries
        complete = [key for key, journal in dirty if journal.complete]
        self._commit_snapshot = (dirty, acks, complete)
        self._commit_future = self._fsync_pool.submit(self._sync_all, [journal for _, journal in dirty])
        if wait:
            self._finish_commit(sock)

    def _sync_all(self, journals: list[EpisodeJournal]) -> list[OSError | None]:
        failures = list(self._sync_workers.map(_sync, journals))
        if journals and self.config.inject_sync_delay_s:
            time.sleep(self.config.inject_sync_delay_s)
        return failures

    def _finish_commit(self, sock: zmq.Socket) -> None:
        assert self._commit_future is not None and self._commit_snapshot is not None
        failures = self._commit_future.result()
        dirty, acks, complete = self._commit_snapshot
        self._commit_future = self._commit_snapshot = None
        for (key, journal), err in zip(dirty, failures):
            if err is not None:
                session = self.sessions.get(self.robots.get(key[0], b""))
                if session is not None:
                    self._disk_failure(sock, session, journal.path, err)
                # Nothing of this commit is acknowledged; the next commit tries again.
                self._dirty_journals.update(k for k, _ in dirty)
                for identity, entries in acks.items():
                    if identity in self.sessions:
                        self.sessions[identity].dirty.update((e, s) for e, s, _ in entries)
                return
        for key in complete:
            if key in self.journals:
                self._start_seal(key)
        self.stats.commits += 1
        self._collect_seals()
        for session in list(self.sessions.values()):
            self._acknowledge(sock, session, acks.get(session.identity, []))

    def _acknowledge(self, sock: zmq.Socket, session: Session, acks: list[tuple[str, str, int]]) -> None:
        if not acks and not session.sealed:
            return
        sealed = tuple(sorted(session.sealed))
        session.sealed.clear()
        for start in range(0, max(len(acks), 1), MAX_ACKS_PER_MESSAGE):
            chunk = tuple(acks[start : start + MAX_ACKS_PER_MESSAGE])
            self._send(sock, session.identity, protocol.Ack(chunk, sealed if start == 0 else ()))

    def _start_seal(self, key: tuple[str, str]) -> None:
        journal = self.journals.pop(key)
        self._dirty_journals.discard(key)
        self.last_activity.pop(key, None)
        incomplete = not journal.complete
        self._final_acks[key] = journal.acked
        self.sealing[key] = self._seal_pool.submit(seal_recovered, journal, self.data_dir, incomplete=incomplete)

    def _collect_seals(self) -> None:
        for key, future in list(self.sealing.items()):
            if not future.done():
                continue
            del self.sealing[key]
            self._final_acks.pop(key, None)
            try:
                path = future.result()
            except (RefineryError, OSError) as err:
                self.stats.disk_errors += 1
                log.error("sealing robot=%s episode=%s failed: %s; journal kept for the next start", *key, err)
                continue
            self.stats.sealed += 1
            log.info("sealed robot=%s episode=%s -> %s", key[0], key[1], path)
            identity = self.robots.get(key[0])
            if identity in self.sessions:
                self.sessions[identity].sealed.add(key[1])

    def _housekeeping(self, sock: zmq.Socket) -> None:
        """Seal, as incomplete, episodes whose collector has been silent too long."""
        now = time.monotonic()
        self._hello_hints = {k: v for k, v in self._hello_hints.items() if v > now}
        syncing = {key for key, _ in self._commit_snapshot[0]} if self._commit_snapshot else set()
        deadline = time.monotonic() - self.config.abandon_after_s
        for key, last in list(self.last_activity.items()):
            if last < deadline and key in self.journals and key not in syncing:
                journal = self.journals[key]
                log.warning(
                    "robot=%s episode=%s silent for %.0f s; sealing as incomplete, missing %s",
                    *key, self.config.abandon_after_s, journal.missing(),
                )
                self.stats.sealed_incomplete += 1
                self._start_seal(key)

    def _send(self, sock: zmq.Socket, identity: bytes, record: protocol.Record) -> None:
        try:
            sock.send_multipart([identity, *record.encode()], zmq.NOBLOCK)
        except zmq.ZMQError as err:
            # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY); EAGAIN: its pipe is full.
            # Acks are cumulative, so the next one carries whatever this one said.
            log.debug("could not send %s to %s: %s", type(record).__name__, identity.hex(), err)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        return {
            "collectors": len(self.sessions),
            "open_episodes": len(self.journals),
            "sealing": len(self.sealing),
            "disk_error": self._disk_error,
            **self.stats.__dict__,
        }


def _sync(journal: EpisodeJournal) -> OSError | None:
    try:
        journal.sync()
    except OSError as err:
        return err
    return None

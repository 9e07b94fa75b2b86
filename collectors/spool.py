"""The collector's on-disk spool: every message lives here until the ingest
says it is durable.

Messages are appended, in the order they are produced, to segment files
``<spool>/seg-<n>.rfs`` (record logs, see :mod:`pipeline.record_log`), which
survive ``kill -9`` of the collector. An in-memory index keeps, per message,
where it sits and which (episode, stream, seq) it is. The sender walks the
index with a cursor; acknowledgements are cumulative per stream; a segment is
deleted once every message in it is acknowledged. After a reconnect the
cursor rewinds to the oldest unacknowledged message, and messages acknowledged
meanwhile are skipped, not resent.

The spool also remembers, in ``<spool>/unsealed.json``, every episode whose seal
the ingest has not confirmed yet, even once all its messages are acknowledged
and gone from the segments: the collector asks about each of them at every
handshake until the ingest says it is sealed (or can never be).

With several ingest processes, each episode has a route: the ingest endpoint
that holds its journal, kept in ``<spool>/routes.json`` from the episode's
start until its seal. Each link sends only its route's messages, with its own
cursor; an episode without a route (a spool of an earlier version) takes
``default_route``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pipeline import protocol
from pipeline.errors import ProtocolError, SpoolFullError, StoreError
from pipeline.record_log import RecordWriter, frame_parts, read_at, recover, unpack_frames

log = logging.getLogger("refinery.spool")

SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".rfs"
UNSEALED_FILE = "unsealed.json"
ROUTES_FILE = "routes.json"


@dataclass
class SpoolEntry:
    segment: int
    offset: int
    size: int
    episode: str
    stream: str
    seq: int
    appended: float  # time.monotonic() when spooled, for capture-to-ack latency


class Spool:
    """Thread-safe: the capture thread appends, the network thread sends and acks."""

    def __init__(self, directory: Path, budget_bytes: int = 2 << 30, segment_bytes: int = 16 << 20) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        # Space comes back a whole segment at a time: keep segments small against the budget.
        self.segment_bytes = max(64 * 1024, min(segment_bytes, budget_bytes // 8))
        self._lock = threading.Lock()
        self._entries: deque[SpoolEntry] = deque()
        # Per route, index into _entries of the next message to look at for sending.
        self._cursors: dict[str, int] = {}
        self._last_sent: dict[str, int] = {}
        self.default_route = ""
        self._acked: dict[tuple[str, str], int] = {}
        self._sealed: set[str] = set()
        self._segment_sizes: dict[int, int] = {}
        self._writer: RecordWriter | None = None
        self.recovered_without_stop: set[str] = set()
        self._segment = 0
        self.bytes_used = 0
        self.resent = 0
        self.last_ack_latency_s = 0.0
        directory.mkdir(parents=True, exist_ok=True)
        self._unsealed_path = directory / UNSEALED_FILE
        self._unsealed: set[str] = self._load_unsealed()
        self._routes_path = directory / ROUTES_FILE
        self._routes: dict[str, str] = self._load_routes()
        self._recover()

    # ------------------------------------------------------------------ recovery

    def _segment_path(self, n: int) -> Path:
        return self.directory / f"{SEGMENT_PREFIX}{n:08d}{SEGMENT_SUFFIX}"

    def _recover(self) -> None:
        """Rebuild the index from the segments a previous run left."""
        now = time.monotonic()
        stopped: set[str] = set()
        for path in sorted(self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}")):
            try:
                n = int(path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])
            except ValueError:
                continue
            entries = recover(path)
            for entry in entries:
                try:
                    record = protocol.decode(unpack_frames(entry.payload))
                    header = record.header  # type: ignore[union-attr]
                except (ProtocolError, ValueError, AttributeError) as err:
                    raise StoreError(str(path), f"spooled message at {entry.offset} does not decode: {err}") from err
                if isinstance(record, protocol.Event) and record.kind == "stop":
                    stopped.add(header.episode_id)
                self._entries.append(
                    SpoolEntry(n, entry.offset, entry.end - entry.offset, header.episode_id, header.stream, header.seq, now)
                )
            size = path.stat().st_size
            self._segment_sizes[n] = size
            self.bytes_used += size
            self._segment = max(self._segment, n)
        self.recovered_without_stop = {e.episode for e in self._entries} - stopped
        if self._entries:
            log.info("spool %s: recovered %d unacknowledged messages", self.directory, len(self._entries))

    def next_seqs(self) -> dict[tuple[str, str], int]:
        """Per (episode, stream), the seq the next new message must take."""
        with self._lock:
            result: dict[tuple[str, str], int] = {}
            for e in self._entries:
                key = (e.episode, e.stream)
                result[key] = max(result.get(key, 0), e.seq + 1)
            return result

    def pending_episodes(self) -> list[str]:
        """Every episode still waited on: with spooled messages, or not confirmed sealed."""
        with self._lock:
            return sorted({e.episode for e in self._entries} | self._unsealed)

    def has_entries(self, episode: str) -> bool:
        with self._lock:
            return any(e.episode == episode for e in self._entries)

    # ------------------------------------------------------------------ episodes awaiting their seal

    def _load_unsealed(self) -> set[str]:
        try:
            names = json.loads(self._unsealed_path.read_text())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as err:
            raise StoreError(str(self._unsealed_path), f"unreadable ({err}); it lists the episodes whose seal "
                             "was not confirmed: fix or remove it") from err
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise StoreError(str(self._unsealed_path), "must be a JSON list of episode ids")
        return set(names)

    def _load_routes(self) -> dict[str, str]:
        try:
            routes = json.loads(self._routes_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise StoreError(str(self._routes_path), f"unreadable ({err}); it names the ingest holding each open "
                             "episode: fix or remove it (episodes then go to the collector's first choice)") from err
        if not isinstance(routes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in routes.items()):
            raise StoreError(str(self._routes_path), "must be a JSON object {episode id: ingest endpoint}")
        return routes

    def _save_json(self, path: Path, value: object) -> None:
        """Write-to-temp and rename (see :meth:`_save_unsealed`)."""
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(value, sort_keys=True))
            os.replace(tmp, path)
        except OSError as err:
            log.error("spool %s: cannot write %s: %s", self.directory, path.name, err.strerror or err)

    def set_route(self, episode: str, endpoint: str) -> None:
        """Send ``episode`` to ``endpoint`` from now on, across restarts, until it is sealed."""
        with self._lock:
            if self._routes.get(episode) != endpoint:
                self._routes[episode] = endpoint
                self._save_json(self._routes_path, self._routes)

    def route(self, episode: str) -> str:
        with self._lock:
            return self._routes.get(episode, self.default_route)

    def _drop_route(self, episode: str) -> None:
        if self._routes.pop(episode, None) is not None:
            self._save_json(self._routes_path, self._routes)

    def _save_unsealed(self) -> None:
        """Write-to-temp and rename: a killed collector leaves the old list or the new one.

        A failed write (disk full) is logged, not raised: the list in memory is
        still right for this run; only a crash before the next write would forget
        which acknowledged episodes to ask about.
        """
        self._save_json(self._unsealed_path, sorted(self._unsealed))

    def expect_seal(self, episode: str) -> None:
        """Remember ``episode`` until :meth:`mark_sealed` or :meth:`forget` (survives restarts)."""
        with self._lock:
            if episode not in self._unsealed and episode not in self._sealed:
                self._unsealed.add(episode)
                self._save_unsealed()

    def forget(self, episode: str) -> None:
        """Stop waiting on ``episode`` without a seal (the ingest can never seal it)."""
        with self._lock:
            if episode in self._unsealed:
                self._unsealed.discard(episode)
                self._save_unsealed()
            self._drop_route(episode)

    def unsealed(self) -> list[str]:
        """Episodes whose seal the ingest has not confirmed yet."""
        with self._lock:
            return sorted(self._unsealed)

    # ------------------------------------------------------------------ append

    def append(self, frames: list[bytes], episode: str, stream: str, seq: int, force: bool = False) -> None:
        """Spool one message. Raises SpoolFullError when the disk budget is used up;
        ``force`` (small control events: stop, pause) may exceed the budget."""
        parts = frame_parts(frames)
        size = sum(len(p) for p in parts)
        with self._lock:
            if not force and self.bytes_used + size > self.budget_bytes:
                raise SpoolFullError(
                    f"spool {self.directory} holds {self.bytes_used / 1e6:.1f} MB, its budget is "
                    f"{self.budget_bytes / 1e6:.1f} MB; the ingest is not acknowledging"
                )
            writer = self._writer_for(size)
            try:
                offset = writer.append_parts(parts)
            except OSError as err:
                raise SpoolFullError(f"cannot write spool {writer.path}: {err.strerror}") from err
            size = writer.size - offset
            self._segment_sizes[self._segment] += size
            self.bytes_used += size
            self._entries.append(SpoolEntry(self._segment, offset, size, episode, stream, seq, time.monotonic()))

    def _writer_for(self, size: int) -> RecordWriter:
        if self._writer is None or self._writer.size + size > self.segment_bytes:
            if self._writer is not None:
                self._writer.close()
            self._segment += 1
            self._writer = RecordWriter(self._segment_path(self._segment))
            self._segment_sizes[self._segment] = 0
        return self._writer

    def sync(self) -> None:
        """fsync the open segment (a process crash is survived without it; power loss is not)."""
        with self._lock:
            if self._writer is not None:
                self._writer.sync()

    # ------------------------------------------------------------------ sending

    def _entry_route(self, entry: SpoolEntry) -> str:
        return self._routes.get(entry.episode, self.default_route)

    def next_to_send(self, route: str | None = None) -> list[bytes] | None:
        """The next unacknowledged message of ``route`` (default: the default route)
        after that route's cursor, or None."""
        route = self.default_route if route is None else route
        with self._lock:
            cursor = self._cursors.get(route, 0)
            while cursor < len(self._entries):
                entry = self._entries[cursor]
                cursor += 1
                if self._entry_route(entry) == route and not self._is_acked(entry):
                    self._last_sent[route] = cursor - 1
                    break
            else:
                self._cursors[route] = cursor
                return None
            self._cursors[route] = cursor
            path = self._segment_path(entry.segment)
        return unpack_frames(read_at(path, entry.offset))

    def unsend(self, route: str | None = None) -> None:
        """The message :meth:`next_to_send` just returned could not be sent: keep it next."""
        route = self.default_route if route is None else route
        with self._lock:
            last = self._last_sent.pop(route, -1)
            if 0 <= last < self._cursors.get(route, 0):
                self._cursors[route] = last

    def rewind(self, route: str | None = None) -> int:
        """Send again everything unacknowledged of ``route``; return how many messages that is."""
        route = self.default_route if route is None else route
        with self._lock:
            self._drop_acked_head()
            pending = self._sent_unacked(route)
            self.resent += pending
            self._cursors[route] = 0
            return pending

    def in_flight(self, route: str | None = None) -> int:
        """Messages of ``route`` sent but not yet acknowledged (bounded by the credit window)."""
        route = self.default_route if route is None else route
        with self._lock:
            return self._sent_unacked(route)

    def _sent_unacked(self, route: str) -> int:
        entries = self._entries
        return sum(
            1 for i in range(min(self._cursors.get(route, 0), len(entries)))
            if not self._is_acked(entries[i]) and self._entry_route(entries[i]) == route
        )

    def unacked(self, route: str | None = None) -> int:
        """Messages not acknowledged yet: all of them, or those of one route."""
        with self._lock:
            return sum(1 for e in self._entries
                       if not self._is_acked(e) and (route is None or self._entry_route(e) == route))

    # ------------------------------------------------------------------ acks

    def ack(self, episode: str, stream: str, seq: int) -> None:
        with self._lock:
            key = (episode, stream)
            if seq > self._acked.get(key, -1):
                self._acked[key] = seq
            self._drop_acked_head()

    def mark_sealed(self, episode: str) -> None:
        with self._lock:
            self._sealed.add(episode)
            if episode in self._unsealed:
                self._unsealed.discard(episode)
                self._save_unsealed()
            self._drop_route(episode)
            self._drop_acked_head()

    def set_acked(self, acked: dict[str, dict[str, int]], sealed: tuple[str, ...]) -> None:
        """Adopt the ingest's view after a handshake (it may be ahead of ours)."""
        with self._lock:
            for episode, streams in acked.items():
                for stream, seq in streams.items():
                    key = (episode, stream)
                    self._acked[key] = max(self._acked.get(key, -1), seq)
            self._sealed.update(sealed)
            if self._unsealed & set(sealed):
                self._unsealed -= set(sealed)
                self._save_unsealed()
            if self._routes.keys() & set(sealed):
                for episode in sealed:
                    self._routes.pop(episode, None)
                self._save_json(self._routes_path, self._routes)
            self._drop_acked_head()

    def is_sealed(self, episode: str) -> bool:
        with self._lock:
            return episode in self._sealed

    def _is_acked(self, entry: SpoolEntry) -> bool:
        return entry.episode in self._sealed or entry.seq <= self._acked.get((entry.episode, entry.stream), -1)

    def _drop_acked_head(self) -> None:
        now = time.monotonic()
        while self._entries and self._is_acked(self._entries[0]):
            entry = self._entries.popleft()
            self.last_ack_latency_s = now - entry.appended
            for route, cursor in self._cursors.items():
                if cursor > 0:
                    self._cursors[route] = cursor - 1
            for route in self._last_sent:
                self._last_sent[route] -= 1
        if not self._entries and self._writer is not None:
            # Everything is acknowledged: the open segment can go too.
            self._writer.close()
            self._writer = None
        oldest_live = self._entries[0].segment if self._entries else self._segment + 1
        for n in sorted(self._segment_sizes):
            if n >= oldest_live or (self._writer is not None and n == self._segment):
                break
            self.bytes_used -= self._segment_sizes.pop(n)
            self._segment_path(n).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

"""A scripted ingest for collector tests: speaks the real protocol on a real socket,
acknowledges everything at once, and seals only when the test says so.

It lets a test pin what the collector sends (every HELLO is kept) and stage
what a real ingest does only by bad luck: a "sealed" notice that never comes,
a connection that is dropped, a WELCOME that states episode states.
"""

from __future__ import annotations

import threading
import time

import zmq

from pipeline import protocol


class FakeIngest:
    def __init__(self) -> None:
        self.hellos: list[protocol.Hello] = []
        self.events: list[protocol.Event] = []
        self.seal_on_hello: set[str] = set()  # episodes the next WELCOMEs report sealed
        self.states_on_hello: dict[str, str] = {}  # Welcome.episodes for asked-about episodes
        self._acked: dict[tuple[str, str], int] = {}
        self._identity: bytes | None = None
        self._lock = threading.Lock()
        self._commands: list[tuple[str, object]] = []
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._sock = self._context.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name="fake-ingest", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ test controls

    def drop_session(self) -> None:
        """Forget the collector's session, as a restarted ingest would: it must HELLO again."""
        with self._lock:
            self._commands.append(("drop", None))

    def announce_sealed(self, episode: str) -> None:
        """Send an ACK naming the episode sealed to the live session."""
        with self._lock:
            self._commands.append(("sealed", episode))

    def wait_for_hellos(self, n: int, timeout: float = 10.0) -> protocol.Hello:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.hellos) >= n:
                    return self.hellos[n - 1]
            time.sleep(0.02)
        raise AssertionError(f"fewer than {n} HELLOs within {timeout} s: {self.hellos}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close(0)
        self._context.term()

    # ------------------------------------------------------------------ serving

    def _send(self, identity: bytes, record: protocol.Record) -> None:
        try:
            self._sock.send_multipart([identity, *record.encode()], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                commands, self._commands = self._commands, []
            for command, arg in commands:
                if command == "drop" and self._identity is not None:
                    self._send(self._identity, protocol.Notice("handshake", "no session: send HELLO first"))
                    self._identity = None
                elif command == "sealed" and self._identity is not None:
                    self._send(self._identity, protocol.Ack((), sealed=(str(arg),)))
            if not self._sock.poll(10):
                continue
            identity, *frames = self._sock.recv_multipart()
            record = protocol.decode(frames)
            if isinstance(record, protocol.TimeRequest):
                now = time.time_ns()
                self._send(identity, protocol.TimeReply(record.t1_ns, now, now))
            elif isinstance(record, protocol.Hello):
                with self._lock:
                    self.hellos.append(record)
                    sealed = tuple(e for e in record.pending if e in self.seal_on_hello)
                    states = {e: s for e, s in self.states_on_hello.items() if e in record.pending}
                acked: dict[str, dict[str, int]] = {}
                for (episode, stream), seq in self._acked.items():
                    if episode not in sealed:
                        acked.setdefault(episode, {})[stream] = seq
                self._identity = identity
                self._send(identity, protocol.Welcome(64, 1 << 25, acked, sealed, states))
            elif identity == self._identity:
                header = record.header  # type: ignore[union-attr]
                key = (header.episode_id, header.stream)
                if header.seq == self._acked.get(key, -1) + 1:
                    self._acked[key] = header.seq
                    if isinstance(record, protocol.Event):
                        with self._lock:
                            self.events.append(record)
                self._send(identity, protocol.Ack(((*key, self._acked.get(key, -1)),)))
            else:
                self._send(identity, protocol.Notice("handshake", "no session: send HELLO first"))

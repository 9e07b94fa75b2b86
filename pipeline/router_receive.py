"""The ingest's receive: a batch of waiting ROUTER messages in one call.

Each message comes back as ``(identity, key, parts, arrival_ns)``: the
sender's ROUTER identity, its CURVE public key (the ZAP ``User-Id``; "" when
the socket does not authenticate or the message carries none), the message's
parts, and when it was received (``time.time_ns()``). The first part (a
header) is always ``bytes``; a later part of ``zero_copy_bytes`` or more is a
memoryview of ZeroMQ's own buffer (camera JPEGs are journaled
without a copy), a smaller one ``bytes``.

Two implementations return the same batches. The compiled one
(``pipeline/_router_receive.c``, built by ``pip install``) receives in C with
the GIL held: the Python one calls pyzmq three to five times per message, each
call giving the GIL up and taking it back (where the journal writer's thread
may take it), for 2.5x the CPU (README, Performance, "The compiled
per-message path"). Where
the extension was not built (no C compiler at install time) or cannot bind to
pyzmq's libzmq, the Python one runs; ``REFINERY_PURE_PYTHON=1`` chooses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from pipeline.compiled import pure_python_chosen

log = logging.getLogger("refinery.ingest")

Received = tuple[bytes, str, list[bytes | memoryview], int]
ReceiveBatch = Callable[[zmq.Socket, int, int, bool], list[Received]]


def receive_batch_python(sock: zmq.Socket, limit: int, zero_copy_bytes: int, authenticated: bool) -> list[Received]:
    """Up to ``limit`` waiting messages, through pyzmq."""
    recv = sock.recv
    more = sock.getsockopt
    received: list[Received] = []
    for _ in range(limit):
        # ROUTER puts the sender's identity first; the header follows. Both are
        # small: received as bytes, cheaper than a Frame and its copy. Only with
        # CURVE is the identity a Frame, for its User-Id property (the sender's key).
        try:
            if authenticated:
                first = recv(zmq.NOBLOCK, copy=False)
                identity = first.bytes
                try:
                    key = first.get("User-Id") or ""
                except zmq.ZMQError:
                    key = ""  # no key: the allow-list refuses it
            else:
                identity = recv(zmq.NOBLOCK)
                key = ""
        except zmq.Again:
            break
        message: list[bytes | memoryview] = [recv(zmq.NOBLOCK)]
        # The parts of a multipart message arrive together.
        if more(zmq.RCVMORE):
            frame = recv(zmq.NOBLOCK, copy=False)
            message.append(frame.bytes if len(frame) < zero_copy_bytes else frame.buffer)
            while frame.more:
                frame = recv(zmq.NOBLOCK, copy=False)
                message.append(frame.bytes if len(frame) < zero_copy_bytes else frame.buffer)
        received.append((identity, key, message, time.time_ns()))
    return received


def compiled_receive_batch() -> ReceiveBatch | None:
    """The compiled receive bound to pyzmq's libzmq, or None (with the reason logged) where it cannot run."""
    if pure_python_chosen():
        return None
    try:
        from pipeline import _router_receive
    except ImportError:
        log.debug("the compiled receive was not built; receiving through pyzmq")
        return None
    if zmq.zmq_version_info()[0] != 4:  # the message layout it declares is libzmq 4's
        log.info("libzmq %s: receiving through pyzmq", zmq.zmq_version())
        return None
    try:
        library = _router_receive.bind()
    except ImportError as err:
        log.info("the compiled receive cannot run here (%s); receiving through pyzmq", err)
        return None
    receive = _router_receive.receive
    problem = _self_test(receive)
    if problem:
        log.warning("the compiled receive, bound to %s, %s; receiving through pyzmq", library, problem)
        return None

    def receive_batch_compiled(sock: zmq.Socket, limit: int, zero_copy_bytes: int,
                               authenticated: bool) -> list[Received]:
        """Up to ``limit`` waiting messages, received in C."""
        if sock.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        batch, error = receive(sock.underlying, limit, zero_copy_bytes, authenticated)
        if error and not batch:  # with a batch, the next call meets the error again
            raise zmq.ZMQError(error)
        return batch

    return receive_batch_compiled


def _self_test(receive: Callable[..., tuple[list[Received], int]]) -> str:
    """What is wrong with the compiled receive on a socket of pyzmq's, or "".

    The libzmq it bound to must be the one pyzmq's sockets belong to (a process
    could hold two): a message sent through pyzmq must come back whole."""
    context = zmq.Context()
    try:
        router = context.socket(zmq.ROUTER)
        router.bind("inproc://refinery-receive-self-test")
        dealer = context.socket(zmq.DEALER)
        dealer.connect("inproc://refinery-receive-self-test")
        sent = [b"self-test", bytes(range(256)) * 300]
        dealer.send_multipart(sent)
        batch, error = receive(router.underlying, 2, 1024, False)
        if error:
            return f"failed on pyzmq's socket ({zmq.strerror(error)})"
        if len(batch) != 1 or [bytes(part) for part in batch[0][2]] != sent:
            return "did not return the message pyzmq sent"
        return ""
    finally:
        context.destroy(linger=0)


receive_batch: ReceiveBatch = compiled_receive_batch() or receive_batch_python
IMPLEMENTATION = "python" if receive_batch is receive_batch_python else "compiled"

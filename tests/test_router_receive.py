"""The ingest's batch receive (pipeline.router_receive): the compiled one and the
Python one take the same messages off a real ROUTER socket and return the same
batches: identity, CURVE key, parts (views of ZeroMQ's buffer from the
zero-copy size on, copies below), arrival time; a batch stops at its limit or
when the socket is empty, and the next one goes on from there."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq
from zmq.auth.thread import ThreadAuthenticator

from pipeline import router_receive
from pipeline.router_receive import ReceiveBatch, compiled_receive_batch, receive_batch_python

ZERO_COPY = 4096
COMPILED = compiled_receive_batch()

IMPLEMENTATIONS = [
    pytest.param(receive_batch_python, id="python"),
    pytest.param(COMPILED, id="compiled",
                 marks=pytest.mark.skipif(COMPILED is None, reason="the C extension was not built here")),
]


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def router(context: zmq.Context) -> zmq.Socket:
    sock = context.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    return sock


def dealer(context: zmq.Context, router: zmq.Socket, identity: bytes) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    return sock


def wait_readable(sock: zmq.Socket) -> None:
    assert sock.poll(5000, zmq.POLLIN), "nothing arrived within 5 s"


def receive_all(receive: ReceiveBatch, sock: zmq.Socket, count: int, limit: int = 256,
                authenticated: bool = False) -> list[router_receive.Received]:
    got: list[router_receive.Received] = []
    deadline = time.monotonic() + 10
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count} messages in 10 s"
        batch = receive(sock, limit, ZERO_COPY, authenticated)
        assert len(batch) <= limit
        got.extend(batch)
        if not batch:
            sock.poll(100, zmq.POLLIN)
    return got


@pytest.mark.parametrize("receive", IMPLEMENTATIONS)
def test_messages_come_back_whole_in_order_with_their_sender(receive: ReceiveBatch, context, router) -> None:
    robots = [dealer(context, router, f"robot-{n}".encode()) for n in range(3)]
    sent = []
    for k in range(30):
        parts = [f"header {k}".encode(), bytes([k]) * (k * 300), b"\xff" * (ZERO_COPY + k)]
        sent.append((f"robot-{k % 3}".encode(), parts[: 1 + k % 3]))
        robots[k % 3].send_multipart(parts[: 1 + k % 3])
    wait_readable(router)
    got = receive_all(receive, router, len(sent))
    per_robot = {identity: [p for i, p in sent if i == identity] for identity, _ in sent}
    for identity, key, parts, _ in got:
        assert key == ""
        assert [bytes(p) for p in parts] == per_robot[identity].pop(0)
    assert all(not left for left in per_robot.values())


@pytest.mark.parametrize("receive", IMPLEMENTATIONS)
def test_large_parts_are_views_of_zeromq_buffers_and_outlive_the_next_receives(
        receive: ReceiveBatch, context, router) -> None:
    robot = dealer(context, router, b"r")
    robot.send_multipart([b"h" * (ZERO_COPY + 10), b"a" * (ZERO_COPY - 1), b"b" * ZERO_COPY, b"c" * (3 * ZERO_COPY)])
    wait_readable(router)
    (_, _, parts, _), = receive_all(receive, router, 1)
    assert [type(p) for p in parts] == [bytes, bytes, memoryview, memoryview]  # the header is always a copy
    for k in range(50):  # ZeroMQ reuses its buffers: a kept view must not change
        robot.send_multipart([b"h", bytes([k]) * (3 * ZERO_COPY)])
    wait_readable(router)
    receive_all(receive, router, 50)
    assert bytes(parts[2]) == b"b" * ZERO_COPY and bytes(parts[3]) == b"c" * (3 * ZERO_COPY)


@pytest.mark.parametrize("receive", IMPLEMENTATIONS)
def test_a_batch_stops_at_its_limit_and_the_next_goes_on(receive: ReceiveBatch, context) -> None:
    router = context.socket(zmq.ROUTER)
    router.bind("inproc://limit")  # inproc: a message is waiting as soon as its send returns
    robot = context.socket(zmq.DEALER)
    robot.connect("inproc://limit")
    for k in range(10):
        robot.send_multipart([b"%d" % k, b"x"])
    first = receive(router, 4, ZERO_COPY, False)
    rest = receive(router, 100, ZERO_COPY, False)
    assert [m[2][0] for m in first] == [b"0", b"1", b"2", b"3"]
    assert [m[2][0] for m in rest] == [b"%d" % k for k in range(4, 10)]
    assert receive(router, 4, ZERO_COPY, False) == []


@pytest.mark.parametrize("receive", IMPLEMENTATIONS)
def test_arrival_is_wall_clock_nanoseconds_in_receive_order(receive: ReceiveBatch, context, router) -> None:
    robot = dealer(context, router, b"r")
    before = time.time_ns()
    for k in range(5):
        robot.send_multipart([b"%d" % k])
    wait_readable(router)
    got = receive_all(receive, router, 5)
    arrivals = [m[3] for m in got]
    assert arrivals == sorted(arrivals)
    assert before <= arrivals[0] and arrivals[-1] <= time.time_ns()


@pytest.mark.parametrize("receive", IMPLEMENTATIONS)
def test_with_curve_each_message_carries_its_senders_public_key(receive: ReceiveBatch, context, router) -> None:
    server_public, server_secret = zmq.curve_keypair()
    auth = ThreadAuthenticator(context)
    auth.start()
    try:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        secure = context.socket(zmq.ROUTER)
        secure.curve_server = True
        secure.curve_publickey, secure.curve_secretkey = server_public, server_secret
        secure.bind("tcp://127.0.0.1:*")
        keys = []
        for n in range(2):
            public, secret = zmq.curve_keypair()
            client = context.socket(zmq.DEALER)
            client.curve_serverkey, client.curve_publickey, client.curve_secretkey = server_public, public, secret
            client.connect(secure.getsockopt_string(zmq.LAST_ENDPOINT))
            client.send_multipart([b"from %d" % n])
            keys.append(public.decode())
        wait_readable(secure)
        got = receive_all(receive, secure, 2, authenticated=True)
        assert {(m[2][0], m[1]) for m in got} == {(b"from 0", keys[0]), (b"from 1", keys[1])}
    finally:
        auth.stop()


@pytest.mark.parametrize("receive", IMPLEMENTATIONS)
def test_without_authentication_a_message_has_no_key(receive: ReceiveBatch, context, router) -> None:
    dealer(context, router, b"r").send_multipart([b"h"])
    wait_readable(router)
    (_, key, _, _), = receive_all(receive, router, 1, authenticated=True)
    assert key == ""  # the allow-list refuses it


@pytest.mark.parametrize("receive", IMPLEMENTATIONS)
def test_a_closed_socket_is_an_error_not_a_crash(receive: ReceiveBatch, context) -> None:
    sock = context.socket(zmq.ROUTER)
    sock.close()
    with pytest.raises(zmq.ZMQError):
        receive(sock, 10, ZERO_COPY, False)


def test_the_compiled_receive_reads_pyzmqs_sockets_and_a_receive_that_cannot_fails_its_self_test() -> None:
    # Bound to a libzmq other than pyzmq's (a process may hold two), it would get
    # ENOTSOCK or garbage: the self-test at import then keeps the ingest on pyzmq.
    if COMPILED is not None:
        from pipeline import _router_receive

        assert router_receive._self_test(_router_receive.receive) == ""
    assert "non-socket" in router_receive._self_test(lambda *args: ([], zmq.ENOTSOCK))
    assert "did not return" in router_receive._self_test(lambda *args: ([(b"id", "", [b"self-test"], 0)], 0))

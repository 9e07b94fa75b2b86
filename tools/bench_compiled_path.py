"""What the compiled parts of the ingest's per-message path save, against the
Python they replace, measured in the same run.

    python tools/bench_compiled_path.py [--messages 20000] [--rounds 5]

Two measurements, each alternating compiled and Python for ``--rounds``:

- **receive** (``pipeline/_router_receive.c`` against
  ``router_receive.receive_batch_python``): a sender process queues
  ``--messages`` messages from 40 DEALER sockets on a real loopback ROUTER, the
  G1 mix (a 1.3 kB joint batch or a 69 kB camera frame, each behind an 80-byte
  header); once all are waiting, the event loop's receive drains them in
  batches of 256. CPU of the receiving thread per message.
- **layout** (``pipeline/_record_layout.c`` against the Python layout in
  ``DirectRecordWriter.append_records``): the journal writer's batches of
  shared-journal records (segment prefix, tag, arrival, frame lengths,
  header, payload: the parts ``EpisodeJournal.append_frames`` queues, the
  same mix) appended with ``O_DIRECT`` to a file in ``--dir``. CPU of the
  appending thread per record (the disk writes are the same in both). What
  this cannot show is the GIL: the compiled layout releases it for the
  batch, the Python one holds it; measure that in the ingest (README,
  Performance, "The compiled per-message path").

Prints each round, the medians, and compiled / Python ratios. Needs the
extensions built (``pip install -e .`` builds them where a C compiler is).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq  # noqa: E402

from pipeline import direct_record_writer  # noqa: E402
from pipeline.direct_record_writer import open_record_log  # noqa: E402
from pipeline.ingest import RECEIVE_BATCH as BATCH  # noqa: E402
from pipeline.ingest import ZERO_COPY_BYTES  # noqa: E402
from pipeline.router_receive import compiled_receive_batch, receive_batch_python  # noqa: E402

ROBOTS = 40
HEADER = b"h" * 80
JOINTS = b"j" * 1300
FRAME = b"\xff\xd8" + b"f" * 68998


def _send(endpoint: str, count: int, go: mp.synchronize.Event) -> None:
    ctx = zmq.Context()
    robots = []
    for n in range(ROBOTS):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.IDENTITY, b"robot-%d" % n)
        sock.connect(endpoint)
        robots.append(sock)
    go.wait()
    for k in range(count):
        robots[k % ROBOTS].send_multipart([HEADER, FRAME if k % 2 else JOINTS])
    for sock in robots:
        sock.close(linger=-1)
    ctx.term()


def receive_round(receive, router: zmq.Socket, endpoint: str, count: int) -> float:  # noqa: ANN001
    """CPU µs per message to drain ``count`` waiting messages."""
    go = mp.Event()
    sender = mp.Process(target=_send, args=(endpoint, count, go))
    sender.start()
    time.sleep(0.3)  # every DEALER connected
    go.set()
    sender.join()
    time.sleep(0.3)  # ZeroMQ's I/O thread has moved them into the socket's queue
    got = 0
    cpu = 0.0
    while got < count:
        start = time.thread_time()
        batch = receive(router, BATCH, ZERO_COPY_BYTES, False)
        cpu += time.thread_time() - start
        got += len(batch)
        if not batch:
            router.poll(100, zmq.POLLIN)
    return cpu / count * 1e6


def bench_receive(messages: int, rounds: int) -> tuple[list[float], list[float]]:
    compiled = compiled_receive_batch()
    if compiled is None:
        raise SystemExit("bench_compiled_path: the compiled receive is not built here (pip install -e . with a C compiler)")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVHWM, 0)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    times: dict[str, list[float]] = {"compiled": [], "python": []}
    for r in range(rounds):
        order = [("compiled", compiled), ("python", receive_batch_python)]
        for name, receive in order if r % 2 == 0 else order[::-1]:
            times[name].append(receive_round(receive, router, endpoint, messages))
    router.close(linger=0)
    ctx.term()
    return times["compiled"], times["python"]


def layout_round(directory: Path, compiled: bool, batches: int) -> float:
    """CPU µs per record appending ``batches`` batches of 60 records."""
    records = []
    for k in range(60):
        payload = FRAME if k % 2 else JOINTS
        records.append([b"SEGMENT1", b"robot-%03d/episode-0001" % k, b"arrival!", b"\x02\x50\x00\x00\x00\x00\x00\x00\x00",
                        HEADER, memoryview(payload)])
    saved = direct_record_writer.lay_out
    direct_record_writer.lay_out = saved if compiled else None
    path = directory / "journal.log"
    log = open_record_log(path)
    try:
        start = time.thread_time()
        for _ in range(batches):
            log.append_records(records)
        cpu = time.thread_time() - start
    finally:
        log.close()
        path.unlink()
        direct_record_writer.lay_out = saved
    return cpu / (batches * len(records)) * 1e6


def bench_layout(directory: Path, rounds: int, batches: int) -> tuple[list[float], list[float]]:
    if direct_record_writer.lay_out is None:
        raise SystemExit("bench_compiled_path: the compiled layout is not built here (pip install -e . with a C compiler)")
    results: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for compiled in (True, False) if r % 2 == 0 else (False, True):
            results[compiled].append(layout_round(directory, compiled, batches))
    return results[True], results[False]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=20000, help="messages per receive round")
    p.add_argument("--batches", type=int, default=150, help="batches of 60 records per layout round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", type=Path, default=None, help="where the layout rounds write (default: a temporary folder)")
    args = p.parse_args(argv)

    compiled, python = bench_receive(args.messages, args.rounds)
    print("receive, CPU µs per message (G1 mix, batches of 256):")
    print(f"  compiled {', '.join(f'{t:.2f}' for t in compiled)}: median {statistics.median(compiled):.2f}")
    print(f"  python   {', '.join(f'{t:.2f}' for t in python)}: median {statistics.median(python):.2f}")
    print(f"  ratio compiled / python: {statistics.median(compiled) / statistics.median(python):.2f}")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        compiled_l, python_l = bench_layout(Path(tmp), args.rounds, args.batches)
    print("layout + O_DIRECT append, CPU µs per record (G1 mix, batches of 60 records):")
    print(f"  compiled {', '.join(f'{t:.2f}' for t in compiled_l)}: median {statistics.median(compiled_l):.2f}")
    print(f"  python   {', '.join(f'{t:.2f}' for t in python_l)}: median {statistics.median(python_l):.2f}")
    print(f"  ratio compiled / python: {statistics.median(compiled_l) / statistics.median(python_l):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

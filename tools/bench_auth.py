"""Ingest throughput with CURVE authentication on versus off, measured in the same run.

    python tools/bench_auth.py [--robots 4] [--seconds 6] [--frame-kb 60]

Starts `refinery ingest` as a separate process twice, once with `--plain` and
once with CURVE keys and an allow-list, and drives it each time with the same
client process: several robot sessions, each sending camera frames (JPEG-sized
payloads) as fast as the credit window allows and counting what the ingest
acknowledges as durable. Prints acknowledged MB/s and messages/s for both and
the ratio CURVE/plain.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.robot_config import load_robot_config


def _client(endpoint: str, keys: tuple[str, str] | None, robots: int, seconds: float, frame_kb: int,
            result: mp.Queue) -> None:
    import zmq

    from pipeline import protocol
    from pipeline.auth import ClientKeys

    robot = load_robot_config("unitree_g1")
    ctx = zmq.Context()
    payload = b"\xff\xd8" + os.urandom(frame_kb * 1024 - 4) + b"\xff\xd9"
    socks, window, sent, acked = [], [], [], []
    for n in range(robots):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keys:
            ClientKeys(Path(keys[0]), Path(keys[1])).apply(sock)
        sock.connect(endpoint)
        sock.send_multipart(protocol.Hello(f"bench-{n}", robot.model, robot.digest, robot.to_dict()).encode())
        if not sock.poll(10_000):
            result.put(("error", f"robot {n}: no WELCOME"))
            return
        welcome = protocol.decode(sock.recv_multipart())
        socks.append(sock)
        window.append(welcome.window)
        sent.append(0)
        acked.append(-1)
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for n, sock in enumerate(socks):
            while sent[n] - (acked[n] + 1) < window[n]:
                header = protocol.DataHeader(f"bench-{n}", "ep-bench", "head_left", sent[n], time.time_ns(), sent[n])
                sock.send_multipart([header.pack(protocol.Opcode.FRAME), payload], copy=False)
                sent[n] += 1
            while sock.poll(0):
                reply = protocol.decode(sock.recv_multipart())
                if isinstance(reply, protocol.Ack):
                    for _, _, seq in reply.acks:
                        acked[n] = max(acked[n], seq)
        time.sleep(0.0005)
    elapsed = time.perf_counter() - start
    messages = sum(a + 1 for a in acked)
    result.put(("ok", messages, messages * len(payload) / elapsed / 1e6, messages / elapsed))
    ctx.destroy(0)


def _measure(work: Path, curve: bool, args: argparse.Namespace) -> tuple[float, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    data = work / ("curve" if curve else "plain")
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", "--data-dir", str(data), "--bind", endpoint]
    keys = None
    if curve:
        from pipeline.auth import make_key_pair

        keydir, allow = work / "keys", work / "allow"
        make_key_pair(keydir, "ingest")
        make_key_pair(keydir, "bench")
        allow.mkdir(exist_ok=True)
        shutil.copy(keydir / "bench.key", allow / "bench.key")
        # One client key speaks for every bench robot: the allow-list must say so.
        (allow / "allow.yaml").write_text("".join(f"bench-{n}: [bench.key]\n" for n in range(args.robots)))
        cmd += ["--keys", str(keydir / "ingest.key_secret"), "--allow", str(allow)]
        keys = (str(keydir / "bench.key_secret"), str(keydir / "ingest.key"))
    else:
        cmd.append("--plain")
    log = open(work / f"ingest-{'curve' if curve else 'plain'}.log", "w")
    ingest = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(2.0)
        queue: mp.Queue = mp.get_context("spawn").Queue()
        client = mp.get_context("spawn").Process(
            target=_client, args=(endpoint, keys, args.robots, args.seconds, args.frame_kb, queue)
        )
        client.start()
        outcome = queue.get(timeout=args.seconds + 60)
        client.join(30)
    finally:
        ingest.terminate()
        ingest.wait(30)
        log.close()
    if outcome[0] != "ok":
        raise SystemExit(f"client failed: {outcome[1]}")
    return outcome[2], outcome[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=4, help="robot sessions in the client (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--frame-kb", type=int, default=60, help="payload size per message (default: %(default)s)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="refinery-bench-auth-"))
    try:
        print(f"$ python tools/bench_auth.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        plain = _measure(work, False, args)
        curve = _measure(work, True, args)
        print(f"{'ingest':<8} {'MB/s acked':>11} {'msg/s':>8}")
        print(f"{'plain':<8} {plain[0]:>11.1f} {plain[1]:>8.0f}")
        print(f"{'CURVE':<8} {curve[0]:>11.1f} {curve[1]:>8.0f}")
        print(f"CURVE / plain: {curve[0] / plain[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

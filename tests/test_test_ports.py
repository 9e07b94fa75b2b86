"""The test helpers' ports: several picked for one test are all different."""

from __future__ import annotations

import socket

from tests.processes import distinct_free_ports


def test_ports_picked_together_are_distinct_and_free() -> None:
    ports = distinct_free_ports(64)
    assert len(set(ports)) == 64
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free once picked: nothing keeps them

"""CURVE authentication: only collectors whose public key is on the allow-list get in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.auth import ClientKeys, ServerKeys, make_key_pair
from pipeline.errors import ConfigError, HandshakeRefused
from pipeline.ingest import IngestConfig, IngestServer
from pipeline.raw_store import RawEpisodeReader
from tests.conftest import record_episode


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    keydir = tmp_path / "keys"
    make_key_pair(keydir, "ingest")
    make_key_pair(keydir, "robot-a")
    make_key_pair(keydir, "robot-b")
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(keydir / "robot-a.key", allow / "robot-a.key")
    return {"dir": keydir, "allow": allow}


def test_allowed_collector_records_over_curve(start_ingest, make_collector, keys) -> None:
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(
        ingest.endpoint, allow_plain=False,
        keys=ClientKeys(keys["dir"] / "robot-a.key_secret", keys["dir"] / "ingest.key"),
    )
    c.start()
    record_episode(c, 0.3)
    assert c.drain(20)
    (path,) = ingest.raw_files()
    with RawEpisodeReader(path) as ep:
        assert ep.attrs["status"] == "complete"


def test_unknown_key_is_refused_and_logged(start_ingest, make_collector, keys, caplog) -> None:
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(
        ingest.endpoint, allow_plain=False,
        keys=ClientKeys(keys["dir"] / "robot-b.key_secret", keys["dir"] / "ingest.key"),
    )
    c.start()
    record_episode(c, 0.2)
    with pytest.raises(HandshakeRefused, match="CURVE key"):
        c.drain(10)
    assert ingest.raw_files() == []
    assert any("refused a collector" in r.getMessage() for r in caplog.records)


def test_plain_collector_cannot_reach_a_curve_ingest(start_ingest, make_collector, keys) -> None:
    ingest = start_ingest(allow_plain=False, keys=ServerKeys(keys["dir"] / "ingest.key_secret", keys["allow"]))
    c = make_collector(ingest.endpoint, hello_timeout_s=0.3)
    c.start()
    record_episode(c, 0.2)
    assert not c.drain(2)
    assert ingest.server.status()["collectors"] == 0
    assert c.spool.unacked() > 0  # kept, not lost


def test_ingest_without_keys_needs_the_explicit_plain_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--plain"):
        IngestServer(IngestConfig(data_dir=tmp_path))


def test_a_public_key_is_not_accepted_as_a_secret(tmp_path: Path, keys) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    with pytest.raises(ConfigError, match="public key"):
        ClientKeys(keys["dir"] / "robot-a.key", keys["dir"] / "ingest.key").apply(sock)
    sock.close(0)
    ctx.term()

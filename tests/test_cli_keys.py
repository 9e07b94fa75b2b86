"""`refinery keys` never replaces a key pair silently: deployed collectors hold it."""

from __future__ import annotations

from pipeline.cli import main


def test_keys_refuses_to_replace_an_existing_pair(tmp_path, capsys) -> None:
    assert main(["keys", str(tmp_path), "ingest", "robot-a"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(["keys", str(tmp_path), "robot-b", "robot-a"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "robot-a" in err[0] and "--force" in err[0], err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, not even robot-b


def test_keys_force_replaces_a_pair(tmp_path) -> None:
    assert main(["keys", str(tmp_path), "robot-a"]) == 0
    old = (tmp_path / "robot-a.key").read_bytes()
    assert main(["keys", str(tmp_path), "robot-a", "--force"]) == 0
    assert (tmp_path / "robot-a.key").read_bytes() != old

"""`refinery` starts light: the import/export formats (zarr, OpenCV) load only for the commands that need them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
PROBE = """
import json, sys
from pipeline.cli import build_parser
parser = build_parser(sys.argv[1:])
commands = next(a for a in parser._actions if a.dest == "command").choices
print(json.dumps({"heavy": sorted(m for m in ("zarr", "cv2") if m in sys.modules), "commands": sorted(commands)}))
"""


def probe(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True,
                         cwd=REPO, timeout=60).stdout
    return json.loads(out)


@pytest.mark.parametrize("argv", [["collect", "--robot", "x"], ["-v", "ingest"], ["process", "raw"]])
def test_a_command_without_formats_does_not_load_them(argv: list[str]) -> None:
    assert probe(*argv)["heavy"] == []


@pytest.mark.parametrize("argv", [["export", "ds.zarr"], ["import", "aloha"], ["--help"], ["procss"]])
def test_import_export_help_and_typos_see_every_command(argv: list[str]) -> None:
    found = probe(*argv)
    assert {"import", "export", "collect", "process"} <= set(found["commands"])
    assert found["heavy"] == ["cv2", "zarr"]

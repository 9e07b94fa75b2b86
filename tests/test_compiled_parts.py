"""The compiled parts of the ingest's per-message path (pipeline.compiled): built
by the install as a user runs it, chosen where they can run, and set aside by
REFINERY_PURE_PYTHON=1. What each one does is specified with its Python twin in
test_router_receive.py and test_direct_record_writer.py."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CHOSEN = ("from pipeline import direct_record_writer, router_receive; "
          "print(router_receive.IMPLEMENTATION, 'compiled' if direct_record_writer.lay_out else 'python')")


def chosen(**env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", CHOSEN], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                    reason="both are built for x86-64 Linux (the receive: Linux; the layout: x86-64's CRC-32C)")
def test_the_install_builds_both_and_the_ingest_chooses_them() -> None:
    # CI installs as the README says: an extension that silently failed to build
    # would leave the ingest on the slower path without anyone noticing.
    assert chosen(REFINERY_PURE_PYTHON="") == ["compiled", "compiled"]


def test_pure_python_is_chosen_by_the_environment() -> None:
    assert chosen(REFINERY_PURE_PYTHON="1") == ["python", "python"]

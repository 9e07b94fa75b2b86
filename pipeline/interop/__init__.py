"""Foreign formats in and out: one module per format and direction.

Every module listed in :data:`MODULES` defines ``FORMAT``, a :class:`Format`:
its name, whether it imports (foreign recordings -> sealed raw episodes, which
then go through the same processing as what the ingest records) or exports (a
Refinery dataset -> a trainer's layout), the command-line options it adds and
the function that runs it. ``refinery import KIND`` and ``refinery export
--format NAME`` are built from these, so adding a format is adding one module
and one line here. A format module imports its rarer heavy dependencies (video
codecs, bag readers) inside its functions; the common ones (zarr, OpenCV) load
with it, so the CLI loads the format modules only for ``import``, ``export`` and
its top-level help (``pipeline.cli.build_parser``), not for every command.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import ConfigError

Direction = Literal["import", "export"]

MODULES = (
    "pipeline.interop.aloha_import",
    "pipeline.interop.rosbag_import",
    "pipeline.interop.lerobot_import",
    "pipeline.interop.dp_export",
    "pipeline.interop.lerobot_export",
)
"""Format modules, in the order the CLI lists them."""


@dataclass(frozen=True)
class Format:
    """One foreign format in one direction, as the CLI offers it.

    Attributes:
        name: The word on the command line (``aloha``, ``diffusion-policy``).
        direction: ``import`` or ``export``.
        summary: One line for ``--help`` lists.
        description: What is read or written, kept and lost (the subcommand's help).
        add_arguments: Adds the format's own options to a parser (import: its
            whole subcommand; export: a group beside the common options of
            :mod:`pipeline.interop.selection`).
        run: Does the work for parsed arguments; returns the lines to print.
    """

    name: str
    direction: Direction
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Sequence[str]]


def formats(direction: Direction) -> list[Format]:
    """Every format of one direction, in :data:`MODULES` order."""
    found = [importlib.import_module(name).FORMAT for name in MODULES]
    return [f for f in found if f.direction == direction]


def find(direction: Direction, name: str) -> Format:
    """The format called ``name``, or a ConfigError listing the known ones."""
    known = formats(direction)
    for candidate in known:
        if candidate.name == name:
            return candidate
    names = ", ".join(f.name for f in known)
    raise ConfigError(f"refinery {direction}", "format", f"{name!r} is not a known format; use one of: {names}")


def add_destination_arguments(p: argparse.ArgumentParser) -> None:
    """RAW_DIR, where every importer writes its sealed raw episodes (``RAW_DIR/raw/<robot-id>/``)."""
    p.add_argument("data_dir", type=Path, nargs="?", metavar="RAW_DIR",
                   help="where raw episodes go (e.g. an ingest's data dir); refine them with `refinery process RAW_DIR`")
    p.add_argument("--data-dir", dest="data_dir_option", type=Path, metavar="RAW_DIR", help="the same as RAW_DIR")


def destination(args: argparse.Namespace) -> Path:
    """RAW_DIR, given as a positional or as ``--data-dir``."""
    data_dir = args.data_dir or args.data_dir_option
    if data_dir is None:
        raise ConfigError(f"refinery import {args.kind}", "RAW_DIR", "say where the raw episodes go")
    return Path(data_dir)

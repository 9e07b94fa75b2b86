"""What every exporter shares: which episodes, which keys under which names, where to.

``refinery export DATASET --format NAME OUT`` takes these options whatever the
format; a format adds its own in a group of its own (see
:mod:`pipeline.interop`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, DatasetError

_COMMAND = "refinery export"


@dataclass(frozen=True)
class Selection:
    """The episodes and keys an export takes, from the common options.

    Attributes:
        keys: Dataset key -> exported name; None: the format's default names.
        min_grade: Episodes graded this letter or better.
        models / robots / tasks: Episodes of these robot models, ids, tasks (None: all).
        split: ``train`` or ``val``; None: both.
        image_size: ``(height, width)`` to resize frames to; None keeps them.
    """

    keys: dict[str, str] | None = None
    min_grade: str | None = None
    models: list[str] | None = None
    robots: list[str] | None = None
    tasks: list[str] | None = None
    split: str | None = None
    image_size: tuple[int, int] | None = None


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset, the output and the episode filters every exporter takes."""
    p.add_argument("dataset", type=Path, metavar="DATASET.zarr")
    p.add_argument("out", type=Path, nargs="?", metavar="OUT",
                   help="what to write (a folder; some formats also take a file name, see below)")
    p.add_argument("--out", dest="out_option", type=Path, metavar="OUT", help="the same as OUT")
    p.add_argument("--key", action="append", default=[], metavar="DATASET_KEY=NAME",
                   help="export this key under this name, e.g. state/position=agent_pos (repeat; default: every key "
                        "all selected episodes have, under the format's usual names)")
    p.add_argument("--min-grade", choices=list("ABCDF"), help="only episodes graded this or better")
    p.add_argument("--model", action="append", help="only episodes of this robot model (repeat)")
    p.add_argument("--robot", action="append", help="only episodes of this robot id (repeat)")
    p.add_argument("--task", action="append", help="only episodes of this task (repeat)")
    p.add_argument("--split", choices=["train", "val"], help="only episodes of this split (default: both)")
    p.add_argument("--resize", metavar="HxW", help="re-encode every frame at this size, e.g. 224x224")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def output_path(args: argparse.Namespace) -> Path:
    """OUT, given as a positional or as ``--out``."""
    out = args.out or args.out_option
    if out is None:
        raise ConfigError(_COMMAND, "OUT", "say where to write the export")
    return Path(out)


def selection_from_args(args: argparse.Namespace) -> Selection:
    """The common options as a :class:`Selection`, checked."""
    keys: dict[str, str] | None = None
    if args.key:
        keys = {}
        for item in args.key:
            key, sep, name = item.partition("=")
            if not (sep and key and name):
                raise ConfigError(_COMMAND, "--key", f"{item!r} is not DATASET_KEY=NAME, e.g. state/position=agent_pos")
            keys[key] = name
    return Selection(keys=keys, min_grade=args.min_grade, models=args.model, robots=args.robot, tasks=args.task,
                     split=args.split, image_size=parse_hxw(args.resize))


def parse_hxw(text: str | None, command: str = _COMMAND) -> tuple[int, int] | None:
    """``224x224`` -> ``(224, 224)``; None stays None; anything else a ConfigError naming ``command``'s --resize."""
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ConfigError(command, "--resize", f"{text!r} is not HxW, e.g. 224x224") from err
    return height, width


def check_image_size(out: Path, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)`` integers of 16-8192 pixels, or None."""
    if image_size is None:
        return None
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError) as err:
        raise DatasetError(str(out), f"image_size={image_size!r} must be (height, width) integers") from err
    if not (16 <= height <= 8192 and 16 <= width <= 8192):
        raise DatasetError(str(out), f"image_size={image_size!r}: height and width must be 16-8192 pixels")
    return height, width


def staging_path(out: Path) -> Path:
    """A temporary name beside ``out`` to write an export under before :func:`publish`."""
    return out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"


def publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename a complete export into place (replacing ``out`` with ``overwrite``) and make the rename durable."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise DatasetError(str(out), "appeared while exporting: remove it or choose another path")
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        else:
            out.unlink()
    os.rename(staging, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

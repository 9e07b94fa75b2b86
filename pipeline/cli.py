"""The `refinery` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from pipeline import interrupts, refinery_version
from pipeline.errors import RefineryError

log = logging.getLogger("refinery")

EPILOG = "Docs: README.md. Every command takes --help; -v shows debug logs and tracebacks."
EXIT_FAILED = 1  # the command ran, but some of its work failed (e.g. episodes not committed: re-run)
EXIT_ERROR = 2  # the command could not run: bad arguments, input, configuration or environment
EXIT_BAD_INPUTS = 3  # `process` finished, but some raw files were unreadable or corrupt (rejected, listed)
EXIT_INTERNAL = 70  # an unexpected exception: a defect (sysexits' EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def _add_ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="where journals and sealed raw episodes go")
    p.add_argument("--bind", default="tcp://*:5555", help="ZeroMQ endpoint to listen on (default: %(default)s)")
    p.add_argument("--window", type=_positive_int, default=128,
                   help="credit window: messages each collector may have unacknowledged in flight (default: %(default)s)")
    p.add_argument("--commit-interval-ms", type=_positive_float, default=10.0,
                   help="group commit: fsync and acknowledge every this many ms (default: %(default)s)")
    p.add_argument("--gather-ms", type=_non_negative_float, default=2.0,
                   help="once the socket is empty, let messages gather this long before receiving again: fewer "
                        "wake-ups, about a quarter less CPU under load, up to this much more latency; 0 receives "
                        "each message as it comes (default: %(default)s)")
    p.add_argument("--max-message-mb", type=_positive_float, default=32.0,
                   help="larger messages are refused by ZeroMQ (default: %(default)s)")
    p.add_argument("--abandon-after", type=_positive_float, default=600.0, metavar="SECONDS",
                   help="seal an episode as incomplete when its collector is silent this long (default: %(default)s)")
    p.add_argument("--journal-segment-mb", type=_positive_float, default=256.0, metavar="MB",
                   help="the shared journal (every open episode's records, one fdatasync per commit) starts a new "
                        "file after this many MB; a file is freed once its episodes are sealed (default: %(default)s)")
    p.add_argument("--journal-spare-files", type=_non_negative_int, default=2, metavar="N",
                   help="freed shared-journal files kept to be written over by the next ones (direct I/O only; "
                        "their blocks need no allocating, and no deletion trims them beside the commits); kept "
                        "only while the disk has room for four more; 0 deletes each (default: %(default)s)")
    p.add_argument("--journal-io", choices=("direct", "page-cache"), default="direct",
                   help="how the shared journal is written: direct I/O, past the page cache (less CPU, shorter "
                        "commits; falls back by itself where the file system has none), or through the page cache, "
                        "for file systems whose direct I/O is slow (default: %(default)s)")
    p.add_argument("--seal-workers", type=_non_negative_int, default=2, metavar="N",
                   help="processes that seal finished episodes into raw/, each with its own GIL, on CPU time "
                        "nothing else wants: one keeps up with about 28 G1-class robots recording without pause, two "
                        "with about 53; 0 seals on a thread of the ingest, beside its event loop (default: %(default)s)")
    p.add_argument("--graduate-after", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="an episode still open this long after the oldest shared-journal file it is in was started "
                        "moves to a journal file of its own, so it does not keep the fleet's old files on disk "
                        "(default: %(default)s)")
    p.add_argument("--keys", type=Path, metavar="SECRET_FILE",
                   help="the ingest's CURVE secret key file (from `refinery keys`)")
    p.add_argument("--allow", type=Path, metavar="DIR",
                   help="allow-list folder: <robot-id>.key public key files, optionally allow.yaml "
                        "(robot id: [key files or Z85 keys]); a key may only use the robot ids it is listed for")
    p.add_argument("--plain", action="store_true",
                   help="no authentication or encryption (and no robot identity): only for loopback demos and tests")
    p.add_argument("--max-mb-per-s", type=_positive_float, default=64.0, metavar="MB",
                   help="per robot: more is not accepted (it waits in the collector's spool) (default: %(default)s)")
    p.add_argument("--max-episode-gb", type=_positive_float, default=32.0, metavar="GB",
                   help="per episode: data past it is not recorded, the episode is sealed incomplete (default: %(default)s)")
    p.add_argument("--max-episode-minutes", type=_positive_float, default=240.0, metavar="MIN",
                   help="per episode, in capture time: data past it is not recorded (default: %(default)s)")
    p.add_argument("--max-text-chars", type=_positive_int, default=1000, metavar="N",
                   help="task, operator and label text longer than this is refused (default: %(default)s)")
    p.add_argument("--max-open-episodes", type=_positive_int, default=16, metavar="N",
                   help="per robot, episodes open at once (default: %(default)s)")
    p.add_argument("--session-timeout", type=_positive_float, default=15.0, metavar="SECONDS",
                   help="free the session of a collector silent this long (default: %(default)s)")
    p.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="run N ingest processes (about one per core): process i listens on the --bind port + i and "
                        "writes to DATA_DIR/ingest-<i>/; collectors list all endpoints (default: %(default)s)")
    p.add_argument("--inject-sync-delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics and the fleet status the console "
                        "reads at /fleet.json (a bare PORT means 127.0.0.1), e.g. 127.0.0.1:9108")


def _add_collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robot", required=True, help="robot config: a YAML path or a shipped model name (unitree_g1, ...)")
    p.add_argument("--robot-id", help="this robot's id (default: <model>-<hostname>)")
    p.add_argument("--ingest", required=True, action="append",
                   help="ingest endpoint, e.g. tcp://ingest-host:5555; several ingest processes: repeat it or separate "
                        "them by commas (tcp://h:5555,tcp://h:5556), listed in the same order on every robot")
    p.add_argument("--spool", type=Path, help="spool folder (default: ~/.refinery/spool/<robot-id>)")
    p.add_argument("--spool-budget-mb", type=_positive_float, default=2048.0,
                   help="disk the spool may use while the ingest is unreachable (default: %(default)s)")
    p.add_argument("--on-spool-full", choices=["pause", "stop"], default="pause",
                   help="when the budget is used up: pause recording until it drains, or stop the episode "
                        "(default: %(default)s); either is shown in the status line and recorded as an event")
    p.add_argument("--driver", choices=["sim", "opencv", "sim+opencv"], default="sim",
                   help="sim: a simulated humanoid; opencv: real cameras only (no joints); sim+opencv: simulated "
                        "joints with real cameras for the --camera names (default: %(default)s)")
    p.add_argument("--camera", action="append", default=[], metavar="NAME=SOURCE",
                   help="opencv drivers: the config's camera NAME reads device index or video file SOURCE (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sim driver: random seed (default: %(default)s)")
    p.add_argument("--faults", default="", help="sim driver: faults to inject, e.g. 'drop_frame_prob=0.05,clock_offset_ms=12'")
    p.add_argument("--episodes", type=_positive_int, help="scripted: record this many episodes, then exit")
    p.add_argument("--drain-only", action="store_true",
                   help="record nothing: send what the spool holds (after a crash or an outage), close an episode a "
                        "crash interrupted, wait until the ingest has sealed everything, then exit (1 if it could not)")
    p.add_argument("--duration", type=_positive_float, default=10.0, help="scripted: seconds per episode (default: %(default)s)")
    p.add_argument("--gap", type=float, default=1.0, help="scripted: seconds between episodes (default: %(default)s)")
    p.add_argument("--task", default="", help="task instruction recorded with each episode")
    p.add_argument("--operator", default=os.environ.get("USER", ""), help="operator id recorded with each episode")
    p.add_argument("--key", type=Path, metavar="SECRET_FILE", help="this collector's CURVE secret key file")
    p.add_argument("--ingest-key", type=Path, metavar="PUBLIC_FILE", help="the ingest's CURVE public key file")
    p.add_argument("--plain", action="store_true", help="no authentication or encryption: only for loopback")
    p.add_argument("--drain-timeout", type=_positive_float, default=60.0,
                   help="on exit, wait this long for the ingest to seal what was recorded; exit 1 naming what it "
                        "did not seal (default: %(default)s)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics and this collector's status at "
                        "/fleet.json (a bare PORT means 127.0.0.1), e.g. 127.0.0.1:9109")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given ``argv`` (without the program name), the import
    and export formats are loaded only if ``argv`` may need them (they take a second
    and 100 MB: zarr, OpenCV), not for `refinery collect` on a robot's computer."""
    parser = argparse.ArgumentParser(
        prog="refinery", description="Collect and refine teleoperated humanoid-robot data.", epilog=EPILOG
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {refinery_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="local demo: ingest + simulated robots + Ray processing + quality report",
                       description="Start an ingest and simulated humanoid collectors on loopback, record a few "
                                   "short episodes from each, refine them with an embedded Ray into a Zarr dataset, "
                                   "and write an HTML quality report. Re-running appends new episodes.")
    p.add_argument("--data-dir", type=Path, default=Path("refinery-demo"), help="output folder (default: %(default)s)")
    p.add_argument("--robots", default="unitree_g1,unitree_h1,fourier_gr1",
                   help="comma-separated robot models, one simulated collector each (default: %(default)s)")
    p.add_argument("--episodes", type=_positive_int, default=2, help="episodes per robot (default: %(default)s)")
    p.add_argument("--duration", type=_positive_float, default=3.0, help="seconds per episode (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    p.add_argument("--record-only", action="store_true", help="stop after recording (no Ray processing, no report)")
    p.add_argument("--console", default="127.0.0.1:8090", metavar="HOST:PORT",
                   help="serve the live fleet console here while the demo runs (another free port when taken; "
                        "'' for none) (default: %(default)s)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("ingest", help="run the ingest service", description="Receive episodes from collectors over "
                       "ZeroMQ, journal them durably and seal each into one HDF5 file. Ctrl-C stops it cleanly; "
                       "a kill loses nothing acknowledged (journals are recovered at the next start).")
    _add_ingest_args(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("collect", help="run a collector beside a robot", description="Read a robot's joints, actions "
                       "and cameras, spool them to disk and stream them to the ingest. Without --episodes it is "
                       "interactive: type s [task] to start, e to end (success), f (failure), d (discard), "
                       "l TEXT to label, t TEXT to change the task, h for help, q to quit (with a summary). "
                       "Exit codes: 0 everything sealed; 1 gave up after --drain-timeout (one line names the "
                       "episodes not sealed); 2 a bad option or a refused handshake.")
    _add_collect_args(p)
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("console", help="live web console of the fleet (from ingests' and collectors' --metrics)",
                       description="Serve a web page showing every robot at a glance (link, episode and timer, task, "
                                   "operator, rates, lag, spool, today's episodes and hours, latest grades), alerts, "
                                   "and the ingests' disk and throughput over the last hour. It polls the /fleet.json "
                                   "of each --ingest and --collector started with --metrics. Read-only; on loopback "
                                   "unless --bind says otherwise, which then needs a token.")
    p.add_argument("--ingest", action="append", default=[], metavar="URL",
                   help="an ingest's --metrics address, e.g. http://127.0.0.1:9108 (repeat for several ingests)")
    p.add_argument("--collector", action="append", default=[], metavar="URL",
                   help="a collector's --metrics address, for its spool and acknowledgement lag (repeat)")
    p.add_argument("--collectors-file", type=Path, metavar="FILE",
                   help="a file of collector --metrics URLs, one a line (# comments)")
    p.add_argument("--dataset", action="append", default=[], type=Path, metavar="DATASET.zarr",
                   help="show each robot's latest grades from this dataset (repeat)")
    p.add_argument("--bind", default="127.0.0.1:8090", metavar="HOST:PORT",
                   help="where to serve the page (default: %(default)s); not loopback: a token is required")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="a file holding the access token (or set REFINERY_CONSOLE_TOKEN); viewers open "
                        "URL/?token=TOKEN once")
    p.add_argument("--interval", type=_positive_float, default=2.0, metavar="SECONDS",
                   help="poll every this many seconds (default: %(default)s)")
    p.set_defaults(func=_cmd_console)

    p = sub.add_parser("keys", help="make CURVE key pairs", description="Write NAME.key (public) and NAME.key_secret "
                       "(secret) for each NAME into DIR. Give the ingest its secret and a folder of the collectors' "
                       "public keys (--allow); give each collector its secret and the ingest's public key.")
    p.add_argument("dir", type=Path)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true",
                   help="replace existing key pairs (whoever holds the old ones can no longer connect)")
    p.add_argument("--allow", type=Path, metavar="ALLOW_DIR",
                   help="also put each NAME's public key into the ingest's allow-list folder as NAME.key, "
                        "which lets that key use robot id NAME (name collector keys after their robot id)")
    p.set_defaults(func=_cmd_keys)

    p = sub.add_parser("process", help="refine raw episodes into a Zarr dataset with Ray",
                       description="Align, clean, score, optionally de-identify, and write every raw episode under "
                                   "the RAW_DIRs that the dataset does not hold yet (several folders, e.g. one per "
                                   "ingest, or a quoted glob). Runs on an embedded local Ray unless "
                                   "--address or RAY_ADDRESS names a cluster (then RAW_DIR and --out must be on "
                                   "storage every node sees). Re-running skips committed episodes.")
    p.add_argument("raw_dir", type=Path, nargs="+", metavar="RAW_DIR",
                   help="folder with sealed raw episodes (*.h5), e.g. an ingest's data dir; several, or a quoted glob")
    p.add_argument("--out", type=Path, required=True, metavar="DATASET.zarr", help="the Zarr dataset (created if missing)")
    p.add_argument("--config", type=Path, help="YAML overriding pipeline/processing/defaults.yaml (printed by --show-config)")
    p.add_argument("--rate", type=_positive_float, help="rate in Hz of the output timeline (default: the fastest camera's fps, so no frame is stored twice)")
    p.add_argument("--align-latency", choices=("config", "estimate"),
                   help="camera delay to align frames by: the robot config's latency_ms (config, the default) or the "
                        "delay estimated from image motion against joint motion where it is confident (estimate)")
    p.add_argument("--resize", metavar="HxW", help="store camera frames at this size (re-encodes them), e.g. 224x224")
    p.add_argument("--blur-faces", action="store_true", help="blur faces in camera frames")
    p.add_argument("--pseudonymize", action="store_true",
                   help="replace operator ids by keyed pseudonyms (key in REFINERY_PSEUDONYM_KEY)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=_positive_int, help="embedded Ray: worker processes (default: all cores)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="new dataset: share of raw episodes in the validation split, by a stable hash of their id "
                        "(default: %(default)s)")
    p.add_argument("--show-config", action="store_true", help="print the effective configuration as YAML and exit")
    p.set_defaults(func=_cmd_process,
                   interrupted_hint="what was committed is kept: run the same command again to continue")

    for name, verb in (("exclude", "exclude episodes from loaders, exports and statistics"),
                       ("include", "take excluded episodes back")):
        p = sub.add_parser(name, help=verb,
                           description=f"{verb[0].upper()}{verb[1:]}, by key or by a condition on the index; the "
                                       "data is never rewritten (a tombstone in the index, reversible). Conditions: "
                                       "clauses like 'grade < \"C\"' (worse than C), 'robot_id == \"g1-07\"', "
                                       "'length < 300', 'task in (\"a\", \"b\")', joined by 'and'.")
        p.add_argument("dataset", type=Path, metavar="DATASET.zarr")
        p.add_argument("--episode", action="append", default=[], metavar="KEY", help="an episode key (repeat)")
        p.add_argument("--where", metavar="CONDITION", help="every episode matching this condition")
        p.add_argument("--reason", required=name == "exclude", default="included again",
                       help="why (kept with the exclusion)")
        p.set_defaults(func=_cmd_curate, excluded=name == "exclude")

    p = sub.add_parser("merge", help="merge datasets into a new one",
                       description="Combine datasets into OUT with one index and consistent statistics. Data "
                                   "segments are hard-linked (no bytes copied on one file system) or copied with "
                                   "--copy; a raw episode in several inputs is kept once; exclusions come along.")
    p.add_argument("datasets", type=Path, nargs="+", metavar="DATASET.zarr")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.zarr", help="the new dataset (must not exist)")
    p.add_argument("--copy", action="store_true", help="copy the data instead of hard-linking it")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("upgrade", help="convert a format-version-1 dataset to the current layout",
                       description="Read a version-1 dataset (a group per episode) and write NEW in the current "
                                   "layout: data segments of many episodes, the Parquet index. OLD is not changed.")
    p.add_argument("old", type=Path, metavar="OLD.zarr")
    p.add_argument("new", type=Path, metavar="NEW.zarr")
    p.set_defaults(func=_cmd_upgrade)

    p = sub.add_parser("report", help="write an HTML quality report of a dataset",
                       description="Per-episode indicators and grades, why episodes were rejected, joint plots and "
                                   "a contact sheet of frames per camera, as one self-contained HTML file.")
    p.add_argument("dataset", type=Path, metavar="DATASET.zarr")
    p.add_argument("--out", type=Path, help="HTML file to write (default: DATASET.zarr/../<name>-report.html)")
    p.add_argument("--episodes", metavar="KEY", action="append",
                   help="show this episode in detail: a dataset key or a raw episode id (repeatable); "
                        "default: the --worst lowest-scoring accepted and the first --worst rejected")
    p.add_argument("--worst", metavar="N", type=_positive_int, default=20,
                   help="rows of the lowest-scoring / most cut / rejected tables, and episodes detailed by default "
                        "(default: %(default)s)")
    p.add_argument("--compare", type=Path, metavar="OTHER.zarr",
                   help="show another dataset's appraisal beside this one's, part by part (same scales)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("inspect", help="describe a dataset or a Diffusion Policy export",
                       description="Dataset card, keys with dtype/shape/chunking per robot model, every episode "
                                   "(robot, model, task, seconds, grade, accepted, size), grade histogram, size on disk.")
    p.add_argument("dataset", type=Path, metavar="DATASET")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("verify", help="check the checksum of every sealed raw episode",
                       description="Recompute the content checksum of every raw episode under DIR; exit 1 if any fails.")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_cmd_verify)

    command = next((word for word in argv if not word.startswith("-")), None) if argv is not None else None
    if command is None or command not in sub.choices:  # import, export, a typo or none: all of them
        _add_interop_parsers(sub)
    return parser


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take an optional positional after options
    # (`export DATASET --format diffusion-policy OUT`): place it here.
    for name in ("out", "data_dir"):
        if extra and not extra[0].startswith("-") and getattr(args, name, "") is None:
            setattr(args, name, Path(extra.pop(0)))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.raw_argv = argv  # what `ingest --processes` hands its children
    return args


def main(argv: Sequence[str] | None = None) -> int:
    with interrupts.handled():
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = _parse_arguments(argv)
    except KeyboardInterrupt:  # parsing `import`/`export` loads every format module: a second or so
        print("refinery: stopped (Ctrl-C) before it began; nothing was done", file=sys.stderr)
        return EXIT_INTERRUPTED
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except RefineryError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"refinery {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted_hint", "")
        print(f"refinery {args.command}: stopped (Ctrl-C){'; ' + hint if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a defect of ours: still one line for supervisors, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        print(f"refinery {args.command}: internal error: {type(err).__name__}: {err} "
              "(a bug: run again with -v for the traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


# ---------------------------------------------------------------------- ingest


def _ingest_config(args: argparse.Namespace):  # noqa: ANN202
    from pipeline.auth import ServerKeys
    from pipeline.errors import ConfigError
    from pipeline.ingest import IngestConfig, IngestLimits

    keys = None
    if args.keys or args.allow:
        if not (args.keys and args.allow):
            raise ConfigError("refinery ingest", "--keys/--allow", "give both: the ingest's secret key and the allow-list folder")
        keys = ServerKeys(args.keys, args.allow)
    return IngestConfig(
        data_dir=args.data_dir,
        bind=args.bind,
        window=args.window,
        commit_interval_s=args.commit_interval_ms / 1000,
        gather_s=args.gather_ms / 1000,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        abandon_after_s=args.abandon_after,
        keys=keys,
        allow_plain=args.plain,
        limits=IngestLimits(
            max_bytes_per_s=args.max_mb_per_s * 1e6,
            max_episode_bytes=int(args.max_episode_gb * 1e9),
            max_episode_s=args.max_episode_minutes * 60,
            max_text_chars=args.max_text_chars,
            max_open_episodes=args.max_open_episodes,
        ),
        session_timeout_s=args.session_timeout,
        inject_sync_delay_s=args.inject_sync_delay_ms / 1000,
        journal_segment_bytes=max(1, int(args.journal_segment_mb * 1024 * 1024)),
        journal_direct_io=args.journal_io == "direct",
        journal_spare_segments=args.journal_spare_files,
        graduate_after_s=args.graduate_after,
        seal_workers=args.seal_workers,
    )


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Exit codes: 0 stopped cleanly (Ctrl-C, SIGTERM); 2 a configuration problem
    (keys, allow-list, --bind, port in use), one line on stderr; 1 an unexpected
    failure in any thread, one line on stderr (-v logs the traceback), so a
    supervisor restarts it."""
    from pipeline.console import StatusLine
    from pipeline.ingest import IngestServer

    if args.processes > 1:
        return _ingest_processes(args)
    server = IngestServer(_ingest_config(args))
    metrics = _serve_metrics(args, server, "ingest")
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread below
            failures.append(err)

    def thread_failed(hook: threading.ExceptHookArgs) -> None:
        if hook.exc_value is not None and not isinstance(hook.exc_value, SystemExit):
            failures.append(hook.exc_value)
        server.stop()

    previous_hook = threading.excepthook
    threading.excepthook = thread_failed
    _stop_on_signals(server.stop)
    thread = threading.Thread(target=serve, name="ingest", daemon=True)
    thread.start()
    status = StatusLine()
    last = (time.monotonic(), 0, 0)
    try:
        while thread.is_alive():
            thread.join(0.5)
            if failures:
                server.stop()
                thread.join(30)
                break
            if not server.ready.is_set():
                continue
            now = time.monotonic()
            s = server.status()
            dt = max(now - last[0], 1e-6)
            rate = (s["messages"] - last[1]) / dt
            mbps = (s["bytes"] - last[2]) / dt / 1e6
            last = (now, s["messages"], s["bytes"])
            line = (
                f"ingest {server.endpoint} | collectors {s['collectors']} | open {s['open_episodes']} "
                f"sealed {s['sealed']} | {rate:,.0f} msg/s {mbps:.1f} MB/s | dup {s['duplicates']} "
                f"gap {s['gaps']} bad {s['malformed']} refused {s['refused']}"
            )
            extra = [f"{name} {s[key]}" for name, key in (
                ("identity", "identity_refused"), ("limited", "limited"), ("rate-limited", "rate_limited"),
                ("quarantined", "quarantined")) if s[key]]
            if extra:
                line += " | " + " ".join(extra)
            if s["disk_error"]:
                line += f" | DISK: {s['disk_error']}"
            status.update(line)
    finally:
        threading.excepthook = previous_hook
        if metrics is not None:
            metrics.stop()
    if server.ready.is_set():
        status.done()
    if not failures:
        return 0
    err = failures[0]
    if isinstance(err, RefineryError):
        print(f"refinery ingest: error: {err}", file=sys.stderr)
        return 2
    log.debug("ingest failed", exc_info=err)
    print(f"refinery ingest: fatal: {type(err).__name__}: {err}", file=sys.stderr)
    return 1


def _serve_metrics(args: argparse.Namespace, target, kind: str):  # noqa: ANN001, ANN202
    """Start the --metrics endpoint of an ingest or a collector; None without --metrics."""
    if not args.metrics:
        return None
    from pipeline.observability import http_server

    serve = http_server.serve_ingest_metrics if kind == "ingest" else http_server.serve_collector_metrics
    metrics = serve(target, args.metrics)
    print(f"refinery {args.command}: metrics on {metrics.url}/metrics", file=sys.stderr, flush=True)
    return metrics


def _ingest_processes(args: argparse.Namespace) -> int:
    """``--processes N``: a supervisor of N ingest processes (see pipeline.ingest_supervisor)."""
    from pipeline.ingest_supervisor import Supervisor, collector_endpoints, plan_processes

    _ingest_config(args)  # setup errors (keys, allow-list) once here, not N times
    specs = plan_processes(args.bind, args.data_dir, args.processes)
    supervisor = Supervisor(specs, args.raw_argv)
    _stop_on_signals(supervisor.stop)
    host = args.bind.split("://", 1)[1].rsplit(":", 1)[0]
    log.info("starting %d ingest processes: %s; collectors: --ingest %s", len(specs),
             ", ".join(f"{s.bind} -> {s.data_dir}" for s in specs),
             collector_endpoints(specs, "<this-host>" if host in ("*", "0.0.0.0") else host))
    code, line = supervisor.run()
    if code:
        print(f"refinery ingest: error: {line}", file=sys.stderr)
    return code


def _stop_on_signals(stop) -> None:  # noqa: ANN001
    def handler(signum: int, frame: object) -> None:
        stop()

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set there (the command run inside a test)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------- console


def _console_config(args: argparse.Namespace):  # noqa: ANN202
    from pipeline.errors import ConfigError
    from pipeline.observability.console.server import ConsoleConfig

    collectors = list(args.collector)
    if args.collectors_file:
        try:
            text = args.collectors_file.read_text()
        except OSError as err:
            raise ConfigError(str(args.collectors_file), "--collectors-file", f"cannot read it: {err.strerror}") from err
        collectors += [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    token = os.environ.get("REFINERY_CONSOLE_TOKEN", "")
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as err:
            raise ConfigError(str(args.token_file), "--token-file", f"cannot read it: {err.strerror}") from err
    return ConsoleConfig(ingests=tuple(args.ingest), collectors=tuple(collectors), datasets=tuple(args.dataset),
                         bind=args.bind, token=token, poll_interval_s=args.interval)


def _cmd_console(args: argparse.Namespace) -> int:
    """Exit codes: 0 stopped (Ctrl-C, SIGTERM); 2 a bad option or the address is taken."""
    from pipeline.observability.console.server import start_console

    console = start_console(_console_config(args))
    where = console.url + ("?token=<the token>" if console.console.config.token else "")
    print(f"refinery console: serving {where} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    stop = threading.Event()
    _stop_on_signals(stop.set)
    try:
        while not stop.wait(0.5) and console.thread.is_alive():
            pass
    finally:
        console.stop()
    return 0


# ---------------------------------------------------------------------- collect


def _make_collector(args: argparse.Namespace):  # noqa: ANN202
    from collectors.agent import Collector, CollectorConfig
    from collectors.drivers import SimFaults, make_driver
    from pipeline.auth import ClientKeys
    from pipeline.errors import ConfigError
    from pipeline.robot_config import load_robot_config

    robot = load_robot_config(args.robot)
    robot_id = args.robot_id or f"{robot.model}-{socket.gethostname().split('.')[0]}"
    keys = None
    if args.key or args.ingest_key:
        if not (args.key and args.ingest_key):
            raise ConfigError("refinery collect", "--key/--ingest-key", "give both: this collector's secret and the ingest's public key")
        keys = ClientKeys(args.key, args.ingest_key)
    spool = args.spool or Path.home() / ".refinery" / "spool" / robot_id
    options: dict[str, object] = {}
    if args.driver != "opencv":
        options["seed"] = args.seed
        if args.faults:
            options["faults"] = SimFaults.parse(args.faults)
    elif args.faults:
        raise ConfigError("refinery collect", "--faults", "faults are injected by the sim driver only")
    if args.driver != "sim":
        sources = {}
        for item in args.camera:
            name, sep, source = item.partition("=")
            if not sep:
                raise ConfigError("refinery collect", "--camera", f"{item!r} is not NAME=SOURCE")
            sources[name] = int(source) if source.isdigit() else source
        options["sources"] = sources
    driver = make_driver(args.driver, robot, **options)
    config = CollectorConfig(
        robot_id=robot_id,
        robot=robot,
        ingest=",".join(args.ingest),
        spool_dir=spool,
        spool_budget_bytes=int(args.spool_budget_mb * 1e6),
        on_spool_full=args.on_spool_full,
        keys=keys,
        allow_plain=args.plain,
    )
    return Collector(config, driver)


def format_collector_status(robot_id: str, s) -> str:  # noqa: ANN001
    frames = sum(v for k, v in s.rates.items() if k not in ("joint_state", "action", "events", "clock"))
    joints = s.rates.get("joint_state", 0.0)
    line = (
        f"{robot_id} | link {s.link} | ep {s.episode[-6:] if s.episode != '-' else '-'} {s.episode_s:5.1f}s "
        f"| joints {joints:,.0f} msg/s frames {frames:,.0f}/s {s.mb_per_s:.1f} MB/s | unacked {s.unacked} "
        f"spool {s.spool_mb:.1f} MB | ack lag {s.ack_lag_ms:.0f} ms | done {s.episodes_done}"
    )
    if s.paused:
        line += " | PAUSED: spool full"
    if s.error:
        line += f" | {s.error[:80]}"
    return line


def _cmd_collect(args: argparse.Namespace) -> int:
    from pipeline.console import StatusLine

    collector = _make_collector(args)
    try:
        metrics = _serve_metrics(args, collector, "collector")
    except BaseException:
        collector.close()
        raise
    stop = threading.Event()
    _stop_on_signals(stop.set)
    collector.start()
    status = StatusLine()
    robot_id = collector.config.robot_id

    def show() -> None:
        if collector.fatal is not None:
            raise collector.fatal
        status.update(format_collector_status(robot_id, collector.status()))

    prompt = None
    try:
        if args.drain_only:
            pass
        elif args.episodes:
            for n in range(args.episodes):
                collector.start_episode(args.task, args.operator)
                deadline = time.monotonic() + args.duration
                while time.monotonic() < deadline and not stop.is_set():
                    show()
                    time.sleep(0.2)
                collector.stop_episode("success" if not stop.is_set() else "interrupted")
                if stop.is_set():
                    break
                if n + 1 < args.episodes:
                    stop.wait(args.gap)
        else:
            prompt = _interactive(collector, args, stop, lambda: format_collector_status(robot_id, _checked_status(collector)))
        # Wait for the seals; a new Ctrl-C (or SIGTERM) gives up at once.
        stop.clear()
        deadline = time.monotonic() + args.drain_timeout
        while collector.waiting() and time.monotonic() < deadline and not stop.is_set():
            show()
            time.sleep(0.2)
    finally:
        status.done()
        collector.close()
        if metrics is not None:
            metrics.stop()
    if prompt is not None:
        print(prompt.summary())
    verdict = drain_verdict(collector, gave_up=collector.waiting(), timeout_s=args.drain_timeout)
    if verdict:
        print(verdict, file=sys.stderr)
        return 1
    return 0


def drain_verdict(collector, gave_up: bool, timeout_s: float) -> str | None:  # noqa: ANN001
    """One line saying what the ingest did not seal, or None when everything was sealed.

    ``refinery collect`` exits 1 when there is such a line.
    """
    unclosed = collector.unclosed_episodes()
    unsealed = [e for e in collector.unsealed_episodes() if e not in unclosed]
    parts = []
    if unclosed:
        parts.append(f"interrupted episode(s) not closed (no handshake with the ingest): {', '.join(unclosed)}")
    if unsealed:
        parts.append(f"{len(unsealed)} episode(s) not sealed by the ingest: {', '.join(unsealed)}")
    parts.extend(f"episode {episode} {why}" for episode, why in collector.failed_episodes().items())
    left = collector.spool.unacked()
    if left:
        parts.append(f"{left} messages unacknowledged")
    if not parts:
        return None
    line = f"{collector.config.robot_id}: " + "; ".join(parts)
    if gave_up:
        line += (f" (gave up waiting after --drain-timeout {timeout_s:g} s; {collector.config.spool_dir} keeps them "
                 "and the next start with this --spool sends them and asks again)")
    return line


def _checked_status(collector):  # noqa: ANN001, ANN202
    if collector.fatal is not None:
        raise collector.fatal
    return collector.status()


def _interactive(collector, args: argparse.Namespace, stop: threading.Event, status):  # noqa: ANN001, ANN202
    """The operator's prompt (collectors/prompt.py) until q, end of input or a signal."""
    import queue

    from collectors.prompt import ConsoleLogHandler, OperatorPrompt, TerminalConsole, run_prompt

    lines: queue.Queue[str | None] = queue.Queue()

    # The operator's screen: stderr, or stdout when only stdout is a terminal (2>log).
    stream = sys.stdout if sys.stdout.isatty() and not sys.stderr.isatty() else sys.stderr
    tty = sys.stdin.isatty() and stream.isatty()
    console = TerminalConsole(stream, tty=tty, input_fd=sys.stdin.fileno() if tty else None)
    prompt = OperatorPrompt(collector, console, args.task, args.operator)
    root = logging.getLogger()
    saved = root.handlers[:]
    if console.tty and stream is sys.stderr:
        # Log records go through the console, above the status line, never into the typed text.
        handler = ConsoleLogHandler(console)
        handler.setFormatter(saved[0].formatter if saved else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.handlers = [handler]
    console.open()
    threading.Thread(target=console.read_lines, args=(lines.put,), name="stdin", daemon=True).start()
    try:
        run_prompt(prompt, lines, stop, status)
    finally:
        console.close()
        root.handlers = saved
    if prompt.current is not None:  # Ctrl-C or SIGTERM at the prompt
        prompt.handle("q")
    return prompt


# ---------------------------------------------------------------------- keys, verify, demo


def _cmd_keys(args: argparse.Namespace) -> int:
    from pipeline.auth import copy_to_allow_list, make_key_pair
    from pipeline.protocol import check_id

    for name in args.names:
        check_id(name, "key name")
    existing = [path for name in args.names for path in (args.dir / f"{name}.key", args.dir / f"{name}.key_secret")
                if path.exists()]
    if existing and not args.force:
        # Re-running the README's command must not break every deployed collector.
        raise RefineryError(f"{', '.join(str(p) for p in existing)} already exist(s); nothing written. "
                            "Pass --force to replace (collectors and ingests holding the old keys must then get the new ones)")
    for name in args.names:
        public, secret = make_key_pair(args.dir, name)
        print(f"{name}: public {public}  secret {secret}")
        if args.allow is not None:
            allowed = copy_to_allow_list(public, args.allow, name)
            print(f"{name}: allowed as robot id {name!r} ({allowed})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.raw_store import verify_episode
    from pipeline.raw_summary import raw_files

    files = raw_files(args.dir)
    if not files:
        print(f"no raw episodes (*.h5) under {args.dir}", file=sys.stderr)
        return 1
    bad = 0
    for path in files:
        result = verify_episode(path)
        if not result.ok:
            bad += 1
            print(f"FAIL {path}: {result.problem}")
        else:
            print(f"ok   {path}: {result.producer}")
    print(f"{len(files) - bad} of {len(files)} raw episodes verified, {bad} failed")
    return 1 if bad else 0


def _cmd_process(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.console import ProgressBar
    from pipeline.interop.selection import parse_hxw
    from pipeline.process_job import JobOptions, run_process_job
    from pipeline.processing.config import load_process_config

    config = load_process_config(args.config)
    if args.rate:
        config = config.replace(align=_replace(config.align, rate_hz=args.rate))
    if args.align_latency:
        config = config.replace(align=_replace(config.align, latency=args.align_latency))
    if args.resize:
        config = config.replace(output=_replace(config.output, resize=parse_hxw(args.resize, "refinery process")))
    if args.blur_faces or args.pseudonymize:
        config = config.replace(deidentify=_replace(
            config.deidentify,
            blur_faces=args.blur_faces or config.deidentify.blur_faces,
            pseudonymize_operators=args.pseudonymize or config.deidentify.pseudonymize_operators,
        ))
    if config.deidentify.pseudonymize_operators:
        config.deidentify.key()  # fail now, not in every worker
    if args.show_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    options = JobOptions(raw_dir=_expand_globs(args.raw_dir), dataset=args.out, config=config, address=args.address,
                         num_cpus=args.num_cpus, val_fraction=args.val_fraction)
    summary = run_process_job(options, progress=ProgressBar("processing"))
    for line in summary.lines():
        print(line)
    print(f"dataset: {args.out}")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.failed:
        return EXIT_FAILED
    return EXIT_BAD_INPUTS if summary.bad_inputs else 0


def _expand_globs(paths: list[Path]) -> list[Path]:
    """Quoted globs (``'/data/ingest-*'``) expanded here; anything else as given."""
    import glob

    out: list[Path] = []
    for path in paths:
        text = str(path)
        matches = sorted(glob.glob(text)) if any(c in text for c in "*?[") and not path.exists() else []
        out += [Path(m) for m in matches] or [path]
    return out


def _cmd_curate(args: argparse.Namespace) -> int:
    from pipeline.dataset.curation import exclude, include

    if args.excluded:
        n = exclude(args.dataset, keys=args.episode, where=args.where, reason=args.reason)
        print(f"excluded {n} episodes from {args.dataset} ({args.reason}); `refinery include` takes them back")
    else:
        n = include(args.dataset, keys=args.episode, where=args.where, reason=args.reason)
        print(f"included {n} episodes again in {args.dataset}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from pipeline.dataset.merge import merge_datasets

    summary = merge_datasets(args.datasets, args.out, copy=args.copy)
    for line in summary.lines():
        print(line)
    print(f"dataset: {args.out}")
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from pipeline.dataset.upgrade import upgrade_dataset

    summary = upgrade_dataset(args.old, args.new)
    for line in summary.lines():
        print(line)
    print(f"dataset: {args.new}")
    return 0


def _replace(obj, **changes):  # noqa: ANN001, ANN202
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    out = args.out or args.dataset.resolve().parent / f"{args.dataset.resolve().stem}-report.html"
    write_report(args.dataset, out, episodes=args.episodes, worst=args.worst, compare=args.compare)
    print(f"quality report: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    from pipeline.dataset.appraisal import appraise, comparison_lines
    from pipeline.dataset.store import Dataset

    mine = appraise(Dataset(args.dataset).state())
    if args.compare is None:
        print("\n".join(mine.lines()))
    else:
        other = appraise(Dataset(args.compare).state())
        print("\n".join(comparison_lines(mine, other, args.dataset.name, args.compare.name)))
    return 0


def _add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    from pipeline import interop
    from pipeline.interop.selection import add_common_arguments

    exporters = interop.formats("export")
    p = sub.add_parser("export", help="export a dataset to a trainer's layout ("
                       + ", ".join(f.name for f in exporters) + ")",
                       description="Write the accepted episodes of a dataset in a trainer's layout. Formats: "
                                   + "; ".join(f"{f.name}: {f.summary}" for f in exporters) + ".")
    add_common_arguments(p)
    p.add_argument("--format", choices=[f.name for f in exporters], default=exporters[0].name,
                   help="(default: %(default)s)")
    owners: dict[str, str] = {}  # option dest -> the format it belongs to
    for fmt in exporters:
        group = p.add_argument_group(f"--format {fmt.name}", fmt.description)
        before = {a.dest for a in p._actions}
        fmt.add_arguments(group)  # type: ignore[arg-type]  (a group takes add_argument like a parser)
        owners.update({a.dest: fmt.name for a in p._actions if a.dest not in before})
    p.set_defaults(func=_cmd_export, export_option_owners=owners, export_defaults={
        a.dest: a.default for a in p._actions if a.dest in owners})

    importers = interop.formats("import")
    p = sub.add_parser("import", help="bring existing recordings in as raw episodes",
                       description="Convert recordings made by other tools into sealed raw episodes under "
                                   "RAW_DIR/raw/<robot-id>/, then refine them with `refinery process RAW_DIR`.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for fmt in importers:
        q = kinds.add_parser(fmt.name, help=fmt.summary, description=fmt.description)
        fmt.add_arguments(q)
        q.set_defaults(func=_cmd_import, interop_format=fmt)


def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline import interop
    from pipeline.errors import ConfigError

    for dest, owner in args.export_option_owners.items():
        if owner != args.format and getattr(args, dest) != args.export_defaults[dest]:
            option = "--" + dest.replace("_", "-")
            raise ConfigError("refinery export", option, f"is an option of --format {owner}, not of {args.format}")
    for line in interop.find("export", args.format).run(args):
        print(line)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    for line in args.interop_format.run(args):
        print(line)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect_dataset import inspect_dataset

    print(inspect_dataset(args.dataset), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import DemoConfig, run_demo

    if not args.verbose:
        logging.getLogger("refinery").setLevel(logging.WARNING)  # the status line tells the story
    return run_demo(DemoConfig(args.data_dir, args.robots.split(","), args.episodes, args.duration, args.seed,
                               process=not args.record_only, console=args.console))


if __name__ == "__main__":
    sys.exit(main())

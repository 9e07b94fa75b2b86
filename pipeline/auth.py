"""CURVE keys for collectors and the ingest (ZeroMQ's zmq.auth), and the
allow-list that binds robot ids to keys.

The ingest holds a key pair and an allow-list folder; each collector holds its
own key pair and the ingest's public key. ``refinery keys`` writes the pairs in
zmq.auth's certificate format.

The allow-list folder (``--allow DIR``) says which robot ids each public key
may use:

* ``DIR/<robot-id>.key``: a public key file named after a robot id lets that
  key use that robot id (``refinery keys KEYS g1-01 --allow DIR`` writes it);
* ``DIR/allow.yaml`` (optional): a map ``robot id: [entry, ...]`` where an entry
  is a public key file (relative to DIR, or absolute) or a Z85 public key (40
  characters), for a key that serves several robot ids or a file named
  otherwise.

A key may connect when it appears anywhere in the allow-list; the ingest then
checks, on every message, that the robot id it speaks for is one of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from pipeline.errors import ConfigError
from pipeline.protocol.records import ID_PATTERN

log = logging.getLogger("refinery.auth")


def make_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.key`` (public) and ``<name>.key_secret`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError(str(path), "key", f"cannot load CURVE key file: {err}; make one with `refinery keys`") from err
    if need_secret and not secret:
        raise ConfigError(str(path), "key", "this is a public key; the secret file ends in .key_secret")
    return public, secret


class _ZapLog(logging.LoggerAdapter):
    """zmq.auth reports refused keys at debug level; an operator must see them."""

    denied = 0

    def debug(self, msg: object, *args: object, **kwargs: object) -> None:
        text = str(msg) % args if args else str(msg)
        if "DENIED" in text:
            _ZapLog.denied += 1
            self.warning("refused a collector: %s", text)
        else:
            super().debug(text)


def refused_connections() -> int:
    """How many connection attempts CURVE authentication refused in this process."""
    return _ZapLog.denied


ALLOW_YAML = "allow.yaml"
Z85_KEY_CHARS = 40


@dataclass(frozen=True)
class AllowList:
    """Which robot ids each collector public key (Z85 text) may use."""

    robots: dict[str, frozenset[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # key -> where it was listed, for messages

    @classmethod
    def load(cls, directory: Path) -> AllowList:
        """Read an allow-list folder (see the module docstring).

        Raises:
            ConfigError: the folder is missing, a key file does not load, or
                ``allow.yaml`` is malformed (naming the entry and what is wrong).
        """
        if not directory.is_dir():
            raise ConfigError(str(directory), "allow", "allow-list folder does not exist")
        robots: dict[str, set[str]] = {}
        sources: dict[str, str] = {}

        def grant(key: str, robot_id: str, source: str) -> None:
            robots.setdefault(key, set()).add(robot_id)
            sources.setdefault(key, source)

        for path in sorted(directory.glob("*.key")):
            key = _load(path, need_secret=False)[0].decode()
            robot_id = path.name[: -len(".key")]
            if ID_PATTERN.match(robot_id):
                grant(key, robot_id, path.name)
            else:
                robots.setdefault(key, set())
                sources.setdefault(key, path.name)
        mapping = directory / ALLOW_YAML
        if mapping.exists():
            for robot_id, entries in _read_mapping(mapping).items():
                for i, entry in enumerate(entries):
                    where = f"{robot_id}[{i}]"
                    if not isinstance(entry, str) or not entry:
                        raise ConfigError(str(mapping), where, "must be a key file name or a Z85 public key")
                    if len(entry) == Z85_KEY_CHARS and not entry.endswith(".key"):
                        try:
                            zmq.utils.z85.decode(entry)
                        except (ValueError, KeyError) as err:
                            raise ConfigError(str(mapping), where, f"{entry!r} is not a Z85 public key") from err
                        grant(entry, robot_id, f"{ALLOW_YAML} ({robot_id})")
                        continue
                    path = Path(entry) if Path(entry).is_absolute() else directory / entry
                    if not path.is_file():
                        raise ConfigError(str(mapping), where, f"key file {entry} does not exist")
                    grant(_load(path, need_secret=False)[0].decode(), robot_id, f"{entry} via {ALLOW_YAML}")
        if not robots:
            log.warning("allow-list %s lists no keys: every collector will be refused", directory)
        return cls({k: frozenset(v) for k, v in robots.items()}, sources)

    def may_use(self, key: str, robot_id: str) -> bool:
        return robot_id in self.robots.get(key, ())

    def describe(self, key: str) -> str:
        """How to name a key in a message: its Z85 text and where it was listed."""
        source = self.sources.get(key)
        return f"key {key}" + (f" ({source})" if source else "")

    def callback(self, domain: str, key: bytes) -> bool:
        """zmq.auth credentials-provider hook: may this key connect at all?"""
        return key.decode("ascii", "replace") in self.robots


def _read_mapping(path: Path) -> dict[str, list[Any]]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(str(path), "allow", f"cannot read: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "allow", "must be a map of robot id to a list of keys")
    for robot_id, entries in raw.items():
        if not isinstance(robot_id, str) or not ID_PATTERN.match(robot_id):
            raise ConfigError(str(path), str(robot_id), "is not a robot id (1-64 of letters, digits, _ . -)")
        if not isinstance(entries, list):
            raise ConfigError(str(path), robot_id, "must be a list of key files or Z85 public keys")
    return raw


@dataclass(frozen=True)
class ServerKeys:
    """The ingest's secret key file and the allow-list folder."""

    secret_file: Path
    allow_dir: Path

    def load_allow_list(self) -> AllowList:
        return AllowList.load(self.allow_dir)

    def apply(self, context: zmq.Context, socket: zmq.Socket, allow: AllowList | None = None) -> ThreadAuthenticator:
        """Make ``socket`` a CURVE server that lets in only keys on the allow-list.

        Every message it then receives carries its sender's public key as the
        ``User-Id`` frame property (Z85), which the ingest checks per message.
        """
        public, secret = _load(self.secret_file, need_secret=True)
        allow = allow if allow is not None else self.load_allow_list()
        auth = ThreadAuthenticator(context, log=_ZapLog(logging.getLogger("refinery.auth"), {}))  # type: ignore[arg-type]
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=allow)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        return auth


def copy_to_allow_list(public_file: Path, allow_dir: Path, robot_id: str) -> Path:
    """Put a collector's public key into an allow-list folder as ``<robot-id>.key``."""
    allow_dir.mkdir(parents=True, exist_ok=True)
    dest = allow_dir / f"{robot_id}.key"
    dest.write_bytes(public_file.read_bytes())
    return dest


@dataclass(frozen=True)
class ClientKeys:
    """A collector's secret key file and the ingest's public key file."""

    secret_file: Path
    server_public_file: Path

    def apply(self, socket: zmq.Socket) -> None:
        public, secret = _load(self.secret_file, need_secret=True)
        server_public, _ = _load(self.server_public_file, need_secret=False)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = server_public

"""CURVE keys for collectors and the ingest (ZeroMQ's zmq.auth).

The ingest holds a key pair and a folder of allowed collector public keys;
each collector holds its own key pair and the ingest's public key.
``refinery keys`` writes the pairs in zmq.auth's certificate format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from pipeline.errors import ConfigError

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


@dataclass(frozen=True)
class ServerKeys:
    """The ingest's secret key file and the folder of allowed collector public keys."""

    secret_file: Path
    allow_dir: Path

    def apply(self, context: zmq.Context, socket: zmq.Socket) -> ThreadAuthenticator:
        public, secret = _load(self.secret_file, need_secret=True)
        if not self.allow_dir.is_dir():
            raise ConfigError(str(self.allow_dir), "allow", "allow-list folder does not exist")
        allowed = list(self.allow_dir.glob("*.key"))
        if not allowed:
            log.warning("allow-list %s holds no *.key files: every collector will be refused", self.allow_dir)
        auth = ThreadAuthenticator(context, log=_ZapLog(logging.getLogger("refinery.auth"), {}))  # type: ignore[arg-type]
        auth.start()
        auth.configure_curve(domain="*", location=str(self.allow_dir))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        return auth


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

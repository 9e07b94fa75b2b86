"""The ``--metrics HOST:PORT`` endpoint: ``/metrics`` for Prometheus, ``/fleet.json`` for the console.

A small threaded WSGI server from the standard library (what
``prometheus_client.start_http_server`` uses too), so it runs beside the
ingest's or collector's threads without an event loop.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from pipeline.errors import BindError, ConfigError

log = logging.getLogger("refinery.metrics")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def parse_host_port(text: str, option: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); a bare port means loopback.

    Raises:
        ConfigError: not an address of that form, or the port is out of range.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(option, text, "expected HOST:PORT (e.g. 127.0.0.1:9108, or 0.0.0.0:9108 for every interface)")
    return host, port


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s " + format, self.address_string(), *args)


class MetricsServer:
    """Serve ``registry`` at ``/metrics`` and ``snapshot()`` at ``/fleet.json`` on a daemon thread."""

    def __init__(self, address: str, registry: CollectorRegistry, snapshot: Callable[[], dict[str, Any]],
                 option: str = "--metrics") -> None:
        self.host, port = parse_host_port(address, option)
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
                return [b"read-only\n"]
            if path == "/fleet.json":
                body = json.dumps(snapshot(), separators=(",", ":")).encode()
                start_response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
                return [body]
            if path in ("/metrics", "/"):
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /fleet.json\n"]

        server_class = _IPv6Server if ":" in self.host else ThreadingWSGIServer
        try:
            self._httpd = make_server(self.host, port, app, server_class, handler_class=_QuietHandler)
        except OSError as err:
            raise BindError(address, f"{option} {address}: cannot listen there ({err.strerror}); "
                                     "choose a free port or an address of this host") from err
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on %s/metrics (fleet status for the console: %s/fleet.json)", self.url, self.url)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def serve_ingest_metrics(server: Any, address: str) -> MetricsServer:
    """Start the ingest's metrics endpoint (``refinery ingest --metrics``)."""
    from pipeline.observability.metrics import IngestMetrics, ingest_snapshot

    registry = server.counters.registry
    registry.register(IngestMetrics(server))
    return MetricsServer(address, registry, lambda: ingest_snapshot(server)).start()


def serve_collector_metrics(collector: Any, address: str) -> MetricsServer:
    """Start a collector's metrics endpoint (``refinery collect --metrics``)."""
    from pipeline.observability.metrics import CollectorMetrics, collector_snapshot

    registry = CollectorRegistry(auto_describe=True)
    registry.register(CollectorMetrics(collector))
    return MetricsServer(address, registry, lambda: collector_snapshot(collector)).start()

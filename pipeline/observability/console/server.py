"""The console's web server (aiohttp): polls every source's ``/fleet.json``,
serves the page, its own script and style, and ``/api/fleet``. Read-only:
GET routes only. Anywhere but loopback it requires a token."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import ClientConnectorError, ClientSession, ClientTimeout, web

from pipeline import protocol
from pipeline.errors import BindError, ConfigError, RefineryError
from pipeline.observability.console.fleet import FleetState, Source, build_view, latest_grades
from pipeline.observability.http_server import LOOPBACK_HOSTS, parse_host_port

log = logging.getLogger("refinery.console")

TOKEN_COOKIE = "refinery_console_token"
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024  # a /fleet.json of 4,096 robots is ~5 MB
STATIC = {  # path -> (file, content type): every asset the page uses, served from the package
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    # Nothing from anywhere else: no CDN, no inline script, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class FleetStatusError(RefineryError):
    """A source's /fleet.json cannot be used (not JSON, a field missing or of the wrong type, too large).

    The console shows it as that source's alert and keeps polling it."""


@dataclass(frozen=True)
class ConsoleConfig:
    """How ``refinery console`` runs; every field has a CLI option."""

    ingests: tuple[str, ...]  # base URLs of `refinery ingest --metrics` endpoints
    collectors: tuple[str, ...] = ()  # base URLs of `refinery collect --metrics` endpoints
    datasets: tuple[Path, ...] = ()  # where the latest grades come from
    bind: str = "127.0.0.1:8090"
    token: str = ""  # required when bind is not loopback
    poll_interval_s: float = 2.0
    grades_interval_s: float = 30.0

    def __post_init__(self) -> None:
        host, _ = parse_host_port(self.bind, "--bind")
        if host not in LOOPBACK_HOSTS and len(self.token) < 16:
            raise ConfigError("console options", "--token-file",
                              f"--bind {self.bind} is not loopback: give a token of at least 16 characters "
                              "(--token-file FILE or REFINERY_CONSOLE_TOKEN) so only people with it see the fleet")
        if not self.ingests and not self.collectors:
            raise ConfigError("console options", "--ingest", "nothing to watch: give --ingest URL (and --collector URL)")
        for url in (*self.ingests, *self.collectors):
            if not url.startswith(("http://", "https://")):
                raise ConfigError("console options", "--ingest/--collector",
                                  f"{url!r} is not an http:// URL of a --metrics endpoint, e.g. http://10.0.0.5:9108")


@dataclass
class Console:
    """The polling state and the web app; :func:`start_console` runs it on a thread."""

    config: ConsoleConfig
    sources: list[Source] = field(default_factory=list)
    state: FleetState = field(default_factory=FleetState)
    view: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sources = [Source(u.rstrip("/"), "ingest") for u in self.config.ingests]
        self.sources += [Source(u.rstrip("/"), "collector") for u in self.config.collectors]
        self.view = build_view(self.sources, self.state, time.time())

    async def poll_forever(self) -> None:
        timeout = ClientTimeout(total=max(1.0, self.config.poll_interval_s))
        async with ClientSession(timeout=timeout) as http:
            while True:
                started = time.monotonic()
                await asyncio.gather(*(self._poll(http, s) for s in self.sources))
                try:
                    self.view = build_view(self.sources, self.state, time.time())
                except Exception:  # noqa: BLE001 - a defect must not freeze the page: keep the last view, log it
                    log.exception("console: could not build the fleet view; showing the previous one")
                await asyncio.sleep(max(0.1, self.config.poll_interval_s - (time.monotonic() - started)))

    async def _poll(self, http: ClientSession, source: Source) -> None:
        try:
            async with http.get(f"{source.url}/fleet.json") as response:
                if response.status != 200:
                    raise FleetStatusError(f"HTTP {response.status}")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_SNAPSHOT_BYTES:
                        raise FleetStatusError(f"status larger than {MAX_SNAPSHOT_BYTES:,} bytes")
                    chunks.append(chunk)
                snapshot = parse_snapshot(b"".join(chunks), source.kind)
        except Exception as err:  # noqa: BLE001 - one bad source is shown as such, never stops the console
            reason = "connection refused" if isinstance(err, ClientConnectorError) else str(err)
            source.error = f"{type(err).__name__}: {reason}"[:160] if reason else type(err).__name__
            source.snapshot = None
            return
        source.snapshot, source.error, source.polled_at = snapshot, "", time.time()

    async def grades_forever(self) -> None:
        while self.config.datasets:
            try:
                rows = await asyncio.to_thread(_read_grades, self.config.datasets)
                self.state.grades, self.state.grades_error = latest_grades(rows), ""
            except Exception as err:  # noqa: BLE001 - a dataset being written or moved: say so, try again
                self.state.grades_error = f"grades not read: {type(err).__name__}: {err}"[:300]
            await asyncio.sleep(self.config.grades_interval_s)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        for path in STATIC:
            app.router.add_get(path, self._static)
        app.router.add_get("/api/fleet", self._fleet)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        set_cookie = False
        if self.config.token:
            given = (request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                     or request.cookies.get(TOKEN_COOKIE, ""))
            if not given and request.query.get("token"):
                given, set_cookie = request.query["token"], True
            if not hmac.compare_digest(given.encode(), self.config.token.encode()):
                return web.Response(status=401, text="refinery console: a token is required: open the URL with "
                                                     "?token=... (the one in --token-file)\n")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        if set_cookie:
            response.set_cookie(TOKEN_COOKIE, self.config.token, httponly=True, samesite="Strict")
        return response

    async def _static(self, request: web.Request) -> web.Response:
        name, content_type = STATIC[request.path]
        body = resources.files("pipeline.observability.console").joinpath("static", name).read_bytes()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _fleet(self, request: web.Request) -> web.Response:
        return web.json_response(self.view, headers={"Cache-Control": "no-store"})


def parse_snapshot(body: bytes, kind: str) -> dict[str, Any]:
    """A source's ``/fleet.json``, checked field by field: it comes from the network."""
    try:
        snapshot = json.loads(body)
    except ValueError as err:
        raise FleetStatusError(f"not JSON: {err}") from err
    if not isinstance(snapshot, dict) or snapshot.get("kind") != kind:
        raise FleetStatusError(f"not the /fleet.json of a refinery {kind}")
    if kind == "ingest":
        _check(snapshot, INGEST_FIELDS, "ingest")
        _check(snapshot["status"], INGEST_STATUS_FIELDS, "ingest status")
        _check(snapshot["disk"], dict.fromkeys(INGEST_DISK_FIELDS, (int, float)), "ingest disk")
        if len(snapshot["robots"]) > MAX_ROBOTS:
            raise FleetStatusError(f"more than {MAX_ROBOTS} robots")
        rows = snapshot["robots"]
    else:
        rows = [snapshot]
    for row in rows:
        if not isinstance(row, dict):
            raise FleetStatusError("a robot row is not an object")
        _check(row, INGEST_ROBOT_FIELDS if kind == "ingest" else COLLECTOR_FIELDS, f"robot {row.get('robot_id')!r}",
               counts=True)
        protocol.check_id(row["robot_id"], "robot_id")
        for name, value in row.items():
            if isinstance(value, str):
                row[name] = value[:MAX_TEXT]
            elif isinstance(value, dict) and len(value) > 256:
                raise FleetStatusError(f"robot {row['robot_id']}: field {name!r} has more than 256 entries")
    return snapshot


def _check(obj: dict[str, Any], fields: dict[str, Any], what: str, counts: bool = False) -> None:
    """Every field present with its type; with ``counts``, dict fields map names to numbers (per-stream counts)."""
    for name, kinds in fields.items():
        value = obj.get(name)
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in _as_tuple(kinds):
            raise FleetStatusError(f"{what}: field {name!r} is missing or not {_names(kinds)}")
        if counts and isinstance(value, dict) and not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in value.items()):
            raise FleetStatusError(f"{what}: field {name!r} must map names to numbers")


def _as_tuple(kinds: Any) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _names(kinds: Any) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kinds))


MAX_ROBOTS = 4096
MAX_TEXT = 300
NUMBER = (int, float)
INGEST_FIELDS = {"status": dict, "disk": dict, "robots": list, "time": NUMBER}
INGEST_STATUS_FIELDS = {**dict.fromkeys(("collectors", "open_episodes", "sealed", "bytes", "messages", "malformed",
                                         "refused", "quarantined"), int), "disk_error": str}
INGEST_DISK_FIELDS = ("journal_free_bytes", "journal_size_bytes", "data_free_bytes", "data_size_bytes")
INGEST_ROBOT_FIELDS = {
    "robot_id": str, "model": str, "connected": bool, "silent_s": (int, float, type(None)), "episode": str,
    "episode_started": NUMBER, "task": str, "operator": str, "open_episodes": int, "today_episodes": int,
    "today_seconds": NUMBER, "accepted": dict, "accepted_bytes": dict, "frames": dict, "samples": dict,
    "malformed": int, "gaps": int, "duplicates": int,
}
COLLECTOR_FIELDS = {
    "robot_id": str, "model": str, "link": str, "link_up": bool, "episode": str, "episode_s": NUMBER,
    "ack_lag_s": NUMBER, "spool_bytes": int, "spool_budget_bytes": int, "unacked": int, "paused": bool, "error": str,
}


def _read_grades(datasets: tuple[Path, ...]) -> list[tuple[str, int, str]]:
    from pipeline.dataset.index import DatasetIndex

    rows: list[tuple[str, int, str]] = []
    for dataset in datasets:
        if not (dataset / "index").exists():
            continue  # not processed yet
        table = DatasetIndex(dataset).table(["robot_id", "start_ns", "grade"], include_excluded=False)
        rows += zip(table["robot_id"].to_pylist(), table["start_ns"].to_pylist(), table["grade"].to_pylist())
    return rows


class RunningConsole:
    """A console served on its own thread and event loop (``refinery console``, the demo, tests)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stopped: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="console", daemon=True)

    def start(self, timeout_s: float = 10.0) -> RunningConsole:
        self.thread.start()
        if not self._ready.wait(timeout_s):
            raise BindError(self.console.config.bind, "the console did not start within "
                                                      f"{timeout_s:g} s")
        if self._failure is not None:
            raise self._failure
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as err:  # noqa: BLE001 - handed to the thread that started it
            self._failure = err
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        config = self.console.config
        host, port = parse_host_port(config.bind, "--bind")
        runner = web.AppRunner(self.console.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise BindError(config.bind, f"--bind {config.bind}: cannot listen there ({err.strerror}); "
                                         "choose a free port or an address of this host") from err
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        tasks = [asyncio.create_task(self.console.poll_forever()), asyncio.create_task(self.console.grades_forever())]
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()

    def stop(self) -> None:
        if self._stopped is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self.thread.join(10)


def start_console(config: ConsoleConfig) -> RunningConsole:
    """Serve the console for ``config`` on a background thread; ``.url`` is its address."""
    return RunningConsole(Console(config)).start()

"""The websocket server: a thin I/O shell around :class:`~lipsync_stream.session.Session`.

Per connection: read and validate the first message, get the (shared) character, then run two
tasks: a reader that hands every client message to the session, and a writer that asks the
session what to do next, renders frames in a worker thread and sends them. Anything that goes
wrong in one session is answered to that client and logged; other sessions never notice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import http
import itertools
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.http11 import Request, Response

from . import auth, mediapipe_models
from .auth import ApiKey, FailureThrottle, KeyRing, TokenError, TokenIssuer
from .character import CharacterBusy, CharacterError, CharacterStore
from .connection import TOKEN_PATH, WEBRTC_PATH, Connection, HttpRequest, PostResult
from .cpus import cpus
from .engines import DEFAULT_ENGINE, engine_class, get_engine
from .fetch import FetchConfig, Fetcher
from .logsafe import shown
from .metrics import Metrics
from .neural.service import ServiceFull
from .pipeline import DEFAULT_JPEG_QUALITY, FrameRenderer
from .protocol import (
    BYTES_PER_SECOND,
    SAMPLE_RATE,
    ErrorKind,
    ProtocolError,
    SessionParams,
    error_message,
    first_message,
    parse_first_message,
)
from .session import Fail, Finish, Limits, Render, Session, State, Wait

log = logging.getLogger(__name__)

WEBSOCKET_PATHS = frozenset({"/", "/LipsyncStream"})
#: the browser page and what it loads: URL path -> (package resource, content type)
STATIC_FILES = {
    "/index.html": ("web/index.html", "text/html; charset=utf-8"),
    "/app.js": ("web/app.js", "text/javascript; charset=utf-8"),
    "/pcm-worklet.js": ("web/pcm-worklet.js", "text/javascript; charset=utf-8"),
    "/sample.flac": ("assets/speech/hello.flac", "audio/flac"),
}
CLOSE_REASON_BYTES = 120  # a close frame's reason must fit in 123 bytes
#: a learned engine's real-time frame this close to its playing time keeps the last generated
#: mouth instead of waiting for the model (never behind real time)
LEARNED_MARGIN = 0.1
#: why a draining server refuses a new session (websocket, WebRTC, or a place asked for late)
SHUTTING_DOWN = "the server is shutting down; connect again to reach another replica"
#: after a drain's timeout, how long a session's error and close may take before it is dropped:
#: a process asked to stop exits within drain_timeout + this (+ the event loop's last turn)
DRAIN_CLOSE_GRACE = 2.0


@dataclass
class ServerConfig:
    """Everything ``serve`` can be told: address, engine, limits, access, TLS, caches."""
    host: str = "127.0.0.1"
    port: int = 8765
    asset_roots: list[Path] = field(default_factory=list)
    engine: str = DEFAULT_ENGINE
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    limits: Limits = field(default_factory=Limits)
    first_message_timeout: float = 10.0
    drain_timeout: float = 30.0  # on SIGTERM: how long running sessions may go on before they are closed
    send_timeout: float = 10.0  # a client that takes no frame for this long is not reading: closed
    character_memory_bytes: int = 2 * 1024**3
    fetch: FetchConfig | None = None
    render_threads: int = field(default_factory=cpus)
    reuse_port: bool = False  # several worker processes listen on one port (SO_REUSEPORT)
    #: sessions open at once; more are refused with `capacity` (1013). None: cores x the engine's
    #: sessions_per_core
    max_sessions: int | None = None
    max_loads: int = 2  # characters loading at once (their own threads, never the render threads)
    load_queue_timeout: float = 30.0  # a load that cannot start within this is refused with `capacity`
    #: keyless connections waiting to show a session token (None: 4 x max_sessions, at least 16)
    max_waiting: int | None = None
    #: keys file (``lipsync-stream keys``): with it, every session needs a key or a session token
    api_keys: Path | None = None
    allowed_origins: list[str] = field(default_factory=list)  # besides the server's own page
    #: Host names served besides loopback ones (a loopback server) or at all (others, when given)
    allowed_hosts: list[str] = field(default_factory=list)
    #: signs session tokens; workers of one server must share it (serve_workers passes it on)
    token_secret: bytes = field(default_factory=lambda: os.urandom(32))
    certfile: Path | None = None  # with keyfile: wss:// and https:// on the same port
    keyfile: Path | None = None
    metrics_port: int | None = None  # serve /metrics there (on metrics_host) instead of the main port
    metrics_host: str = "127.0.0.1"
    model: Path | None = None  # learned engines: the checkpoint
    device: str = "auto"  # learned engines: cpu, cuda, cuda:1, or auto (a GPU if torch sees one)
    learned_frames_in_flight: int = 8  # an offline session's frames in the model's queue at once

    def fetch_config(self) -> FetchConfig:
        return self.fetch if self.fetch is not None else FetchConfig(asset_roots=[Path(p) for p in self.asset_roots])

    def session_limit(self) -> int:
        if self.max_sessions is not None:
            return self.max_sessions
        return cpus() * engine_class(self.engine).sessions_per_core


@dataclasses.dataclass
class _Place:
    """Whether a connection holds one of the session places (the waiting line is a dict)."""

    active: bool = False


def _path_of(request: Request) -> str:
    return request.path.split("?", 1)[0]


class LipsyncServer:
    """Sessions share one engine, one character store and one pool of render threads."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        cv2.setNumThreads(1)  # parallel across sessions, not inside one small image
        self.engine = get_engine(self.config.engine, self.config.model, self.config.device, self.config.fetch_config().cache_dir)
        c = self.config
        self.store = CharacterStore(Fetcher(c.fetch_config()), c.character_memory_bytes, c.max_loads, c.load_queue_timeout)
        self.executor = ThreadPoolExecutor(c.render_threads, thread_name_prefix="render")
        self._ids = itertools.count(1)
        self.active_sessions = 0
        self.max_sessions = c.session_limit()
        #: connections with no key on the upgrade, before their first message (their session
        #: ids), longest waiting first (dicts keep their order)
        self._waiting_line: dict[ServerConnection, str] = {}
        self._evictions: set[asyncio.Future[None]] = set()
        self.max_waiting = c.max_waiting if c.max_waiting is not None else max(16, 4 * self.max_sessions)
        self.metrics = Metrics()
        self.metrics.sessions_capacity.set(self.max_sessions)
        self._static_cache: dict[str, bytes] = {}
        self.keys = KeyRing(c.api_keys) if c.api_keys is not None else None
        self.tokens = TokenIssuer(c.token_secret, c.fetch_config().cache_dir / "tokens")
        self.throttle = FailureThrottle()
        self.key_sessions: collections.Counter[str] = collections.Counter()
        self.draining = False
        self.open_connections: dict[ServerConnection, str] = {}
        self.loopback = auth.is_loopback(c.host)

    @property
    def waiting(self) -> int:
        """Connections waiting to show a session token."""
        return len(self._waiting_line)

    # --- HTTP side -------------------------------------------------------------------------------

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = _path_of(request)
        if path == "/livez":
            return connection.respond(http.HTTPStatus.OK, "alive\n")  # liveness: the event loop answers
        if path == "/healthz":
            # Readiness for a load balancer: a draining or full replica sends the next session elsewhere.
            if self.draining:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            if self.active_sessions >= self.max_sessions:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "full\n")
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if request.method == "OPTIONS" and path in (TOKEN_PATH, WEBRTC_PATH):
            return self._preflight(connection, request.headers)
        if request.method != "GET":
            return connection.respond(http.HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not served here\n")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path in WEBSOCKET_PATHS and upgrade:
            if self.draining:
                return self._refuse(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, ErrorKind.CAPACITY, SHUTTING_DOWN)
            return await self._check_upgrade(connection, request)
        if path == "/metrics" and self.config.metrics_port is None:
            response = connection.respond(http.HTTPStatus.OK, "")
            return self._with_body(response, self.metrics.exposition(), self.metrics.content_type)
        if path == "/favicon.ico":
            return connection.respond(http.HTTPStatus.NO_CONTENT, "")
        page = STATIC_FILES.get("/index.html" if path == "/" else path)
        if page is not None:
            return self._static(connection, *page)
        if path == "/LipsyncStream":
            return connection.respond(http.HTTPStatus.UPGRADE_REQUIRED, "this is the LipsyncStream websocket endpoint\n")
        return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such path {path}; the websocket endpoint is /LipsyncStream\n")

    # --- who may come in ------------------------------------------------------------------------

    def screen_request(self, request: HttpRequest) -> PostResult | None:
        """The rules every request meets before it is routed (None: it passes): its ``Host``
        (DNS rebinding, :func:`auth.host_allowed`) and, when a browser sent it, its ``Origin``
        (the server's own page or ``--allowed-origin``), for the websocket, the page and the
        POST endpoints alike."""
        host = request.headers.get("host")
        if not auth.host_allowed(host, self.loopback, self.config.allowed_hosts):
            detail = f"Host '{shown(host or '', 100)}' refused: this server answers {'loopback names' if self.loopback else 'its --allowed-host names'} only (add one with --allowed-host)"
            return self._screened(request, http.HTTPStatus.FORBIDDEN, detail)
        origin = request.headers.get("origin")
        if origin is not None and not auth.origin_allowed(origin, host, self.config.allowed_origins):
            what = "websocket" if request.headers.get("upgrade", "").lower() == "websocket" else f"{request.method} {shown(request.path, 60)}"
            detail = f"{what} from the page at {shown(origin, 100)} refused: this server takes its own page and --allowed-origin only"
            return self._screened(request, http.HTTPStatus.FORBIDDEN, detail)
        return None

    def _screened(self, request: HttpRequest, status: http.HTTPStatus, detail: str) -> PostResult:
        log.warning("refused %s %s from %s: %s: %s", request.method, shown(request.path, 60), request.peer, ErrorKind.UNAUTHORIZED.value, detail)
        self.metrics.refusals.labels(ErrorKind.UNAUTHORIZED.value).inc()
        return int(status), {"error": ErrorKind.UNAUTHORIZED.value, "detail": detail}, {}, 0.0

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, kind: ErrorKind, detail: str) -> Response:
        log.warning("refused a websocket upgrade from %s: %s", connection.remote_address, shown(detail))
        self.metrics.refusals.labels(kind.value).inc()
        return self._with_body(connection.respond(status, ""), error_message(kind, detail).encode(), "application/json")

    async def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to let the upgrade go on, or the HTTP answer that refuses it."""
        secret = auth.secret_in_query(request.path)
        if secret is not None:
            detail = f"'{shown(secret, 40)}' in the query string refused: keys and tokens there end up in logs; send an Authorization: Bearer header, or the session_token in the first message"
            return self._refuse(connection, http.HTTPStatus.BAD_REQUEST, ErrorKind.BAD_REQUEST, detail)
        key = auth.bearer(request.headers.get("Authorization"))
        if key is None or self.keys is None:
            return None  # open server, or a session token will come in the first message
        record = self.keys.verify(key)
        if record is None:
            await self._slow_down(str(connection.remote_address[0]))
            return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, ErrorKind.UNAUTHORIZED, "the API key is not valid")
        connection.api_key = record  # type: ignore[attr-defined]
        return None

    async def _slow_down(self, address: str) -> None:
        """Count a failed attempt from *address*; repeated failures are answered ever later."""
        delay = self.throttle.failure(address, time.monotonic())
        if delay:
            await asyncio.sleep(delay)

    def _authorize(self, ws: ServerConnection, params: SessionParams) -> tuple[SessionParams, ApiKey | None]:
        """The session's parameters and key: from its session token, or from the upgrade's key."""
        key: ApiKey | None = getattr(ws, "api_key", None)
        if params.session_token is not None:
            try:
                name, fields = self.tokens.redeem(params.session_token)
            except TokenError as exc:
                raise ProtocolError(ErrorKind.UNAUTHORIZED, str(exc)) from None
            if self.keys is not None:
                key = self.keys.named(name)
                if key is None:
                    raise ProtocolError(ErrorKind.UNAUTHORIZED, f"the key '{name}' this token was issued for has been removed")
            # A transport's own fields (WebRTC: raw frames, real time) stand over the token's.
            params = parse_first_message(json.dumps({**fields, **getattr(ws, "transport_fields", {})}))
        elif self.keys is not None and key is None:
            raise ProtocolError(
                ErrorKind.UNAUTHORIZED,
                f"this server needs an API key: an 'Authorization: Bearer KEY' header on the websocket upgrade, or a session_token from POST {TOKEN_PATH} in the first message",
            )
        if key is not None:
            if key.max_sessions is not None and self.key_sessions[key.name] >= key.max_sessions:
                raise ProtocolError(ErrorKind.LIMIT, f"key '{key.name}' already has {key.max_sessions} sessions open, its limit")
            if key.max_session_seconds is not None:
                asked = params.max_session_length
                params = dataclasses.replace(params, max_session_length=key.max_session_seconds if asked is None else min(asked, key.max_session_seconds))
        return params, key

    def post_request(self, request: HttpRequest, body: bytes) -> PostResult | Awaitable[PostResult]:
        """The two POST endpoints: session tokens now, WebRTC offers when answered."""
        if request.path == WEBRTC_PATH:
            return self.webrtc_offer(request.headers, body, request.peer)
        return self.token_request(request.target, request.headers, body, request.peer)

    async def webrtc_offer(self, headers: dict[str, str], body: bytes, peer: str) -> PostResult:
        """``POST /webrtc/offer`` (:mod:`.webrtc`): the session runs in :meth:`handler`. With keys,
        an ``Authorization: Bearer KEY`` header proves one (as on a websocket upgrade), or the
        session fields carry a ``session_token``."""
        extra = self._cors_headers(headers)
        if self.draining:
            return 503, {"error": "capacity", "detail": SHUTTING_DOWN}, extra, 0.0
        try:
            from .webrtc import answer_offer
        except ImportError:
            return 501, {"error": "bad_request", "detail": "this server has no WebRTC: pip install 'lipsync-stream[webrtc]'"}, extra, 0.0
        key: ApiKey | None = None
        bearer = auth.bearer(headers.get("authorization"))
        if bearer is not None and self.keys is not None:  # a server-side client's key, as on the upgrade
            key = self.keys.verify(bearer)
            if key is None:
                return self._unauthorized_post(peer, "a WebRTC offer", "the API key is not valid", extra)
        status, obj = await answer_offer(body, peer, self.handler, api_key=key)
        return status, obj, extra, 0.0

    def _unauthorized_post(self, peer: str, what: str, detail: str, extra: dict[str, str]) -> PostResult:
        """A POST refused for its key: counted, logged, answered 401 once the failure throttle's
        delay for *peer* has passed."""
        delay = self.throttle.failure(peer, time.monotonic())
        self.metrics.refusals.labels(ErrorKind.UNAUTHORIZED.value).inc()
        log.warning("refused %s to %s: %s", what, peer, detail)
        return 401, {"error": ErrorKind.UNAUTHORIZED.value, "detail": detail}, extra, delay

    def token_request(self, target: str, headers: dict[str, str], body: bytes, peer: str) -> PostResult:
        """``POST /startAudioToVideoSession``: JSON with ``apiKey`` and first-message fields ->
        ``{"session_token": ...}`` (status, JSON body, extra headers, seconds to wait first)."""
        extra = self._cors_headers(headers)
        if auth.secret_in_query(target):
            return 400, {"error": "bad_request", "detail": "keys in the query string are refused (they end up in logs); send apiKey in the JSON body"}, extra, 0.0
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            return 400, {"error": "bad_request", "detail": "the body must be a JSON object"}, extra, 0.0
        if not isinstance(obj, dict):
            return 400, {"error": "bad_request", "detail": "the body must be a JSON object"}, extra, 0.0
        api_key = obj.pop("apiKey", None)
        if api_key is None:
            api_key = auth.bearer(headers.get("authorization"))
        name = ""
        if self.keys is not None:
            record = self.keys.verify(api_key) if isinstance(api_key, str) else None
            if record is None:
                return self._unauthorized_post(peer, "a session token", "apiKey is missing or not valid", extra)
            name = record.name
        try:
            params = parse_first_message(json.dumps(obj))
        except ProtocolError as exc:
            return 400, {"error": exc.kind.value, "detail": exc.detail}, extra, 0.0
        except ValueError:  # a JSON value that cannot be written back, such as a 5000-digit integer
            return 400, {"error": "bad_request", "detail": "the body holds a value that is not a valid field"}, extra, 0.0
        if params.session_token is not None:
            return 400, {"error": "bad_request", "detail": "a session token cannot be traded for another"}, extra, 0.0
        try:
            token = self.tokens.issue(name, json.loads(first_message(params)))
        except TokenError as exc:
            return 400, {"error": "bad_request", "detail": str(exc)}, extra, 0.0
        log.info("session token issued to %s for key '%s'", peer, name or "(open server)")
        return 200, {"session_token": token, "expires_in": self.tokens.ttl}, extra, 0.0

    def _cors_headers(self, headers: dict[str, str] | Headers) -> dict[str, str]:
        """Lets a page on an --allowed-origin read the token it asked for."""
        origin = headers.get("origin") if isinstance(headers, dict) else headers.get("Origin")
        if origin and auth.origin_listed(origin, self.config.allowed_origins):
            return {"Access-Control-Allow-Origin": origin.strip(), "Vary": "Origin"}
        return {}

    def _preflight(self, connection: ServerConnection, headers: Headers) -> Response:
        extra = self._cors_headers(headers)
        if not extra:
            return connection.respond(http.HTTPStatus.FORBIDDEN, "this origin may not ask for session tokens\n")
        response = connection.respond(http.HTTPStatus.NO_CONTENT, "")
        for name, value in {**extra, "Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "Content-Type, Authorization", "Access-Control-Max-Age": "600"}.items():
            response.headers[name] = value
        return response

    def _static(self, connection: ServerConnection, resource: str, content_type: str) -> Response:
        body = self._static_cache.get(resource)
        if body is None:
            body = (resources.files("lipsync_stream") / resource).read_bytes()
            self._static_cache[resource] = body
        return self._with_body(connection.respond(http.HTTPStatus.OK, ""), body, content_type)

    @staticmethod
    def _with_body(response: Response, body: bytes, content_type: str) -> Response:
        response.body = body
        for name, value in (("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")):
            if name in response.headers:
                del response.headers[name]
            response.headers[name] = value
        return response

    # --- one session -----------------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        sid = f"s{next(self._ids)}"
        started = time.monotonic()
        log.info("[%s] connected from %s", sid, ws.remote_address)
        self.open_connections[ws] = sid
        place = _Place()
        try:
            if await self._admit(ws, sid, place):
                await self._serve_session(ws, sid, place)
        except ConnectionClosed as exc:
            too_big = getattr(ws, "too_big", None)
            if too_big is not None:
                log.warning("[%s] %s: %s", sid, ErrorKind.MESSAGE_TOO_BIG.value, shown(too_big))
                self.metrics.errors.labels(ErrorKind.MESSAGE_TOO_BIG.value).inc()
            else:
                log.info("[%s] client went away (%s)", sid, exc)
        except Exception:
            log.exception("[%s] internal error", sid)
            await self._fail(ws, sid, ErrorKind.INTERNAL, "the server failed while serving this session; see its log")
        finally:
            self._leave(place)
            self.open_connections.pop(ws, None)
            self._waiting_line.pop(ws, None)
            log.info("[%s] ended after %.1f s", sid, time.monotonic() - started)

    async def _admit(self, ws: ServerConnection, sid: str, place: _Place) -> bool:
        """A connection takes one of max_sessions places once it may start a session: at once on
        an open server or with a key on the upgrade; else when its session token is good. Until
        then it waits among at most max_waiting others, so keyless clients cannot fill the places;
        when that line is full, the connection that has waited longest makes room (it had its
        chance to speak), so sockets that never speak cannot lock out a token holder either."""
        if self.keys is None or getattr(ws, "api_key", None) is not None:
            return await self._take_place(ws, sid, place)
        if len(self._waiting_line) >= self.max_waiting:
            oldest, old_sid = next(iter(self._waiting_line.items()))
            del self._waiting_line[oldest]
            detail = f"{self.max_waiting} connections are waiting to show a session token; the longest waiting makes room: send the first message at once"
            evicted = asyncio.ensure_future(self._fail(oldest, old_sid, ErrorKind.CAPACITY, detail, drain=False))  # its handler reads
            self._evictions.add(evicted)
            evicted.add_done_callback(self._evictions.discard)
        self._waiting_line[ws] = sid
        return True

    async def _take_place(self, ws: ServerConnection, sid: str, place: _Place) -> bool:
        """One of the max_sessions places for this connection, or the capacity error (False)."""
        self._waiting_line.pop(ws, None)  # a waiting connection moves up
        if self.draining:
            await self._fail(ws, sid, ErrorKind.CAPACITY, SHUTTING_DOWN)
            return False
        if self.active_sessions >= self.max_sessions:
            await self._fail(ws, sid, ErrorKind.CAPACITY, f"the server is at capacity ({self.max_sessions} sessions); try again later")
            return False
        self.active_sessions += 1
        place.active = True
        self.metrics.sessions.inc()
        self.metrics.sessions_active.inc()
        return True

    def _leave(self, place: _Place) -> None:
        """Give back the session place, if *place* holds one."""
        if place.active:
            self.active_sessions -= 1
            self.metrics.sessions_active.dec()
        place.active = False

    async def _fail(self, ws: ServerConnection, sid: str, kind: ErrorKind, detail: str, drain: bool = True, timeout: float | None = None) -> None:
        """Send the JSON error, then close with the kind's code.

        *drain*: read and drop what the client still sends meanwhile. A client streaming audio
        while its session is refused would otherwise fill the unread queue; reading from the
        socket then stops, and the client's answer to the close would wait behind its audio
        until the close timed out (10 s). Off when the session's reader is still reading.
        *timeout*: how long the error and the close may take before the connection is dropped
        (the send timeout unless given).
        """
        log.warning("[%s] %s: %s", sid, kind.value, shown(detail, 1000))
        self.metrics.errors.labels(kind.value).inc()
        reason = detail.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore")
        drainer = asyncio.create_task(self._drain(ws)) if drain else None
        try:
            # A client that does not read cannot hold us: the error and the close get a deadline.
            deadline = self.config.send_timeout if timeout is None else timeout
            await asyncio.wait_for(ws.send(error_message(kind, detail)), deadline)
            await asyncio.wait_for(ws.close(kind.close_code, reason), deadline)
        except (ConnectionClosed, TimeoutError):
            ws.transport.abort()
        finally:
            if drainer is not None:
                drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drainer

    @staticmethod
    async def _drain(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _message in ws:
                pass

    async def _serve_session(self, ws: ServerConnection, sid: str, place: _Place) -> None:
        handshake = await self._handshake(ws, sid, place)
        if handshake is None:
            return
        params, key = handshake
        if key is not None:
            self.key_sessions[key.name] += 1
            self.metrics.key_sessions.labels(key.name).inc()
            self.metrics.key_sessions_active.labels(key.name).inc()
            log.info("[%s] key '%s'", sid, key.name)
        try:
            await self._run_session(ws, sid, params, key)
        finally:
            if key is not None:
                self.key_sessions[key.name] -= 1
                self.metrics.key_sessions_active.labels(key.name).dec()

    async def _handshake(self, ws: ServerConnection, sid: str, place: _Place) -> tuple[SessionParams, ApiKey | None] | None:
        """The first message, who sent it, and a place among the sessions; None: refused (the
        client was told why)."""
        try:
            first = await asyncio.wait_for(ws.recv(), self.config.first_message_timeout)
        except TimeoutError:
            await self._fail(ws, sid, ErrorKind.BAD_REQUEST, f"no first message within {self.config.first_message_timeout:g} s")
            return None
        try:
            params, key = self._authorize(ws, parse_first_message(first))
        except ProtocolError as exc:
            if exc.kind is ErrorKind.UNAUTHORIZED:
                await self._slow_down(str(ws.remote_address[0]))
            await self._fail(ws, sid, exc.kind, exc.detail)
            return None
        if not place.active and not await self._take_place(ws, sid, place):
            return None
        return params, key

    async def _run_session(self, ws: ServerConnection, sid: str, params: SessionParams, key: ApiKey | None) -> None:
        loop = asyncio.get_running_loop()
        log.info("[%s] character %s, isJPG=%s syncAudio=%s realtime=%s", sid, shown(params.video_reference_url), params.is_jpg, params.sync_audio, params.realtime)
        try:
            character = await self.store.get(params.video_reference_url, params.face_det_results)
        except CharacterBusy as exc:
            await self._fail(ws, sid, ErrorKind.CAPACITY, str(exc))
            return
        except CharacterError as exc:
            await self._fail(ws, sid, ErrorKind.CHARACTER, str(exc))
            return

        limits = self.config.limits
        lead = getattr(ws, "lead", None)  # a transport that must send in real time (WebRTC) says so
        if lead is not None:
            limits = dataclasses.replace(limits, lead=lead)
        session = Session(params, loop.time(), self.engine.lookahead_samples, self.engine.context_samples, limits)
        try:
            renderer = FrameRenderer(self.engine, character, params, self.config.jpeg_quality)
        except ServiceFull as exc:
            await self._fail(ws, sid, ErrorKind.CAPACITY, str(exc))
            return
        try:
            await _SessionStream(self, ws, sid, session, renderer, key).run()
        finally:
            renderer.close()
            if renderer.held_frames:
                self.metrics.held_frames.inc(renderer.held_frames)

    def _log_done(self, sid: str, session: Session, renderer: FrameRenderer) -> None:
        t = renderer.times
        n = max(1, t.frames)
        log.info(
            "[%s] done: %d frames (%d idle), %.2f s of audio in (at most %.1f s waiting), %.2f s skipped; per frame %.1f ms (features %.1f, engine %.1f, compose %.1f, encode %.1f)",
            sid, t.frames, session.idle_frames, session.samples_received / SAMPLE_RATE, session.peak_pending_samples / SAMPLE_RATE, session.samples_skipped / SAMPLE_RATE,
            1000 * t.total / n, 1000 * t.features / n, 1000 * t.engine / n, 1000 * t.compose / n, 1000 * t.encode / n,
        )

    # --- lifecycle -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(self, host: str | None = None, port: int | None = None) -> AsyncIterator[Server]:
        """The websockets server (use with ``async with``), and the metrics one if configured."""
        c = self.config
        tls = None
        if c.certfile is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(c.certfile, c.keyfile)
        async with contextlib.AsyncExitStack() as stack:
            main = await stack.enter_async_context(
                serve(
                    self.handler,
                    c.host if host is None else host,
                    c.port if port is None else port,
                    process_request=self.process_request,
                    compression=None,  # frames are JPEG: deflate would cost CPU for nothing
                    # Every message, the first one too; a larger one is refused from its header.
                    max_size=c.limits.max_message_bytes,
                    # Messages waiting unread (flow control): then the TCP connection is no longer read.
                    max_queue=4,
                    create_connection=functools.partial(Connection, post=self.post_request, screen=self.screen_request),  # type: ignore[arg-type]
                    reuse_port=c.reuse_port or None,
                    ssl=tls,
                )
            )
            if c.metrics_port is not None:
                await stack.enter_async_context(serve(self._no_sessions, c.metrics_host, c.metrics_port, process_request=self._metrics_only, create_connection=Connection, reuse_port=c.reuse_port or None))
            yield main

    def _metrics_only(self, connection: ServerConnection, request: Request) -> Response:
        if _path_of(request) == "/metrics":
            return self._with_body(connection.respond(http.HTTPStatus.OK, ""), self.metrics.exposition(), self.metrics.content_type)
        return connection.respond(http.HTTPStatus.NOT_FOUND, "this port serves /metrics only\n")

    @staticmethod
    async def _no_sessions(ws: ServerConnection) -> None:
        await ws.close()

    async def drain(self, timeout: float) -> int:
        """Stop taking sessions (``/healthz`` answers 503 ``draining``, new connections hear
        ``capacity``), let the running ones finish for up to *timeout* seconds, then close the
        rest with a ``going_away`` error (close code 1001), dropping within
        :data:`DRAIN_CLOSE_GRACE` s those that do not take it. Returns how many were closed."""
        self.draining = True
        log.info("draining: %d connections open, at most %g s more", len(self.open_connections), timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.open_connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        left = list(self.open_connections.items())
        detail = f"the server is shutting down (its sessions had {timeout:g} s to finish)"
        await asyncio.gather(*(self._fail(ws, sid, ErrorKind.GOING_AWAY, detail, drain=False, timeout=DRAIN_CLOSE_GRACE) for ws, sid in left))
        if left:
            log.info("drained: closed %d sessions that were still running", len(left))
        return len(left)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        self.engine.close()


class _SessionStream:
    """One session's connection after its handshake: a reader task that hands the client's
    messages to the sans-I/O session, and a writer loop that asks the session what to do next,
    renders frames (several in flight for a learned engine's offline session) and sends them in
    order, until the session finishes or fails."""

    def __init__(self, server: LipsyncServer, ws: ServerConnection, sid: str, session: Session, renderer: FrameRenderer, key: ApiKey | None) -> None:
        self.server, self.ws, self.sid, self.session, self.renderer, self.key = server, ws, sid, session, renderer, key
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()  # set by the reader: a message came (or the connection ended)
        self.room = asyncio.Event()  # set by the writer after each frame: there may be room to read again
        # Frames being rendered, oldest first. A learned engine keeps several frames of an offline
        # session in flight, so that they go through the shared model in one batch; real-time
        # frames go one at a time (paced, each checked for lateness just before the model), and
        # the weight-free engines draw one at a time. Frames always go out in order.
        engine = server.engine
        self.depth = server.config.learned_frames_in_flight if engine.learned and not session.params.realtime else 1
        self.in_flight: collections.deque[tuple[asyncio.Future[bytes], Render, float]] = collections.deque()

    async def read(self) -> None:
        """The reader: every message to the session, pausing while the session says so."""
        session, metrics = self.session, self.server.metrics
        try:
            while True:
                while session.reading_paused:
                    # Flow control: unread, the client's messages wait in the TCP buffers and
                    # its sends block, so a long file sent at once costs bounded memory here.
                    self.room.clear()
                    await self.room.wait()
                try:
                    message = await self.ws.recv()
                except ConnectionClosedOK:
                    return
                skips = session.skips
                session.receive(message, self.loop.time())
                if session.skips != skips:  # SKIP: the model's queue drops this session's frames too
                    self.renderer.skip()
                if isinstance(message, bytes):
                    metrics.audio_seconds.inc(len(message) / BYTES_PER_SECOND)
                    if self.key is not None:
                        metrics.key_audio_seconds.labels(self.key.name).inc(len(message) / BYTES_PER_SECOND)
                self.wake.set()
        finally:
            self.wake.set()

    async def render(self, step: Render) -> bytes:
        renderer, server = self.renderer, self.server
        # Silence on a mouth at rest is the reference frame: no thread needed.
        message = renderer.render_cheap(step.frame)
        if message is not None:
            server.metrics.silent_frames.inc()
            return message
        if server.engine.learned:
            play = self.session.play_time(step.frame.index)
            late = play is not None and self.loop.time() > play - LEARNED_MARGIN
            return await renderer.render_learned(step.frame, server.executor, late)
        return await self.loop.run_in_executor(server.executor, renderer.render, step.frame)

    async def deliver(self) -> bool:
        """Send the oldest frame in flight; False when that failed (the session then fails)."""
        server, session = self.server, self.session
        task, step, started = self.in_flight.popleft()
        try:
            message = await task
        except Exception as exc:
            log.exception("[%s] rendering frame %d failed", self.sid, step.frame.index, exc_info=exc)
            session.fail(ErrorKind.INTERNAL, f"rendering frame {step.frame.index} failed: {type(exc).__name__}")
            return False
        server.metrics.render_time.observe(time.perf_counter() - started)
        sending = time.perf_counter()
        try:
            await asyncio.wait_for(self.ws.send(message), server.config.send_timeout)
        except TimeoutError:
            session.fail(ErrorKind.LIMIT, f"the client took no frame for {server.config.send_timeout:g} s (it is not reading); closing")
            return False
        self.renderer.times.send += time.perf_counter() - sending
        server.metrics.frames.inc()
        server.metrics.frame_latency.observe(max(0.0, self.loop.time() - step.audio_at))
        self.room.set()
        return True

    async def run(self) -> None:
        """The writer loop, with the reader running beside it."""
        server, session, ws, sid = self.server, self.session, self.ws, self.sid
        reader = asyncio.create_task(self.read(), name=f"{sid}-reader")
        try:
            while True:
                self.wake.clear()
                if reader.done():
                    if reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
                    if session.state is State.STREAMING:
                        log.info("[%s] client closed the connection after %d frames", sid, session.frames_released)
                        return
                step = session.next_step(self.loop.time())
                if isinstance(step, Render):
                    self.in_flight.append((asyncio.ensure_future(self.render(step)), step, time.perf_counter()))
                    if len(self.in_flight) >= self.depth:
                        await self.deliver()
                elif isinstance(step, Wait):
                    if self.in_flight:  # what is rendering goes out before any waiting
                        await self.deliver()
                        continue
                    timeout = None if step.until is None else max(0.0, step.until - self.loop.time())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout)
                elif isinstance(step, Finish):
                    while self.in_flight:
                        if not await self.deliver():
                            await server._fail(ws, sid, ErrorKind.INTERNAL, "the last frames could not be sent", drain=False)
                            return
                    await ws.send("DONE")
                    await ws.close()
                    server._log_done(sid, session, self.renderer)
                    return
                elif isinstance(step, Fail):
                    await server._fail(ws, sid, step.kind, step.detail, drain=False)  # the reader still reads
                    return
        finally:
            for task, _step, _started in self.in_flight:
                task.cancel()
            for task, _step, _started in self.in_flight:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for stage, seconds in self.renderer.times.stages().items():
                server.metrics.stage_seconds.labels(stage).inc(max(0.0, seconds))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig | None = None) -> AsyncIterator[tuple[LipsyncServer, str]]:
    """A server on an ephemeral port for in-process use: yields (server, ws:// or wss:// URL)."""
    config = config or ServerConfig(port=0)
    app = LipsyncServer(config)
    scheme = "wss" if config.certfile is not None else "ws"
    try:
        async with app.serve() as ws_server:
            yield app, f"{scheme}://{config.host}:{bound_port(ws_server)}/LipsyncStream"
    finally:
        app.close()


def bound_port(ws_server: Server) -> int:
    """The TCP port a started server listens on (port 0 asks the system for a free one)."""
    return int(next(iter(ws_server.sockets)).getsockname()[1])


async def serve_forever(config: ServerConfig) -> None:
    """Run until SIGINT/SIGTERM, then drain: stop accepting, let sessions finish for up to
    ``config.drain_timeout`` seconds, close the rest (a second signal stops at once)."""
    import signal

    app = LipsyncServer(config)
    async with app.serve() as ws_server:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        scheme, page = ("wss", "https") if config.certfile is not None else ("ws", "http")
        host = f"[{config.host}]" if ":" in config.host else config.host
        port = bound_port(ws_server)
        access = f"API keys from {config.api_keys} ({len(app.keys or [])} now)" if app.keys is not None else "open to anyone who can reach it"
        log.info("serving LipsyncStream on %s://%s:%d/LipsyncStream, the page at %s://%s:%d/ (engine %s, at most %d sessions, %s)", scheme, host, port, page, host, port, app.engine.name, app.max_sessions, access)
        if config.metrics_port is not None:
            log.info("metrics at http://%s:%d/metrics", config.metrics_host, config.metrics_port)
        if not mediapipe_models.available():
            log.warning(mediapipe_models.MISSING)
        await stop.wait()
        log.info("shutting down: draining for at most %g s (a second signal stops at once)", config.drain_timeout)
        stop.clear()
        drained = asyncio.ensure_future(app.drain(config.drain_timeout))
        interrupted = asyncio.ensure_future(stop.wait())
        await asyncio.wait({drained, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        for task in (drained, interrupted):
            task.cancel()
    app.close()


class ServerThread:
    """A server on an ephemeral port, run by its own event loop in a background thread.

    For synchronous programs (the player) that want an in-process server.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig(port=0)
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with running_server(self.config) as (_app, url):
            self.url = url
            self._ready.set()
            await self._stop

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))  # type: ignore[union-attr]
        self._thread.join(10)


def serve_workers(config: ServerConfig, workers: int, log_level: int = logging.INFO) -> int:
    """Run *workers* server processes on one port (SO_REUSEPORT); the kernel spreads connections.

    Each worker has its own event loop and render threads (no shared GIL); characters are shared
    through the memory-mapped decoded-character cache on disk.
    """
    import multiprocessing
    import signal
    import socket

    config.reuse_port = True
    config.render_threads = max(1, cpus() // workers)
    config.max_sessions = max(1, -(-config.session_limit() // workers))  # the machine's limit, shared
    # Port 0 would give each worker a port of its own: pick one for all, held until they bind it.
    reserved = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((config.host, config.port))
    config.port = int(reserved.getsockname()[1])
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(config, i, log_level), name=f"worker-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()
    log.info("started %d workers on port %d", workers, config.port)
    reserved.close()

    def stop(_sig: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs if proc.exitcode is not None and proc.exitcode > 0) if any((p.exitcode or 0) > 0 for p in procs) else 0


def _worker_main(config: ServerConfig, index: int, log_level: int = logging.INFO) -> None:
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s w{index} %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(max(logging.WARNING, log_level))
    asyncio.run(serve_forever(config))

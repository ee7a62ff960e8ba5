"""The websocket server: a thin I/O shell around :class:`~lipsync_stream.wire.session.Session`.

Per connection: read and validate the first message, get the (shared) character, then run two
tasks: a reader that hands every client message to the session, and a writer that asks the
session what to do next, renders frames in a worker thread and sends them. Anything that goes
wrong in one session is answered to that client and logged; other sessions never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http
import itertools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import cv2
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..characters.character import CharacterBusy, CharacterError, CharacterStore
from ..characters.fetch import Fetcher
from ..engines import get_engine
from ..logsafe import shown
from ..neural.service import ServiceFull
from ..pipeline import FrameRenderer
from ..wire.connection import TOKEN_PATH, WEBRTC_PATH, Connection, HttpRequest, PostResult
from ..wire.protocol import SAMPLE_RATE, ErrorKind, ProtocolError, SessionParams, error_message, parse_first_message
from ..wire.session import Session
from . import auth
from .admission import Admission, with_body
from .auth import ApiKey
from .metrics import Metrics
from .server_config import ServerConfig
from .session_stream import SessionStream

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
#: why a draining server refuses a new session (websocket, WebRTC, or a place asked for late)
SHUTTING_DOWN = "the server is shutting down; connect again to reach another replica"
#: after a drain's timeout, how long a session's error and close may take before it is dropped:
#: a process asked to stop exits within drain_timeout + this (+ the event loop's last turn)
DRAIN_CLOSE_GRACE = 2.0


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
        self.engine = get_engine(self.config.engine, self.config.model, self.config.device, self.config.fetch_config().cache_dir, self.config.fidelity)
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
        self.admission = Admission(c, self.metrics)
        # the admission's, at hand: keys (None: an open server), session tokens, open sessions per key
        self.keys, self.tokens, self.key_sessions = self.admission.keys, self.admission.tokens, self.admission.key_sessions
        self.draining = False
        self.open_connections: dict[ServerConnection, str] = {}

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
            return self.admission.preflight(connection, request.headers)
        if request.method != "GET":
            return connection.respond(http.HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not served here\n")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path in WEBSOCKET_PATHS and upgrade:
            if self.draining:
                return self.admission.refuse(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, ErrorKind.CAPACITY, SHUTTING_DOWN)
            return await self.admission.check_upgrade(connection, request)
        if path == "/metrics" and self.config.metrics_port is None:
            response = connection.respond(http.HTTPStatus.OK, "")
            return with_body(response, self.metrics.exposition(), self.metrics.content_type)
        if path == "/favicon.ico":
            return connection.respond(http.HTTPStatus.NO_CONTENT, "")
        page = STATIC_FILES.get("/index.html" if path == "/" else path)
        if page is not None:
            return self._static(connection, *page)
        if path == "/LipsyncStream":
            return connection.respond(http.HTTPStatus.UPGRADE_REQUIRED, "this is the LipsyncStream websocket endpoint\n")
        return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such path {path}; the websocket endpoint is /LipsyncStream\n")

    # --- the POST endpoints: session tokens (admission), WebRTC offers -------------------------

    def post_request(self, request: HttpRequest, body: bytes) -> PostResult | Awaitable[PostResult]:
        """The two POST endpoints: session tokens now, WebRTC offers when answered."""
        if request.path == WEBRTC_PATH:
            return self.webrtc_offer(request.headers, body, request.peer)
        return self.admission.token_request(request.target, request.headers, body, request.peer)

    async def webrtc_offer(self, headers: dict[str, str], body: bytes, peer: str) -> PostResult:
        """``POST /webrtc/offer`` (:mod:`.webrtc`): the session runs in :meth:`handler`. With keys,
        an ``Authorization: Bearer KEY`` header proves one (as on a websocket upgrade), or the
        session fields carry a ``session_token``."""
        extra = self.admission.cors_headers(headers)
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
                return self.admission.unauthorized_post(peer, "a WebRTC offer", "the API key is not valid", extra)
        status, obj = await answer_offer(body, peer, self.handler, api_key=key)
        return status, obj, extra, 0.0

    def _static(self, connection: ServerConnection, resource: str, content_type: str) -> Response:
        body = self._static_cache.get(resource)
        if body is None:
            body = (resources.files("lipsync_stream") / resource).read_bytes()
            self._static_cache[resource] = body
        return with_body(connection.respond(http.HTTPStatus.OK, ""), body, content_type)

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
            await self.fail(ws, sid, ErrorKind.INTERNAL, "the server failed while serving this session; see its log")
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
            evicted = asyncio.ensure_future(self.fail(oldest, old_sid, ErrorKind.CAPACITY, detail, drain=False))  # its handler reads
            self._evictions.add(evicted)
            evicted.add_done_callback(self._evictions.discard)
        self._waiting_line[ws] = sid
        return True

    async def _take_place(self, ws: ServerConnection, sid: str, place: _Place) -> bool:
        """One of the max_sessions places for this connection, or the capacity error (False)."""
        self._waiting_line.pop(ws, None)  # a waiting connection moves up
        if self.draining:
            await self.fail(ws, sid, ErrorKind.CAPACITY, SHUTTING_DOWN)
            return False
        if self.active_sessions >= self.max_sessions:
            await self.fail(ws, sid, ErrorKind.CAPACITY, f"the server is at capacity ({self.max_sessions} sessions); try again later")
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

    async def fail(self, ws: ServerConnection, sid: str, kind: ErrorKind, detail: str, drain: bool = True, timeout: float | None = None) -> None:
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
            await self.fail(ws, sid, ErrorKind.BAD_REQUEST, f"no first message within {self.config.first_message_timeout:g} s")
            return None
        try:
            params, key = self.admission.authorize(ws, parse_first_message(first))
        except ProtocolError as exc:
            if exc.kind is ErrorKind.UNAUTHORIZED:
                await self.admission.slow_down(str(ws.remote_address[0]))
            await self.fail(ws, sid, exc.kind, exc.detail)
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
            await self.fail(ws, sid, ErrorKind.CAPACITY, str(exc))
            return
        except CharacterError as exc:
            await self.fail(ws, sid, ErrorKind.CHARACTER, str(exc))
            return

        limits = self.config.limits
        lead = getattr(ws, "lead", None)  # a transport that must send in real time (WebRTC) says so
        if lead is not None:
            limits = dataclasses.replace(limits, lead=lead)
        session = Session(params, loop.time(), self.engine.lookahead_samples, self.engine.context_samples, limits)
        try:
            renderer = FrameRenderer(self.engine, character, params, self.config.jpeg_quality)
        except ServiceFull as exc:
            await self.fail(ws, sid, ErrorKind.CAPACITY, str(exc))
            return
        try:
            await SessionStream(self, ws, sid, session, renderer, key).run()
        finally:
            renderer.close()
            if renderer.held_frames:
                self.metrics.held_frames.inc(renderer.held_frames)

    def log_done(self, sid: str, session: Session, renderer: FrameRenderer) -> None:
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
                    create_connection=functools.partial(Connection, post=self.post_request, screen=self.admission.screen_request),  # type: ignore[arg-type]
                    reuse_port=c.reuse_port or None,
                    ssl=tls,
                )
            )
            if c.metrics_port is not None:
                await stack.enter_async_context(serve(self._no_sessions, c.metrics_host, c.metrics_port, process_request=self._metrics_only, create_connection=Connection, reuse_port=c.reuse_port or None))
            yield main

    def _metrics_only(self, connection: ServerConnection, request: Request) -> Response:
        if _path_of(request) == "/metrics":
            return with_body(connection.respond(http.HTTPStatus.OK, ""), self.metrics.exposition(), self.metrics.content_type)
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
        await asyncio.gather(*(self.fail(ws, sid, ErrorKind.GOING_AWAY, detail, drain=False, timeout=DRAIN_CLOSE_GRACE) for ws, sid in left))
        if left:
            log.info("drained: closed %d sessions that were still running", len(left))
        return len(left)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        self.engine.close()

"""The server's connection: HTTP/1.1 read by h11, then websockets' own connection.

Every connection starts with one HTTP request, which h11 (the sans-I/O HTTP/1.1 implementation
httpx and uvicorn use) reads; nothing here parses HTTP by hand. Then:

- the server *screens* it (a header given twice, a foreign ``Host`` on a loopback server, a
  foreign ``Origin``): a refusal is answered here, before anything else runs;
- ``POST /startAudioToVideoSession`` (a JSON body) trades an API key for a session token and
  ``POST /webrtc/offer`` starts a WebRTC session: their bodies are read through h11 (length,
  chunking, ``Expect: 100-continue``) within :data:`MAX_POST_BODY`, answered here, and the
  connection closes;
- any other request (the websocket upgrade, the page, ``/healthz``, ...) goes to websockets as
  h11 read it, written out again in canonical form, so that the two libraries cannot disagree
  about what the client sent: websockets answers it (its ``process_request`` hook is the server's
  routing) or upgrades the connection.

One request per connection: whatever a client pipelines behind it is never read as a request.
Two bounds that websockets has no setting for are kept here too:

- a message over the size limit is refused by websockets from its frame header (bounded memory)
  with a bare close 1009; the protocol asks for ``{"error": "message_too_big", ...}`` first, so
  the JSON error is sent just ahead of that close;
- a client that sends pings and never reads makes websockets queue a pong for each: once more
  than :data:`MAX_UNSENT` bytes wait to be sent (frames never get there: their sender waits for
  the buffer to drain), the connection is dropped.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.protocol import State

from ..logsafe import shown
from .protocol import ErrorKind, error_message

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # a request's line and headers, together
MAX_HEADERS = 100  # header lines in one request
MAX_POST_BODY = 64 * 1024
#: bytes written but not yet taken by the client past which it counts as not reading (a frame is
#: at most ~0.8 MB and its sender waits below websockets' write limit, so only a flood of
#: automatic answers, pongs, can get here)
MAX_UNSENT = 4 * 1024 * 1024
MAX_EARLY = 64 * 1024  # a websocket's frames sent before its handshake was answered
TOKEN_PATH = "/startAudioToVideoSession"
WEBRTC_PATH = "/webrtc/offer"
POST_PATHS = (TOKEN_PATH, WEBRTC_PATH)
#: headers a request may carry once only: two would let two readers see two different requests
SINGLE_HEADERS = frozenset({"host", "authorization", "origin", "upgrade", "connection", "content-type", "content-length", "sec-websocket-key", "sec-websocket-version", "expect"})


@dataclass(frozen=True)
class HttpRequest:
    """One request as h11 read it: *headers* has lower-cased names (repeated ones joined by
    ``", "``); *peer* is the client's address."""

    method: str
    target: str
    headers: dict[str, str]
    peer: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


#: (status, JSON body, extra headers, delay in s)
PostResult = tuple[int, dict[str, Any], dict[str, str], float]
#: (request, body) -> the answer, now or later
PostHandler = Callable[[HttpRequest, bytes], PostResult | Awaitable[PostResult]]
#: a request -> None to let it through, or the answer that refuses it
Screen = Callable[[HttpRequest], PostResult | None]


class BadRequest(Exception):
    """A request that is answered with *status* and closed; the message says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class Connection(ServerConnection):
    """One client connection: its HTTP request, then (for an upgrade) the websocket."""

    def __init__(self, *args: Any, post: PostHandler | None = None, screen: Screen | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.too_big: str | None = None  # the detail sent, once a message was over the limit
        self.api_key: Any = None  # the key the upgrade's Authorization header proved, if any
        self.http_request: HttpRequest | None = None
        self._post = post
        self._screen = screen
        self._http: h11.Connection | None = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._fed = 0  # bytes given to h11 before the request's head was complete
        self._body = bytearray()
        self._answering = False  # a POST was read whole: later bytes are not read
        self._early = bytearray()
        protocol = self.protocol
        fail = protocol.fail

        def fail_with_json(code: int, reason: str = "") -> None:
            if code == CloseCode.MESSAGE_TOO_BIG and protocol.state is State.OPEN and self.too_big is None:
                self.too_big = f"{reason}: messages are limited to {protocol.max_message_size} bytes; send audio in smaller chunks"
                protocol.send_text(error_message(ErrorKind.MESSAGE_TOO_BIG, self.too_big).encode())
            fail(code, reason)

        protocol.fail = fail_with_json  # type: ignore[method-assign]

    @property
    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return str(peer[0]) if peer else ""

    def data_received(self, data: bytes) -> None:
        if self._http is None:  # websockets has the connection
            if self.protocol.state is State.CONNECTING:  # its answer is not out yet
                self._hold(data)
                return
            super().data_received(data)
            if self.transport.get_write_buffer_size() > MAX_UNSENT and not self.transport.is_closing():
                log.warning("%s: %s: more than %d bytes wait for a client that does not read (a flood of pings?); dropped", self._peer, ErrorKind.LIMIT.value, MAX_UNSENT)
                self.transport.abort()
            return
        if self._answering:
            return
        try:
            self._read_http(data)
        except BadRequest as exc:
            self._refuse(exc.status, str(exc))
        except h11.RemoteProtocolError as exc:
            self._refuse(exc.error_status_hint, f"malformed request: {exc}")

    def eof_received(self) -> None:
        if self._http is not None:
            self.transport.close()  # the client went away before its request was complete
            return
        super().eof_received()

    # --- reading the request ---------------------------------------------------------------------

    def _read_http(self, data: bytes) -> None:
        conn = self._http
        assert conn is not None
        if self.http_request is None:  # the head is not complete yet
            # The head must fit in MAX_HEAD, however it is split into reads: h11 gets no more.
            room = MAX_HEAD - self._fed
            if room > 0:  # (h11 takes an empty read for the end of the stream)
                conn.receive_data(data[:room])
            self._fed += min(len(data), room)
            rest = data[room:]
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if self._fed >= MAX_HEAD:
                    raise BadRequest(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"the request's line and headers are limited to {MAX_HEAD} bytes")
                return
            if not isinstance(event, h11.Request):
                raise BadRequest(http.HTTPStatus.BAD_REQUEST, "expected an HTTP request")
            self._start(event, rest)
            return
        conn.receive_data(data)
        self._read_body()

    def _start(self, event: h11.Request, rest: bytes) -> None:
        conn = self._http
        assert conn is not None
        raw = [(bytes(name).decode("latin-1"), bytes(value).decode("latin-1")) for name, value in event.headers.raw_items()]
        if len(raw) > MAX_HEADERS:
            raise BadRequest(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"at most {MAX_HEADERS} header lines")
        headers: dict[str, str] = {}
        for name, value in raw:
            key = name.lower()
            if key in headers:
                if key in SINGLE_HEADERS:
                    raise BadRequest(http.HTTPStatus.BAD_REQUEST, f"header {name} given twice")
                headers[key] += ", " + value
            else:
                headers[key] = value
        request = HttpRequest(event.method.decode("ascii"), event.target.decode("ascii"), headers, self._peer)
        self.http_request = request
        refused = self._screen(request) if self._screen is not None else None
        if refused is not None:
            self._send_answer(refused)
            return
        if request.method == "POST":
            if request.path not in POST_PATHS or self._post is None:
                raise BadRequest(http.HTTPStatus.NOT_FOUND, f"POST is served at {' and '.join(POST_PATHS)} only")
            length = headers.get("content-length")
            if length is None and "transfer-encoding" not in headers:
                raise BadRequest(http.HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required")
            if length is not None and int(length) > MAX_POST_BODY:  # h11 checked it is digits
                raise BadRequest(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is limited to {MAX_POST_BODY} bytes")
            if rest:
                conn.receive_data(rest)
            self._read_body()
            return
        if "content-length" in headers and headers["content-length"] != "0" or "transfer-encoding" in headers:
            raise BadRequest(http.HTTPStatus.BAD_REQUEST, f"a {request.method} request has no body here")
        # To websockets, as h11 read it. What follows the head waits for the answer (below).
        canonical = Request(request.target, Headers(raw), request.method, f"HTTP/{event.http_version.decode('ascii')}").serialize()
        self._http = None
        super().data_received(canonical)
        self._hold(bytes(conn.trailing_data[0]) + rest)

    def _hold(self, data: bytes) -> None:
        """Bytes that came before websockets answered the request: a websocket's first frames
        (sent early) are kept for it, within :data:`MAX_EARLY`; after any other answer nothing
        more is read as a request (pipelined ones included)."""
        if len(self._early) + len(data) > MAX_EARLY:
            log.warning("%s: %s: more than %d bytes sent before the handshake was answered; dropped", self._peer, ErrorKind.BAD_REQUEST.value, MAX_EARLY)
            self.transport.abort()
            return
        self._early += data

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        await super().handshake(*args, **kwargs)
        early, self._early = bytes(self._early), bytearray()
        if early and self.protocol.state is State.OPEN:
            self.data_received(early)

    def _read_body(self) -> None:
        conn = self._http
        assert conn is not None and self.http_request is not None
        if conn.they_are_waiting_for_100_continue:
            self.transport.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_POST_BODY:
                    raise BadRequest(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is limited to {MAX_POST_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage):
                self._answering = True
                self.transport.pause_reading()  # one request per connection
                self._dispatch()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _dispatch(self) -> None:
        assert self._post is not None and self.http_request is not None
        result = self._post(self.http_request, bytes(self._body))
        if inspect.isawaitable(result):
            pending = asyncio.ensure_future(result)
            pending.add_done_callback(self._answered)
        else:
            self._send_answer(result)

    def _answered(self, task: asyncio.Future[PostResult]) -> None:
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("POST %s failed", self.http_request.path if self.http_request else "", exc_info=task.exception())
            self._write(500, {"error": ErrorKind.INTERNAL.value, "detail": "the request failed; see the server's log"}, {})
            return
        self._send_answer(task.result())

    # --- answering -------------------------------------------------------------------------------

    def _refuse(self, status: int, detail: str) -> None:
        log.warning("%s: %s: %s", self._peer, ErrorKind.BAD_REQUEST.value, shown(detail, 200))
        self._send_answer((status, {"error": ErrorKind.BAD_REQUEST.value, "detail": detail}, {}, 0.0))

    def _send_answer(self, result: PostResult) -> None:
        self._answering = True
        status, obj, extra, delay = result
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._write, status, obj, extra)
        else:
            self._write(status, obj, extra)

    def _write(self, status: int, obj: dict[str, Any], extra: dict[str, str]) -> None:
        """The answer through h11, then the connection closes."""
        if self.transport.is_closing():
            return
        body = json.dumps(obj).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"), ("Connection", "close"), *extra.items()]
        answer = h11.Connection(h11.SERVER)  # a fresh writer: the reader may have seen a broken request
        out = answer.send(h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase.encode())) or b""
        out += (answer.send(h11.Data(data=body)) or b"") + (answer.send(h11.EndOfMessage()) or b"")
        self.transport.write(out)
        self.transport.close()

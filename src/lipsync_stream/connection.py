"""The server's websocket connection: what websockets' own does, plus two things it cannot.

- A message over the size limit is refused by websockets from its frame header (bounded memory)
  with a bare close 1009; the protocol asks for ``{"error": "message_too_big", ...}`` first, so
  the JSON error is sent just ahead of that close.
- ``POST /startAudioToVideoSession`` (a JSON body) trades an API key for a session token;
- ``POST /webrtc/offer`` (an SDP offer and first-message fields) starts a WebRTC session.
  websockets parses GET requests without bodies only, so a connection whose first bytes are
  ``POST `` is answered here, as a small HTTP/1.1 exchange, before websockets sees anything;
  the connection then closes, which websockets takes as a handshake that never happened.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import State

from .protocol import ErrorKind, error_message

log = logging.getLogger(__name__)

MAX_POST_HEAD = 16 * 1024
MAX_POST_BODY = 64 * 1024
TOKEN_PATH = "/startAudioToVideoSession"
WEBRTC_PATH = "/webrtc/offer"
POST_PATHS = (TOKEN_PATH, WEBRTC_PATH)

#: (status, JSON body, extra headers, delay in s)
PostResult = tuple[int, dict[str, Any], dict[str, str], float]
#: (path with query, lower-cased headers, body, peer address) -> the answer, now or later
PostHandler = Callable[[str, dict[str, str], bytes, str], PostResult | Awaitable[PostResult]]


class Connection(ServerConnection):
    """One client connection; *post* answers ``POST`` requests (None: they are refused)."""

    def __init__(self, *args: Any, post: PostHandler | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.too_big: str | None = None  # the detail sent, once a message was over the limit
        self.api_key: Any = None  # the key the upgrade's Authorization header proved, if any
        self._post = post
        self._head = bytearray()
        self._sniffing = True  # until the first bytes tell a POST from a websocket upgrade
        self._posting = False
        self._continued = False
        self._pending: asyncio.Future[PostResult] | None = None
        protocol = self.protocol
        fail = protocol.fail

        def fail_with_json(code: int, reason: str = "") -> None:
            if code == CloseCode.MESSAGE_TOO_BIG and protocol.state is State.OPEN and self.too_big is None:
                self.too_big = f"{reason}: messages are limited to {protocol.max_message_size} bytes; send audio in smaller chunks"
                protocol.send_text(error_message(ErrorKind.MESSAGE_TOO_BIG, self.too_big).encode())
            fail(code, reason)

        protocol.fail = fail_with_json  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        if self._sniffing:
            self._head += data
            if len(self._head) < 5:
                return
            self._sniffing = False
            if bytes(self._head[:5]) != b"POST ":
                data = bytes(self._head)
                self._head.clear()
                super().data_received(data)
                return
            self._posting = True
        elif self._posting:
            self._head += data
        if self._posting:
            self._post_step()
            return
        super().data_received(data)

    # --- the POST exchange ----------------------------------------------------------------------

    def _post_step(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_POST_HEAD:
                self._answer(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "the request's head is too large")
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._answer(http.HTTPStatus.BAD_REQUEST, "malformed header line")
                return
            headers[name.strip().lower()] = value.strip()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._answer(http.HTTPStatus.BAD_REQUEST, "malformed request line")
            return
        target = parts[1]
        if target.split("?", 1)[0] not in POST_PATHS or self._post is None:
            self._answer(http.HTTPStatus.NOT_FOUND, f"POST is served at {' and '.join(POST_PATHS)} only")
            return
        if "transfer-encoding" in headers:
            self._answer(http.HTTPStatus.LENGTH_REQUIRED, "send the JSON body with a Content-Length")
            return
        length = headers.get("content-length", "")
        if not length.isdigit():
            self._answer(http.HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required")
            return
        if int(length) > MAX_POST_BODY:
            self._answer(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is limited to {MAX_POST_BODY} bytes")
            return
        body = self._head[end + 4 :]
        if len(body) < int(length):
            if headers.get("expect", "").lower() == "100-continue" and not self._continued:
                self._continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._posting = False
        peer = self.transport.get_extra_info("peername")
        result = self._post(target, headers, bytes(body[: int(length)]), str(peer[0]) if peer else "")
        if inspect.isawaitable(result):
            self._pending = asyncio.ensure_future(result)
            self._pending.add_done_callback(self._answered)
        else:
            self._reply(result)

    def _answered(self, task: asyncio.Future[PostResult]) -> None:
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("POST failed", exc_info=task.exception())
            self._send_http(500, {"error": "internal_error", "detail": "the request failed; see the server's log"}, {})
            return
        self._reply(task.result())

    def _reply(self, result: PostResult) -> None:
        status, obj, extra, delay = result
        asyncio.get_running_loop().call_later(delay, self._send_http, status, obj, extra)

    def _answer(self, status: http.HTTPStatus, detail: str) -> None:
        self._posting = False
        self._send_http(status, {"error": "bad_request", "detail": detail}, {})

    def _send_http(self, status: int, obj: dict[str, Any], extra: dict[str, str]) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps(obj).encode()
        reason = http.HTTPStatus(status).phrase
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}", "Cache-Control: no-store", "Connection: close"]
        head += [f"{k}: {v}" for k, v in extra.items()]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.transport.close()

"""Who may come in: the rules of :mod:`.auth` applied to the server's requests.

Every request is screened (its ``Host``, and a browser's ``Origin``); a websocket upgrade's
``Authorization`` key is checked before the upgrade; a session's first message brings its key's
limits or a session token; ``POST /startAudioToVideoSession`` trades a key for a token; failed
attempts are answered ever later (the failure throttle). The server owns the connections and
sessions; this owns the keys, the tokens and the throttle.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import http
import json
import logging
import time

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..logsafe import shown
from ..wire.connection import TOKEN_PATH, HttpRequest, PostResult
from ..wire.protocol import ErrorKind, ProtocolError, SessionParams, error_message, first_message, parse_first_message
from . import auth
from .auth import ApiKey, FailureThrottle, KeyRing, TokenError, TokenIssuer
from .metrics import Metrics
from .server_config import ServerConfig

log = logging.getLogger(__name__)


def with_body(response: Response, body: bytes, content_type: str) -> Response:
    """*response* carrying *body* (websockets' ``respond`` takes text only)."""
    response.body = body
    for name, value in (("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")):
        if name in response.headers:
            del response.headers[name]
        response.headers[name] = value
    return response


class Admission:
    """The keys, session tokens and failure throttle of one server, and the checks that use them."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config, self.metrics = config, metrics
        self.keys = KeyRing(config.api_keys) if config.api_keys is not None else None
        self.tokens = TokenIssuer(config.token_secret, config.fetch_config().cache_dir / "tokens")
        self.throttle = FailureThrottle()
        self.key_sessions: collections.Counter[str] = collections.Counter()  # open sessions per key name
        self.loopback = auth.is_loopback(config.host)

    def screen_request(self, request: HttpRequest) -> PostResult | None:
        """The rules every request meets before it is routed (None: it passes): its ``Host``
        (DNS rebinding, :func:`auth.host_allowed`) and, when a browser sent it, its ``Origin``
        (the server's own page or ``--allowed-origin``), for the websocket, the page and the
        POST endpoints alike."""
        host = request.headers.get("host")
        if not auth.host_allowed(host, self.loopback, self.config.allowed_hosts):
            detail = f"Host '{shown(host or '', 100)}' refused: this server answers {'loopback names' if self.loopback else 'its --allowed-host names'} only (add one with --allowed-host)"
            return self.screened(request, http.HTTPStatus.FORBIDDEN, detail)
        origin = request.headers.get("origin")
        if origin is not None and not auth.origin_allowed(origin, host, self.config.allowed_origins):
            what = "websocket" if request.headers.get("upgrade", "").lower() == "websocket" else f"{request.method} {shown(request.path, 60)}"
            detail = f"{what} from the page at {shown(origin, 100)} refused: this server takes its own page and --allowed-origin only"
            return self.screened(request, http.HTTPStatus.FORBIDDEN, detail)
        return None

    def screened(self, request: HttpRequest, status: http.HTTPStatus, detail: str) -> PostResult:
        log.warning("refused %s %s from %s: %s: %s", request.method, shown(request.path, 60), request.peer, ErrorKind.UNAUTHORIZED.value, detail)
        self.metrics.refusals.labels(ErrorKind.UNAUTHORIZED.value).inc()
        return int(status), {"error": ErrorKind.UNAUTHORIZED.value, "detail": detail}, {}, 0.0

    def refuse(self, connection: ServerConnection, status: http.HTTPStatus, kind: ErrorKind, detail: str) -> Response:
        log.warning("refused a websocket upgrade from %s: %s", connection.remote_address, shown(detail))
        self.metrics.refusals.labels(kind.value).inc()
        return with_body(connection.respond(status, ""), error_message(kind, detail).encode(), "application/json")

    async def check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to let the upgrade go on, or the HTTP answer that refuses it."""
        secret = auth.secret_in_query(request.path)
        if secret is not None:
            detail = f"'{shown(secret, 40)}' in the query string refused: keys and tokens there end up in logs; send an Authorization: Bearer header, or the session_token in the first message"
            return self.refuse(connection, http.HTTPStatus.BAD_REQUEST, ErrorKind.BAD_REQUEST, detail)
        key = auth.bearer(request.headers.get("Authorization"))
        if key is None or self.keys is None:
            return None  # open server, or a session token will come in the first message
        record = self.keys.verify(key)
        if record is None:
            await self.slow_down(str(connection.remote_address[0]))
            return self.refuse(connection, http.HTTPStatus.UNAUTHORIZED, ErrorKind.UNAUTHORIZED, "the API key is not valid")
        connection.api_key = record  # type: ignore[attr-defined]
        return None

    async def slow_down(self, address: str) -> None:
        """Count a failed attempt from *address*; repeated failures are answered ever later."""
        delay = self.throttle.failure(address, time.monotonic())
        if delay:
            await asyncio.sleep(delay)

    def authorize(self, ws: ServerConnection, params: SessionParams) -> tuple[SessionParams, ApiKey | None]:
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

    def unauthorized_post(self, peer: str, what: str, detail: str, extra: dict[str, str]) -> PostResult:
        """A POST refused for its key: counted, logged, answered 401 once the failure throttle's
        delay for *peer* has passed."""
        delay = self.throttle.failure(peer, time.monotonic())
        self.metrics.refusals.labels(ErrorKind.UNAUTHORIZED.value).inc()
        log.warning("refused %s to %s: %s", what, peer, detail)
        return 401, {"error": ErrorKind.UNAUTHORIZED.value, "detail": detail}, extra, delay

    def token_request(self, target: str, headers: dict[str, str], body: bytes, peer: str) -> PostResult:
        """``POST /startAudioToVideoSession``: JSON with ``apiKey`` and first-message fields ->
        ``{"session_token": ...}`` (status, JSON body, extra headers, seconds to wait first)."""
        extra = self.cors_headers(headers)
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
                return self.unauthorized_post(peer, "a session token", "apiKey is missing or not valid", extra)
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

    def cors_headers(self, headers: dict[str, str] | Headers) -> dict[str, str]:
        """Lets a page on an --allowed-origin read the token it asked for."""
        origin = headers.get("origin") if isinstance(headers, dict) else headers.get("Origin")
        if origin and auth.origin_listed(origin, self.config.allowed_origins):
            return {"Access-Control-Allow-Origin": origin.strip(), "Vary": "Origin"}
        return {}

    def preflight(self, connection: ServerConnection, headers: Headers) -> Response:
        extra = self.cors_headers(headers)
        if not extra:
            return connection.respond(http.HTTPStatus.FORBIDDEN, "this origin may not ask for session tokens\n")
        response = connection.respond(http.HTTPStatus.NO_CONTENT, "")
        for name, value in {**extra, "Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "Content-Type, Authorization", "Access-Control-Max-Age": "600"}.items():
            response.headers[name] = value
        return response

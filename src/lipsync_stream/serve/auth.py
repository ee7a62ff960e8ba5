"""Who may use the server: API keys, single-use session tokens, origins, and slowing guessers down.

Sans-I/O: the server asks these objects questions and carries out the answers; time is passed in.

- **Keys file** (``--api-keys FILE``, written by ``lipsync-stream keys``): one line per key,
  ``NAME:SHA256HEX`` or ``NAME:SHA256HEX:SESSIONS:SECONDS`` (per-key limits: sessions open at once,
  seconds per session; 0 = none). Only the key's SHA-256 is stored; the key itself is shown once,
  when it is made. The server re-reads the file when it changes.
- **Session tokens**: ``POST /startAudioToVideoSession`` trades a key for a token that carries the
  session's first-message fields, signed with HMAC-SHA256, valid for 60 s and for one session: a
  browser can start a session without ever holding a key.
- **Origins**: a websocket upgrade that carries an ``Origin`` header (a browser) is accepted only
  from the server's own page or an allowed origin (cross-site websocket hijacking).
- **Throttle**: after a few failures from one address, each further answer to it is delayed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import shutil
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..wire.protocol import MAX_TOKEN_CHARS

KEY_PREFIX = "lsk_"
TOKEN_TTL = 60.0  # seconds to start the session
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: query-string parameters that would carry a secret into access logs: refused outright
SECRET_QUERY_NAMES = frozenset({"apikey", "api_key", "api-key", "key", "token", "session_token", "access_token", "auth", "authorization"})


class KeyFileError(Exception):
    """The keys file cannot be read or written; the message says where and why."""


class TokenError(Exception):
    """A session token that cannot be used: malformed, forged, expired or already used."""


@dataclass(frozen=True)
class ApiKey:
    """One key's record: its name, the SHA-256 of the key, its limits (None: no limit)."""

    name: str
    digest: bytes
    max_sessions: int | None = None
    max_session_seconds: float | None = None

    def line(self) -> str:
        limits = "" if self.max_sessions is None and self.max_session_seconds is None else f":{self.max_sessions or 0}:{self.max_session_seconds or 0:g}"
        return f"{self.name}:{self.digest.hex()}{limits}"


def digest_of(key: str) -> bytes:
    """The SHA-256 of a key, the only form a keys file holds."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_keys(text: str, source: str = "keys file") -> list[ApiKey]:
    """The records of a keys file; an error names the line."""
    keys: list[ApiKey] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        where = f"{source}, line {number}"
        if len(parts) not in (2, 4):
            raise KeyFileError(f"{where}: expected NAME:SHA256HEX or NAME:SHA256HEX:SESSIONS:SECONDS")
        name, hexdigest = parts[0], parts[1].lower()
        if not NAME_RE.match(name):
            raise KeyFileError(f"{where}: key name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise KeyFileError(f"{where}: the key's SHA-256 must be 64 hex digits")
        sessions: int | None = None
        seconds: float | None = None
        if len(parts) == 4:
            try:
                sessions, seconds = int(parts[2]), float(parts[3])
            except ValueError:
                raise KeyFileError(f"{where}: SESSIONS must be an integer and SECONDS a number") from None
            if sessions < 0 or not 0 <= seconds < float("inf"):
                raise KeyFileError(f"{where}: limits must not be negative")
        if any(k.name == name for k in keys):
            raise KeyFileError(f"{where}: the name {name!r} is used twice")
        keys.append(ApiKey(name, bytes.fromhex(hexdigest), sessions or None, seconds or None))
    return keys


def read_keys(path: Path) -> list[ApiKey]:
    """The keys of a keys file; a malformed line is an error naming its line number."""
    try:
        return parse_keys(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace the file atomically, readable by its owner only (it holds no keys, but their names)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# lipsync-stream API keys: NAME:SHA256HEX[:SESSIONS:SECONDS] (see `lipsync-stream keys`)\n")
            f.writelines(k.line() + "\n" for k in keys)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {path}: {exc}") from None


def add_key(path: Path, name: str, max_sessions: int | None = None, max_session_seconds: float | None = None) -> str:
    """Make a new random key named *name*, store its hash in *path*, and return the key itself."""
    if not NAME_RE.match(name):
        raise KeyFileError(f"key name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    keys = read_keys(path)
    if any(k.name == name for k in keys):
        raise KeyFileError(f"{path} already has a key named {name!r}; remove it first")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    write_keys(path, [*keys, ApiKey(name, digest_of(key), max_sessions or None, max_session_seconds or None)])
    return key


def remove_key(path: Path, name: str) -> bool:
    """Remove the key called *name* from a keys file; False when there was none."""
    keys = read_keys(path)
    kept = [k for k in keys if k.name != name]
    if len(kept) == len(keys):
        return False
    write_keys(path, kept)
    return True


class KeyRing:
    """The keys a server accepts, re-read whenever the file changes (``keys add`` needs no restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._keys: list[ApiKey] = []
        self._reload()

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise KeyFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            self._keys = read_keys(self.path)
            self._stamp = stamp

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, key: str) -> ApiKey | None:
        """The record of *key*, or None. Every record is compared, in constant time."""
        try:
            self._reload()
        except KeyFileError:
            pass  # keep the keys last read: a file being rewritten must not lock everyone out
        digest = digest_of(key)
        found = None
        for record in self._keys:
            if hmac.compare_digest(record.digest, digest):
                found = record
        return found

    def named(self, name: str) -> ApiKey | None:
        """The current record of the key called *name* (None once removed)."""
        try:
            self._reload()
        except KeyFileError:
            pass
        return next((k for k in self._keys if k.name == name), None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Short-lived, single-use, signed session tokens.

    A token is ``base64url(payload) "." base64url(HMAC-SHA256(secret, payload))``; the payload holds
    a random id, the key's name, the expiry and the session's first-message fields. Single use:
    redeeming claims the id by creating a file named after it (``O_EXCL``) under *used_dir*, which
    every worker process of a server shares (give them the same *secret* too).
    """

    def __init__(self, secret: bytes, used_dir: Path, ttl: float = TOKEN_TTL) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret must have at least 16 bytes")
        self._secret = secret
        self.used_dir = used_dir
        self.ttl = ttl

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def issue(self, key_name: str, fields: dict[str, Any], now: float | None = None) -> str:
        """A token for a session with these first-message *fields*; :class:`TokenError` when the
        token would be longer than a first message may carry (:data:`MAX_TOKEN_CHARS`)."""
        now = time.time() if now is None else now
        payload = json.dumps({"id": secrets.token_hex(16), "key": key_name, "exp": now + self.ttl, "fields": fields}, separators=(",", ":")).encode()
        token = f"{_b64(payload)}.{_b64(self._sign(payload))}"
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError(f"these session fields make a token of {len(token)} characters, and a first message carries at most {MAX_TOKEN_CHARS}: shorten video_reference_url or face_det_results")
        return token

    def redeem(self, token: str, now: float | None = None) -> tuple[str, dict[str, Any]]:
        """(key name, first-message fields) of a valid token, which is then used up."""
        now = time.time() if now is None else now
        try:
            body, signature = token.split(".")
            payload = _unb64(body)
            good = hmac.compare_digest(_unb64(signature), self._sign(payload))
        except (ValueError, UnicodeError):
            raise TokenError("the session token is malformed") from None
        if not good:
            raise TokenError("the session token's signature does not match (not issued by this server, or altered)")
        claims = json.loads(payload)
        expires = float(claims["exp"])
        if now > expires:
            raise TokenError(f"the session token has expired (a session must start within {self.ttl:g} s of POST /startAudioToVideoSession)")
        self._claim(str(claims["id"]), expires, now)
        return str(claims["key"]), dict(claims["fields"])

    def _claim(self, token_id: str, expires: float, now: float) -> None:
        """Claim the id by creating its file (``O_EXCL``) in the folder of its expiry's period
        (*ttl* seconds); folders whose tokens have all expired are removed whole. Each redeem
        lists only those few folders, never the used ids: a constant cost however many there are."""
        if not re.fullmatch(r"[0-9a-f]{32}", token_id):
            raise TokenError("the session token is malformed")
        folder = self.used_dir / str(int(expires // self.ttl))
        for _attempt in range(2):
            try:
                os.close(os.open(folder / token_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:
                raise TokenError("the session token was already used; ask for a new one for each session") from None
            except FileNotFoundError:  # the period's first token (or another worker just swept)
                folder.mkdir(parents=True, exist_ok=True)
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        current = int(now // self.ttl)
        for entry in self.used_dir.iterdir():
            if entry.name.isdigit() and int(entry.name) >= current:
                continue
            if entry.is_dir():  # every token of that period expired before now
                shutil.rmtree(entry, ignore_errors=True)
            else:  # a used id in the layout before periods
                entry.unlink(missing_ok=True)


class FailureThrottle:
    """Slows down repeated failures from one address.

    After *free* failures within *window* seconds, each answer to that address waits 0.25 s,
    doubling with every further failure, up to *max_delay*. At most *max_addresses* are
    remembered (the oldest are forgotten), so a flood of addresses costs bounded memory.
    """

    def __init__(self, free: int = 5, window: float = 60.0, max_delay: float = 5.0, max_addresses: int = 10_000) -> None:
        self.free, self.window, self.max_delay, self.max_addresses = free, window, max_delay, max_addresses
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, []) if t > now - self.window]
        if times:
            self._failures[address] = times
            self._failures.move_to_end(address)
        else:
            self._failures.pop(address, None)
        return times

    def delay(self, address: str, now: float) -> float:
        """How long to wait before answering *address*'s next failed attempt."""
        excess = len(self._recent(address, now)) - self.free
        return 0.0 if excess < 0 else min(self.max_delay, 0.25 * 2.0 ** min(excess, 64))

    def failed(self, address: str, now: float) -> None:
        # Past free + 64 failures the delay is at its cap: older ones need not be kept.
        self._failures[address] = [*self._recent(address, now)[-(self.free + 64) :], now]
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def failure(self, address: str, now: float) -> float:
        """Count a failed attempt from *address*; returns how long to wait before answering it."""
        wait = self.delay(address, now)
        self.failed(address, now)
        return wait


def normal_origin(origin: str) -> str:
    """An origin as browsers send it (scheme://host[:port], lower case, no default port)."""
    return origin.strip().rstrip("/").lower()


def origin_listed(origin: str, allowed: Collection[str]) -> bool:
    """Whether *origin* is one of *allowed* (``--allowed-origin``), spelled in any case."""
    return normal_origin(origin) in {normal_origin(a) for a in allowed}


def origin_allowed(origin: str, host: str | None, allowed: Collection[str]) -> bool:
    """Whether a browser page from *origin* may open a websocket to this server.

    Its own page (the origin's host and port are the ``Host`` the request was sent to, whatever
    the scheme: a TLS-terminating balancer in front changes it) or an allowed origin.
    """
    if origin_listed(origin, allowed):
        return True
    origin = normal_origin(origin)
    try:
        netloc = urllib.parse.urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc == (host or "").strip().lower()


def is_loopback(host: str) -> bool:
    """Whether a server bound to *host* can only be reached from this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def host_allowed(host_header: str | None, loopback: bool, allowed: Collection[str]) -> bool:
    """Whether a request's ``Host`` may be served (DNS rebinding).

    A page on a name the attacker controls can point that name at 127.0.0.1 and then talk to
    a loopback server as if it were its own origin; only the ``Host`` header still shows the
    name. So a *loopback* server answers loopback names only: ``localhost``, ``*.localhost``,
    loopback addresses, and the *allowed* names (``--allowed-host``). Any other server checks
    names only when *allowed* is given (then: those names and any IP address, which no DNS
    answer can rebind). No ``Host`` at all (HTTP/1.0) is no browser's request, and passes.
    """
    if host_header is None:
        return True
    try:
        name = urllib.parse.urlsplit("//" + host_header.strip()).hostname or ""
    except ValueError:
        return False
    if name in {a.strip().lower() for a in allowed}:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if loopback:
        return name == "localhost" or name.endswith(".localhost") or (address is not None and address.is_loopback)
    return not allowed or address is not None


def secret_in_query(path: str) -> str | None:
    """The name of a query parameter that looks like a key or token, if the URL has one."""
    query = urllib.parse.urlsplit(path).query
    for name, _value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name.lower() in SECRET_QUERY_NAMES:
            return name
    return None


def bearer(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header (None when there is no such header)."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""

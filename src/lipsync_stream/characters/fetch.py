"""Turn a character reference from a first message into a local file.

Accepted: ``http(s)://`` URLs (downloaded into an on-disk cache with size and time limits),
``file://`` URLs and plain paths, which must lie inside one of the server's asset roots (a
relative path is looked up in each root in turn; ``..`` cannot escape a root). Anything else is
refused with a :class:`FetchError` that says why.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..logsafe import shown

log = logging.getLogger(__name__)


class FetchError(Exception):
    """A reference that cannot be turned into a usable local file."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# IPv6 ranges that carry an IPv4 address: such an address is judged by the one it carries.
_V4_IN_LOW_32 = [
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated, still routed by some stacks)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64, well-known prefix
]
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # NAT64, local-use prefix (RFC 8215)


def _bits(n: int, first: int, last: int) -> int:
    """Bits *first*..*last* (inclusive, 0 = most significant) of a 128-bit number."""
    return (n >> (127 - last)) & ((1 << (last - first + 1)) - 1)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address *ip* carries by a standard embedding (none for a plain IPv6 address).

    IPv4-mapped, -compatible and -translated, NAT64 (RFC 6052: for the local-use prefix, every
    position its prefix lengths allow), 6to4 and Teredo (server and client).
    """
    n = int(ip)
    found: list[int] = []
    if any(ip in net for net in _V4_IN_LOW_32):
        found.append(_bits(n, 96, 127))
    if ip in _NAT64_LOCAL:
        found += [
            _bits(n, 48, 63) << 16 | _bits(n, 72, 87),  # /48
            _bits(n, 56, 63) << 24 | _bits(n, 72, 95),  # /56
            _bits(n, 72, 103),  # /64
            _bits(n, 96, 127),  # /96
        ]
    out = [ipaddress.IPv4Address(v) for v in found]
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out += list(ip.teredo)
    return out


def address_allowed(ip: Address) -> bool:
    """Whether a download may connect to *ip*: a global unicast address, whatever its spelling."""
    if isinstance(ip, ipaddress.IPv6Address):
        carried = embedded_ipv4(ip)
        if carried:
            return all(address_allowed(v4) for v4 in carried)
    return ip.is_global and not ip.is_multicast


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses *host* resolves to (for TCP), scope ids dropped."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def default_cache_dir() -> Path:
    """``$LIPSYNC_STREAM_CACHE``, else ``lipsync-stream`` in ``$XDG_CACHE_HOME`` (``~/.cache``)."""
    env = os.environ.get("LIPSYNC_STREAM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lipsync-stream"


@dataclass
class FetchConfig:
    """Where characters may come from and how much of them: URL rules, size and time limits, the cache."""
    asset_roots: list[Path] = field(default_factory=list)
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_download_bytes: int = 512 * 1024 * 1024
    download_timeout: float = 60.0  # whole download, seconds
    cache_ttl: float = 24 * 3600.0  # a cached download older than this is fetched again
    cache_max_bytes: int = 4 * 1024 * 1024 * 1024  # oldest downloads are evicted past this
    allow_private_urls: bool = False  # loopback, link-local and private addresses (SSRF guard)
    max_redirects: int = 5


class Fetcher:
    """Resolves references to local paths; safe to call from several threads.

    *resolver* turns a host name into addresses (tests give one that never asks DNS).
    """

    def __init__(self, config: FetchConfig | None = None, resolver: Resolver = system_resolver) -> None:
        self.config = config or FetchConfig()
        self.resolver = resolver
        self.roots = [Path(r).resolve() for r in self.config.asset_roots]
        self.downloads = self.config.cache_dir / "downloads"

    def resolve(self, ref: str) -> Path:
        """A local file for *ref*, downloading it if it is a URL."""
        parsed = urllib.parse.urlsplit(ref)
        scheme = parsed.scheme.lower()
        if scheme in ("http", "https"):
            return self._download(ref)
        if scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise FetchError(f"file URL '{shown(ref)}' names a remote host; only local files are served")
            return self._local(urllib.parse.unquote(parsed.path))
        if scheme and len(scheme) > 1:  # one letter would be a Windows drive
            raise FetchError(f"unsupported URL scheme '{shown(scheme)}' in '{shown(ref)}'; use http(s)://, file:// or a path under an asset root")
        return self._local(ref)

    # -- local paths ------------------------------------------------------------------------------

    def _local(self, raw: str) -> Path:
        try:
            return self._local_path(raw)
        except RuntimeError:  # Python 3.11's Path.resolve: "Symlink loop from ..."
            raise FetchError(f"path '{shown(raw)}' leads into a loop of symbolic links") from None
        except ValueError as exc:  # an embedded NUL, say
            raise FetchError(f"path '{shown(raw)}' cannot be a file name: {exc}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FetchError(f"path '{shown(raw)}' leads into a loop of symbolic links") from None
            raise FetchError(f"path '{shown(raw)}' cannot be used: {exc.strerror or exc}") from None

    def _local_path(self, raw: str) -> Path:
        if not self.roots:
            raise FetchError(f"local path '{shown(raw)}' refused: the server has no asset root (start it with --asset-root DIR)")
        # Never expanduser(): '~name/' would tell a client which accounts exist by its error.
        candidate = Path(raw)
        tries = [candidate] if candidate.is_absolute() else [root / candidate for root in self.roots]
        for path in tries:
            resolved = path.resolve()
            if not any(resolved.is_relative_to(root) for root in self.roots):
                continue
            if resolved.is_file():
                return resolved
        if candidate.is_absolute() and not any(candidate.resolve().is_relative_to(r) for r in self.roots):
            raise FetchError(f"path '{shown(raw)}' is outside the server's asset roots")
        if any(part == ".." for part in candidate.parts):
            raise FetchError(f"path '{shown(raw)}' escapes the server's asset roots")
        raise FetchError(f"no file '{shown(raw)}' under the asset roots")

    # -- downloads --------------------------------------------------------------------------------

    def cache_path(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
        suffix = suffix if suffix.isascii() and 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""
        return self.downloads / f"{digest}{suffix}"

    def check_url(self, url: str) -> str | None:
        """Refuse URLs whose host resolves to loopback, link-local, private or reserved addresses.

        A client must not make the server fetch from its own network (SSRF), unless the server
        was started with ``--allow-private-urls``. Every redirect hop is checked again. Returns
        the checked address, which the request then connects to (so a second DNS answer cannot
        point elsewhere), or None when private addresses are allowed.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError as exc:
            raise FetchError(f"URL '{shown(url)}' is not valid: {exc}") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise FetchError(f"redirect to unsupported URL '{shown(url)}'")
        host = parts.hostname
        if not host:
            raise FetchError(f"URL '{shown(url)}' has no host")
        if self.config.allow_private_urls:
            return None
        try:
            addresses = [ipaddress.ip_address(a) for a in self.resolver(host, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise FetchError(f"cannot resolve host '{shown(host)}': {exc}") from None
        for ip in addresses:
            if not self.address_allowed(ip):
                raise FetchError(f"URL '{shown(url)}' points at {ip}, a loopback, private or reserved address; refused (the server's operator can allow such addresses)")
        return str(addresses[0]) if addresses else None

    @staticmethod
    def address_allowed(ip: Address) -> bool:
        return address_allowed(ip)

    def _download(self, url: str) -> Path:
        target = self.cache_path(url)
        if target.is_file() and time.time() - target.stat().st_mtime < self.config.cache_ttl:
            os.utime(target, (time.time(), target.stat().st_mtime))  # access time drives eviction
            log.info("cache hit for %s", shown(url))
            return target
        self.downloads.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{time.monotonic_ns()}.part")
        cap, deadline = self.config.max_download_bytes, time.monotonic() + self.config.download_timeout
        log.info("downloading %s", shown(url))
        size = 0
        try:
            timeout = httpx.Timeout(min(30.0, self.config.download_timeout))
            with httpx.Client(follow_redirects=False, timeout=timeout) as client:
                current = url
                for _hop in range(self.config.max_redirects + 1):
                    address = self.check_url(current)
                    request_url, headers, extensions = current, {}, {}
                    if address is not None:  # connect to the address that was checked
                        parts = urllib.parse.urlsplit(current)
                        literal = f"[{address}]" if ":" in address else address
                        netloc = literal + (f":{parts.port}" if parts.port else "")
                        request_url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
                        headers = {"Host": parts.netloc.rsplit("@", 1)[-1]}
                        extensions = {"sni_hostname": parts.hostname}
                    with client.stream("GET", request_url, headers=headers, extensions=extensions) as response:
                        if response.is_redirect:
                            location = response.headers.get("location", "")
                            current = urllib.parse.urljoin(current, location)
                            continue
                        if response.status_code != 200:
                            raise FetchError(f"GET {shown(current)} answered HTTP {response.status_code}")
                        declared = response.headers.get("content-length")
                        if declared and declared.isdigit() and int(declared) > cap:
                            raise FetchError(f"{shown(url)} is {int(declared)} bytes, more than the {cap} allowed")
                        with open(tmp, "wb") as out:
                            for chunk in response.iter_bytes(1 << 16):
                                size += len(chunk)
                                if size > cap:
                                    raise FetchError(f"{shown(url)} is larger than the {cap} bytes allowed")
                                if time.monotonic() > deadline:
                                    raise FetchError(f"downloading {shown(url)} took longer than {self.config.download_timeout:.0f} s")
                                out.write(chunk)
                        break
                else:
                    raise FetchError(f"{shown(url)} redirected more than {self.config.max_redirects} times")
            tmp.replace(target)
        except httpx.HTTPError as exc:
            raise FetchError(f"cannot fetch {shown(url)}: {type(exc).__name__}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        log.info("downloaded %s (%d bytes)", shown(url), size)
        self._evict()
        return target

    def _evict(self) -> None:
        """Keep the download cache under its size cap, least recently used first."""
        evict_least_recently_used(self.downloads, "*", self.config.cache_max_bytes, "download cache")


def evict_least_recently_used(directory: Path, pattern: str, max_bytes: int, what: str, companions: tuple[str, ...] = ()) -> None:
    """Delete the least recently used files matching *pattern* in *directory* past *max_bytes*.

    Use is the access time (callers touch a file when they use it). Temporary files (``*.part``,
    ``*.tmp*``) are left to their writers. A file's *companions* (suffixes replacing the
    pattern's suffix) go with it. A file that a process has mapped stays readable to it after
    deletion, so eviction never breaks a session.
    """
    try:
        files = [(p.stat().st_atime, p.stat().st_size, p) for p in directory.glob(pattern) if p.is_file() and not p.name.endswith(".part") and ".tmp" not in p.name]
    except FileNotFoundError:
        return
    total = sum(size for _, size, _ in files)
    suffix = pattern.lstrip("*")
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        for other in companions:
            path.with_name(path.name.removesuffix(suffix) + other).unlink(missing_ok=True)
        total -= size
        log.info("evicted %s from the %s", path.name, what)

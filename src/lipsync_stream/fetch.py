"""Turn a character reference from a first message into a local file.

Accepted: ``http(s)://`` URLs (downloaded into an on-disk cache with size and time limits),
``file://`` URLs and plain paths, which must lie inside one of the server's asset roots (a
relative path is looked up in each root in turn; ``..`` cannot escape a root). Anything else is
refused with a :class:`FetchError` that says why.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


class FetchError(Exception):
    """A reference that cannot be turned into a usable local file."""


def default_cache_dir() -> Path:
    env = os.environ.get("LIPSYNC_STREAM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lipsync-stream"


@dataclass
class FetchConfig:
    asset_roots: list[Path] = field(default_factory=list)
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_download_bytes: int = 512 * 1024 * 1024
    download_timeout: float = 60.0  # whole download, seconds
    cache_ttl: float = 24 * 3600.0  # a cached download older than this is fetched again
    cache_max_bytes: int = 4 * 1024 * 1024 * 1024  # oldest downloads are evicted past this
    allow_private_urls: bool = False  # loopback, link-local and private addresses (SSRF guard)
    max_redirects: int = 5


class Fetcher:
    """Resolves references to local paths; safe to call from several threads."""

    def __init__(self, config: FetchConfig | None = None) -> None:
        self.config = config or FetchConfig()
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
                raise FetchError(f"file URL {ref!r} names a remote host; only local files are served")
            return self._local(urllib.parse.unquote(parsed.path))
        if scheme and len(scheme) > 1:  # one letter would be a Windows drive
            raise FetchError(f"unsupported URL scheme {scheme!r} in {ref!r}; use http(s)://, file:// or a path under an asset root")
        return self._local(ref)

    # -- local paths ------------------------------------------------------------------------------

    def _local(self, raw: str) -> Path:
        if not self.roots:
            raise FetchError(f"local path {raw!r} refused: the server has no asset root (start it with --asset-root DIR)")
        candidate = Path(raw).expanduser()
        tries = [candidate] if candidate.is_absolute() else [root / candidate for root in self.roots]
        for path in tries:
            resolved = path.resolve()
            if not any(resolved.is_relative_to(root) for root in self.roots):
                continue
            if resolved.is_file():
                return resolved
        if candidate.is_absolute() and not any(candidate.resolve().is_relative_to(r) for r in self.roots):
            raise FetchError(f"path {raw!r} is outside the server's asset roots")
        if any(part == ".." for part in candidate.parts):
            raise FetchError(f"path {raw!r} escapes the server's asset roots")
        raise FetchError(f"no file {raw!r} under the asset roots")

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
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise FetchError(f"redirect to unsupported URL {url!r}")
        host = parts.hostname
        if not host:
            raise FetchError(f"URL {url!r} has no host")
        if self.config.allow_private_urls:
            return None
        try:
            infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(f"cannot resolve host {host!r}: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for ip in addresses:
            if not self.address_allowed(ip):
                raise FetchError(f"URL {url!r} points at {ip}, a loopback, private or reserved address; refused (see --allow-private-urls)")
        return str(addresses[0]) if addresses else None

    @staticmethod
    def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_global and not ip.is_multicast

    def _download(self, url: str) -> Path:
        target = self.cache_path(url)
        if target.is_file() and time.time() - target.stat().st_mtime < self.config.cache_ttl:
            os.utime(target, (time.time(), target.stat().st_mtime))  # access time drives eviction
            log.info("cache hit for %s", url)
            return target
        self.downloads.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{time.monotonic_ns()}.part")
        cap, deadline = self.config.max_download_bytes, time.monotonic() + self.config.download_timeout
        log.info("downloading %s", url)
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
                            raise FetchError(f"GET {current} answered HTTP {response.status_code}")
                        declared = response.headers.get("content-length")
                        if declared and declared.isdigit() and int(declared) > cap:
                            raise FetchError(f"{url} is {int(declared)} bytes, more than the {cap} allowed")
                        with open(tmp, "wb") as out:
                            for chunk in response.iter_bytes(1 << 16):
                                size += len(chunk)
                                if size > cap:
                                    raise FetchError(f"{url} is larger than the {cap} bytes allowed")
                                if time.monotonic() > deadline:
                                    raise FetchError(f"downloading {url} took longer than {self.config.download_timeout:.0f} s")
                                out.write(chunk)
                        break
                else:
                    raise FetchError(f"{url} redirected more than {self.config.max_redirects} times")
            tmp.replace(target)
        except httpx.HTTPError as exc:
            raise FetchError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        log.info("downloaded %s (%d bytes)", url, size)
        self._evict()
        return target

    def _evict(self) -> None:
        """Keep the download cache under its size cap, least recently used first."""
        try:
            files = [(p.stat().st_atime, p.stat().st_size, p) for p in self.downloads.iterdir() if p.is_file() and not p.name.endswith(".part")]
        except FileNotFoundError:
            return
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.config.cache_max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            log.info("evicted %s from the download cache", path.name)

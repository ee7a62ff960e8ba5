"""Turn a character reference from a first message into a local file.

Accepted: ``http(s)://`` URLs (downloaded into an on-disk cache with size and time limits),
``file://`` URLs and plain paths, which must lie inside one of the server's asset roots (a
relative path is looked up in each root in turn; ``..`` cannot escape a root). Anything else is
refused with a :class:`FetchError` that says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
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
        try:
            timeout = httpx.Timeout(min(30.0, self.config.download_timeout))
            with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
                if response.status_code != 200:
                    raise FetchError(f"GET {url} answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    raise FetchError(f"{url} is {int(declared)} bytes, more than the {cap} allowed")
                size = 0
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes(1 << 16):
                        size += len(chunk)
                        if size > cap:
                            raise FetchError(f"{url} is larger than the {cap} bytes allowed")
                        if time.monotonic() > deadline:
                            raise FetchError(f"downloading {url} took longer than {self.config.download_timeout:.0f} s")
                        out.write(chunk)
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

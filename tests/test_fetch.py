"""Resolving character references: asset roots, file:// URLs, HTTP downloads and their cache."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_stream.fetch import FetchConfig, Fetcher, FetchError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "chars").mkdir(parents=True)
    (r / "chars" / "a.mp4").write_bytes(b"video")
    (tmp_path / "secret.txt").write_text("secret")
    return r


def test_paths_resolve_only_inside_asset_roots(root: Path, tmp_path: Path) -> None:
    f = Fetcher(FetchConfig(asset_roots=[root], cache_dir=tmp_path / "c"))
    assert f.resolve("chars/a.mp4") == (root / "chars/a.mp4").resolve()
    assert f.resolve(str(root / "chars/a.mp4")) == (root / "chars/a.mp4").resolve()
    assert f.resolve((root / "chars/a.mp4").as_uri()) == (root / "chars/a.mp4").resolve()
    for bad, message in [
        ("../secret.txt", "escapes"),
        ("chars/../../secret.txt", "escapes"),
        (str(tmp_path / "secret.txt"), "outside"),
        ((tmp_path / "secret.txt").as_uri(), "outside"),
        ("chars/none.mp4", "no file"),
        ("file://evil.example/x.mp4", "remote host"),
        ("gopher://x/y", "scheme"),
    ]:
        with pytest.raises(FetchError, match=message):
            f.resolve(bad)


def test_symlink_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(FetchError):
        Fetcher(FetchConfig(asset_roots=[root], cache_dir=tmp_path / "c")).resolve("link.txt")


def test_no_asset_root_means_no_local_files(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="--asset-root"):
        Fetcher(FetchConfig(cache_dir=tmp_path)).resolve("a.mp4")


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        _Handler.hits.append(self.path)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    site = tmp_path / "site"
    site.mkdir()
    _Handler.hits = []
    handler = lambda *a, **kw: _Handler(*a, directory=str(site), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", site
    httpd.shutdown()


def test_download_is_cached_on_disk(web: tuple[str, Path], tmp_path: Path) -> None:
    base, site = web
    (site / "c.mp4").write_bytes(b"x" * 1000)
    f = Fetcher(FetchConfig(cache_dir=tmp_path / "cache", allow_private_urls=True))
    first = f.resolve(f"{base}/c.mp4")
    assert first.read_bytes() == b"x" * 1000 and first.suffix == ".mp4"
    again = Fetcher(FetchConfig(cache_dir=tmp_path / "cache", allow_private_urls=True)).resolve(f"{base}/c.mp4")  # a new process, same cache
    assert again == first and _Handler.hits == ["/c.mp4"]


def test_stale_cache_entries_are_fetched_again(web: tuple[str, Path], tmp_path: Path) -> None:
    base, site = web
    (site / "c.mp4").write_bytes(b"old")
    f = Fetcher(FetchConfig(cache_dir=tmp_path / "cache", cache_ttl=0.0, allow_private_urls=True))
    f.resolve(f"{base}/c.mp4")
    (site / "c.mp4").write_bytes(b"new")
    assert f.resolve(f"{base}/c.mp4").read_bytes() == b"new" and len(_Handler.hits) == 2


def test_download_limits_and_errors(web: tuple[str, Path], tmp_path: Path) -> None:
    base, site = web
    (site / "big.mp4").write_bytes(b"x" * 5000)
    f = Fetcher(FetchConfig(cache_dir=tmp_path / "cache", max_download_bytes=1000, allow_private_urls=True))
    with pytest.raises(FetchError, match="allowed"):
        f.resolve(f"{base}/big.mp4")
    with pytest.raises(FetchError, match="404"):
        f.resolve(f"{base}/missing.mp4")
    with pytest.raises(FetchError, match="cannot fetch"):
        f.resolve("http://127.0.0.1:9/x.mp4")  # nothing listens on the discard port
    assert not any((tmp_path / "cache").rglob("*.part"))


def test_cache_size_cap_evicts_least_recently_used(web: tuple[str, Path], tmp_path: Path) -> None:
    base, site = web
    for name in "abc":
        (site / f"{name}.mp4").write_bytes(b"x" * 600)
    f = Fetcher(FetchConfig(cache_dir=tmp_path / "cache", cache_max_bytes=1300, allow_private_urls=True))
    paths = [f.resolve(f"{base}/{n}.mp4") for n in "abc"]
    remaining = sorted(p.name for p in (tmp_path / "cache").rglob("*.mp4"))
    assert len(remaining) == 2 and paths[2].exists()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/x.mp4", "http://localhost/x.mp4", "http://10.1.2.3/x.mp4", "http://192.168.0.1/x.mp4", "http://169.254.169.254/latest/meta-data", "http://[::1]/x.mp4", "http://[::ffff:127.0.0.1]/x.mp4", "http://0.0.0.0/x.mp4"],
)
def test_private_addresses_are_refused_by_default(url: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="private or reserved"):
        Fetcher(FetchConfig(cache_dir=tmp_path)).resolve(url)


def test_redirects_are_checked_again(web: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, site = web
    (site / "c.mp4").write_bytes(b"x")
    f = Fetcher(FetchConfig(cache_dir=tmp_path / "cache"))
    # Pretend 127.0.0.1 is a public address; [::1] stays private.
    monkeypatch.setattr(Fetcher, "address_allowed", staticmethod(lambda ip: str(ip) == "127.0.0.1"))
    assert f.resolve(f"{base}/redirect?to=/c.mp4").read_bytes() == b"x"  # a redirect to an allowed host is followed
    port = base.rsplit(":", 1)[1]
    with pytest.raises(FetchError, match="private or reserved"):
        f.resolve(f"{base}/redirect?to=http://[::1]:{port}/c.mp4")
    with pytest.raises(FetchError, match="redirected more than"):
        Fetcher(FetchConfig(cache_dir=tmp_path / "c2", max_redirects=2)).resolve(f"{base}/redirect?to=/redirect?to=/redirect?to=/c.mp4")

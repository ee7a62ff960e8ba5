"""Resolving character references: asset roots, file:// URLs, HTTP downloads and their cache."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_stream.characters.fetch import FetchConfig, Fetcher, FetchError


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


@pytest.mark.parametrize(
    "address",
    [
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::127.0.0.1",
        "::ffff:7f00:1",  # IPv4-mapped, every spelling
        "::ffff:127.0.0.1",
        "0:0:0:0:0:ffff:7f00:1",
        "::ffff:0:7f00:1",  # IPv4-translated
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of the cloud metadata address
        "64:ff9b::7f00:1",  # NAT64 well-known prefix
        "64:ff9b::a00:1",  # ... of 10.0.0.1
        "64:ff9b:1:7f00:0:1::",  # NAT64 local-use prefix, /48 layout
        "64:ff9b:1::7f00:1",  # ... /96 layout
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "2001:0:a00:1:8000:63bf:f7f7:f7f7",  # Teredo, server 10.0.0.1
        "::1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
    ],
)
def test_every_spelling_of_a_private_address_is_refused(address: str) -> None:
    assert not Fetcher.address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "2002:5db8:d822::1", "64:ff9b::5db8:d822", "::ffff:93.184.216.34"])
def test_public_addresses_are_allowed_in_any_spelling(address: str) -> None:
    assert Fetcher.address_allowed(ipaddress.ip_address(address))


def test_urls_are_judged_by_what_their_host_resolves_to(tmp_path: Path) -> None:
    # The resolver stands in for DNS: nothing leaves this machine.
    f = Fetcher(FetchConfig(cache_dir=tmp_path), resolver=lambda host, port: ["2002:7f00:1::1"])
    with pytest.raises(FetchError, match="private or reserved"):
        f.resolve("http://innocent.example/a.mp4")
    with pytest.raises(FetchError, match="not valid.*out of range"):
        f.resolve("http://innocent.example:99999/a.mp4")


def test_odd_paths_are_fetch_errors_that_name_the_path(root: Path, tmp_path: Path) -> None:
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    (root / "a.mp4").symlink_to(root / "b.mp4")
    (root / "b.mp4").symlink_to(root / "a.mp4")
    f = Fetcher(FetchConfig(asset_roots=[root], cache_dir=tmp_path / "c"))
    for bad, message in [
        ("loop.mp4", "loop of symbolic links"),
        ("a.mp4", "loop of symbolic links"),
        ("x\0y.mp4", "cannot be a file name"),
        ("x" * 256 + ".mp4", "cannot be used: File name too long|no file"),
        ("chars/a.mp4/x", "no file"),
    ]:
        with pytest.raises(FetchError, match=message) as info:
            f.resolve(bad)
        assert "\0" not in str(info.value) and len(str(info.value)) < 400

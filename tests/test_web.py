"""The browser page at ``GET /``, driven in Debian's headless Chromium by Playwright."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from lipsync_stream.auth import add_key
from lipsync_stream.faces import FaceDetector
from lipsync_stream.fetch import FetchConfig
from lipsync_stream.server import ServerConfig, ServerThread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (installed by .ci/run)")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
]


def detect_one(image: np.ndarray) -> tuple[int, int, int, int] | None:
    with FaceDetector() as detector:
        return detector.detect(image)



@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cache = tmp_path_factory.mktemp("cache")
    config = ServerConfig(port=0)
    config.fetch = FetchConfig(cache_dir=cache)
    with ServerThread(config) as server:
        yield server.url.replace("ws://", "http://").rsplit("/", 1)[0]


def test_page_and_its_files_are_served(base_url: str) -> None:
    page = httpx.get(base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "app.js" in page.text
    assert httpx.get(base_url + "/app.js").headers["content-type"].startswith("text/javascript")
    sample = httpx.get(base_url + "/sample.flac")
    assert sample.status_code == 200 and sample.content[:4] == b"fLaC"
    assert httpx.get(base_url + "/LipsyncStream").status_code == 426
    assert httpx.get(base_url + "/../etc/passwd").status_code == 404


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def watched_page(browser):  # type: ignore[no-untyped-def]
    """A new page, and the list its uncaught script errors go into."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


@needs_chromium
def test_demo_talks_and_moves_without_a_click(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    page, errors = watched_page(browser)
    page.goto(base_url + "/?demo=1")
    page.wait_for_function("window.lipsyncStats.framesShown > 45", timeout=30000)
    shot = page.locator("canvas").screenshot()
    image = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert detect_one(image) is not None  # a face is drawn on the canvas
    page.wait_for_function("window.lipsyncStats.done && window.lipsyncStats.framesShown >= window.lipsyncStats.framesReceived - 3", timeout=30000)
    stats = page.evaluate("({...window.lipsyncStats, skewMs: undefined})")
    assert stats["framesReceived"] == 266 and stats["error"] is None
    assert abs(stats["audioSeconds"] - 8.857) < 0.01  # every sample of the sentence came back
    assert stats["skewMsP95"] <= 50  # drawn within about a frame of their audio (rAF ticks are 16.7 ms)
    assert not errors
    page.close()


@needs_chromium
def test_server_errors_are_shown(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(base_url + "/?demo=1&character=nobody.mp4")
    page.wait_for_function("window.lipsyncStats.error !== null", timeout=30000)
    assert "character_error" in page.evaluate("window.lipsyncStats.error")
    assert "server error" in page.locator("#status").text_content()
    page.close()


@needs_chromium
def test_with_api_keys_the_page_trades_its_key_for_a_token_and_talks(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    key = add_key(keys, "web")
    config = ServerConfig(port=0, api_keys=keys)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    with ServerThread(config) as server:
        base = server.url.replace("ws://", "http://").rsplit("/", 1)[0]
        page = browser.new_page()
        page.goto(base + "/?demo=1")  # no key: refused, and the page says so
        page.wait_for_function("window.lipsyncStats.error !== null", timeout=30000)
        assert "unauthorized" in page.evaluate("window.lipsyncStats.error")
        page.close()
        page = browser.new_page()
        page.goto(base + "/?demo=1#key=" + key)  # the key stays in the fragment: never sent in a URL
        page.wait_for_function("window.lipsyncStats.framesShown > 30", timeout=30000)
        assert page.evaluate("window.lipsyncStats.error") is None
        page.close()


@needs_chromium
def test_in_a_stock_browser_the_demo_starts_at_once_and_offers_sound(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    stock_args = [a for a in CHROMIUM_ARGS if not a.startswith("--autoplay-policy")]  # sound waits for a click
    stock = browser.browser_type.launch(executable_path=CHROMIUM, args=stock_args)
    try:
        page, errors = watched_page(stock)
        page.goto(base_url + "/?demo=1")
        page.wait_for_function("window.lipsyncStats.framesShown > 30", timeout=30000)  # drawn on the wall clock
        assert page.locator("#sound").is_visible()
        assert "wall" in (page.locator("#stats").text_content() or "")
        assert not errors
    finally:
        stock.close()


def sessions_started(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("lipsync_sessions_total ")))


@needs_chromium
def test_clicking_demo_twice_opens_one_session(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    page, errors = watched_page(browser)
    page.goto(base_url + "/")
    before = sessions_started(base_url)
    page.evaluate("document.getElementById('demo').click(); document.getElementById('demo').click()")
    page.wait_for_function("window.lipsyncStats.done", timeout=60000)
    assert sessions_started(base_url) == before + 1
    assert page.evaluate("window.lipsyncStats.error") is None and not errors
    page.close()


@needs_chromium
def test_the_buttons_share_one_font(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(base_url + "/")
    sizes = page.evaluate("[...document.querySelectorAll('button, label.button')].map(e => getComputedStyle(e).fontSize + ' ' + getComputedStyle(e).fontFamily)")
    assert len(set(sizes)) == 1, sizes
    page.close()


@contextlib.contextmanager
def webrtc_page(browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra_args: tuple[str, ...] = (), **context: Any) -> Iterator[tuple[Any, str, list[str]]]:  # type: ignore[no-untyped-def]
    """A page of a Chromium that may use WebRTC on loopback (both ends offer 127.0.0.1), a server
    of its own, and the list the page's script errors go into."""
    pytest.importorskip("aiortc")
    import aioice.ice
    from webrtc_client import loopback_addresses

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_addresses)
    config = ServerConfig(port=0)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    args = [*CHROMIUM_ARGS, "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns", *extra_args]
    with ServerThread(config) as server:
        webrtc_browser = browser.browser_type.launch(executable_path=CHROMIUM, args=args)
        try:
            page = webrtc_browser.new_context(**context).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, server.url.replace("ws://", "http://").rsplit("/", 1)[0], errors
        finally:
            webrtc_browser.close()


@needs_chromium
def test_the_page_over_webrtc_shows_the_talking_character(browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """?transport=webrtc: the demo sentence goes as an audio track, the character comes back as a
    video track."""
    with webrtc_page(browser, tmp_path, monkeypatch) as (page, base, errors):
        page.goto(base + "/?demo=1&transport=webrtc")
        page.wait_for_function("window.lipsyncStats.framesShown > 60 || window.lipsyncStats.error !== null", timeout=60000)
        assert page.evaluate("window.lipsyncStats.error") is None
        page.wait_for_function("window.lipsyncStats.done", timeout=60000)
        stats = page.evaluate("window.lipsyncStats")
    assert stats["framesShown"] > 60 and not errors


@needs_chromium
def test_the_microphone_over_webrtc(browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Chromium's fake microphone (a beep) as a WebRTC audio track: frames come back; Stop ends the
    session with DONE."""
    fake_mic = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    with webrtc_page(browser, tmp_path, monkeypatch, fake_mic, permissions=["microphone"]) as (page, base, errors):
        page.goto(base + "/?transport=webrtc")
        page.click("#mic")
        page.wait_for_function("window.lipsyncStats.framesShown > 30 || window.lipsyncStats.error !== null", timeout=60000)
        assert page.evaluate("window.lipsyncStats.error") is None
        page.click("#stop")
        page.wait_for_function("window.lipsyncStats.done", timeout=30000)
    assert not errors

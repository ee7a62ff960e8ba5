"""Who may use the server: keys, session tokens, origins, throttling, TLS, secure defaults."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import wait_until_idle
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from lipsync_stream.characters.fetch import FetchConfig
from lipsync_stream.cli import main
from lipsync_stream.client import ServerError, stream_audio
from lipsync_stream.serve import auth
from lipsync_stream.serve.auth import FailureThrottle, KeyFileError, KeyRing, TokenError, TokenIssuer, add_key, parse_keys, read_keys, remove_key
from lipsync_stream.serve.runner import running_server
from lipsync_stream.serve.server import LipsyncServer
from lipsync_stream.serve.server_config import ServerConfig
from lipsync_stream.wire.protocol import SessionParams, frames_for_samples

# --- the pieces ---------------------------------------------------------------------------------


def test_keys_file_keeps_hashes_only_and_names_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    key = add_key(path, "anna", max_sessions=2, max_session_seconds=600)
    assert key.startswith("lsk_") and len(key) > 40
    text = path.read_text()
    assert key not in text and auth.digest_of(key).hex() in text
    assert path.stat().st_mode & 0o777 == 0o600
    (record,) = read_keys(path)
    assert (record.name, record.max_sessions, record.max_session_seconds) == ("anna", 2, 600.0)
    with pytest.raises(KeyFileError, match="already has a key named 'anna'"):
        add_key(path, "anna")
    assert remove_key(path, "anna") and not remove_key(path, "anna") and read_keys(path) == []
    for bad, message in [("x", "line 1: expected"), ("bad name:" + "0" * 64, "name"), ("a:1234", "64 hex"), ("a:" + "0" * 64 + ":x:1", "integer"), (f"a:{'0' * 64}\na:{'1' * 64}", "line 2.*twice")]:
        with pytest.raises(KeyFileError, match=message):
            parse_keys(bad)


def test_key_ring_verifies_and_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    first = add_key(path, "first")
    ring = KeyRing(path)
    assert ring.verify(first).name == "first"  # type: ignore[union-attr]
    assert ring.verify("lsk_wrong") is None and ring.verify("") is None
    second = add_key(path, "second")  # added while "running": no restart
    assert ring.verify(second).name == "second"  # type: ignore[union-attr]
    remove_key(path, "first")
    assert ring.verify(first) is None and ring.named("first") is None


def test_tokens_are_signed_short_lived_and_single_use(tmp_path: Path) -> None:
    issuer = TokenIssuer(b"s" * 32, tmp_path / "used", ttl=60.0)
    token = issuer.issue("anna", {"isJPG": False}, now=1000.0)
    assert issuer.redeem(token, now=1030.0) == ("anna", {"isJPG": False})
    with pytest.raises(TokenError, match="already used"):
        issuer.redeem(token, now=1031.0)
    with pytest.raises(TokenError, match="expired"):
        issuer.redeem(issuer.issue("anna", {}, now=1000.0), now=1061.0)
    other = TokenIssuer(b"t" * 32, tmp_path / "used")  # another server's secret
    with pytest.raises(TokenError, match="signature"):
        other.redeem(issuer.issue("anna", {}, now=1000.0), now=1001.0)
    body, sig = issuer.issue("anna", {}, now=1000.0).split(".")
    forged = auth._b64(auth._unb64(body).replace(b'"anna"', b'"root"')) + "." + sig
    with pytest.raises(TokenError, match="signature"):
        issuer.redeem(forged, now=1001.0)
    for junk in ["", "abc", "a.b.c", "!!!.???"]:
        with pytest.raises(TokenError, match="malformed|signature"):
            issuer.redeem(junk, now=1001.0)


def test_throttle_slows_repeated_failures_from_one_address() -> None:
    throttle = FailureThrottle(free=3, window=60.0, max_delay=2.0)
    for i in range(3):
        assert throttle.delay("10.0.0.1", 100.0 + i) == 0.0
        throttle.failed("10.0.0.1", 100.0 + i)
    assert throttle.delay("10.0.0.1", 103.0) == 0.25
    throttle.failed("10.0.0.1", 103.0)
    assert throttle.delay("10.0.0.1", 104.0) == 0.5
    assert throttle.delay("10.0.0.2", 104.0) == 0.0  # other addresses are not slowed
    assert throttle.delay("10.0.0.1", 200.0) == 0.0  # forgiven after the window
    many = FailureThrottle(max_addresses=100)
    for i in range(1000):
        many.failed(f"a{i}", 1.0)
    assert len(many._failures) == 100


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        ("http://127.0.0.1:8765", "127.0.0.1:8765", True),  # the server's own page
        ("https://avatar.example.com", "avatar.example.com", True),  # its page behind a TLS balancer
        ("https://app.example.com", "avatar.example.com", True),  # an --allowed-origin
        ("https://APP.example.com/", "avatar.example.com", True),
        ("https://evil.example", "avatar.example.com", False),
        ("null", "avatar.example.com", False),
        ("http://127.0.0.1:9999", "127.0.0.1:8765", False),
    ],
)
def test_origins(origin: str, host: str, ok: bool) -> None:
    assert auth.origin_allowed(origin, host, ["https://app.example.com"]) is ok


def test_secrets_in_query_strings_are_spotted() -> None:
    assert auth.secret_in_query("/LipsyncStream?apiKey=x") == "apiKey"
    assert auth.secret_in_query("/?TOKEN=x&a=1") == "TOKEN"
    assert auth.secret_in_query("/LipsyncStream?character=anna") is None


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
async def keyed(keys: Path, tmp_path: Path) -> AsyncIterator[tuple[LipsyncServer, str]]:
    add_key(keys, "placeholder")
    config = ServerConfig(port=0, api_keys=keys, allowed_origins=["https://app.example.com"])
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as pair:
        yield pair


def http_base(url: str) -> str:
    return url.replace("ws://", "http://").replace("wss://", "https://").rsplit("/", 1)[0]


async def token_for(url: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(http_base(url) + "/startAudioToVideoSession", json=body)


async def frames(url: str, params: SessionParams, key: str | None = None, seconds: float = 0.5) -> list:
    pcm = np.zeros(int(16000 * seconds), np.int16)
    return [f async for f in stream_audio(url, pcm, params, api_key=key)]


async def test_without_a_key_nothing_starts(keyed: tuple[LipsyncServer, str]) -> None:
    _, url = keyed
    with pytest.raises(ServerError) as info:
        await frames(url, SessionParams(realtime=False))
    assert info.value.kind == "unauthorized" and info.value.code == 1008 and "Authorization: Bearer" in info.value.detail


async def test_a_bearer_key_opens_sessions_and_counts_them(keyed: tuple[LipsyncServer, str], keys: Path) -> None:
    app, url = keyed
    key = add_key(keys, "anna")
    got = await frames(url, SessionParams(realtime=False), key, seconds=1.0)
    assert len(got) == frames_for_samples(16000)
    with pytest.raises(ServerError) as info:
        await frames(url, SessionParams(realtime=False), key + "x")
    assert info.value.kind == "unauthorized" and info.value.http_status == 401  # refused before the upgrade
    text = app.metrics.exposition().decode()
    assert 'lipsync_key_sessions_total{key="anna"} 1.0' in text and 'lipsync_key_audio_in_seconds_total{key="anna"} 1.0' in text


async def test_a_session_token_carries_the_fields_and_works_once(keyed: tuple[LipsyncServer, str], keys: Path) -> None:
    _, url = keyed
    key = add_key(keys, "browser")
    answer = await token_for(url, {"apiKey": key, "isJPG": False, "realtime": False})
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    token = answer.json()["session_token"]
    assert answer.json()["expires_in"] == 60
    got = await frames(url, SessionParams(session_token=token))  # no key on this connection
    assert len(got) == frames_for_samples(8000) and len(got[0].image) == 512 * 512 * 3  # the token's isJPG=false
    with pytest.raises(ServerError) as info:
        await frames(url, SessionParams(session_token=token))
    assert info.value.kind == "unauthorized" and "already used" in info.value.detail


async def test_expired_altered_and_refused_tokens(keyed: tuple[LipsyncServer, str], keys: Path) -> None:
    app, url = keyed
    key = add_key(keys, "k")
    app.tokens.ttl = 0.2
    token = (await token_for(url, {"apiKey": key})).json()["session_token"]
    await asyncio.sleep(0.3)
    with pytest.raises(ServerError, match="expired"):
        await frames(url, SessionParams(session_token=token))
    app.tokens.ttl = 60.0
    token = (await token_for(url, {"apiKey": key})).json()["session_token"]
    with pytest.raises(ServerError, match="signature"):
        await frames(url, SessionParams(session_token=token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")))
    remove_key(keys, "k")  # a token outlives nothing: its key removed, it is refused
    with pytest.raises(ServerError, match="removed"):
        await frames(url, SessionParams(session_token=token))
    for body in [{"apiKey": "lsk_nope"}, {}, {"apiKey": key}]:  # the removed key is refused too
        assert (await token_for(url, body)).status_code == 401


async def test_token_request_errors_are_named(keyed: tuple[LipsyncServer, str], keys: Path) -> None:
    _, url = keyed
    key = add_key(keys, "k")
    bad_field = await token_for(url, {"apiKey": key, "isJPG": "yes"})
    assert bad_field.status_code == 400 and "isJPG" in bad_field.json()["detail"]
    async with httpx.AsyncClient() as client:
        base = http_base(url)
        assert (await client.post(base + "/startAudioToVideoSession", content=b"[1,2]", headers={"Content-Type": "application/json"})).status_code == 400
        assert (await client.post(base + "/startAudioToVideoSession?apiKey=" + key, json={})).status_code == 400
        assert (await client.post(base + "/elsewhere", json={})).status_code == 404
        assert (await client.post(base + "/startAudioToVideoSession", content=b"x" * 100_000)).status_code == 413
        # a page on an allowed origin may read its token; others may not
        allowed = await client.post(base + "/startAudioToVideoSession", json={"apiKey": key}, headers={"Origin": "https://app.example.com"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        other = await client.post(base + "/startAudioToVideoSession", json={"apiKey": key}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        assert (await client.options(base + "/startAudioToVideoSession", headers={"Origin": "https://app.example.com"})).status_code == 204


async def test_repeated_failures_from_one_address_are_slowed_down(keyed: tuple[LipsyncServer, str]) -> None:
    _, url = keyed
    started = time.monotonic()
    for _ in range(5):  # the first few are answered at once
        assert (await token_for(url, {"apiKey": "lsk_guess"})).status_code == 401
    quick = time.monotonic() - started
    started = time.monotonic()
    for _ in range(3):  # then 0.25 s, 0.5 s, 1 s
        assert (await token_for(url, {"apiKey": "lsk_guess"})).status_code == 401
    assert time.monotonic() - started >= 1.7 > quick


async def test_keys_in_query_strings_are_refused_even_when_valid(keyed: tuple[LipsyncServer, str], keys: Path) -> None:
    _, url = keyed
    key = add_key(keys, "k")
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{url}?apiKey={key}"):
            pass
    assert info.value.response.status_code == 400 and b"query string" in info.value.response.body


async def test_per_key_limits(keyed: tuple[LipsyncServer, str], keys: Path) -> None:
    _, url = keyed
    key = add_key(keys, "small", max_sessions=1, max_session_seconds=1.0)
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as held:
        await held.send(json.dumps({}))
        await asyncio.sleep(0.1)
        with pytest.raises(ServerError) as info:
            await frames(url, SessionParams(realtime=False), key)
        assert info.value.kind == "limit_exceeded" and "1 sessions open" in info.value.detail
        reply = json.loads(await asyncio.wait_for(held.recv(), 5))  # one second, then closed
        assert reply["error"] == "limit_exceeded" and "maxSessionLength of 1" in reply["detail"]


async def test_browser_origins_are_checked_and_servers_unaffected(keyed: tuple[LipsyncServer, str], keys: Path) -> None:
    _, url = keyed
    key = add_key(keys, "k")
    bearer = {"Authorization": f"Bearer {key}"}
    for origin, ok in [(None, True), (http_base(url), True), ("https://app.example.com", True), ("https://evil.example", False)]:
        headers = dict(bearer, **({"Origin": origin} if origin else {}))
        try:
            async with connect(url, additional_headers=headers) as ws:
                await ws.send(json.dumps({"realtime": False}))
                await ws.send(bytes(3200))
                await ws.send("DONE")
                assert isinstance(await ws.recv(), bytes)
            assert ok, origin
        except InvalidStatus as exc:
            assert not ok and exc.response.status_code == 403, origin


async def test_open_loopback_server_still_checks_origins_and_issues_tokens(server: tuple[LipsyncServer, str]) -> None:
    _, url = server
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers={"Origin": "https://evil.example"}):
            pass
    assert info.value.response.status_code == 403
    token = (await token_for(url, {"realtime": False})).json()["session_token"]  # clients of the hosted API work too
    assert len(await frames(url, SessionParams(session_token=token))) == frames_for_samples(8000)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
async def test_tls_serves_wss_and_https_on_one_port_and_metrics_elsewhere(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    metrics_port = 0
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    config = ServerConfig(port=0, certfile=cert, keyfile=key, metrics_port=metrics_port)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    trust = ssl.create_default_context(cafile=str(cert))
    async with running_server(config) as (_app, url):
        assert url.startswith("wss://")
        async with connect(url, ssl=trust) as ws:
            await ws.send(json.dumps({"realtime": False}))
            await ws.send(bytes(3200))
            await ws.send("DONE")
            assert isinstance(await ws.recv(), bytes)
        async with httpx.AsyncClient(verify=trust) as client:
            base = http_base(url)
            assert (await client.get(base + "/healthz")).text == "ok\n"
            assert (await client.post(base + "/startAudioToVideoSession", json={})).status_code == 200
            assert (await client.get(base + "/metrics")).status_code == 404  # not on the public port
        async with httpx.AsyncClient() as client:
            metrics = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert metrics.status_code == 200 and "lipsync_frames_total" in metrics.text


def test_serve_refuses_an_exposed_address_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert main(["serve", "--host", "::", "--port", "0", "--api-keys", str(tmp_path / "missing")]) == 2
    assert main(["keys", "add", "ops", "--file", str(tmp_path / "keys")]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("lsk_") and key not in (tmp_path / "keys").read_text()
    assert main(["keys", "list", "--file", str(tmp_path / "keys")]) == 0
    assert capsys.readouterr().out.startswith("ops:")
    assert main(["keys", "remove", "nobody", "--file", str(tmp_path / "keys")]) == 1


async def test_render_takes_a_key_for_a_keyed_server(keyed: tuple[LipsyncServer, str], keys: Path, tmp_path: Path, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipsync_stream.audio import save_wav

    _, url = keyed
    save_wav(tmp_path / "in.wav", speech[:8000])
    key = add_key(keys, "render")
    loop = asyncio.get_running_loop()
    args = ["render", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.mp4"), "--server", url]
    assert await loop.run_in_executor(None, main, args) == 1  # no key: refused
    monkeypatch.setenv("LIPSYNC_STREAM_API_KEY", key)
    assert await loop.run_in_executor(None, main, args) == 0
    assert (tmp_path / "out.mp4").stat().st_size > 1000


async def test_keyless_connections_wait_apart_and_never_take_session_places(keys: Path, tmp_path: Path) -> None:
    key = add_key(keys, "k")
    config = ServerConfig(port=0, api_keys=keys, max_sessions=1, max_waiting=2)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):
        idle = [await connect(url) for _ in range(2)]  # connected, no key, no first message
        while app.waiting < 2:
            await asyncio.sleep(0.01)
        async with connect(url):  # the waiting line is full: the longest waiting makes room
            assert json.loads(await asyncio.wait_for(idle[0].recv(), 5))["error"] == "capacity"
            while app.waiting < 2:
                await asyncio.sleep(0.01)
        # the one session place is still free for a client with a key
        assert len(await frames(url, SessionParams(realtime=False), key)) == frames_for_samples(8000)
        token = (await token_for(url, {"apiKey": key, "realtime": False})).json()["session_token"]
        for ws in idle:
            await ws.close()
        assert len(await frames(url, SessionParams(session_token=token))) == frames_for_samples(8000)
        await wait_until_idle(app, 5.0)
        assert app.waiting == 0


def test_a_failure_is_counted_and_its_wait_returned_in_one_step() -> None:
    throttle = FailureThrottle(free=1)
    assert [throttle.failure("a", 1.0), throttle.failure("a", 2.0), throttle.failure("a", 3.0)] == [0.0, 0.25, 0.5]

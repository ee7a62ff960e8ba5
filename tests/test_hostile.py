"""What a hostile client tries, against servers on loopback: each test is one row of the
hardening table (docs/security.md), and each failed before its fix. The slow probes (minutes of
floods, memory over time) are in bench/hostile.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from lipsync_stream.characters.fetch import FetchConfig, Fetcher, FetchError
from lipsync_stream.serve.auth import FailureThrottle, TokenError, TokenIssuer, add_key
from lipsync_stream.serve.runner import running_server
from lipsync_stream.serve.server import DRAIN_CLOSE_GRACE, LipsyncServer
from lipsync_stream.serve.server_config import ServerConfig
from lipsync_stream.wire.connection import MAX_HEAD, MAX_POST_BODY, MAX_UNSENT
from lipsync_stream.wire.protocol import SessionParams, first_message

KEY_FIRST = json.dumps({"video_reference_url": "default", "isJPG": False, "handleSilence": True})


def configured(tmp_path: Path, **settings: object) -> ServerConfig:
    """A server on an ephemeral port whose caches (used tokens among them) are under *tmp_path*."""
    config = ServerConfig(port=0, **settings)  # type: ignore[arg-type]
    config.fetch = FetchConfig(asset_roots=[tmp_path], cache_dir=tmp_path / "cache")
    return config


@pytest.fixture
async def open_server(tmp_path: Path) -> AsyncIterator[tuple[LipsyncServer, str]]:
    async with running_server(configured(tmp_path)) as pair:
        yield pair


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def exchange(port: int, data: bytes, wait: float = 5.0, pause: float = 0.0, more: bytes = b"") -> bytes:
    """Send raw *data* (then *more* after *pause* s), read until the server closes (or *wait* s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if more:
        await asyncio.sleep(pause)
        writer.write(more)
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out += chunk
    writer.close()
    return out


def statuses(answer: bytes) -> list[int]:
    return [int(line.split(b" ")[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def request(method: str, path: str, port: int, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def upgrade(port: int, extra: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"), *extra]
    return request("GET", "/LipsyncStream", port, headers)


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client's websocket frame (mask 0: the payload as is)."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + size + b"\0\0\0\0" + payload


# --- row 1: pings as fast as possible, never reading --------------------------------------------


def non_reader(port: int) -> socket.socket:
    """A websocket whose client reads nothing after the handshake (a 4 KiB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade(port))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def ping_flood(port: int, limit_bytes: int = 2**62, seconds: float = 600.0) -> tuple[bool, int]:
    """Masked 125-byte pings as fast as the socket takes them, never reading, until *limit_bytes*
    or *seconds*: (dropped by the server, bytes sent)."""
    sock = non_reader(port)
    burst = (ws_frame(9, bytes(125))) * 512
    sent, deadline = 0, time.monotonic() + seconds
    sock.settimeout(1.0)
    try:
        while sent < limit_bytes and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                sock.sendall(burst)
                sent += len(burst)
    except OSError:
        return True, sent
    finally:
        sock.close()
    return False, sent


async def test_a_ping_flood_that_never_reads_is_dropped(open_server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture) -> None:
    _app, url = open_server
    dropped, sent = await asyncio.get_running_loop().run_in_executor(None, functools.partial(ping_flood, port_of(url), 200 * MAX_UNSENT, seconds=30.0))
    assert dropped, f"{sent} bytes of pings and still connected"
    assert any("does not read" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# --- rows 2 and 12: refused connections are forgotten; drain is bounded ---------------------------


async def test_refused_connections_are_forgotten_and_a_drain_with_nothing_running_ends_at_once(tmp_path: Path) -> None:
    config = configured(tmp_path, max_sessions=1)
    async with running_server(config) as (app, url):
        held = await connect(url)
        await held.send(KEY_FIRST)
        while app.active_sessions < 1:
            await asyncio.sleep(0.01)

        async def refused() -> str:
            async with connect(url) as ws:
                return str(json.loads(await ws.recv())["error"])

        assert await asyncio.gather(*(refused() for _ in range(40))) == ["capacity"] * 40
        await held.close()
        deadline = time.monotonic() + 5
        while app.open_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not app.open_connections
        started = time.monotonic()
        assert await app.drain(30.0) == 0
        assert time.monotonic() - started < 1.0


async def test_a_drain_drops_a_client_that_never_reads_within_its_grace(tmp_path: Path, speech: np.ndarray) -> None:
    config = configured(tmp_path, drain_timeout=0.5)
    async with running_server(config) as (app, url):
        sock = await asyncio.get_running_loop().run_in_executor(None, non_reader, port_of(url))
        _reader, writer = await asyncio.open_connection(sock=sock)

        writer.write(ws_frame(1, first_message(SessionParams(realtime=False, is_jpg=False)).encode()))
        for start in range(0, len(speech) * 2, 32000):  # raw frames, never read
            writer.write(ws_frame(2, speech.tobytes()[start : start + 32000]))
        while app.active_sessions < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
        started = time.monotonic()
        await app.drain(config.drain_timeout)
        assert time.monotonic() - started < config.drain_timeout + DRAIN_CLOSE_GRACE + 1.0
        writer.close()


# --- rows 4, 5, 13, 14: keys, tokens, characters ------------------------------------------------


def test_the_throttle_survives_thousands_of_failures_with_a_capped_delay() -> None:
    throttle = FailureThrottle()
    waits = [throttle.failure("10.0.0.1", 1.0 + i * 0.001) for i in range(5000)]
    assert max(waits) == throttle.max_delay and waits[-1] == throttle.max_delay
    assert len(throttle._failures["10.0.0.1"]) <= throttle.free + 65  # bounded memory too


async def test_sockets_that_never_speak_cannot_lock_out_a_token_holder(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    key = add_key(keys, "k")
    config = configured(tmp_path, api_keys=keys, max_sessions=2)
    async with running_server(config) as (app, url):
        silent = [await connect(url) for _ in range(70)]
        while app.waiting < app.max_waiting:
            await asyncio.sleep(0.01)
        base = url.replace("ws://", "http://").rsplit("/", 1)[0]
        async with httpx.AsyncClient() as client:
            token = (await client.post(f"{base}/startAudioToVideoSession", json={"apiKey": key, "isJPG": False})).json()["session_token"]
        async with connect(url) as ws:
            await ws.send(json.dumps({"session_token": token}))
            await ws.send(np.zeros(8000, "<i2").tobytes())
            await ws.send("DONE")
            got = [m async for m in ws]
        assert got[-1] == "DONE" and len(got) > 10
        for ws in silent:
            await ws.close()


def test_token_redemptions_cost_the_same_however_many_were_used(tmp_path: Path) -> None:
    issuer = TokenIssuer(b"s" * 32, tmp_path / "used", ttl=60.0)
    for i in range(3000):  # 50 minutes of redemptions, one a second
        now = 1_000_000.0 + i
        issuer.redeem(issuer.issue("k", {}, now=now), now=now)
    listed = list((tmp_path / "used").iterdir())
    assert len(listed) <= 2  # the live periods' folders only: a redeem lists these, not every used id
    token = issuer.issue("k", {}, now=now)
    issuer.redeem(token, now=now)
    with pytest.raises(TokenError, match="already used"):
        issuer.redeem(token, now=now)


async def test_a_token_that_could_never_be_redeemed_is_never_issued(open_server: tuple[LipsyncServer, str]) -> None:
    _app, url = open_server
    base = url.replace("ws://", "http://").rsplit("/", 1)[0]
    long_path = ("d" * 200 + "/") * 15  # 3,015 characters, each name within a file system's
    fields = {"video_reference_url": long_path + "v.mp4", "face_det_results": long_path + "r.pkl"}
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{base}/startAudioToVideoSession", json=fields)
        assert answer.status_code == 400 and "characters" in answer.json()["detail"]
        short = await client.post(f"{base}/startAudioToVideoSession", json={"video_reference_url": "default"})
    async with connect(url) as ws:  # what is issued can be redeemed
        await ws.send(json.dumps({"session_token": short.json()["session_token"]}))
        await ws.send("DONE")
        assert [m async for m in ws][-1] == "DONE"


def test_a_home_folder_in_a_character_path_reveals_no_account(tmp_path: Path) -> None:
    fetcher = Fetcher(FetchConfig(asset_roots=[tmp_path], cache_dir=tmp_path / "cache"))
    errors = []
    for user in ("root", "nosuchuser-xyz"):
        with pytest.raises(FetchError) as caught:
            fetcher.resolve(f"~{user}/a.mp4")
        errors.append(str(caught.value).replace(f"~{user}", "~USER"))
    assert errors[0] == errors[1]


# --- rows 7-11: the HTTP layer ------------------------------------------------------------------


async def test_dns_rebinding_a_foreign_host_on_a_loopback_server_is_refused(open_server: tuple[LipsyncServer, str]) -> None:
    app, url = open_server
    port = port_of(url)
    evil = [(k, v) for k, v in [("Origin", f"http://rebind.example:{port}")]]
    raw = upgrade(port, evil).replace(f"Host: 127.0.0.1:{port}".encode(), f"Host: rebind.example:{port}".encode())
    answer = await exchange(port, raw)
    assert statuses(answer) == [403] and b"loopback names" in answer
    page = await exchange(port, request("GET", "/", port).replace(b"127.0.0.1", b"rebind.example"))
    assert statuses(page) == [403]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"app.localhost:{port}"):
        ok = await exchange(port, upgrade(port).replace(f"127.0.0.1:{port}".encode(), host.encode()), wait=0.5)
        assert statuses(ok) == [101], host


async def test_an_allowed_host_is_served(tmp_path: Path) -> None:
    async with running_server(configured(tmp_path, allowed_hosts=["avatar.internal"])) as (_app, url):
        port = port_of(url)
        ok = await exchange(port, request("GET", "/healthz", port).replace(b"127.0.0.1", b"avatar.internal"))
        assert statuses(ok) == [200]


@pytest.mark.parametrize("path", ["/webrtc/offer", "/startAudioToVideoSession"])
async def test_a_cross_site_post_is_refused_and_takes_nothing(open_server: tuple[LipsyncServer, str], path: str) -> None:
    app, url = open_server
    port = port_of(url)
    body = json.dumps({"video_reference_url": "default"}).encode()
    raw = request("POST", path, port, [("Origin", "https://evil.example"), ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))], body)
    answer = await exchange(port, raw)
    assert statuses(answer) == [403] and b"evil.example" in answer
    assert app.active_sessions == 0


LONG = "1" * 5001
MALFORMED = {
    "superscript length": (b"Content-Length: \xc2\xb2\r\n", [400]),
    "5001-digit length": (f"Content-Length: {LONG}\r\n".encode(), [400]),
    "two lengths": (b"Content-Length: 2\r\nContent-Length: 3\r\n", [400]),
    "space before colon": (b"Content-Length : 2\r\n", [400]),
    "a 100 KB header": (b"X-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n", [431]),
    "10,000 headers": (b"X: a\r\n" * 10_000 + b"Content-Length: 2\r\n", [431]),
    "no length": (b"", [411]),
    "too long a body": (f"Content-Length: {MAX_POST_BODY + 1}\r\n".encode(), [413]),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_posts_get_one_answer_and_no_traceback(open_server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture, name: str) -> None:
    _app, url = open_server
    port = port_of(url)
    headers, expected = MALFORMED[name]
    raw = f"POST /startAudioToVideoSession HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode() + headers + b"\r\n{}"
    answer = await exchange(port, raw)
    assert statuses(answer) == expected, answer[:200]
    no_tracebacks(caplog)


async def test_a_body_that_comes_after_its_head_is_waited_for(open_server: tuple[LipsyncServer, str]) -> None:
    _app, url = open_server
    port = port_of(url)
    body = json.dumps({"video_reference_url": "default"}).encode()
    head = request("POST", "/startAudioToVideoSession", port, [("Content-Length", str(len(body)))])
    answer = await exchange(port, head, pause=0.2, more=body)
    assert statuses(answer) == [200] and b"session_token" in answer
    expecting = request("POST", "/startAudioToVideoSession", port, [("Content-Length", str(len(body))), ("Expect", "100-continue")])
    answer = await exchange(port, expecting, pause=0.2, more=body)
    assert statuses(answer) == [100, 200] and b"session_token" in answer


async def test_obs_fold_is_read_as_one_header_line(open_server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture) -> None:
    _app, url = open_server
    port = port_of(url)
    raw = f"POST /startAudioToVideoSession HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    answer = await exchange(port, raw)
    assert statuses(answer) == [200] and b"session_token" in answer
    no_tracebacks(caplog)


async def test_one_request_per_connection(open_server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture) -> None:
    _app, url = open_server
    port = port_of(url)
    pipelined = await exchange(port, request("GET", "/livez", port) + request("GET", "/healthz", port) + request("GET", "/livez", port))
    assert statuses(pipelined) == [200] and pipelined.count(b"alive") == 1
    body = b'{"apiKey": 1}'
    # a POST whose answer is still coming, then a GET on the same connection: only the POST's answer
    post = request("POST", "/startAudioToVideoSession", port, [("Content-Length", str(len(body)))], body)
    answer = await exchange(port, post, pause=0.05, more=request("GET", "/livez", port))
    assert len(statuses(answer)) == 1 and b"alive" not in answer
    no_tracebacks(caplog)


async def test_a_head_split_across_many_reads_is_bounded_too(open_server: tuple[LipsyncServer, str]) -> None:
    _app, url = open_server
    port = port_of(url)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
    with contextlib.suppress(ConnectionError):
        for _ in range(2 * MAX_HEAD // 100):
            writer.write(b"X-Slow: " + b"a" * 90 + b"\r\n")
            await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert statuses(answer) == [431]
    writer.close()


@pytest.mark.parametrize("twice", ["Authorization: Bearer a", "Origin: http://127.0.0.1", "Host: 127.0.0.1", "Upgrade: websocket"])
async def test_a_header_given_twice_on_an_upgrade_is_a_bad_request(open_server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture, twice: str) -> None:
    _app, url = open_server
    port = port_of(url)
    name, value = twice.split(": ")
    raw = upgrade(port, [(name, value), (name, value + "x")])
    answer = await exchange(port, raw)
    assert statuses(answer) == [400] and (b"twice" in answer or b"multiple" in answer)
    no_tracebacks(caplog)


async def test_frames_sent_right_behind_the_upgrade_are_kept_for_the_session(open_server: tuple[LipsyncServer, str]) -> None:
    _app, url = open_server
    port = port_of(url)
    first = first_message(SessionParams(realtime=False, is_jpg=False)).encode()
    answer = await exchange(port, upgrade(port) + ws_frame(1, first) + ws_frame(2, bytes(3200)) + ws_frame(1, b"DONE"))
    assert statuses(answer) == [101] and b"DONE" in answer and b'"error"' not in answer


async def test_a_get_with_a_body_is_a_bad_request(open_server: tuple[LipsyncServer, str]) -> None:
    _app, url = open_server
    port = port_of(url)
    answer = await exchange(port, request("GET", "/healthz", port, [("Content-Length", "5")], b"hello"))
    assert statuses(answer) == [400]


# --- rows 3, 6, 11: WebRTC ----------------------------------------------------------------------


def udp_sockets() -> int:
    """UDP sockets this process has open (their inodes among its file descriptors)."""
    import os

    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            inodes |= {line.split()[9] for line in f.readlines()[1:]}
    fds = os.listdir("/proc/self/fd")
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            count += link.startswith("socket:[") and link[8:-1] in inodes
    return count


@pytest.fixture
def webrtc(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("aiortc")
    import aioice.ice
    from webrtc_client import loopback_addresses

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_addresses)


async def speaking_peer(base: str, pcm: np.ndarray) -> tuple[Any, Any, Any]:
    """An aiortc client saying *pcm* on loopback, connected, its data channel open:
    (peer connection, data channel, microphone track)."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from webrtc_client import Speech

    pc = RTCPeerConnection()
    opened = asyncio.Event()
    channel = pc.createDataChannel("control")
    channel.on("open", opened.set)
    microphone = Speech(pcm)
    pc.addTrack(microphone)
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient() as http_client:
        answer = await http_client.post(f"{base}/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.setRemoteDescription(RTCSessionDescription(**answer.json()))
    await asyncio.wait_for(opened.wait(), 10)
    return pc, channel, microphone


async def test_webrtc_with_a_session_token_sends_frames(webrtc: None, tmp_path: Path, speech: np.ndarray) -> None:
    from test_webrtc import base_of, peer_session

    keys = tmp_path / "keys"
    key = add_key(keys, "page")
    async with running_server(configured(tmp_path, api_keys=keys)) as (_app, url):
        async with httpx.AsyncClient() as client:
            token = (await client.post(f"{base_of(url)}/startAudioToVideoSession", json={"apiKey": key, "isJPG": True, "realtime": False})).json()["session_token"]
        status, frames, _audio, texts = await peer_session(base_of(url), speech[8000:24000], fields={"session_token": token})
    assert status == 200 and len(frames) >= 20 and "DONE" in texts and not any('"error"' in t for t in texts)


async def test_an_offer_that_never_connects_is_released_and_its_sockets_closed(tmp_path: Path, webrtc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc import RTCPeerConnection

    from lipsync_stream.serve import webrtc as server_webrtc

    monkeypatch.setattr(server_webrtc, "CONNECT_TIMEOUT", 1.0)
    before = udp_sockets()
    async with running_server(configured(tmp_path)) as (app, url):
        base = url.replace("ws://", "http://").rsplit("/", 1)[0]
        clients = []
        async with httpx.AsyncClient() as http_client:
            for _ in range(3):  # offers whose answers are never used: no ICE, no DTLS
                pc = RTCPeerConnection()
                pc.addTransceiver("video", direction="recvonly")
                pc.createDataChannel("control")
                await pc.setLocalDescription(await pc.createOffer())
                answer = await http_client.post(f"{base}/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
                assert answer.status_code == 200
                clients.append(pc)
        for pc in clients:
            await pc.close()
        assert app.active_sessions == 3
        deadline = time.monotonic() + 8
        while (app.active_sessions or udp_sockets() > before) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert app.active_sessions == 0
        assert udp_sockets() <= before


async def test_a_client_that_leaves_without_done_closes_its_peer(tmp_path: Path, webrtc: None, speech: np.ndarray) -> None:
    before = udp_sockets()
    async with running_server(configured(tmp_path)) as (app, url):
        pc, _channel, _microphone = await speaking_peer(url.replace("ws://", "http://").rsplit("/", 1)[0], speech)
        await asyncio.sleep(0.5)
        await pc.close()  # the tab closed: no DONE
        deadline = time.monotonic() + 10
        while (app.active_sessions or udp_sockets() > before) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert app.active_sessions == 0 and udp_sockets() <= before


async def test_an_sdp_with_a_bad_media_line_is_a_bad_request(webrtc: None, open_server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture) -> None:
    from aiortc import RTCPeerConnection

    _app, url = open_server
    base = url.replace("ws://", "http://").rsplit("/", 1)[0]
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = re.sub(r"m=video \d+ ", "m=video abc ", pc.localDescription.sdp, count=1)
    assert "m=video abc " in sdp
    await pc.close()
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{base}/webrtc/offer", json={"sdp": sdp, "type": "offer"})
    assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /LipsyncStream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),  # no key
        (b"GET /LipsyncStream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
        (b"GET /LipsyncStream HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 505),
        (b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
        (b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), 400),  # TLS to a plain port
    ],
)
async def test_requests_websockets_refuses_are_answered_without_tracebacks(open_server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture, raw: bytes, status: int) -> None:
    _app, url = open_server
    answer = await exchange(port_of(url), raw)
    assert statuses(answer) == [status], answer[:300]
    no_tracebacks(caplog)


async def test_audio_still_in_flight_after_done_is_not_an_error(webrtc: None, tmp_path: Path, speech: np.ndarray) -> None:
    """A microphone track goes on after the page sends DONE (and packets in flight arrive after
    it): the session ends with DONE, not with 'audio received after DONE'."""
    async with running_server(configured(tmp_path)) as (_app, url):
        texts: list[str] = []
        ended = asyncio.Event()
        pc, channel, microphone = await speaking_peer(url.replace("ws://", "http://").rsplit("/", 1)[0], speech)  # 8.9 s: still speaking when DONE goes
        channel.on("message", lambda m: (texts.append(m), ended.set() if m == "DONE" or '"error"' in m else None))
        await asyncio.sleep(1.5)
        channel.send("DONE")
        await asyncio.wait_for(ended.wait(), 20)
        microphone.stop()
        await pc.close()
        await asyncio.sleep(1.0)  # aiortc's own closing tasks finish (cancelled mid-way, one never ends)
    assert "DONE" in texts and not any('"error"' in t for t in texts), texts

"""Hostile and careless clients, faults, a soak, and the metrics that show them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from conftest import wait_until_idle
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from lipsync_stream.characters.character import Character, default_character_files, load_default_character
from lipsync_stream.characters.fetch import FetchConfig, FetchError
from lipsync_stream.client import ServerError, decode_image, stream_audio
from lipsync_stream.engines.base import apply_region
from lipsync_stream.serve import server as server_module
from lipsync_stream.serve.runner import running_server
from lipsync_stream.serve.server import LipsyncServer
from lipsync_stream.serve.server_config import ServerConfig
from lipsync_stream.wire.protocol import FrameMessage, SessionParams, decode_frame, frame_length, frames_for_samples
from lipsync_stream.wire.session import Limits, Session


@pytest.fixture
async def strict(asset_root: Path, tmp_path: Path) -> AsyncIterator[tuple[LipsyncServer, str]]:
    """A server with short fuses."""
    config = ServerConfig(port=0, asset_roots=[asset_root], first_message_timeout=0.5, send_timeout=1.0)
    config.fetch = FetchConfig(asset_roots=[asset_root], cache_dir=tmp_path / "cache")
    async with running_server(config) as pair:
        yield pair


async def collect(url: str, pcm: np.ndarray, params: SessionParams) -> list:
    return [f async for f in stream_audio(url, pcm, params)]


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def metrics_text(url: str) -> str:
    async with httpx.AsyncClient() as http:
        r = await http.get(url.replace("ws://", "http://").rsplit("/", 1)[0] + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


async def test_metrics_count_sessions_frames_errors_and_latency(server: tuple[LipsyncServer, str], speech: np.ndarray) -> None:
    _, url = server
    frames = [f async for f in stream_audio(url, speech[:16000], SessionParams(realtime=False))]
    with pytest.raises(ServerError):
        [f async for f in stream_audio(url, speech[:100], SessionParams(video_reference_url="nope.mp4"))]
    text = await metrics_text(url)
    assert metric(text, "lipsync_sessions_total") == 2
    assert metric(text, "lipsync_frames_total") == len(frames)
    assert metric(text, "lipsync_errors_total", '{kind="character_error"}') == 1
    assert metric(text, "lipsync_frame_latency_seconds_count") == len(frames)
    assert metric(text, "lipsync_audio_in_seconds_total") == pytest.approx(1.0)  # the refused session sent none
    assert metric(text, "lipsync_sessions_active") == 0


async def test_silent_connection_is_dropped_after_the_first_message_timeout(strict: tuple[LipsyncServer, str]) -> None:
    _, url = strict
    async with connect(url) as ws:
        reply = await asyncio.wait_for(ws.recv(), 5)
        assert json.loads(reply)["error"] == "bad_request"
        await ws.wait_closed()
    assert ws.close_code == 1008


async def test_a_client_that_stops_reading_is_closed_and_others_go_on(asset_root: Path, tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0, send_timeout=1.0)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):
        lazy = await connect(url, max_queue=1)  # takes one message, then lets TCP push back
        await lazy.send(json.dumps({"realtime": False}))
        await lazy.send(np.tile(speech, 4)[: 16000 * 30].tobytes())  # 900 frames: more than any socket buffer
        await lazy.send("DONE")
        # meanwhile another session is served normally
        other = [f async for f in stream_audio(url, speech[:8000], SessionParams(realtime=False))]
        assert len(other) == frames_for_samples(8000)
        await wait_until_idle(app, 30.0)
        text = await metrics_text(url)
        assert metric(text, "lipsync_errors_total", '{kind="limit_exceeded"}') == 1
        assert metric(text, "lipsync_frames_total") < 900 + len(other)
        lazy.transport.abort()


class RecordingSession(Session):
    """The server's sessions, remembered with when each text message reached them."""

    made: ClassVar[list[RecordingSession]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.texts: list[tuple[str, float]] = []
        RecordingSession.made.append(self)

    def receive(self, message: bytes | str, now: float) -> None:
        if isinstance(message, str):
            self.texts.append((message, now))
        super().receive(message, now)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[RecordingSession]:
    RecordingSession.made = []
    monkeypatch.setattr(server_module, "Session", RecordingSession)
    return RecordingSession


def long_audio(seconds: int, speech: np.ndarray) -> np.ndarray:
    """*seconds* of audio: the speech sample every 30 s, digital silence between."""
    pcm = np.zeros(seconds * 16000, np.int16)
    for start in range(0, len(pcm) - len(speech), 30 * 16000):
        pcm[start : start + len(speech)] = speech
    return pcm


async def test_five_minutes_sent_at_once_come_back_whole_in_bounded_memory(server: tuple[LipsyncServer, str], speech: np.ndarray, recording: type[RecordingSession]) -> None:
    _, url = server
    pcm = long_audio(300, speech)
    data = pcm.tobytes()
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"realtime": False}))

        async def send_everything() -> None:  # as fast as the connection takes it
            for start in range(0, len(data), 8000):
                await ws.send(data[start : start + 8000])
            await ws.send("DONE")

        sender = asyncio.create_task(send_everything())
        frames = []
        async for message in ws:
            if message == "DONE":
                break
            assert isinstance(message, bytes), message
            frames.append(decode_frame(message))
        await sender
    assert len(frames) == 9000 and [f.index for f in frames] == list(range(9000))
    assert b"".join(f.audio or b"" for f in frames) == data
    # what waited on the server was a few seconds (the offline buffer and one message), never the file
    (session,) = recording.made
    assert session.peak_pending_samples <= (Limits().offline_buffer_seconds + 0.5) * 16000


async def test_a_long_real_time_burst_plays_and_skip_still_cuts_it_at_once(server: tuple[LipsyncServer, str], speech: np.ndarray, recording: type[RecordingSession]) -> None:
    _, url = server
    burst = long_audio(150, speech)  # more than the 120 s the server used to refuse
    loop = asyncio.get_running_loop()
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({}))
        await ws.send(burst.tobytes()[: 1 << 20])  # as large as a message may be
        for start in range(1 << 20, 2 * len(burst), 8000):
            await ws.send(burst.tobytes()[start : start + 8000])
        indices = [decode_frame(await asyncio.wait_for(ws.recv(), 10)).index for _ in range(45)]  # 30 fps
        skip_sent = loop.time()
        await ws.send("SKIP")
        await ws.send("DONE")
        async for message in ws:
            if message == "DONE":
                break
            indices.append(decode_frame(message).index)
        done_at = loop.time()
    assert indices == list(range(len(indices)))
    assert len(indices) < 45 + 30  # frames already on their way when SKIP came; not the 4 500 of the burst
    (session,) = recording.made
    (_, skip_read), _ = session.texts
    assert skip_read - skip_sent < 0.25  # read at once: not queued behind the burst
    assert done_at - skip_sent < 2.0
    assert session.samples_skipped > 140 * 16000


async def test_a_client_that_sends_faster_than_rendering_is_held_back_not_refused(strict: tuple[LipsyncServer, str], speech: np.ndarray) -> None:
    _, url = strict
    pcm = np.tile(speech, 2)[: 16000 * 5]
    frames = [f async for f in stream_audio(url, pcm, SessionParams())]  # real time, sent at once
    assert b"".join(f.audio or b"" for f in frames) == pcm.tobytes()


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42" + bytes(500), b"this is not a video" * 100])
async def test_broken_videos_are_character_errors(server: tuple[LipsyncServer, str], asset_root: Path, content: bytes) -> None:
    _, url = server
    (asset_root / "broken.mp4").write_bytes(content)
    with pytest.raises(ServerError) as info:
        [f async for f in stream_audio(url, np.zeros(1000, np.int16), SessionParams(video_reference_url="broken.mp4"))]
    assert info.value.kind == "character_error"


async def test_truncated_video_keeps_its_good_frames(server: tuple[LipsyncServer, str], asset_root: Path) -> None:
    app, url = server
    video, _ = default_character_files()
    data = video.read_bytes()
    (asset_root / "cut.mp4").write_bytes(data[: len(data) // 2])
    try:
        frames = [f async for f in stream_audio(url, np.zeros(2000, np.int16), SessionParams(video_reference_url="cut.mp4", realtime=False))]
    except ServerError as exc:  # a cut that leaves no decodable frame is refused cleanly instead
        assert exc.kind == "character_error"
    else:
        assert len(frames) == frames_for_samples(2000)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_soak_sessions_in_turn_and_at_once(server: tuple[LipsyncServer, str], speech: np.ndarray) -> None:
    app, url = server
    params = SessionParams(realtime=False)

    async def one(i: int) -> None:
        pcm = speech[i * 997 % 60000 :][: 6000 + 331 * i]
        frames = [f async for f in stream_audio(url, pcm, params)]
        assert b"".join(f.audio for f in frames) == pcm.tobytes()

    await one(0)  # warm up: character, engine, caches
    base = rss_bytes()
    for i in range(24):
        await one(i)
    await asyncio.gather(*(one(i) for i in range(16)))
    await asyncio.gather(*(one(i) for i in range(16)))
    assert app.active_sessions == 0
    grown = rss_bytes() - base
    assert grown < 60 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MB"


async def test_loads_run_beside_rendering_and_queue_with_a_deadline(asset_root: Path, tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0, asset_roots=[asset_root], render_threads=2, max_loads=2, load_queue_timeout=0.5)
    config.fetch = FetchConfig(asset_roots=[asset_root], cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):
        release = threading.Event()
        original = app.store._build

        def slow(video_ref: str, faces_ref: str | None) -> Character:
            if video_ref.startswith("slow"):  # a character that takes as long as the test wants
                release.wait(30)
                raise FetchError(f"{video_ref} never arrived")
            return original(video_ref, faces_ref)

        app.store._build = slow  # type: ignore[method-assign]
        params = SessionParams(realtime=False)
        await collect(url, speech[:1600], params)  # the default character in memory, as on a running server
        loads = [asyncio.create_task(collect(url, speech[:1600], SessionParams(video_reference_url=f"slow{i}.mp4"))) for i in range(2)]
        while len(app.store._inflight) < 2:
            await asyncio.sleep(0.01)
        # Both loads hold their threads; every render thread is free for the sessions of loaded characters.
        frames = await collect(url, speech[:16000], params)
        assert len(frames) == frames_for_samples(16000)
        assert not any(task.done() for task in loads)
        # No load slot comes free in time for a third character: it is told to come back later.
        with pytest.raises(ServerError) as info:
            await collect(url, speech[:1600], SessionParams(video_reference_url="slow3.mp4"))
        assert info.value.kind == "capacity" and info.value.code == 1013 and "loading other characters" in info.value.detail
        release.set()
        for task in loads:
            with pytest.raises(ServerError, match="never arrived"):
                await task


async def test_sessions_beyond_the_limit_are_told_to_come_back(tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0, max_sessions=3)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):
        held = [await connect(url) for _ in range(3)]
        for ws in held:
            await ws.send(json.dumps({}))  # a first message, then nothing: the session waits
        async with connect(url) as refused:
            error = json.loads(await asyncio.wait_for(refused.recv(), 5))
            assert error["error"] == "capacity" and "3 sessions" in error["detail"]
            await refused.wait_closed()
        assert refused.close_code == 1013
        text = await metrics_text(url)
        assert metric(text, "lipsync_sessions_capacity") == 3 and metric(text, "lipsync_sessions_active") == 3
        assert metric(text, "lipsync_errors_total", '{kind="capacity"}') == 1
        await held[0].close()
        while app.active_sessions > 2:
            await asyncio.sleep(0.01)
        frames = [f async for f in stream_audio(url, speech[:4000], SessionParams(realtime=False))]  # a place is free again
        assert len(frames) == frames_for_samples(4000)
        for ws in held[1:]:
            await ws.close()


async def send_and_read(url: str, messages: list[str | bytes]) -> tuple[list[str | bytes], int | None]:
    """Send *messages* (ignoring a connection the server already closed) and read until the close."""
    ws = await connect(url, max_size=None)
    received: list[str | bytes] = []
    try:
        with contextlib.suppress(ConnectionClosed):
            for m in messages:
                await ws.send(m)
        with contextlib.suppress(ConnectionClosed):
            async for m in ws:
                received.append(m)
    finally:
        if not ws.transport.is_closing():  # closed by the server with megabytes still unsent
            await ws.close()
    return received, ws.close_code


@pytest.mark.parametrize(
    "messages",
    [
        ['{"padding": "' + "x" * 200_000 + '"}'],  # a first message over the limit
        ["{" + " " * (10 * 1024 * 1024) + "}"],  # far over it: refused from the frame header
        ['{"realtime": false}', bytes(300_000)],  # audio over the limit
    ],
    ids=["first-200KB", "first-10MB", "audio-300KB"],
)
async def test_messages_over_the_limit_get_the_json_error_then_1009(tmp_path: Path, messages: list[str | bytes]) -> None:
    config = ServerConfig(port=0, limits=Limits(max_message_bytes=64 * 1024))
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):
        received, code = await send_and_read(url, messages)
        assert code == 1009
        errors = [json.loads(m) for m in received if isinstance(m, str)]
        assert errors and errors[-1]["error"] == "message_too_big" and "65536" in errors[-1]["detail"]
        await wait_until_idle(app, 5.0)
        assert metric(await metrics_text(url), "lipsync_errors_total", '{kind="message_too_big"}') == 1


async def test_client_strings_are_logged_escaped(server: tuple[LipsyncServer, str], caplog: pytest.LogCaptureFixture) -> None:
    _, url = server
    forged = "x.mp4\u2028 INFO lipsync_stream.serve.server: [s9] everything is fine\u001b[2J"
    with caplog.at_level(logging.INFO), pytest.raises(ServerError) as info:
        [f async for f in stream_audio(url, np.zeros(100, np.int16), SessionParams(video_reference_url=forged.replace("\u001b", "")))]
    assert info.value.kind == "character_error"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "\\u2028" in logged and "\u2028" not in logged


async def test_idle_sessions_send_the_rest_picture_without_rendering(tmp_path: Path) -> None:
    config = ServerConfig(port=0, max_sessions=40)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):

        async def idle() -> list[FrameMessage]:
            async with connect(url, max_size=None, compression=None) as ws:
                await ws.send(json.dumps({"handleSilence": True}))
                return [decode_frame(await asyncio.wait_for(ws.recv(), 20)) for _ in range(20)]

        first = await idle()  # draws each reference frame's rest picture once
        sessions = await asyncio.gather(*(idle() for _ in range(40)))
        await wait_until_idle(app, 10.0)
        for frames in sessions:
            assert [f.index for f in frames] == list(range(20))
            assert [f.image for f in frames] == [f.image for f in first]
            assert all(f.audio == bytes(2 * frame_length(f.index)) for f in frames)
        # each is the engine's rest picture of its reference frame
        character = load_default_character()
        for f in first[::7]:
            ref = character.reference(f.index)
            rest = apply_region(ref.image, app.engine.stream().draw_rest(ref)).astype(int)
            assert np.abs(decode_image(f).astype(int) - rest).mean() < 2.0
        text = await metrics_text(url)
        total, silent = metric(text, "lipsync_frames_total"), metric(text, "lipsync_silent_frames_total")
        assert total == 820 and silent >= 800  # after the first session, no frame went to a render thread


async def test_a_refused_session_hears_why_at_once_even_while_it_streams(server: tuple[LipsyncServer, str], speech: np.ndarray) -> None:
    _, url = server
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServerError) as info:  # 10 s of audio on its way when the character is refused
        [f async for f in stream_audio(url, np.tile(speech, 2)[: 16000 * 10], SessionParams(video_reference_url="nowhere.mp4"))]
    assert info.value.kind == "character_error"
    assert loop.time() - started < 3.0  # it took the close timeout (10 s) when nobody read the audio


async def test_healthz_says_full_and_draining_and_a_drain_lets_sessions_finish_then_closes_the_rest(tmp_path: Path, speech: np.ndarray) -> None:
    """SIGTERM's drain: /healthz answers 503 (a load balancer sends the next session elsewhere),
    new sessions hear `capacity`, a session that ends within the drain timeout ends normally, and
    one still running after it is closed with `going_away` (1001)."""
    config = ServerConfig(port=0, max_sessions=2)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):
        http_url = url.replace("ws://", "http://").rsplit("/", 1)[0] + "/healthz"
        async with httpx.AsyncClient() as client:
            assert (await client.get(http_url)).text == "ok\n"
            endless = await connect(url)
            await endless.send(json.dumps({"realtime": True}))
            await endless.send(speech[:16000].tobytes())  # one second, then nothing: it would idle for minutes
            short = connect(url)
            ws_short = await short
            await ws_short.send(json.dumps({"realtime": False}))
            await wait_until(lambda: app.active_sessions == 2)
            response = await client.get(http_url)
            assert response.status_code == 503 and response.text == "full\n"

            async def messages(ws: Any) -> list[Any]:
                return [m async for m in ws]

            endless_messages = asyncio.create_task(messages(endless))  # a client reads all along
            drain = asyncio.create_task(app.drain(timeout=1.5))
            await wait_until(lambda: app.draining)
            response = await client.get(http_url)
            assert response.status_code == 503 and response.text == "draining\n"
            assert (await client.get(http_url.replace("/healthz", "/livez"))).status_code == 200  # alive, not ready
            with pytest.raises(ServerError) as refused:
                [f async for f in stream_audio(url, speech[:8000], SessionParams(realtime=False))]
            assert refused.value.kind == "capacity" and refused.value.http_status == 503

            # the short session finishes inside the drain: every frame, then DONE
            pcm = speech[:8000]
            await ws_short.send(pcm.tobytes())
            await ws_short.send("DONE")
            frames = [m async for m in ws_short if isinstance(m, bytes)]
            assert len(frames) == frames_for_samples(len(pcm))
            assert ws_short.close_code == 1000

            assert await drain == 1  # the endless one was closed, with why
            texts = [m for m in await endless_messages if isinstance(m, str)]
            assert json.loads(texts[-1])["error"] == "going_away" and endless.close_code == 1001


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)

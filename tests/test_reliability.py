"""Hostile and careless clients, faults, a soak, and the metrics that show them."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import wait_until_idle
from websockets.asyncio.client import connect

from lipsync_stream.character import default_character_files
from lipsync_stream.client import ServerError, stream_audio
from lipsync_stream.fetch import FetchConfig
from lipsync_stream.protocol import SessionParams, frames_for_samples
from lipsync_stream.server import LipsyncServer, ServerConfig, running_server
from lipsync_stream.session import Limits


@pytest.fixture
async def strict(asset_root: Path, tmp_path: Path) -> AsyncIterator[tuple[LipsyncServer, str]]:
    """A server with short fuses."""
    config = ServerConfig(port=0, asset_roots=[asset_root], first_message_timeout=0.5, send_timeout=1.0, limits=Limits(max_backlog_seconds=2.0))
    config.fetch = FetchConfig(asset_roots=[asset_root], cache_dir=tmp_path / "cache")
    async with running_server(config) as pair:
        yield pair


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


async def test_audio_far_ahead_of_rendering_is_refused(strict: tuple[LipsyncServer, str], speech: np.ndarray) -> None:
    _, url = strict
    with pytest.raises(ServerError) as info:
        [f async for f in stream_audio(url, np.tile(speech, 2)[: 16000 * 5], SessionParams())]
    assert info.value.kind == "limit_exceeded" and "waiting to be rendered" in info.value.detail


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

"""The client library against a real server: live audio, silence keep-alive, SKIP, DONE, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lipsync_stream.characters.fetch import FetchConfig
from lipsync_stream.client import AudioFeed, LipsyncClient, ServerError, stream_audio
from lipsync_stream.serve import server as server_module
from lipsync_stream.serve.runner import running_server
from lipsync_stream.serve.server import LipsyncServer
from lipsync_stream.serve.server_config import ServerConfig
from lipsync_stream.wire.protocol import SessionParams
from lipsync_stream.wire.session import Limits, Session

Server = tuple[LipsyncServer, str]


async def test_live_feed_keeps_silence_flowing_when_the_caller_is_quiet(server: Server, speech: np.ndarray) -> None:
    _, url = server
    async with LipsyncClient(url, SessionParams(realtime=False)) as client:
        feed = AudioFeed()
        pump = asyncio.create_task(client.pump(feed))
        feed.put(speech[:8000].tobytes()[:-1])  # odd pieces are joined into whole samples
        feed.put(speech[:8000].tobytes()[-1:])
        frames = []
        async for frame in client.decoded_frames():
            frames.append(frame)
            if len(frames) == 30:  # 0.5 s of speech, then the keep-alive silence
                feed.close()
        await pump
    assert [f.index for f in frames] == list(range(len(frames)))
    assert frames[0].image.shape == (512, 512, 3)
    audio = b"".join(f.audio for f in frames)
    assert audio.startswith(speech[:8000].tobytes())
    assert len(audio) >= 2 * 16000 and not any(audio[16000:32000])  # silence came after


async def test_with_handle_silence_the_client_sends_nothing_extra(server: Server) -> None:
    _, url = server
    async with LipsyncClient(url, SessionParams(handle_silence=True)) as client:
        feed = AudioFeed()
        pump = asyncio.create_task(client.pump(feed))
        frames = []
        async for frame in client.frames():
            frames.append(frame)
            if len(frames) == 5:
                feed.close()
        await pump
    assert len(frames) >= 5 and all(not any(f.audio or b"") for f in frames)


async def test_server_error_raises_with_kind_and_code(server: Server) -> None:
    _, url = server
    async with LipsyncClient(url, SessionParams()) as client:
        await client.ws.send(b"\x00")
        with pytest.raises(ServerError) as info:
            async for _ in client.frames():
                pass
    assert info.value.kind == "bad_audio" and info.value.code == 1007


async def test_whole_files_are_sent_paced_by_the_frames_that_come_back(asset_root: Path, tmp_path: Path, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that would take everything at once (its own flow control off): only the client's
    # pacing keeps what waits there bounded.
    made: list[Session] = []

    class Recorded(Session):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(server_module, "Session", Recorded)
    config = ServerConfig(port=0, limits=Limits(offline_buffer_seconds=1e9, realtime_buffer_seconds=1e9))
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    pcm = np.tile(speech, 4)[: 16000 * 30]
    async with running_server(config) as (_app, url):
        frames = [f async for f in stream_audio(url, pcm, SessionParams(realtime=False), in_flight=2.0)]
    assert b"".join(f.audio or b"" for f in frames) == pcm.tobytes()
    assert made[0].peak_pending_samples <= (2.0 + 0.25 + 0.1) * 16000  # the window, one chunk, the lookahead

"""The client library against a real server: live audio, silence keep-alive, SKIP, DONE, errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync_stream.client import AudioFeed, LipsyncClient, ServerError
from lipsync_stream.protocol import SessionParams
from lipsync_stream.server import LipsyncServer

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

"""The voice-agent avatar core (integrations/avatar.py) against a server by URL, JPEG frames."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import collect_for

from lipsync_stream.client import ServerError
from lipsync_stream.integrations.avatar import END_PADDING_SECONDS, AvatarStream
from lipsync_stream.serve.runner import running_server
from lipsync_stream.serve.server_config import ServerConfig


async def test_a_reply_by_url_comes_back_whole_and_ends_where_it_ends(speech: np.ndarray) -> None:
    async with running_server(ServerConfig(port=0)) as (_, url):
        stream = AvatarStream(url)
        await stream.start()
        try:
            reply = speech[:24000].tobytes()  # 1.5 s at 16 kHz: passes unresampled
            for i in range(0, len(reply), 3200):
                await stream.push(reply[i : i + 3200], 16000)
            await stream.end_reply()
            frames = [f for _, f in await collect_for(stream.frames(), 3.5)]
        finally:
            await stream.aclose()
    assert all(f.image.shape == (512, 512, 3) for f in frames)
    assert [f.index for f in frames] == list(range(frames[0].index, frames[0].index + len(frames)))
    talking = [f for f in frames if f.audio is not None]
    out = b"".join(f.audio for f in talking if f.audio)
    assert out[: len(reply)] == reply and not any(out[len(reply) :])
    assert len(out) - len(reply) >= 2 * int(END_PADDING_SECONDS * 16000) - 2 * 534  # the padding, to a frame
    assert [f.reply_end for f in talking].count(True) == 1 and talking[-1].reply_end
    assert frames[-1].audio is None  # idle after the reply


async def test_an_unknown_character_is_the_servers_error() -> None:
    async with running_server(ServerConfig(port=0)) as (_, url):
        stream = AvatarStream(url, character="no-such-character.mp4")
        await stream.start()
        try:
            with pytest.raises(ServerError) as err:
                await collect_for(stream.frames(), 5.0)
        finally:
            await stream.aclose()
    assert err.value.kind == "character_error" and "asset root" in err.value.detail

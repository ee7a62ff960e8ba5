"""The server over a real websocket: bytes on the wire, errors, pacing, isolation."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import wait_until_idle
from websockets.asyncio.client import connect

from lipsync_stream.characters.character import default_character_files, load_default_character
from lipsync_stream.client import LipsyncClient, ServerError, decode_image, stream_audio
from lipsync_stream.serve.server import LipsyncServer
from lipsync_stream.wire.protocol import SessionParams, decode_frame, frames_for_samples

Server = tuple[LipsyncServer, str]


def http_url(ws_url: str, path: str) -> str:
    return ws_url.replace("ws://", "http://").rsplit("/", 1)[0] + path


async def collect(url: str, pcm: np.ndarray, params: SessionParams) -> list:
    return [f async for f in stream_audio(url, pcm, params)]


async def raw_session(url: str, first: str | bytes, messages: list[bytes | str]) -> tuple[list[bytes | str], int | None]:
    """Send a first message and more, then read until the server closes: (received, close code)."""
    async with connect(url) as ws:
        await ws.send(first)
        for m in messages:
            await ws.send(m)
        received = []
        try:
            async for m in ws:
                received.append(m)
        except Exception:
            pass
        return received, ws.close_code


async def test_healthz_and_unknown_paths(server: Server) -> None:
    _, url = server
    async with httpx.AsyncClient() as http:
        r = await http.get(http_url(url, "/healthz"))
        assert r.status_code == 200 and r.text == "ok\n"
        assert (await http.get(http_url(url, "/nope"))).status_code == 404


async def test_round_trip_returns_every_audio_byte(server: Server, speech: np.ndarray) -> None:
    _, url = server
    pcm = speech[: 16000 * 2 + 77]
    frames = await collect(url, pcm, SessionParams(realtime=False))
    assert [f.index for f in frames] == list(range(frames_for_samples(len(pcm))))
    assert b"".join(f.audio for f in frames) == pcm.astype("<i2").tobytes()
    for f in frames[:3]:
        assert (f.width, f.height) == (512, 512) and f.image[:2] == b"\xff\xd8"
        assert decode_image(f).shape == (512, 512, 3)


async def test_done_then_normal_close(server: Server, speech: np.ndarray) -> None:
    _, url = server
    received, code = await raw_session(url, json.dumps({"realtime": False}), [speech[:8000].tobytes(), "DONE"])
    assert received[-1] == "DONE" and code == 1000
    assert all(isinstance(m, bytes) for m in received[:-1]) and len(received) - 1 == frames_for_samples(8000)


async def test_raw_frames_and_no_audio(server: Server, speech: np.ndarray) -> None:
    _, url = server
    frames = await collect(url, speech[:4000], SessionParams(is_jpg=False, sync_audio=False, realtime=False))
    assert all(len(f.image) == 512 * 512 * 3 and f.audio is None for f in frames)
    # raw BGR is the same picture the JPEG path would show
    jpg = await collect(url, speech[:4000], SessionParams(realtime=False))
    raw0 = np.frombuffer(frames[0].image, np.uint8).reshape(512, 512, 3).astype(int)
    assert np.abs(raw0 - decode_image(jpg[0]).astype(int)).mean() < 3.0


@pytest.mark.parametrize(
    ("first", "messages", "kind", "code", "mention"),
    [
        ("not json", [], "bad_request", 1008, "JSON"),
        ('{"isJPG": "yes"}', [], "bad_request", 1008, "isJPG"),
        ('{"realtime": false}', [b"\x00\x01\x02"], "bad_audio", 1007, "even"),
        ('{"realtime": false}', ["PLAY"], "bad_request", 1008, "DONE or SKIP"),
        ('{"realtime": false}', [bytes(2 * 1024 * 1024)], "message_too_big", 1009, "limit"),
        ('{"video_reference_url": "missing.mp4"}', [], "character_error", 1011, "missing.mp4"),
        ('{"video_reference_url": "../../etc/passwd"}', [], "character_error", 1011, "asset root"),
        ('{"video_reference_url": "ftp://example.invalid/x.mp4"}', [], "character_error", 1011, "scheme"),
    ],
)
async def test_errors_are_json_then_close_code(server: Server, first: str, messages: list, kind: str, code: int, mention: str) -> None:
    _, url = server
    received, close_code = await raw_session(url, first, messages)
    assert len(received) == 1 and isinstance(received[0], str)
    error = json.loads(received[0])
    assert error["error"] == kind and mention in error["detail"]
    assert close_code == code


async def test_client_error_surfaces_as_server_error(server: Server) -> None:
    _, url = server
    with pytest.raises(ServerError) as info:
        await collect(url, np.zeros(100, np.int16), SessionParams(video_reference_url="nowhere.mp4"))
    assert info.value.kind == "character_error" and info.value.code == 1011


async def test_local_character_under_asset_root(server: Server, asset_root: Path, speech: np.ndarray) -> None:
    app, url = server
    video, _ = default_character_files()
    shutil.copy(video, asset_root / "astronaut.mp4")  # no face file: detected on load
    frames = await collect(url, speech[:8000], SessionParams(video_reference_url="astronaut.mp4", realtime=False))
    assert len(frames) == frames_for_samples(8000)
    character = app.store.cached("astronaut.mp4")
    assert character is not None and len(character) == 120
    # the same face as the embedded character, found by the detector
    assert abs(float(character.mouths[0][0]) - 254) < 25 and abs(float(character.mouths[0][1]) - 303) < 30


async def test_concurrent_sessions_are_independent(server: Server, speech: np.ndarray) -> None:
    _, url = server
    pieces = [speech[i * 9000 : i * 9000 + 12000] for i in range(4)]
    params = SessionParams(realtime=False)
    results = await asyncio.gather(*(collect(url, p, params) for p in pieces), collect(url, np.zeros(3, np.int16), SessionParams(video_reference_url="bad.mp4")), return_exceptions=True)
    assert isinstance(results[-1], ServerError)
    for pcm, frames in zip(pieces, results[:-1], strict=True):
        assert b"".join(f.audio for f in frames) == pcm.tobytes()


async def test_vanishing_client_does_not_hurt_others(server: Server, speech: np.ndarray) -> None:
    app, url = server
    ws = await connect(url)
    await ws.send("{}")
    await ws.send(speech[:16000].tobytes())
    await asyncio.sleep(0.2)
    ws.transport.abort()  # gone without a close frame
    frames = await collect(url, speech[:8000], SessionParams(realtime=False))
    assert len(frames) == frames_for_samples(8000)
    await wait_until_idle(app, 2.5)


async def test_realtime_pacing_on_the_wire(server: Server, speech: np.ndarray) -> None:
    _, url = server
    start = time.monotonic()
    frames = await collect(url, speech[: 16000 * 2], SessionParams())  # a 2 s burst
    elapsed = time.monotonic() - start
    assert len(frames) == 60
    assert elapsed >= 2.0 - 0.5 - 0.1  # paced: the last frame leaves a lead before its time


async def test_skip_cuts_speech_not_yet_shown(server: Server, speech: np.ndarray) -> None:
    _, url = server
    pcm = speech[: 16000 * 6]
    async with LipsyncClient(url, SessionParams()) as client:
        await client.send_audio(pcm)
        got = []
        async for frame in client.frames():
            got.append(frame)
            if len(got) == 20:
                await client.skip()
                await client.finish()
    assert 20 <= len(got) < 60
    audio = b"".join(f.audio for f in got)
    assert pcm.tobytes().startswith(audio)


async def test_handle_silence_streams_idle_frames(server: Server) -> None:
    _, url = server
    async with connect(url) as ws:
        await ws.send(json.dumps({"handleSilence": True}))
        frames = [decode_frame(await asyncio.wait_for(ws.recv(), 5.0)) for _ in range(10)]
    assert [f.index for f in frames] == list(range(10))
    assert all(f.audio == bytes(len(f.audio)) and len(f.audio) in (1066, 1068) for f in frames)


async def test_idle_limit_closes_quiet_clients(server: Server) -> None:
    _, url = server
    received, code = await raw_session(url, json.dumps({"maxIdleTime": 0.3}), [])
    assert json.loads(received[-1])["error"] == "limit_exceeded" and code == 1008


async def test_mouth_follows_speech_on_the_wire(server: Server, speech: np.ndarray) -> None:
    """Loud speech changes the mouth region; leading silence leaves the reference frame alone."""
    _, url = server
    frames = await collect(url, speech[: 16000 * 3], SessionParams(is_jpg=False, realtime=False))
    character = load_default_character()
    diffs = []
    for f in frames:
        img = np.frombuffer(f.image, np.uint8).reshape(512, 512, 3).astype(int)
        ref = character.frames[character.ref_index(f.index)].astype(int)
        diffs.append(np.abs(img - ref)[280:380, 190:320].mean())
    silent = diffs[:10]  # 0.33 s of the leading half second of silence
    assert max(silent) == 0.0
    assert max(diffs) > 10.0

"""WebRTC out: an aiortc client offers speech as an audio track and gets the lip-synced video
track, the audio each frame carries, and DONE on the data channel, all on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

aiortc = pytest.importorskip("aiortc")
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from webrtc_client import Speech, loopback_addresses  # noqa: E402

from lipsync_stream.characters.character import load_default_character  # noqa: E402
from lipsync_stream.characters.fetch import FetchConfig  # noqa: E402
from lipsync_stream.serve.auth import add_key  # noqa: E402
from lipsync_stream.serve.runner import running_server  # noqa: E402
from lipsync_stream.serve.server_config import ServerConfig  # noqa: E402


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICE offers loopback only (aioice leaves it out of its host candidates otherwise)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_addresses)


async def peer_session(base: str, pcm: np.ndarray, headers: dict[str, str] | None = None, fields: dict[str, object] | None = None) -> tuple[int, list[np.ndarray], int, list[str]]:
    """An aiortc client saying *pcm*, then DONE: (the offer's HTTP status, video frames, audio
    samples that came back, data-channel messages)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("control")
    texts: list[str] = []
    done = asyncio.Event()
    channel.on("message", lambda m: (texts.append(m), done.set() if m == "DONE" or '"error"' in m else None))
    pc.addTrack(Speech(pcm))
    pc.addTransceiver("video", direction="recvonly")
    frames: list[np.ndarray] = []
    audio_samples = [0]

    async def collect(track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    frames.append(frame.to_ndarray(format="bgr24"))
                else:
                    audio_samples[0] += frame.samples
        except MediaStreamError:
            pass

    pc.on("track", lambda track: asyncio.ensure_future(collect(track)))
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{base}/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", "session": fields or {}}, headers=headers, timeout=30)
        if response.status_code != 200:
            return response.status_code, frames, 0, [response.text]
        await pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        await asyncio.sleep(len(pcm) / 16000 + 1.0)  # the speech plays in real time
        if channel.readyState == "open":
            channel.send("DONE")
        await asyncio.wait_for(done.wait(), 20)
        await asyncio.sleep(0.5)
    finally:
        await pc.close()
    return response.status_code, frames, audio_samples[0], texts


def base_of(url: str) -> str:
    return url.replace("ws://", "http://").rsplit("/", 1)[0]


async def test_a_webrtc_session_sends_the_talking_character_as_video_and_ends_on_done(tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (_app, url):
        status, frames, audio_samples, texts = await peer_session(base_of(url), speech[8000:40000])  # 2 s
    assert status == 200
    assert len(frames) >= 40 and frames[0].shape == (512, 512, 3)
    assert audio_samples > 16000  # the lip-synced audio came back as a track too
    character = load_default_character()
    lm = character.landmarks[0]
    y, x = int(lm[14, 1]), int(lm[14, 0])
    mouths = [float(f[y - 6 : y + 6, x - 20 : x + 20].mean()) for f in frames]
    assert max(mouths) - min(mouths) > 15  # the mouth opened and closed (dark inside)
    assert "DONE" in texts and not any('"error"' in t for t in texts)
    stats = [json.loads(t)["stats"] for t in texts if t.startswith('{"stats"')]
    assert stats and stats[-1]["frames"] > 30 and stats[-1]["audioSeconds"] > 1.0  # reported on the data channel


async def test_with_keys_an_offer_needs_a_bearer_key_or_a_session_token(tmp_path: Path, speech: np.ndarray) -> None:
    keys = tmp_path / "keys"
    key = add_key(keys, "agent")
    config = ServerConfig(port=0, api_keys=keys)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    pcm = speech[8000:24000]  # 1 s
    async with running_server(config) as (_app, url):
        ok = await peer_session(base_of(url), pcm, headers={"Authorization": f"Bearer {key}"})
        wrong = await peer_session(base_of(url), pcm, headers={"Authorization": "Bearer not-a-key"})
        none = await peer_session(base_of(url), pcm)
    assert ok[0] == 200 and len(ok[1]) >= 20 and "DONE" in ok[3]
    assert wrong[0] == 401 and "unauthorized" in wrong[3][0]
    assert none[0] == 200 and any('"unauthorized"' in t for t in none[3]) and not none[1]  # told on the data channel, no frames


async def test_a_malformed_offer_is_a_named_error(tmp_path: Path) -> None:
    config = ServerConfig(port=0)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (_app, url):
        base = url.replace("ws://", "http://").rsplit("/", 1)[0]
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{base}/webrtc/offer", content=json.dumps({"sdp": 3}))
    assert response.status_code == 400 and response.json()["error"] == "bad_request"

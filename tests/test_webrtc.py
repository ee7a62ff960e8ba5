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

from lipsync_stream.character import load_default_character  # noqa: E402
from lipsync_stream.fetch import FetchConfig  # noqa: E402
from lipsync_stream.server import ServerConfig, running_server  # noqa: E402


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICE offers loopback only (aioice leaves it out of its host candidates otherwise)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_addresses)


async def test_a_webrtc_session_sends_the_talking_character_as_video_and_ends_on_done(tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (_app, url):
        base = url.replace("ws://", "http://").rsplit("/", 1)[0]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = pc.createDataChannel("control")
        texts: list[str] = []
        done = asyncio.Event()
        channel.on("message", lambda m: (texts.append(m), done.set() if m == "DONE" else None))
        pcm = speech[8000:40000]  # 2 s
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
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{base}/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", "session": {}}, timeout=30)
        assert response.status_code == 200, response.text
        await pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        await asyncio.sleep(len(pcm) / 16000 + 1.0)  # the speech plays in real time
        channel.send("DONE")
        await asyncio.wait_for(done.wait(), 20)
        await asyncio.sleep(0.5)
        await pc.close()

    assert len(frames) >= 40 and frames[0].shape == (512, 512, 3)
    assert audio_samples[0] > 16000  # the lip-synced audio came back as a track too
    character = load_default_character()
    lm = character.landmarks[0]
    y, x = int(lm[14, 1]), int(lm[14, 0])
    mouths = [float(f[y - 6 : y + 6, x - 20 : x + 20].mean()) for f in frames]
    assert max(mouths) - min(mouths) > 15  # the mouth opened and closed (dark inside)
    assert "DONE" in texts and not any('"error"' in t for t in texts)


async def test_a_malformed_offer_is_a_named_error(tmp_path: Path) -> None:
    config = ServerConfig(port=0)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (_app, url):
        base = url.replace("ws://", "http://").rsplit("/", 1)[0]
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{base}/webrtc/offer", content=json.dumps({"sdp": 3}))
    assert response.status_code == 400 and response.json()["error"] == "bad_request"

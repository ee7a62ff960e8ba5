"""Bitrate and picture of WebRTC out against the websocket's JPEG messages, on loopback.

One real-time session of the bundled sentence each way, with an in-process server:

- websocket: the JPEG frame messages (quality 85), bytes per second of speech;
- WebRTC: an aiortc client sends the speech as an audio track; the video track's bytes per second
  (as the sender reports it over RTCP), and the PSNR of each received frame against the
  frame the server rendered for it (the same frame index, before the video encoder).

Run by hand (needs the ``[webrtc]`` extra):

    .venv/bin/python bench/webrtc.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import aioice.ice  # noqa: E402
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from webrtc_client import Speech, loopback_addresses  # noqa: E402

from lipsync_stream.audio import load_audio  # noqa: E402
from lipsync_stream.characters.fetch import FetchConfig  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402
from lipsync_stream.client import stream_audio  # noqa: E402
from lipsync_stream.serve import webrtc  # noqa: E402
from lipsync_stream.serve.runner import running_server  # noqa: E402
from lipsync_stream.serve.server_config import ServerConfig  # noqa: E402
from lipsync_stream.wire.protocol import FRAME_HEIGHT, FRAME_WIDTH, SessionParams, decode_frame  # noqa: E402

# loopback only: aioice leaves it out of its host candidates otherwise
aioice.ice.get_host_addresses = loopback_addresses


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


async def main() -> None:
    pcm = load_audio(sample_speech())
    seconds = len(pcm) / 16000
    rendered: dict[int, np.ndarray] = {}
    send = webrtc.PeerSession.send

    async def keep(self: webrtc.PeerSession, message: str | bytes) -> None:
        if isinstance(message, bytes):
            frame = decode_frame(message)
            rendered[frame.index] = np.frombuffer(frame.image, np.uint8).reshape(FRAME_HEIGHT, FRAME_WIDTH, 3).copy()
        await send(self, message)

    webrtc.PeerSession.send = keep  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(port=0)
        config.fetch = FetchConfig(cache_dir=Path(tmp))
        async with running_server(config) as (_app, url):
            jpeg_bytes = 0
            async for f in stream_audio(url, pcm, SessionParams(realtime=True)):
                jpeg_bytes += len(f.image)
            base = url.replace("ws://", "http://").rsplit("/", 1)[0]
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            channel = pc.createDataChannel("control")
            done = asyncio.Event()
            channel.on("message", lambda m: done.set() if m == "DONE" else None)
            pc.addTrack(Speech(pcm))
            pc.addTransceiver("video", direction="recvonly")
            received: list[tuple[int, np.ndarray]] = []

            async def collect(track: MediaStreamTrack) -> None:
                try:
                    while True:
                        frame = await track.recv()
                        if track.kind == "video":
                            received.append((round(frame.pts * 30 / 90000), frame.to_ndarray(format="bgr24")))
                except MediaStreamError:
                    pass

            pc.on("track", lambda track: asyncio.ensure_future(collect(track)))
            await pc.setLocalDescription(await pc.createOffer())
            import httpx

            async with httpx.AsyncClient() as client:
                answer = (await client.post(f"{base}/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", "session": {}}, timeout=30)).json()
            await pc.setRemoteDescription(RTCSessionDescription(**answer))
            await asyncio.sleep(seconds + 1.0)
            channel.send("DONE")
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0.5)
            stats = await pc.getStats()
            # the sender's own count, from its RTCP sender reports
            video_bytes = max((getattr(s, "bytesSent", 0) for s in stats.values() if getattr(s, "type", "") == "remote-outbound-rtp" and getattr(s, "kind", "") == "video"), default=0)
            video_sdp = answer["sdp"].split("m=video", 1)[1]
            codec = next((line.split(" ", 1)[1].split("/")[0] for line in video_sdp.splitlines() if line.startswith("a=rtpmap:")), "?")
            await pc.close()
    # Frame indices of the received stream are those of the session that rendered them.
    pairs = [(img, rendered[k]) for k, img in received if k in rendered]
    values = [psnr(a, b) for a, b in pairs]
    print(f"the bundled sentence, {seconds:.1f} s, one real-time session each way, loopback; {len(received)} video frames received, {len(pairs)} matched to rendered ones\n")
    print("| transport | Mbit/s | KB per frame | PSNR vs rendered frames (dB) |")
    print("|---|---:|---:|---:|")
    n_frames = round(seconds * 30)
    print(f"| websocket, JPEG q85 | {8 * jpeg_bytes / seconds / 1e6:.2f} | {jpeg_bytes / n_frames / 1000:.1f} | (JPEG q85 itself) |")
    print(f"| WebRTC, {codec} | {8 * video_bytes / seconds / 1e6:.2f} | {video_bytes / n_frames / 1000:.1f} | median {np.median(values):.1f}, 5th pct {np.percentile(values, 5):.1f} |")


if __name__ == "__main__":
    asyncio.run(main())

"""WebRTC out: the same sessions, with the picture as a video track instead of JPEG messages.

``POST /webrtc/offer`` with ``{"sdp", "type", "session": {first-message fields}}`` answers with
the server's SDP. The client sends speech as an audio track (resampled here to 16 kHz PCM16) and
``DONE``/``SKIP`` on a data channel; the server sends a 512x512, 30 fps video track (VP8 or H.264,
as negotiated) and an audio track carrying exactly the audio each frame was lip-synced to, both
timestamped from the frame index so that a browser plays them in sync; errors, ``DONE``, the
close and, every second, ``{"stats": {"frames", "audioSeconds", "videoQueue"}}`` arrive on the
data channel. Frames go out in real time, none ahead (see :attr:`PeerSession.lead`).

The session itself is the server's usual one: :class:`PeerSession` looks like a websocket to
:meth:`LipsyncServer.handler` (``recv``/``send``/``close``), so pacing, limits, engines and
errors are the same code. Frames are rendered raw (``isJPG: false``): there is no JPEG to decode.
Built on aiortc (the ``[webrtc]`` extra). It uses no STUN or TURN server unless given: a client
on another network needs one (and a reachable address).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.exceptions import ConnectionClosedOK

from ..logsafe import shown
from ..wire.protocol import FRAME_HEIGHT, FRAME_WIDTH, SAMPLE_RATE, decode_frame

log = logging.getLogger(__name__)

WEBRTC_PATH = "/webrtc/offer"
VIDEO_CLOCK = 90_000  # RTP video clock
AUDIO_CHUNK = SAMPLE_RATE // 50  # 20 ms
_CLOSED = object()


class FrameTrack(MediaStreamTrack):
    """The session's frames as video: each frame at index x 1/30 s."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)

    async def recv(self) -> av.VideoFrame:
        item = await self.frames.get()
        if item is _CLOSED:
            self.stop()
            raise MediaStreamError
        index, image = item
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = index * VIDEO_CLOCK // 30
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame


class SyncedAudioTrack(MediaStreamTrack):
    """The audio each frame was lip-synced to, in 20 ms frames timed by the sample count."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pcm = bytearray()
        self.more = asyncio.Event()
        self.samples = 0
        self.ended = False

    def push(self, pcm: bytes) -> None:
        self.pcm += pcm
        self.more.set()

    async def recv(self) -> av.AudioFrame:
        while len(self.pcm) < 2 * AUDIO_CHUNK:
            if self.ended:
                self.stop()
                raise MediaStreamError
            self.more.clear()
            await self.more.wait()
        chunk = np.frombuffer(bytes(self.pcm[: 2 * AUDIO_CHUNK]), "<i2").reshape(1, -1)
        del self.pcm[: 2 * AUDIO_CHUNK]
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.samples
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self.samples += AUDIO_CHUNK
        return frame

    def end(self) -> None:
        self.ended = True
        self.more.set()


CHANNEL_WAIT = 5.0  # seconds a closing session waits for the client's data channel to open
#: seconds an answered offer has to connect (ICE and DTLS); then its session is released
CONNECT_TIMEOUT = 10.0
MAX_UNSENT = 16  # text messages kept for a data channel that is not open yet (errors, the close)
STATS_INTERVAL = 1.0  # seconds between stats messages on the data channel


class PeerSession:
    """One WebRTC peer, as the server's session code sees a websocket: messages in (the first
    message, then speech as PCM16 and the data channel's text), frame messages out."""

    #: frames go out in real time, none ahead (the session's ``lead``): RTP is sent as it plays,
    #: and the browser's A/V sync, which maps each track's timestamps to its send time, was seen
    #: to start 0.5 s off after a burst and take seconds to settle (tests/test_web.py)
    lead = 0.0
    #: first-message fields this transport needs whatever the client (or its session token) asks:
    #: raw frames (the video encoder takes pixels), paced at real time (a track plays as it comes)
    transport_fields: dict[str, bool] = {"isJPG": False, "syncAudio": True, "realtime": True}

    def __init__(self, pc: RTCPeerConnection, first_message: str, peer: str) -> None:
        self.pc = pc
        self.remote_address = (peer, 0)
        self.api_key: Any = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.inbox.put_nowait(first_message)
        self.video = FrameTrack()
        self.audio = SyncedAudioTrack()
        self.channel: Any = None
        self.close_code: int | None = None
        self.transport = self  # for abort()
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._tasks: set[asyncio.Task[None]] = set()
        self.frames_sent = 0
        self._unsent: list[str] = []  # text for the data channel before it is open
        self._channel_open = asyncio.Event()
        self._connected = asyncio.Event()
        self.speech_ended = False  # DONE came on the data channel: the audio track is not read on
        self.runner: asyncio.Future[None] | None = None  # the session (held here: the loop keeps weak references)
        self._shut = False

    # --- what the session code calls -------------------------------------------------------------

    async def recv(self) -> str | bytes:
        item = await self.inbox.get()
        if item is _CLOSED:
            self.inbox.put_nowait(_CLOSED)
            raise ConnectionClosedOK(None, None)
        return item  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        with contextlib.suppress(ConnectionClosedOK):
            while True:
                yield await self.recv()

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._send_text(message)
            if message == "DONE":
                self.audio.end()
            return
        frame = decode_frame(message)
        image = np.frombuffer(frame.image, np.uint8).reshape(FRAME_HEIGHT, FRAME_WIDTH, 3)
        await self.video.frames.put((frame.index, image))
        self.frames_sent += 1
        if frame.audio:
            self.audio.push(frame.audio)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        self._send_text(json.dumps({"closed": code, "reason": reason}))
        # A session refused at once (no key, no such character) ends before the client's data
        # channel is open: its error waits for the channel, a little, so that the client learns why.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._channel_open.wait(), CHANNEL_WAIT)
        await asyncio.sleep(0.1)  # the data channel's last messages go out first
        await self.shutdown()

    def abort(self) -> None:
        self._spawn(self.shutdown())

    # --- the peer connection ---------------------------------------------------------------------

    def _send_text(self, text: str) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)
        elif not self._channel_open.is_set() and len(self._unsent) < MAX_UNSENT:
            self._unsent.append(text)  # goes out when the channel opens; a closed one takes nothing

    def _channel_opened(self) -> None:
        for text in self._unsent:
            self.channel.send(text)
        self._unsent.clear()
        self._channel_open.set()
        self._spawn(self._report())

    async def _report(self) -> None:
        """Stats on the data channel every STATS_INTERVAL s while the session runs: frames sent,
        seconds of lip-synced audio sent, frames waiting for the video encoder."""
        while self.close_code is None and not self.audio.ended:  # until DONE or the end
            await asyncio.sleep(STATS_INTERVAL)
            if self.channel is None or self.channel.readyState != "open":
                return
            stats = {"frames": self.frames_sent, "audioSeconds": round(self.audio.samples / SAMPLE_RATE, 3), "videoQueue": self.video.frames.qsize()}
            self._send_text(json.dumps({"stats": stats}))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def attach_tracks(self) -> None:
        """Our video and audio on the offer's video and audio transceivers (after the offer)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.sender.replaceTrack(self.video)
                transceiver.direction = "sendonly"
            elif transceiver.kind == "audio":
                transceiver.sender.replaceTrack(self.audio)
                transceiver.direction = "sendrecv"

    def listen(self) -> None:
        pc = self.pc

        @pc.on("datachannel")
        def on_channel(channel: Any) -> None:
            self.channel = channel
            if channel.readyState == "open":
                self._channel_opened()
            else:
                channel.on("open", self._channel_opened)

            @channel.on("message")
            def on_message(message: Any) -> None:
                if isinstance(message, str):
                    if message == "DONE":
                        # The microphone track goes on sending (and what was in flight arrives
                        # after the DONE): for the session, the speech ends here.
                        self.speech_ended = True
                    self.inbox.put_nowait(message)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                self._spawn(self._speech(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                self._connected.set()
            elif pc.connectionState in ("failed", "closed"):
                if pc.connectionState == "failed":
                    log.info("webrtc peer %s: the connection failed", self.remote_address[0])
                self.inbox.put_nowait(_CLOSED)

    async def run(self, handler: Callable[[Any], Any]) -> None:
        """The session in *handler*, and whatever way it ends, the peer connection closed (its
        UDP sockets, its encoders' threads); a peer that does not connect within
        :data:`CONNECT_TIMEOUT` s ends it."""
        watchdog = asyncio.ensure_future(self._connect_deadline())
        try:
            await handler(self)
        finally:
            watchdog.cancel()
            await self.shutdown()

    async def _connect_deadline(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("webrtc peer %s: %s: not connected within %g s (ICE or DTLS failed, or the client went away); released", self.remote_address[0], "limit", CONNECT_TIMEOUT)
            self.close_code = 1011
            self.inbox.put_nowait(_CLOSED)

    async def _speech(self, track: Any) -> None:
        """The client's audio track -> 16 kHz mono PCM16 messages for the session."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                for out in self._resampler.resample(frame):
                    data = out.to_ndarray().astype("<i2").tobytes()
                    if data and not self.speech_ended:
                        self.inbox.put_nowait(data)

    async def shutdown(self) -> None:
        """End the tracks and close the peer connection (once; later calls return at once)."""
        if self._shut:
            return
        self._shut = True
        for task in list(self._tasks):  # the stats and the speech reader; never the session itself
            if task is not asyncio.current_task():
                task.cancel()
        self.audio.end()
        with contextlib.suppress(asyncio.QueueFull):
            self.video.frames.put_nowait(_CLOSED)
        self.inbox.put_nowait(_CLOSED)
        await self.pc.close()


async def answer_offer(body: bytes, peer: str, handler: Callable[[Any], Any], ice_servers: list[Any] | None = None, api_key: Any = None) -> tuple[int, dict[str, Any]]:
    """``POST /webrtc/offer``: the answer's (status, JSON body); the session runs in *handler*,
    with *api_key* when the request proved one (the server's ``ApiKey``)."""
    try:
        obj = json.loads(body)
        sdp, kind, fields = obj["sdp"], obj["type"], obj.get("session", {})
        if not isinstance(sdp, str) or kind != "offer" or not isinstance(fields, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        return 400, {"error": "bad_request", "detail": 'the body must be {"sdp": ..., "type": "offer", "session": {first-message fields}}'}
    first = json.dumps({**fields, **PeerSession.transport_fields})
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
    session = PeerSession(pc, first, peer)
    session.api_key = api_key
    session.listen()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            raise ValueError("the offer has no video to receive: add a recvonly video transceiver")
        session.attach_tracks()
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # aiortc's SDP parser fails on a hostile offer in many ways, each the client's
        await pc.close()
        detail = f"cannot answer this offer: {type(exc).__name__}: {exc}"
        log.warning("webrtc peer %s: bad_request: %s", peer, shown(detail, 200))
        return 400, {"error": "bad_request", "detail": detail[:300]}
    session.runner = asyncio.ensure_future(session.run(handler))
    log.info("webrtc peer %s: answered", peer)
    return 200, {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

"""An avatar for a voice agent: the agent's speech in, a talking character out, in real time.

What the pipecat and LiveKit plug-ins share, with neither framework imported. One LipsyncStream
session lasts as long as the agent does: ``handleSilence`` keeps the character's idle frames
coming at 30 fps while the agent is quiet, and each burst of synthesized speech (any rate, mono
or stereo) is resampled to 16 kHz and sent as it comes; the server paces its frames at real
time, each with the audio it was lip-synced to. The session runs on a server given by URL, or on
one started in this process (on loopback, in this event loop) when no URL is given.

Which frames carry the agent's speech: the stream counts the bytes of speech it sent and the
audio bytes of the frames that came back (the protocol returns every sample, in order); frames
past the speech are the idle ones, and their audio (the server's silence) is left out, so that a
framework does not take an idle avatar for a speaking one. An interruption sends ``SKIP`` (the
server drops what it has not rendered) and drops the speech frames still on their way, until the
first idle frame; the end of a reply pads the last frame and the engine's lookahead with silence,
so that the last words are drawn at once, and marks the frame that ends the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..audio import PcmResampler
from ..client import LipsyncClient, decode_image
from ..wire.protocol import BYTES_PER_SAMPLE, DEFAULT_CHARACTER, SAMPLE_RATE, SessionParams

if TYPE_CHECKING:
    from ..serve.server_config import ServerConfig

log = logging.getLogger(__name__)

#: silence sent at the end of a reply: completes its last frame (up to 33 ms) and the engine's
#: lookahead (80 ms for the viseme engine, 200 ms for Wav2Lip), so nothing waits for more audio
END_PADDING_SECONDS = 0.25
KEEPALIVE_SECONDS = 30.0


@dataclass(frozen=True)
class AvatarFrame:
    """One video frame, with the agent's speech it shows (None for an idle frame)."""

    index: int
    image: np.ndarray  # (512, 512, 3) uint8, BGR
    audio: bytes | None  # PCM16, 16 kHz, mono: this frame's slice of the agent's speech
    reply_end: bool = False  # the last frame of a reply (its audio, padding included, is all out)

    def converted(self, code: int) -> bytes:
        """The picture as bytes in another layout (``cv2.COLOR_BGR2RGB``, ``…2RGBA``)."""
        return cv2.cvtColor(self.image, code).tobytes()


class AvatarStream:
    """One avatar session: :meth:`start`, then :meth:`push` speech, :meth:`end_reply`,
    :meth:`interrupt`, and iterate :meth:`frames` (one reader); :meth:`aclose` at the end.

    *url*: a running server's ``ws://…/LipsyncStream``; None starts one in this process (the
    default character, the default engine, or *server_config*'s). *character*: the
    ``videoReferenceUrl`` (None: the server's default one). *api_key*: for a server that
    asks for one. *jpeg*: frames travel as JPEG, or raw (no encoding or decoding); None (the
    default): JPEG from a server by URL, raw from one in this process.
    """

    def __init__(
        self,
        url: str | None = None,
        character: str | None = None,
        api_key: str | None = None,
        jpeg: bool | None = None,
        server_config: ServerConfig | None = None,
    ) -> None:
        self.url = url
        is_jpg = url is not None if jpeg is None else jpeg
        self.params = SessionParams(video_reference_url=character or DEFAULT_CHARACTER, handle_silence=True, is_jpg=is_jpg)
        self.api_key = api_key
        self._server_config = server_config
        self._stack = contextlib.AsyncExitStack()
        self._client: LipsyncClient | None = None
        self._resampler = PcmResampler()
        self._send_lock = asyncio.Lock()
        self.speech_sent = 0  # bytes of the agent's speech (and end-of-reply padding) sent
        self.speech_returned = 0  # of those, bytes that came back in frames
        self._reply_ends: deque[int] = deque()  # speech_sent at the end of each reply not yet out
        self._dropping = False  # interrupted: speech frames still on their way are dropped

    async def start(self) -> None:
        """Open the session (starting the in-process server first when there is no URL)."""
        url = self.url
        if url is None:
            from ..serve.runner import running_server
            from ..serve.server_config import ServerConfig

            _, local = await self._stack.enter_async_context(running_server(self._server_config or ServerConfig(port=0)))
            log.info("lip-sync server started in this process at %s", local)
            url = local
        self._client = await self._stack.enter_async_context(LipsyncClient(url, self.params, self.api_key))
        keepalive = asyncio.create_task(self._keepalive(), name="lipsync-keepalive")
        self._stack.push_async_callback(_cancelled, keepalive)

    async def _keepalive(self) -> None:
        """An empty audio message while the agent is quiet: the server's idle limit
        (``--max-idle-time``, 300 s by default) counts messages, and a quiet agent is not gone."""
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            async with self._send_lock:
                await self.client.send_audio(b"")

    @property
    def client(self) -> LipsyncClient:
        if self._client is None:
            raise RuntimeError("the avatar stream is not started")
        return self._client

    async def push(self, pcm: bytes, sample_rate: int, channels: int = 1) -> None:
        """Send a chunk of the agent's speech (interleaved PCM16 at *sample_rate*)."""
        await self._send_speech(self._resampler.convert(pcm, sample_rate, channels))

    async def end_reply(self) -> None:
        """The reply is over: send what the resampler holds and the padding, mark its end."""
        tail = self._resampler.flush()
        if self.speech_sent == self.speech_returned and not tail:
            return  # nothing of this reply is on its way (empty, or interrupted)
        await self._send_speech(tail + bytes(BYTES_PER_SAMPLE * int(END_PADDING_SECONDS * SAMPLE_RATE)))
        self._reply_ends.append(self.speech_sent)

    async def interrupt(self) -> None:
        """Barge-in: the server drops the speech it has not drawn; frames of it still on their
        way are dropped here, up to the first idle frame."""
        self._resampler.reset()
        async with self._send_lock:
            await self.client.skip()
        if self.speech_returned < self.speech_sent:
            self._dropping = True
        self.speech_returned = self.speech_sent
        self._reply_ends.clear()

    async def _send_speech(self, data: bytes) -> None:
        if not data:
            return
        self._dropping = False  # new speech: whatever comes now is to be shown
        self.speech_sent += len(data)
        async with self._send_lock:
            await self.client.send_audio(data)

    async def frames(self) -> AsyncIterator[AvatarFrame]:
        """Frames in order, at real time, until the session ends (a server error raises
        :class:`~lipsync_stream.client.ServerError`)."""
        async for message in self.client.frames():
            audio = message.audio or b""
            if self._dropping:
                if any(audio):
                    continue  # speech that was cut off, rendered before the SKIP
                self._dropping = False
            speech = self.speech_returned < self.speech_sent
            reply_end = False
            if speech:
                self.speech_returned += len(audio)
                while self._reply_ends and self.speech_returned >= self._reply_ends[0]:
                    self._reply_ends.popleft()
                    reply_end = True
            elif any(audio):
                # speech the server padded with its own silence while waiting for more
                # (counted already): still the agent's voice
                speech = True
            yield AvatarFrame(message.index, decode_image(message), audio if speech else None, reply_end)

    async def aclose(self) -> None:
        """End the session (and the in-process server, if this stream started one)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                async with self._send_lock:
                    await self._client.finish()
        await self._stack.aclose()
        self._client = None


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

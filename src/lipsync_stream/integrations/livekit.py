"""A LiveKit Agents avatar video generator (``[livekit]`` extra).

For LiveKit's self-hosted avatar runner: the avatar worker joins the room, receives the agent's
speech and publishes the character's video and audio::

    from livekit.agents.voice.avatar import AvatarOptions, AvatarRunner, DataStreamAudioReceiver

    video_gen = LipsyncVideoGenerator(AvatarStream("ws://avatar:8765/LipsyncStream"))
    runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room), video_gen=video_gen,
                          options=AvatarOptions(video_width=512, video_height=512, video_fps=30,
                                                audio_sample_rate=16000, audio_channels=1))
    await runner.start()

``push_audio`` takes the agent's speech (``rtc.AudioFrame``, any rate: resampled to 16 kHz) and
``AudioSegmentEnd`` (the reply's last words are drawn at once); ``clear_buffer`` is an
interruption (``SKIP``). Iterating gives, at 30 fps, ``rtc.VideoFrame`` (512x512 RGBA), before
each the ``rtc.AudioFrame`` it was lip-synced to (16 kHz mono; idle frames have none), and
``AudioSegmentEnd`` once a reply's audio is all out. ``AvatarStream()`` without a URL starts a
server in this process. See :mod:`.avatar` for the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import cv2
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, VideoGenerator

from ..wire.protocol import FRAME_HEIGHT, FRAME_WIDTH, SAMPLE_RATE
from .avatar import AvatarStream


class LipsyncVideoGenerator(VideoGenerator):  # type: ignore[misc]  # livekit publishes no type information: its classes are Any to mypy
    """The avatar for LiveKit's avatar runner: *avatar*'s session (None: ``AvatarStream()``, a
    server in this process with the default character). The session opens on first use (or
    :meth:`start`); :meth:`aclose` ends it."""

    def __init__(self, avatar: AvatarStream | None = None) -> None:
        self._stream = avatar if avatar is not None else AvatarStream()
        self._started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Open the session now (else the first audio or the first frame asked for opens it)."""
        async with self._starting:
            if not self._started:
                await self._stream.start()
                self._started = True

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        await self.start()
        if isinstance(frame, AudioSegmentEnd):
            await self._stream.end_reply()
        else:
            await self._stream.push(frame.data.tobytes(), frame.sample_rate, frame.num_channels)

    async def clear_buffer(self) -> None:
        if self._started:
            await self._stream.interrupt()

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        await self.start()
        async for frame in self._stream.frames():
            if frame.audio is not None:
                yield rtc.AudioFrame(frame.audio, SAMPLE_RATE, 1, len(frame.audio) // 2)
            yield rtc.VideoFrame(FRAME_WIDTH, FRAME_HEIGHT, rtc.VideoBufferType.RGBA, frame.converted(cv2.COLOR_BGR2RGBA))
            if frame.reply_end:
                yield AudioSegmentEnd()

    async def aclose(self) -> None:
        """End the session (and the in-process server, if it started one)."""
        await self._stream.aclose()
        self._started = False

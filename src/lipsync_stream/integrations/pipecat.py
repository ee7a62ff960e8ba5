"""A pipecat video service: the bot's speech in, the talking character out (``[pipecat]`` extra).

Place it after the TTS service, before the output transport, as pipecat's hosted-avatar
services go::

    pipeline = Pipeline([transport.input(), stt, context_aggregator.user(), llm, tts,
                         LipsyncVideoService(AvatarStream("ws://avatar:8765/LipsyncStream")),
                         transport.output(), context_aggregator.assistant()])

It takes the TTS audio (``TTSAudioRawFrame``, any rate: resampled to 16 kHz) to a LipsyncStream
server and sends on, at 30 fps, ``OutputImageRawFrame`` (512x512 RGB, shown in step with the
audio before it) and, for the frames that show speech, that frame's audio as ``TTSAudioRawFrame``
(16 kHz mono; the transport resamples it): the transport plays exactly the audio the mouth was
drawn for. An interruption (``InterruptionFrame``) becomes ``SKIP``; ``TTSStoppedFrame`` sends
the reply's last words at once. ``AvatarStream()`` without a URL starts a server in this process
(the default character, or ``character=`` one made by ``prepare``). See :mod:`.avatar` for the
session.
"""

from __future__ import annotations

import asyncio
from typing import Any

import cv2
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from ..client import ServerError
from ..wire.protocol import FRAME_HEIGHT, FRAME_WIDTH, SAMPLE_RATE
from .avatar import AvatarFrame, AvatarStream


class LipsyncVideoService(FrameProcessor):  # type: ignore[misc]  # pipecat has no type information
    """The avatar in a pipecat pipeline: *avatar*'s session (None: ``AvatarStream()``, a server in
    this process with the default character); other keyword arguments go to pipecat's
    ``FrameProcessor`` (``name``)."""

    def __init__(self, avatar: AvatarStream | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stream = avatar if avatar is not None else AvatarStream()
        self._reader: asyncio.Task[None] | None = None
        self._context_id: str | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, TTSAudioRawFrame):
            self._context_id = frame.context_id
            if self._reader is not None:
                await self._stream.push(frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, TTSStoppedFrame):
            if self._reader is not None:
                await self._stream.end_reply()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            if self._reader is not None:
                await self._stream.interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()

    async def _start(self) -> None:
        try:
            await self._stream.start()
        except (ServerError, OSError) as exc:
            await self.push_error(error_msg=f"cannot open the lip-sync session: {exc}", exception=exc, fatal=True)
            return
        self._reader = self.create_task(self._forward(), name="lipsync-frames")

    async def _stop(self) -> None:
        if self._reader is not None:
            await self.cancel_task(self._reader)
            self._reader = None
        await self._stream.aclose()

    async def _forward(self) -> None:
        """The server's frames down the pipeline: each frame's speech, then its picture."""
        try:
            async for frame in self._stream.frames():
                await self._push_avatar_frame(frame)
        except ServerError as exc:
            await self.push_error(error_msg=f"the lip-sync session ended: {exc}", exception=exc, fatal=True)

    async def _push_avatar_frame(self, frame: AvatarFrame) -> None:
        if frame.audio is not None:
            await self.push_frame(TTSAudioRawFrame(audio=frame.audio, sample_rate=SAMPLE_RATE, num_channels=1, context_id=self._context_id))
        image = OutputImageRawFrame(image=frame.converted(cv2.COLOR_BGR2RGB), size=(FRAME_WIDTH, FRAME_HEIGHT), format="RGB")
        image.sync_with_audio = True  # shown once the audio before it has gone out
        image.pts = frame.index
        await self.push_frame(image)

"""The pipecat video service in a real pipecat pipeline: TTS audio frames in, image frames and the
frames' audio out, with the lip-sync server in this process (no network service). Runs where the
``[pipecat]`` extra is installed (the README's test command installs it with every other extra)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from lipsync_stream.audio import PcmResampler, load_audio  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402
from lipsync_stream.integrations.avatar import END_PADDING_SECONDS  # noqa: E402
from lipsync_stream.integrations.pipecat import LipsyncVideoService  # noqa: E402

TTS_RATE = 24_000
CHUNK = 2_400  # 100 ms, as TTS services send


class Collector(FrameProcessor):  # type: ignore[misc]
    """The end of the pipeline: keeps what the video service sent, with when it came."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[float, OutputImageRawFrame]] = []
        self.audio: list[tuple[float, TTSAudioRawFrame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            self.images.append((time.monotonic(), frame))
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)


def speech(seconds: float) -> bytes:
    return load_audio(sample_speech(), rate=TTS_RATE)[: int(seconds * TTS_RATE)].tobytes()


async def run(script) -> Collector:  # type: ignore[no-untyped-def]
    collector = Collector()
    task = PipelineWorker(Pipeline([LipsyncVideoService(), collector]), cancel_on_idle_timeout=False)
    workers = WorkerRunner(handle_sigint=False)
    await workers.add_workers(task)
    runner = asyncio.create_task(workers.run())
    await asyncio.sleep(1.0)  # the server in this process starts, idle frames begin
    await script(task)
    await task.queue_frame(EndFrame())
    await asyncio.wait_for(runner, 30)
    return collector


def mouth_motion(images: list[OutputImageRawFrame]) -> float:
    """Mean absolute change between consecutive frames in the mouth's region."""
    pics = [np.frombuffer(f.image, np.uint8).reshape(512, 512, 3)[300:420, 190:330].astype(np.int16) for f in images]
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(pics, pics[1:], strict=False)]))


async def test_a_reply_comes_back_as_talking_frames_with_exactly_its_audio() -> None:
    pcm = speech(3.0)

    async def script(task: PipelineWorker) -> None:
        await task.queue_frame(TTSStartedFrame())
        await task.queue_frames([TTSAudioRawFrame(audio=pcm[i : i + 2 * CHUNK], sample_rate=TTS_RATE, num_channels=1) for i in range(0, len(pcm), 2 * CHUNK)])
        await task.queue_frame(TTSStoppedFrame())
        await asyncio.sleep(5.0)

    got = await run(script)
    images = [f for _, f in got.images]
    assert all(f.size == (512, 512) and f.format == "RGB" and len(f.image) == 512 * 512 * 3 for f in images)
    assert [f.pts for f in images] == list(range(images[0].pts, images[0].pts + len(images)))  # none missing
    # real time: 30 fps, idle before and after the reply
    first, last = got.images[0][0], got.images[-1][0]
    assert 26 <= (len(images) - 1) / (last - first) <= 34
    # the audio out is the reply resampled to 16 kHz, byte for byte, then the end-of-reply silence
    out = b"".join(f.audio for _, f in got.audio)
    resampler = PcmResampler()
    sent = b"".join(resampler.convert(pcm[i : i + 2 * CHUNK], TTS_RATE) for i in range(0, len(pcm), 2 * CHUNK)) + resampler.flush()
    assert out[: len(sent)] == sent
    assert not any(out[len(sent) :]) and len(out) - len(sent) >= 2 * int(END_PADDING_SECONDS * 16000)
    assert all(f.sample_rate == 16000 and f.num_channels == 1 for _, f in got.audio)
    # the mouth moves while it speaks and rests when idle
    talk_start = next(i for i, (t, _) in enumerate(got.images) if t >= got.audio[0][0])
    talk = images[talk_start : talk_start + 60]
    idle = images[-30:]
    assert mouth_motion(talk) > 4 * max(mouth_motion(idle), 0.05), (mouth_motion(talk), mouth_motion(idle))


async def test_an_interruption_cuts_the_reply_and_the_avatar_goes_idle() -> None:
    pcm = speech(8.0)

    async def script(task: PipelineWorker) -> None:
        await task.queue_frame(TTSStartedFrame())
        # the whole reply at once, as a fast TTS sends it: the server holds what it has not drawn
        await task.queue_frames([TTSAudioRawFrame(audio=pcm[i : i + 2 * CHUNK], sample_rate=TTS_RATE, num_channels=1) for i in range(0, len(pcm), 2 * CHUNK)])
        await asyncio.sleep(1.5)
        await task.queue_frame(InterruptionFrame())
        await asyncio.sleep(3.5)

    got = await run(script)
    seconds = sum(len(f.audio) for _, f in got.audio) / 32000
    assert 0.5 < seconds < 2.6, seconds  # the 1.5 s played and the server's lead (0.5 s), not 5 s of 8
    after = [f for t, f in got.images if t > got.audio[-1][0] + 0.2]
    assert len(after) > 30  # idle frames go on after the cut
    assert mouth_motion(after[-30:]) < 0.5

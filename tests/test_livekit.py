"""The LiveKit Agents video generator, driven as LiveKit's avatar runner drives it (push_audio,
clear_buffer, async iteration), with the lip-sync server in this process: no LiveKit server.
Runs where the ``[livekit]`` extra is installed (the README's test command installs it with
every other extra)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import collect_for

pytest.importorskip("livekit.agents")

from livekit import rtc  # noqa: E402
from livekit.agents.voice.avatar import AudioSegmentEnd, VideoGenerator  # noqa: E402

from lipsync_stream.audio import PcmResampler, load_audio  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402
from lipsync_stream.integrations.livekit import LipsyncVideoGenerator  # noqa: E402

RATE = 48_000  # what LiveKit's agents speak at
CHUNK = 480  # 10 ms frames, as LiveKit sends them


def speech_frames(seconds: float) -> list[rtc.AudioFrame]:
    pcm = load_audio(sample_speech(), rate=RATE)[: int(seconds * RATE)]
    return [rtc.AudioFrame(pcm[i : i + CHUNK].tobytes(), RATE, 1, len(pcm[i : i + CHUNK])) for i in range(0, len(pcm), CHUNK)]


async def test_a_reply_is_video_with_its_audio_then_a_segment_end() -> None:
    gen = LipsyncVideoGenerator()
    assert isinstance(gen, VideoGenerator)
    frames = speech_frames(2.5)
    try:
        await gen.start()

        async def speak() -> None:
            await asyncio.sleep(0.5)
            for f in frames:
                await gen.push_audio(f)
            await gen.push_audio(AudioSegmentEnd())

        speaker = asyncio.create_task(speak())
        got = await collect_for(gen, 5.0)
        await speaker
    finally:
        await gen.aclose()
    video = [i for _, i in got if isinstance(i, rtc.VideoFrame)]
    audio = [i for _, i in got if isinstance(i, rtc.AudioFrame)]
    ends = [n for n, (_, i) in enumerate(got) if isinstance(i, AudioSegmentEnd)]
    assert all(v.width == 512 and v.height == 512 and v.type == rtc.VideoBufferType.RGBA and len(v.data) == 512 * 512 * 4 for v in video)
    assert 120 <= len(video) <= 160  # 30 fps for 5 s, idle included
    assert all(a.sample_rate == 16000 and a.num_channels == 1 for a in audio)
    # the audio out is what was pushed, resampled to 16 kHz, then the end-of-reply silence
    resampler = PcmResampler()
    sent = b"".join(resampler.convert(f.data.tobytes(), RATE) for f in frames) + resampler.flush()
    out = b"".join(a.data.tobytes() for a in audio)
    assert out[: len(sent)] == sent and not any(out[len(sent) :])
    # one segment end, after the last audio frame, and idle video after it
    last_audio = max(n for n, (_, i) in enumerate(got) if isinstance(i, rtc.AudioFrame))
    assert ends == [last_audio + 2]  # the audio, its video frame, then the end
    assert len(got) - ends[0] > 30
    # the mouth moves while there is audio
    pics = [np.frombuffer(v.data, np.uint8).reshape(512, 512, 4)[300:420, 190:330, :3].astype(np.int16) for v in video]
    motion = [np.abs(a - b).mean() for a, b in zip(pics, pics[1:], strict=False)]
    assert max(motion) > 2.0 and np.mean(motion[-20:]) < 0.2


async def test_clear_buffer_stops_the_speech() -> None:
    gen = LipsyncVideoGenerator()
    try:
        await gen.start()

        async def speak() -> None:
            for f in speech_frames(8.0):
                await gen.push_audio(f)
            await asyncio.sleep(1.5)
            await gen.clear_buffer()

        speaker = asyncio.create_task(speak())
        got = await collect_for(gen, 5.0)
        await speaker
    finally:
        await gen.aclose()
    seconds = sum(len(i.data) for _, i in got if isinstance(i, rtc.AudioFrame)) / 16000
    assert 0.5 < seconds < 2.6, seconds  # what played before the cut and the server's lead, not 5 s of 8
    assert not any(isinstance(i, AudioSegmentEnd) for _, i in got)  # the runner reports the interruption itself
    last_audio = max(t for t, i in got if isinstance(i, rtc.AudioFrame))
    assert sum(1 for t, i in got if t > last_audio and isinstance(i, rtc.VideoFrame)) > 30

"""Record a LipsyncStream session to an MP4 (H.264 video + AAC audio), headless.

Video and audio both come from the frame messages: frame *k* is shown at k/30 s and its AUDIO
block is placed at the sample where frame *k* starts, so picture and sound line up by construction.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from ..wire.protocol import FPS, SAMPLE_RATE, FrameMessage, SessionParams, frames_for_samples
from .stream import decode_image, stream_audio


class Mp4Writer:
    """Writes decoded frames and their audio to an MP4 as they come."""

    def __init__(self, path: str | Path, width: int = 512, height: int = 512, crf: int = 20) -> None:
        self.path = Path(path)
        self.container = av.open(str(self.path), mode="w")
        self.video = self.container.add_stream("libx264", rate=FPS, options={"crf": str(crf), "preset": "veryfast"})
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.codec_context.time_base = Fraction(1, FPS)
        self.audio = self.container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self.audio.codec_context.time_base = Fraction(1, SAMPLE_RATE)
        self.frames = 0
        self.samples = 0

    def add(self, index: int, image: np.ndarray, pcm: np.ndarray | None) -> None:
        vf = av.VideoFrame.from_ndarray(image, format="bgr24")
        vf.pts = index
        vf.time_base = Fraction(1, FPS)
        self.container.mux(self.video.encode(vf))
        self.frames += 1
        if pcm is not None and len(pcm):
            af = av.AudioFrame.from_ndarray((pcm.astype(np.float32) / 32768.0).reshape(1, -1), format="fltp", layout="mono")
            af.sample_rate = SAMPLE_RATE
            af.pts = self.samples
            af.time_base = Fraction(1, SAMPLE_RATE)
            self.container.mux(self.audio.encode(af))
            self.samples += len(pcm)

    def close(self) -> None:
        self.container.mux(self.video.encode(None))
        self.container.mux(self.audio.encode(None))
        self.container.close()


async def record(url: str, pcm: np.ndarray, out: str | Path, params: SessionParams | None = None, progress: bool = True, api_key: str | None = None) -> int:
    """Stream *pcm* through the server at *url*, write the session to *out*; returns frame count."""
    params = params or SessionParams(realtime=False)
    total = frames_for_samples(len(pcm))
    writer = Mp4Writer(out)
    expected = 0
    try:
        with tqdm(total=total, unit="frame", desc="rendering", disable=not progress, leave=False) as bar:
            frame: FrameMessage
            async for frame in stream_audio(url, pcm, params, api_key=api_key):
                if frame.index != expected:
                    raise RuntimeError(f"server sent frame {frame.index}, expected {expected}")
                expected += 1
                writer.add(frame.index, decode_image(frame), frame.pcm() if frame.audio is not None else None)
                bar.update(1)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        writer.path.unlink(missing_ok=True)  # no half-written video left behind
        raise
    writer.close()
    return expected

"""What a WebRTC test (or bench) on loopback needs: ICE that offers 127.0.0.1, and a microphone
track that says given speech in real time."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError


def loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """For ``aioice.ice.get_host_addresses``, which leaves loopback out: only 127.0.0.1."""
    return ["127.0.0.1"]


class Speech(MediaStreamTrack):
    """A microphone that says *pcm* (16 kHz) in real time, 20 ms at a time, then stops."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self.pcm, self.at, self.started = pcm, 0, 0.0

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self.at == 0:
            self.started = loop.time()
        if self.at >= len(self.pcm):
            self.stop()
            raise MediaStreamError
        await asyncio.sleep(max(0.0, self.started + self.at / 16000 - loop.time()))
        chunk = np.pad(self.pcm[self.at : self.at + 320], (0, max(0, self.at + 320 - len(self.pcm))))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1).astype("<i2"), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, self.at, Fraction(1, 16000)
        self.at += 320
        return frame

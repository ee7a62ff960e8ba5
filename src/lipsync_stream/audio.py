"""Audio files in and out: any format FFmpeg reads becomes PCM16, 16 kHz, mono."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from .wire.protocol import SAMPLE_RATE


class AudioError(Exception):
    """The file cannot be read as audio; the message says why."""


def load_audio(path: str | Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode and resample (wav, mp3, flac, ogg, ...) to int16 mono at *rate*."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"no such audio file: {path}")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path.name} has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"cannot decode audio {path.name}: {exc}") from None
    if not chunks:
        raise AudioError(f"{path.name} holds no audio samples")
    return np.concatenate(chunks).astype(np.int16, copy=False)


class PcmResampler:
    """A stream of PCM16 chunks at any rate and channel count, as 16 kHz mono PCM16 (FFmpeg's
    resampler, state kept across chunks: no clicks at their joins)."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._format: tuple[int, int] | None = None

    def convert(self, pcm: bytes, rate: int, channels: int = 1) -> bytes:
        """*pcm* (interleaved int16 at *rate* Hz) at 16 kHz mono; at 16 kHz mono it passes as is."""
        if channels not in (1, 2) or rate <= 0:
            raise AudioError(f"cannot resample {channels}-channel audio at {rate} Hz (mono or stereo PCM16 only)")
        if len(pcm) % (2 * channels):
            raise AudioError(f"{len(pcm)} bytes of {channels}-channel PCM16 is not a whole number of samples")
        if rate == SAMPLE_RATE and channels == 1 and self._resampler is None:
            return bytes(pcm)
        if self._format not in (None, (rate, channels)):
            self.flush()  # the input changed its format: start a new resampler for it
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._format = (rate, channels)
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, np.int16).reshape(1, -1), format="s16", layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = rate
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(frame))

    def flush(self) -> bytes:
        """What the resampler still holds (the end of a stream); the next chunk starts afresh."""
        tail = b"" if self._resampler is None else b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(None))
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop what the resampler holds (the speech was cut off)."""
        self._resampler, self._format = None, None


def save_wav(path: str | Path, pcm: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write int16 mono samples as a WAV file."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())

"""Audio files in and out: any format FFmpeg reads becomes PCM16, 16 kHz, mono."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from .protocol import SAMPLE_RATE


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


def save_wav(path: str | Path, pcm: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write int16 mono samples as a WAV file."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())

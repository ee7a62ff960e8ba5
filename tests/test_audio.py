"""Audio files of any common format become 16 kHz mono PCM16 of the same duration."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync_stream.audio import AudioError, load_audio, save_wav


def write_audio(path: Path, codec: str, rate: int, channels: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, layout=layout)
        fmt = s.codec_context.codec.audio_formats[0].name
        data = np.tile(tone, (channels, 1))
        if not fmt.endswith("p"):
            data = data.T.reshape(1, -1)
        if fmt.startswith("s16"):
            data = (data * 32767).astype(np.int16)
        elif fmt.startswith("s32"):
            data = (data * 2**31).astype(np.int32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return tone


@pytest.mark.parametrize(
    ("name", "codec", "rate", "channels"),
    [("a.wav", "pcm_s16le", 44100, 2), ("a.flac", "flac", 48000, 1), ("a.mp3", "libmp3lame", 44100, 2), ("a.ogg", "libopus", 48000, 2)],
)
def test_formats_are_resampled_to_16k_mono(tmp_path: Path, name: str, codec: str, rate: int, channels: int) -> None:
    write_audio(tmp_path / name, codec, rate, channels, 1.5)
    pcm = load_audio(tmp_path / name)
    assert pcm.dtype == np.int16
    assert abs(len(pcm) - 24000) < 16000 * 0.08  # codec padding is a few ms at most
    # still a 440 Hz tone at about the same level
    spectrum = np.abs(np.fft.rfft(pcm[2000:18000].astype(float)))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 3
    assert 0.3 * 32767 < np.abs(pcm[4000:20000]).max() < 0.5 * 32767


def test_wav_round_trip_is_exact(tmp_path: Path) -> None:
    pcm = np.random.default_rng(0).integers(-30000, 30000, 16001, dtype=np.int16)
    save_wav(tmp_path / "x.wav", pcm)
    assert np.array_equal(load_audio(tmp_path / "x.wav"), pcm)


def test_unreadable_audio_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.mp3").write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="junk.mp3"):
        load_audio(tmp_path / "junk.mp3")

"""Hand-made test sounds: vowels and hums by additive formant synthesis, at a chosen loudness."""

from __future__ import annotations

import numpy as np

from lipsync_stream.engines.base import MouthGeometry, ReferenceFrame

RATE = 16000

VOWELS = {  # (F1, F2, F3) Hz, adult male averages
    "a": (750, 1200, 2600),
    "i": (280, 2250, 2900),
    "u": (310, 870, 2250),
    "e": (500, 1800, 2500),
}


def harmonic(seconds: float, formants: list[tuple[float, float, float]], f0: float = 120.0, rms_db: float = -20.0, tilt_db_per_oct: float = -6.0) -> np.ndarray:
    """Sum of f0 harmonics shaped by resonances (freq, bandwidth, gain), scaled to *rms_db* dBFS."""
    t = np.arange(int(seconds * RATE)) / RATE
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / RATE
    out = np.zeros_like(t)
    for h in range(1, int(7800 / f0)):
        f = h * f0
        amp = sum(g / (1.0 + ((f - fc) / bw) ** 2) for fc, bw, g in formants) * (h ** (tilt_db_per_oct / 6.02))
        out += amp * np.sin(h * phase)
    out *= 10 ** (rms_db / 20) / (np.sqrt(np.mean(out**2)) + 1e-12)
    return np.clip(out * 32767, -32768, 32767).astype(np.int16)


def vowel(name: str, seconds: float = 0.5, rms_db: float = -20.0, f0: float = 120.0) -> np.ndarray:
    f1, f2, f3 = VOWELS[name]
    return harmonic(seconds, [(f1, 80, 1.0), (f2, 100, 0.5), (f3, 150, 0.25)], f0, rms_db)


def hum(seconds: float = 0.5, rms_db: float = -20.0, f0: float = 120.0) -> np.ndarray:
    """A closed-mouth hum (nasal murmur): one strong low resonance, little above 400 Hz."""
    return harmonic(seconds, [(250, 60, 1.0), (2200, 200, 0.02)], f0, rms_db, tilt_db_per_oct=-12.0)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


#: the weight-free engines' mouths do not depend on the picture; any reference frame will do
REFERENCE = ReferenceFrame(0, np.zeros((512, 512, 3), np.uint8), MouthGeometry(256.0, 330.0, 40.0))


def engine_frames(engine, pcm: np.ndarray, analyse: bool = False) -> list:  # type: ignore[no-untyped-def]
    """Run *pcm* through *engine* frame by frame as a session would; mouth shapes (or analyses)."""
    from lipsync_stream.wire.protocol import AudioFramer

    framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
    framer.push(pcm.astype("<i2").tobytes())
    framer.flush()
    stream = engine.stream()
    out = []
    while framer.ready():
        frame = framer.pop()
        out.append(stream.analyse(frame) if analyse else stream.mouth(frame, REFERENCE))
    return out

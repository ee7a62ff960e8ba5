"""Speech features on 10 ms hops of a 16 kHz stream: level, voicing, band energies, a nasal
murmur measure and a log-mel spectrum (for the viseme recognizer).

Features are computed for a batch of hop centres at once with numpy (framing, FFT), and
:class:`HopCache` keeps each hop's features by its position in the stream, so consecutive video
frames, whose windows overlap, compute every hop once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol import SAMPLE_RATE

HOP = 160  # 10 ms
WIN = 400  # 25 ms
NFFT = 1024  # zero-padded: the autocorrelation of a 400-sample frame does not wrap
_FREQS = np.fft.rfftfreq(NFFT, 1.0 / SAMPLE_RATE)
_WINDOW = np.hanning(WIN).astype(np.float32)
# The Hann window's own autocorrelation: dividing by it makes a periodic signal score near 1.
_WINDOW_AC = np.fft.irfft(np.abs(np.fft.rfft(_WINDOW, NFFT)) ** 2)[:NFFT // 2]
_PITCH_LAGS = slice(SAMPLE_RATE // 450, SAMPLE_RATE // 70)  # 70-450 Hz

BANDS = {
    "low": (60.0, 300.0),  # voicing and nasal murmur
    "f1": (300.0, 1000.0),  # first formant: the jaw
    "f2": (1000.0, 3000.0),  # second formant: the tongue and lips
    "high": (3000.0, 5000.0),
    "hiss": (5000.0, 8000.0),  # s, sh, f
}
# Bands are runs of FFT bins: slices are cheaper than boolean masks.
_BAND_SLICES = {name: slice(int(np.searchsorted(_FREQS, lo)), int(np.searchsorted(_FREQS, hi))) for name, (lo, hi) in BANDS.items()}
_MURMUR_BASE = (_FREQS >= 60) & (_FREQS < 600)
_MURMUR_MID = (_FREQS >= 600) & (_FREQS < 1500)
_MURMUR_UPPER = (_FREQS >= 1500) & (_FREQS < 3500)
N_MEL = 24  # log-mel bands (for the viseme recognizer), 100 Hz to 7.6 kHz


def _mel_filterbank(n: int = N_MEL, low: float = 100.0, high: float = 7600.0) -> np.ndarray:
    """(FFT bins, n) triangular filters equally spaced on the mel scale (HTK formula)."""
    mels = np.linspace(2595.0 * np.log10(1.0 + low / 700.0), 2595.0 * np.log10(1.0 + high / 700.0), n + 2)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    fb = np.zeros((len(_FREQS), n))
    for i in range(n):
        rise = (_FREQS - hz[i]) / (hz[i + 1] - hz[i])
        fall = (hz[i + 2] - _FREQS) / (hz[i + 2] - hz[i + 1])
        fb[:, i] = np.clip(np.minimum(rise, fall), 0.0, None)
    return fb


_MEL_FB = _mel_filterbank()


@dataclass(frozen=True)
class Features:
    """Per-hop features; every array has one entry per hop centre."""

    level_db: np.ndarray  # RMS level in dBFS
    voicing: np.ndarray  # 0..1, normalized autocorrelation peak in the pitch range
    bands_db: dict[str, np.ndarray]  # energy per band, dB
    murmur_db: dict[str, np.ndarray]  # dB of 0.6-1.5 kHz ("mid") and 1.5-3.5 kHz ("upper") over 60-600 Hz
    mel_db: np.ndarray  # (hops, N_MEL) log-mel band energies, dB

    def __len__(self) -> int:
        return len(self.level_db)

    def matrix(self) -> np.ndarray:
        """(hops, fields) float64: every feature of every hop, one row per hop."""
        cols = [self.level_db, self.voicing, *(self.bands_db[b] for b in BANDS), self.murmur_db["mid"], self.murmur_db["upper"]]
        return np.concatenate([np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1), np.asarray(self.mel_db, np.float64).reshape(len(cols[0]), N_MEL)], axis=1)

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> Features:
        nb = len(BANDS)
        bands = {name: m[:, 2 + i] for i, name in enumerate(BANDS)}
        c = m[:, 2 + nb :]
        return cls(m[:, 0], m[:, 1], bands, {"mid": c[:, 0], "upper": c[:, 1]}, c[:, 2 : 2 + N_MEL])


class HopCache:
    """Hop features by position in the stream, so that consecutive frames compute each hop once.

    A hop is kept only when its whole 25 ms lies in real audio; the cache is cleared when SKIP
    moves the stream (the frame's ``epoch`` changes). Rows are computed exactly as without the
    cache, so the output does not change, only the time it takes.
    """

    def __init__(self) -> None:
        self._rows: dict[int, np.ndarray] = {}
        self._epoch = 0

    def features(self, window: np.ndarray, centres: np.ndarray, start: int, valid: int, epoch: int) -> Features:
        if epoch != self._epoch:
            self._rows.clear()
            self._epoch = epoch
        positions = (centres + start).tolist()
        missing = [i for i, p in enumerate(positions) if p not in self._rows]
        rows: dict[int, np.ndarray] = {}
        if missing:
            computed = analyse(window, centres[missing]).matrix()
            half = WIN // 2
            for j, i in enumerate(missing):
                rows[positions[i]] = computed[j]
                if centres[i] - half >= 0 and centres[i] + half <= valid:
                    self._rows[positions[i]] = computed[j]
        m = np.stack([self._rows[p] if p in self._rows else rows[p] for p in positions])
        lowest = positions[0]
        for p in [p for p in self._rows if p < lowest]:
            del self._rows[p]
        return Features.from_matrix(m)


def frames_at(signal: np.ndarray, centres: np.ndarray, width: int = WIN) -> np.ndarray:
    """(len(centres), width) float32 frames centred on *centres*; outside the signal reads as 0."""
    half = width // 2
    padded = np.concatenate([np.zeros(half, np.float32), signal.astype(np.float32), np.zeros(half, np.float32)])
    idx = centres[:, None] + np.arange(width)[None, :]  # padded coordinates: centre - half + j + half
    return padded[np.clip(idx, 0, len(padded) - 1)]


def analyse(signal: np.ndarray, centres: np.ndarray) -> Features:
    """Features of the 25 ms frames centred on *centres* (sample indices into *signal*, int16)."""
    x = frames_at(signal, centres) / 32768.0
    level = 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-10)

    spec = np.fft.rfft(x * _WINDOW, NFFT)
    power = spec.real**2 + spec.imag**2
    bands = {name: 10.0 * np.log10(power[:, sl].sum(axis=1) + 1e-10) for name, sl in _BAND_SLICES.items()}

    ac = np.fft.irfft(power, NFFT)[:, : NFFT // 2] / _WINDOW_AC
    voicing = np.clip(ac[:, _PITCH_LAGS].max(axis=1) / (ac[:, 0] + 1e-12), 0.0, 1.0)

    base = power[:, _MURMUR_BASE].sum(axis=1) + 1e-10
    murmur = {
        "mid": 10.0 * np.log10((power[:, _MURMUR_MID].sum(axis=1) + 1e-10) / base),
        "upper": 10.0 * np.log10((power[:, _MURMUR_UPPER].sum(axis=1) + 1e-10) / base),
    }
    # Row by row: a matrix product's rounding depends on how many rows it is given, and a hop's
    # features must not depend on which other hops were computed with it (HopCache).
    mel = 10.0 * np.log10(np.array([row @ _MEL_FB for row in power]).reshape(len(power), N_MEL) + 1e-10)
    return Features(level, voicing, bands, murmur, mel)

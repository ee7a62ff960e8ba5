"""Speech features on 10 ms hops of a 16 kHz stream: level, voicing, band energies, and where
the LPC envelope puts its mass (first and second formant regions, nasal murmur).

Features are computed for a batch of hop centres at once with numpy (framing, FFT, LPC), and
:class:`HopCache` keeps each hop's features by its position in the stream, so consecutive video
frames, whose windows overlap, compute every hop once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ..protocol import SAMPLE_RATE

HOP = 160  # 10 ms
WIN = 400  # 25 ms
NFFT = 1024  # zero-padded: the autocorrelation of a 400-sample frame does not wrap
LPC_ORDER = 14
PRE_EMPHASIS = 0.95
_FREQS = np.fft.rfftfreq(NFFT, 1.0 / SAMPLE_RATE)
_WINDOW = np.hanning(WIN).astype(np.float32)
_LPC_WINDOW = np.hamming(WIN - 1).astype(np.float32)
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
_F1_BAND = (_FREQS >= 200) & (_FREQS <= 1100)
_F2_BAND = (_FREQS >= 900) & (_FREQS <= 3000)
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
    centroid: np.ndarray  # Hz, spectral centroid
    f1_centroid: np.ndarray  # Hz, centre of the LPC envelope's mass in 200-1100 Hz: rises as the jaw opens
    f2_centroid: np.ndarray  # Hz, centre of the envelope's mass in 0.9-3 kHz: follows F2 (low when rounded)
    murmur_db: dict[str, np.ndarray]  # dB of 0.6-1.5 kHz ("mid") and 1.5-3.5 kHz ("upper") over 60-600 Hz
    mel_db: np.ndarray  # (hops, N_MEL) log-mel band energies, dB

    def __len__(self) -> int:
        return len(self.level_db)

    def matrix(self) -> np.ndarray:
        """(hops, fields) float64: every feature of every hop, one row per hop."""
        cols = [self.level_db, self.voicing, *(self.bands_db[b] for b in BANDS), self.centroid, self.f1_centroid, self.f2_centroid, self.murmur_db["mid"], self.murmur_db["upper"]]
        return np.concatenate([np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1), np.asarray(self.mel_db, np.float64).reshape(len(cols[0]), N_MEL)], axis=1)

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> Features:
        nb = len(BANDS)
        bands = {name: m[:, 2 + i] for i, name in enumerate(BANDS)}
        c = m[:, 2 + nb :]
        return cls(m[:, 0], m[:, 1], bands, c[:, 0], c[:, 1], c[:, 2], {"mid": c[:, 3], "upper": c[:, 4]}, c[:, 5 : 5 + N_MEL])


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


@njit(nogil=True, cache=True)
def levinson(r: np.ndarray, order: int) -> np.ndarray:
    """LPC coefficients a[0..order] (a[0] = 1) for each row of autocorrelations *r* (float64).

    Compiled: an engine asks for two or three new hops per frame, where numpy's per-call
    overhead would cost more than the arithmetic.
    """
    out = np.zeros((r.shape[0], order + 1), dtype=np.float64)
    prev = np.empty(order + 1, dtype=np.float64)
    for row in range(r.shape[0]):
        rr = r[row]
        a = out[row]
        a[0] = 1.0
        err = rr[0] + 1e-9
        for i in range(1, order + 1):
            acc = rr[i]
            for j in range(1, i):
                acc += a[j] * rr[i - j]
            k = -acc / err
            prev[:i] = a[:i]
            for j in range(1, i):
                a[j] = prev[j] + k * prev[i - j]
            a[i] = k
            err = err * (1.0 - k * k) + 1e-12
    return out


def warm_up() -> None:
    """Compile :func:`levinson` now (see :func:`.interior.warm_up`)."""
    levinson(np.ones((1, LPC_ORDER + 1)), LPC_ORDER)


def analyse(signal: np.ndarray, centres: np.ndarray) -> Features:
    """Features of the 25 ms frames centred on *centres* (sample indices into *signal*, int16)."""
    x = frames_at(signal, centres) / 32768.0
    level = 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-10)

    spec = np.fft.rfft(x * _WINDOW, NFFT)
    power = spec.real**2 + spec.imag**2
    bands = {name: 10.0 * np.log10(power[:, sl].sum(axis=1) + 1e-10) for name, sl in _BAND_SLICES.items()}
    total = power[:, 1:].sum(axis=1) + 1e-12
    centroid = (power[:, 1:] * _FREQS[1:]).sum(axis=1) / total

    ac = np.fft.irfft(power, NFFT)[:, : NFFT // 2] / _WINDOW_AC
    voicing = np.clip(ac[:, _PITCH_LAGS].max(axis=1) / (ac[:, 0] + 1e-12), 0.0, 1.0)

    emph = (x[:, 1:] - PRE_EMPHASIS * x[:, :-1]) * _LPC_WINDOW
    espec = np.fft.rfft(emph, NFFT)
    r = np.fft.irfft(espec.real**2 + espec.imag**2, NFFT)[:, : LPC_ORDER + 1]
    r[:, 0] *= 1.0001  # a little white noise keeps the recursion stable on silence
    a = levinson(np.ascontiguousarray(r, dtype=np.float64), LPC_ORDER)
    envelope = 1.0 / (np.abs(np.fft.rfft(a, NFFT)) ** 2 + 1e-12)
    low_env = envelope[:, _F1_BAND]
    f1c = (low_env * _FREQS[_F1_BAND]).sum(axis=1) / (low_env.sum(axis=1) + 1e-12)
    hi_env = envelope[:, _F2_BAND]
    f2c = (hi_env * _FREQS[_F2_BAND]).sum(axis=1) / (hi_env.sum(axis=1) + 1e-12)
    base = power[:, _MURMUR_BASE].sum(axis=1) + 1e-10
    murmur = {
        "mid": 10.0 * np.log10((power[:, _MURMUR_MID].sum(axis=1) + 1e-10) / base),
        "upper": 10.0 * np.log10((power[:, _MURMUR_UPPER].sum(axis=1) + 1e-10) / base),
    }
    # Row by row: a matrix product's rounding depends on how many rows it is given, and a hop's
    # features must not depend on which other hops were computed with it (HopCache).
    mel = 10.0 * np.log10(np.array([row @ _MEL_FB for row in power]).reshape(len(power), N_MEL) + 1e-10)
    return Features(level, voicing, bands, centroid, f1c, f2c, murmur, mel)

"""Speech features on 10 ms hops of a 16 kHz stream: level, voicing, band energies, a nasal
murmur measure and a log-mel spectrum (for the viseme recognizer).

Features are computed for a batch of hop centres at once in one compiled call (numba, with
rocket-fft's FFT) that does not hold the GIL, so that sessions rendering in threads of one
process do not wait for each other; :class:`HopCache` keeps each hop's features by its position
in the stream, so consecutive video frames, whose windows overlap, compute every hop once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ..wire.protocol import SAMPLE_RATE

HOP = 160  # 10 ms
WIN = 400  # 25 ms
NFFT = 1024  # zero-padded: the autocorrelation of a 400-sample frame does not wrap
_FREQS = np.fft.rfftfreq(NFFT, 1.0 / SAMPLE_RATE)
_WINDOW = np.hanning(WIN).astype(np.float32)
# The Hann window's own autocorrelation: dividing by it makes a periodic signal score near 1.
_WINDOW_AC = np.fft.irfft(np.abs(np.fft.rfft(_WINDOW, NFFT)) ** 2)[:NFFT // 2]
_LAG_MIN, _LAG_MAX = SAMPLE_RATE // 450, SAMPLE_RATE // 70  # pitch lags: 70-450 Hz

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
# Columns of a hop's row (Features.matrix, hop_matrix): level, voicing, the bands in BANDS'
# order, the murmur's mid and upper ratios, then the log-mel bands.
LEVEL, VOICING, BAND0 = 0, 1, 2
MURMUR_MID, MURMUR_UPPER = BAND0 + len(BANDS), BAND0 + len(BANDS) + 1
MEL0 = MURMUR_UPPER + 1
FIELDS = MEL0 + N_MEL


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
        bands = {name: m[:, BAND0 + i] for i, name in enumerate(BANDS)}
        return cls(m[:, LEVEL], m[:, VOICING], bands, {"mid": m[:, MURMUR_MID], "upper": m[:, MURMUR_UPPER]}, m[:, MEL0:FIELDS])


class HopCache:
    """Hop features by position in the stream, so that consecutive frames compute each hop once.

    A hop is kept only when its whole 25 ms lies in real audio; the cache is cleared when SKIP
    moves the stream (the frame's ``epoch`` changes). Rows are computed exactly as without the
    cache, so the output does not change, only the time it takes.
    """

    SLOTS = 64  # hops kept: a frame needs 19 (CONTEXT), consecutive frames share most of them

    def __init__(self) -> None:
        self._positions = np.full(self.SLOTS, _NONE, np.int64)  # the hop in each slot
        self._rows = np.zeros((self.SLOTS, FIELDS))
        self._epoch = 0

    def features(self, window: np.ndarray, centres: np.ndarray, start: int, valid: int, epoch: int) -> Features:
        """The features of the hops at *centres* (indices into *window*, which starts at stream
        position *start* and holds real audio up to *valid*)."""
        return Features.from_matrix(self.matrix(window, centres, start, valid, epoch))

    def matrix(self, window: np.ndarray, centres: np.ndarray, start: int, valid: int, epoch: int) -> np.ndarray:
        """:meth:`features` as :func:`hop_matrix` lays them out, in one call that does not hold
        the GIL (:func:`_cached_rows`)."""
        if epoch != self._epoch:
            self._positions[:] = _NONE
            self._epoch = epoch
        out = np.empty((len(centres), FIELDS))
        _cached_rows(np.ascontiguousarray(window, np.int16), np.ascontiguousarray(centres, np.int64), start, valid, self._positions, self._rows, *_TABLES, out)
        return out


_NONE = np.iinfo(np.int64).min  # an empty slot


@njit(nogil=True, cache=True)
def _cached_rows(window, centres, start, valid, positions, rows, hann, hann_ac, band_bins, mel_fb, out):  # type: ignore[no-untyped-def]
    """*out*: the rows of the hops at *centres*, from the slots (*positions*, *rows*: a hop at
    stream position p sits in slot p // HOP mod SLOTS) or computed, and kept when the hop's
    25 ms lies wholly in real audio."""
    n_slots = len(positions)
    missing = np.empty(len(centres), np.int64)
    n_missing = 0
    for i in range(len(centres)):
        p = centres[i] + start
        slot = (p // HOP) % n_slots
        if positions[slot] == p:
            out[i] = rows[slot]
        else:
            missing[n_missing] = i
            n_missing += 1
    if n_missing == 0:
        return
    which = missing[:n_missing]
    computed = np.empty((n_missing, out.shape[1]))
    _hop_rows(window, centres[which], hann, hann_ac, band_bins, mel_fb, computed)
    half = WIN // 2
    for j in range(n_missing):
        i = which[j]
        out[i] = computed[j]
        if centres[i] - half >= 0 and centres[i] + half <= valid:
            p = centres[i] + start
            slot = (p // HOP) % n_slots
            positions[slot] = p
            rows[slot] = computed[j]


def analyse(signal: np.ndarray, centres: np.ndarray) -> Features:
    """Features of the 25 ms frames centred on *centres* (sample indices into *signal*, int16)."""
    return Features.from_matrix(hop_matrix(signal, centres))


def hop_matrix(signal: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(len(centres), FIELDS) float64: :func:`analyse`'s features as :meth:`Features.matrix` lays
    them out, from one compiled call that does not hold the GIL (:func:`_hop_rows`)."""
    samples = np.ascontiguousarray(signal, dtype=np.int16)
    at = np.ascontiguousarray(centres, dtype=np.int64)
    out = np.empty((len(at), FIELDS), np.float64)
    _hop_rows(samples, at, *_TABLES, out)
    return out


# Every band as [first bin, end bin): the five bands, then the murmur's base, mid and upper.
_BAND_BINS = np.array(
    [(sl.start, sl.stop) for sl in _BAND_SLICES.values()] + [(int(np.argmax(m)), int(len(m) - np.argmax(m[::-1]))) for m in (_MURMUR_BASE, _MURMUR_MID, _MURMUR_UPPER)],
    dtype=np.int64,
)
_MEL_FB_T = np.ascontiguousarray(_MEL_FB.T)  # (N_MEL, bins)
_TABLES = (_WINDOW, _WINDOW_AC, _BAND_BINS, _MEL_FB_T)  # what _hop_rows reads besides the audio


@njit(nogil=True, cache=True)
def _hop_rows(signal, centres, window, window_ac, band_bins, mel_fb, out):  # type: ignore[no-untyped-def]
    """Every hop's features into *out*, one row per centre: level (dBFS), voicing (normalised
    autocorrelation peak at 70-450 Hz), band energies (dB), the murmur's band ratios (dB), log-mel
    (dB). Each row depends only on its own samples (a hop is the same whichever hops it is
    computed with: :class:`HopCache` relies on it)."""
    n = len(centres)
    half = WIN // 2
    x = np.zeros((n, WIN), np.float32)
    windowed = np.zeros((n, WIN), np.float32)
    for i in range(n):
        for j in range(WIN):
            k = centres[i] - half + j
            if 0 <= k < len(signal):
                x[i, j] = np.float32(signal[k]) / np.float32(32768.0)
            windowed[i, j] = x[i, j] * window[j]
    spec = np.fft.rfft(windowed, NFFT)
    power = np.empty(spec.shape, np.float32)
    for i in range(n):
        for b in range(spec.shape[1]):
            power[i, b] = spec[i, b].real * spec[i, b].real + spec[i, b].imag * spec[i, b].imag
    ac = np.fft.irfft(power, NFFT)
    nb = len(band_bins) - 3
    for i in range(n):
        energy = 0.0
        for j in range(WIN):
            energy += float(x[i, j]) * float(x[i, j])
        out[i, LEVEL] = 10.0 * np.log10(energy / WIN + 1e-10)
        peak = -np.inf
        for lag in range(_LAG_MIN, _LAG_MAX):
            peak = max(peak, ac[i, lag] / window_ac[lag])
        out[i, VOICING] = min(max(peak / (ac[i, 0] / window_ac[0] + 1e-12), 0.0), 1.0)
        sums = np.zeros(len(band_bins))
        for k in range(len(band_bins)):
            for b in range(band_bins[k, 0], band_bins[k, 1]):
                sums[k] += power[i, b]
        for k in range(nb):
            out[i, BAND0 + k] = 10.0 * np.log10(sums[k] + 1e-10)
        base = sums[nb] + 1e-10
        out[i, MURMUR_MID] = 10.0 * np.log10((sums[nb + 1] + 1e-10) / base)
        out[i, MURMUR_UPPER] = 10.0 * np.log10((sums[nb + 2] + 1e-10) / base)
        for m in range(mel_fb.shape[0]):
            total = 0.0
            for b in range(mel_fb.shape[1]):
                total += mel_fb[m, b] * power[i, b]
            out[i, MEL0 + m] = 10.0 * np.log10(total + 1e-10)


def warm_up() -> None:
    """Compile the front end now (then from numba's cache), so that no session's first frame waits."""
    hop_matrix(np.zeros(WIN, np.int16), np.array([WIN // 2]))

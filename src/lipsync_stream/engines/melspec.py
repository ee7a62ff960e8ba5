"""Wav2Lip's mel spectrogram, in numpy, whole-signal and one video frame at a time.

The parameters Wav2Lip was trained with: 16 kHz, pre-emphasis 0.97, an 800-point STFT (periodic
Hann window of 800, hop 200, frames centred on their sample), magnitude through 80 Slaney mel
bands from 55 to 7600 Hz, amplitude in dB floored at -100 dB, minus a reference level of 20 dB,
then scaled symmetrically to [-4, 4] and clipped. Video frame *k* (at 30 fps) reads the 16 mel
frames from ``int(k * 80 / 30)``: 200 ms of audio starting about where the frame does, which is
the lookahead a Wav2Lip engine must declare. ``tests/test_melspec.py`` pins this against the same
pipeline built from librosa's STFT and filterbank.
"""

from __future__ import annotations

from functools import cache

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0
STEPS = 16  # mel frames per video frame
MEL_PER_SECOND = SAMPLE_RATE / HOP  # 80
SPAN_SAMPLES = STEPS * HOP  # the 200 ms of audio a frame's mel window covers, from the frame's start

#: samples a frame's window reaches before its first sample, and past its last (for 30 fps)
CONTEXT_SAMPLES = N_FFT // 2 + HOP + 1  # half a window, the mel grid's offset, one for pre-emphasis
LOOKAHEAD_SAMPLES = (STEPS - 1) * HOP + N_FFT // 2  # from the frame's start; minus the frame's length


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_part = hz >= 1000.0
    return np.where(log_part, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), (200.0 / 3) * mel)


@cache
def filterbank() -> np.ndarray:
    """(80, 401) triangular Slaney mel filters, area-normalised (``norm='slaney'``)."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@cache
def _window() -> np.ndarray:
    n = np.arange(WIN)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN)).astype(np.float32)  # periodic Hann


def _to_normalised_db(magnitude: np.ndarray) -> np.ndarray:
    """(frames, 401) STFT magnitudes -> (80, frames) normalised mel dB, float32."""
    mel = filterbank() @ magnitude.T
    db = 20.0 * np.log10(np.maximum(10.0 ** (MIN_LEVEL_DB / 20.0), mel)) - REF_LEVEL_DB
    return np.clip(2.0 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS, -MAX_ABS, MAX_ABS).astype(np.float32)


def _preemphasis(x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float32).copy()
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """(80, 1 + len // 200) mel spectrogram of a whole float signal in [-1, 1], as Wav2Lip computes
    it (the signal is reflected at both ends, as its STFT pads)."""
    y = _preemphasis(np.asarray(wav, dtype=np.float32))
    padded = np.pad(y, N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(n_frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    return _to_normalised_db(np.abs(np.fft.rfft(padded[idx] * _window(), axis=1)))


def first_mel(k: int, fps: int = 30) -> int:
    """The first mel frame of video frame *k*: ``int(k * 80 / fps)``, exact in integers."""
    return (k * int(MEL_PER_SECOND)) // fps


def frame_mel(window: np.ndarray, window_start: int, k: int, fps: int = 30) -> np.ndarray:
    """(80, 16) mel window of video frame *k*, from int16 samples *window* whose first sample is
    at stream position *window_start*. Samples outside it (before the stream began, or not yet
    arrived) read as silence; everywhere else this equals :func:`melspectrogram`'s columns."""
    m0 = first_mel(k, fps)
    lo = m0 * HOP - N_FFT // 2 - 1  # one more sample for pre-emphasis
    hi = (m0 + STEPS - 1) * HOP + N_FFT // 2
    seg = np.zeros(hi - lo, dtype=np.float32)
    a, b = max(lo, window_start), min(hi, window_start + len(window))
    if b > a:
        seg[a - lo : b - lo] = window[a - window_start : b - window_start].astype(np.float32) / 32768.0
    y = _preemphasis(seg)[1:]
    idx = np.arange(STEPS)[:, None] * HOP + np.arange(N_FFT)[None, :]
    return _to_normalised_db(np.abs(np.fft.rfft(y[idx] * _window(), axis=1)))


def reference_frame_mel(window: np.ndarray, window_start: int, k: int, end: int | None = None, fps: int = 30) -> np.ndarray:
    """(80, 16) mel window of video frame *k* as Wav2Lip's own inference computes it over the
    whole utterance (stream position 0 to *end*, when the stream has ended): the signal is
    reflected at both of its ends (its STFT's padding), and a frame whose window would reach past
    the last column takes the last 16 columns instead. *window*, *window_start*: int16 samples
    and the stream position of the first; they must cover the columns' samples."""
    m0 = first_mel(k, fps)
    if end is not None:
        m0 = max(0, min(m0, 1 + end // HOP - STEPS))
    lo = m0 * HOP - N_FFT // 2
    positions = np.arange(lo, (m0 + STEPS - 1) * HOP + N_FFT // 2)
    reflected = np.abs(positions)  # before the first sample: its mirror image
    if end is not None:
        reflected = np.where(reflected >= end, 2 * (end - 1) - reflected, reflected)

    def sample(p: np.ndarray) -> np.ndarray:
        inside = (p >= window_start) & (p < window_start + len(window)) & (p >= 0)
        out = np.zeros(len(p), dtype=np.float32)
        out[inside] = window[p[inside] - window_start].astype(np.float32) / 32768.0
        return out

    x = sample(reflected) - PREEMPHASIS * sample(reflected - 1)  # pre-emphasis before the reflection, as the reference
    idx = np.arange(STEPS)[:, None] * HOP + np.arange(N_FFT)[None, :]
    return _to_normalised_db(np.abs(np.fft.rfft(x[idx] * _window(), axis=1)))

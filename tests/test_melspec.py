"""Wav2Lip's mel front end: pinned against librosa's building blocks, and per frame as a whole."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_stream.engines import melspec
from lipsync_stream.wire.protocol import frames_for_samples

librosa = pytest.importorskip("librosa")


def librosa_mel(wav: np.ndarray) -> np.ndarray:
    """The same pipeline assembled from librosa: pre-emphasis, STFT, mel filters, dB, normalise."""
    import scipy.signal

    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, window="hann", center=True, pad_mode="reflect")
    mel = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ np.abs(stft)
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_filterbank_is_librosa_slaney() -> None:
    ours = melspec.filterbank()
    theirs = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    assert ours.shape == (80, 401) and np.abs(ours - theirs).max() < 1e-6


def test_melspectrogram_matches_the_librosa_pipeline(speech: np.ndarray) -> None:
    wav = speech[:32000].astype(np.float64) / 32768.0
    ours, theirs = melspec.melspectrogram(wav), librosa_mel(wav)
    assert ours.shape == theirs.shape == (80, 161)
    assert np.abs(ours - theirs).max() < 1e-4
    assert ours.min() >= -4 and ours.max() <= 4 and ours.std() > 0.5  # speech fills the range


def test_each_frame_reads_16_mel_frames_from_int_k_80_over_30(speech: np.ndarray) -> None:
    wav = speech[:48000]
    whole = melspec.melspectrogram(wav.astype(np.float32) / 32768.0)
    for k in [3, 17, 40, 58]:
        m0 = int(k * 80 / 30)
        assert melspec.first_mel(k) == m0
        start = m0 * 200 - 700  # any window that holds the frame's context and lookahead will do
        window = wav[start : start + 4200]
        ours = melspec.frame_mel(window, start, k)
        assert ours.shape == (80, 16) and np.abs(ours - whole[:, m0 : m0 + 16]).max() < 1e-4


def test_samples_outside_the_window_read_as_silence() -> None:
    loud = (np.sin(np.arange(16000) * 0.3) * 20000).astype(np.int16)
    silent_past = melspec.frame_mel(loud[8000:], 8000, 0)  # frame 0: everything before is silence
    assert silent_past[:, :8].max() <= -3.9  # the first 8 mel frames hear nothing
    assert melspec.frame_mel(loud, 0, 3).max() > 0


def test_the_reference_mel_of_a_stream_is_wav2lips_whole_utterance_mel() -> None:
    """``--fidelity reference``: frame k reads the columns int(k * 80 / 30).. of the mel of the whole
    utterance (reflected at both ends), and the frames past its end its last 16 columns, as
    Wav2Lip's inference.py chunks them; from a window of the stream, not the whole signal."""
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(16000 * 2 + 123) * 3000).astype(np.int16)
    whole = melspec.melspectrogram(wav.astype(np.float32) / 32768.0)
    columns = whole.shape[1]
    for k in range(frames_for_samples(len(wav))):  # the stream's frames: the last starts inside the audio
        start = int(k * 80 / 30)
        expected = whole[:, columns - 16 :] if start + 16 > columns else whole[:, start : start + 16]
        lo = max(0, k * 16000 // 30 - 4000)  # a window as the engine gets it: 4000 samples of context, 3400 ahead
        window = wav[lo : k * 16000 // 30 + 3400]
        np.testing.assert_allclose(melspec.reference_frame_mel(window, lo, k, len(wav)), expected, atol=1e-5)
    # frame 0 reflects the signal before it; the tuned path reads silence there
    assert np.abs(melspec.reference_frame_mel(wav, 0, 0, len(wav)) - melspec.frame_mel(wav, 0, 0)).max() > 0.1

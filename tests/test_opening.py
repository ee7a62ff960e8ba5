"""The opening model: the shipped network loads and fits the engine, a wrong file is a named
error, and in the engine the lips rest in a recording's pauses, not only in digital silence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from speech_synth import engine_frames, silence, vowel

from lipsync_stream.engines import get_engine, opening
from lipsync_stream.engines.opening import INPUTS, OpeningModel
from lipsync_stream.engines.viseme import VisemeEngine
from lipsync_stream.wire.protocol import FPS


def test_the_shipped_network_fits_the_engine() -> None:
    model = OpeningModel()
    out = model.predict(np.zeros((4, INPUTS), np.float32))
    assert out.shape == (4, 2) and np.isfinite(out).all()  # z, and the logit of closed lips
    engine = get_engine("viseme")
    assert isinstance(engine, VisemeEngine)
    # every hop its predictions hear is inside what the engine asks the session for: no latency added
    assert (opening.SMOOTH_FUTURE + opening.FUTURE) * 160 <= engine.lookahead_samples
    assert (opening.SMOOTH_PAST + opening.PAST) * 160 <= engine.context_samples


def test_a_network_of_another_shape_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, geometry=np.array([4, 4, 26]), mean=np.zeros(9 * 26, np.float32), std=np.ones(9 * 26, np.float32), layers=1, w0=np.zeros((9 * 26, 1), np.float32), b0=np.zeros(1, np.float32), version=np.array("x"))
    with pytest.raises(ValueError, match="other.npz"):
        OpeningModel(path)


def room(pcm: np.ndarray, below_db: float, seed: int = 0) -> np.ndarray:
    """*pcm* with a steady room noise *below_db* under its speech's loudness."""
    x = pcm.astype(np.float64)
    loud = np.sqrt(np.mean(x[np.abs(x) > 300] ** 2))
    noise = np.convolve(np.random.default_rng(seed).standard_normal(len(x)), np.ones(8) / 8, "same")
    noise *= loud * 10 ** (-below_db / 20) / noise.std()
    return np.clip(x + noise, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("below_db", [60.0, 30.0, 25.0])
def test_lips_rest_in_a_pause_of_a_noisy_recording_and_open_on_the_vowels(below_db: float) -> None:
    """Two vowels with a 400 ms pause between them, over room noise 25-60 dB under the voice
    (the loudness gate alone lets noise 30 dB down open the mouth)."""
    a = vowel("a", 0.6, rms_db=-14)
    pcm = room(np.concatenate([silence(0.5), a, silence(0.4), a, silence(0.5)]), below_db)
    shapes = [r.shape for r in engine_frames(get_engine("viseme"), pcm, analyse=True)]
    t = (np.arange(len(shapes)) + 0.5) / FPS
    pause = [s.open for s, ti in zip(shapes, t, strict=True) if 1.1 + 0.1 <= ti <= 1.5 - 0.1]
    vowels = [s.open for s, ti in zip(shapes, t, strict=True) if 0.6 <= ti <= 1.0 or 1.6 <= ti <= 2.0]
    assert max(pause) < 1e-3  # closed: the rest shape (MouthShape.is_rest)
    assert min(vowels) > 0.2


def music(n: int, seed: int = 0) -> np.ndarray:
    """A music bed: chords of sine tones that change every half second, with a beat, RMS 1."""
    t = np.arange(n) / 16000
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    for k in range(12):
        out += np.sin(2 * np.pi * 110 * 2 ** (rng.integers(0, 36) / 12) * t) * (0.6 + 0.4 * ((t * 2).astype(int) % 3 == k % 3))
    out *= 1 + 0.5 * np.sin(2 * np.pi * 2 * t)
    return out / np.sqrt(np.mean(out**2))


def test_speech_over_a_music_bed_keeps_moving_and_its_pauses_rest() -> None:
    """A music bed 15 dB under the voice is not a room: the lips still move with the words (the
    room tracker only acts while the sound is as steady as a room; acting always, it shut them in
    14 % of the spoken frames) and rest in the pause between two sentences."""
    espeak = pytest.importorskip("espeak")
    try:
        speaker = espeak.Espeak()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    pcm, rate, _ = speaker.say("Father saw a large car far away, and we keep three sheep.", "en-us")
    said = espeak.resample_to(pcm, rate, 16000).astype(np.float64)
    clean = np.concatenate([silence(0.5), said, silence(0.4), said, silence(0.5)]).astype(np.float64)
    loud = np.sqrt(np.mean(said[np.abs(said) > 500] ** 2))
    engine = get_engine("viseme")
    alone = np.array([r.shape.open for r in engine_frames(engine, clean.astype(np.int16), analyse=True)])
    bed = np.clip(clean + music(len(clean)) * loud * 10 ** (-15 / 20), -32768, 32767).astype(np.int16)
    over = np.array([r.shape.open for r in engine_frames(engine, bed, analyse=True)])
    spoken = alone > 0.05
    assert np.mean(over[spoken] < 0.02) <= 0.07
    gap = (0.5 + len(said) / 16000 + 0.1, 0.5 + len(said) / 16000 + 0.3)
    t = (np.arange(len(over)) + 0.5) / FPS
    assert over[(t >= gap[0]) & (t <= gap[1])].max() < 0.05

"""The speech front end: framing, level, voicing and the mel spectrum on known signals."""

from __future__ import annotations

import numpy as np
from speech_synth import vowel

from lipsync_stream.engines.features import N_MEL, analyse


def test_frames_are_centred_and_zero_padded() -> None:
    x = (np.random.default_rng(1).standard_normal(1000) * 3000).astype(np.int16)
    # a hop centred at 500 hears samples 300-699; one at 0 hears 200 zeros, then the signal
    assert np.array_equal(analyse(x, np.array([500])).matrix(), analyse(x[300:700], np.array([200])).matrix())
    padded = np.concatenate([np.zeros(200, np.int16), x[:200]])
    assert np.array_equal(analyse(x, np.array([0])).matrix(), analyse(padded, np.array([200])).matrix())


def test_level_and_voicing() -> None:
    t = np.arange(16000) / 16000
    tone = (0.1 * 32767 * np.sin(2 * np.pi * 150 * t)).astype(np.int16)
    noise = (np.random.default_rng(0).standard_normal(16000) * 0.1 * 32767).astype(np.int16)
    c = np.arange(1000, 15000, 160)
    ft, fn = analyse(tone, c), analyse(noise, c)
    assert np.allclose(ft.level_db, 20 * np.log10(0.1 / np.sqrt(2)), atol=0.5)
    assert ft.voicing.min() > 0.9 and fn.voicing.max() < 0.5


def test_the_mel_spectrum_puts_a_tone_in_its_band_and_tells_vowels_apart() -> None:
    t = np.arange(8000) / 16000
    tone = (0.1 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    mel = analyse(tone, np.arange(1000, 7000, 160)).mel_db.mean(axis=0)
    centres = 700.0 * (10 ** (np.linspace(2595 * np.log10(1 + 100 / 700), 2595 * np.log10(1 + 7600 / 700), N_MEL + 2)[1:-1] / 2595) - 1)
    assert abs(centres[int(np.argmax(mel))] - 1000) < 150
    c = np.arange(1000, 7000, 160)
    high = {n: analyse(vowel(n, 0.5), c).mel_db[:, centres > 1800].mean() - analyse(vowel(n, 0.5), c).mel_db[:, centres < 1000].mean() for n in "iu"}
    assert high["i"] > high["u"] + 10  # i has its second formant up high, u does not


def test_hop_cache_gives_exactly_what_computing_gives(speech: np.ndarray) -> None:
    from lipsync_stream.engines.features import HopCache
    from lipsync_stream.wire.protocol import AudioFramer

    framer = AudioFramer(lookahead=1280, context=960)
    framer.push(speech[:24000].tobytes())
    cache = HopCache()
    while framer.ready():
        f = framer.pop()
        centres = 900 + np.arange(13) * 160 - (f.start + 900) % 160
        cached = cache.features(f.window, centres, f.start, f.valid, f.epoch).matrix()
        assert np.array_equal(cached, analyse(f.window, centres).matrix())
